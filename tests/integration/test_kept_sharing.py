"""nginx's kept connections (fastcgi_keep_conn on, upstream keepalive) and a busy worker:
a request nginx sends on a connection that a busy worker accepted earlier must not wait for
that worker while another of the pool is free (issue 17, item 1: no head-of-line blocking)."""
import concurrent.futures

import pytest

from harness import wait_for

# Written into the test's directory: /slow blocks until the file `release` appears there
# (at most 20 s, then 504), after writing its pid to `slow-started`; any other path is a
# short request (50 ms, so that nginx has several in flight) answered with the worker's pid.
GATE_APP = """\
import os, time
HERE = os.path.dirname(os.path.abspath(__file__))


def app(environ, start_response):
    status, body = "200 OK", b"%d" % os.getpid()
    if environ["PATH_INFO"] == "/slow":
        with open(os.path.join(HERE, "slow-started.tmp"), "wb") as f:
            f.write(body)
        os.rename(os.path.join(HERE, "slow-started.tmp"), os.path.join(HERE, "slow-started"))
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(HERE, "release")):
            if time.monotonic() > deadline:
                status = "504 Gateway Timeout"
                break
            time.sleep(0.02)
    else:
        time.sleep(0.05)
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""
CLIENTS = 8  # as many as nginx keeps connections after the warm-up: each one gets a request
FAST = 40


@pytest.mark.parametrize("listen", ["unix", "tcp"])
def test_a_busy_worker_holds_up_no_request_on_its_kept_connections(served, tmp_path, listen):
    """2 workers, one busy with a request that lasts until the test ends it: 40 requests
    through nginx meanwhile, 8 at a time, on the connections nginx keeps to both workers, are
    all answered (by the free worker) before it does; none waits for the busy one."""
    (tmp_path / "gate_app.py").write_text(GATE_APP)
    front, server = served(listen=listen, keep_conn=True, workers=2, app="gate_app:app",
                           python_path=tmp_path)
    server.wait_idle(2)
    # Warm up: 8 clients at once make nginx open 8 connections; both workers accept and keep
    # some (with keep_conn, a worker answers only on the connections it accepted).
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        warm = list(pool.map(lambda _: front.get("/fast", timeout=10), range(6 * CLIENTS)))
    assert [r.status for r in warm] == [200] * len(warm)
    assert len({r.body for r in warm}) == 2, "one worker took every kept connection"

    def fast(i):
        try:
            return front.get("/fast?i=%d" % i, timeout=5)
        except OSError as e:  # TimeoutError: it waited for the busy worker
            return e

    with concurrent.futures.ThreadPoolExecutor(1) as background:
        slow = background.submit(front.get, "/slow", timeout=40)
        try:
            started = tmp_path / "slow-started"
            wait_for("/slow in a worker", started.exists, 10, server)
            busy = started.read_bytes()
            with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
                results = list(pool.map(fast, range(FAST)))
            in_flight = not slow.done()
        finally:
            (tmp_path / "release").touch()
        done = slow.result(timeout=30)

    failed = ["/fast?i=%d: %r" % (i, r) for i, r in enumerate(results)
              if isinstance(r, Exception) or r.status != 200]
    assert not failed, "%d of %d requests not answered while worker %s was busy:\n%s" % (
        len(failed), FAST, busy.decode(), "\n".join(failed))
    assert in_flight, "/slow ended before the test released it: %r" % (done,)
    assert busy not in {r.body for r in results}
    assert (done.status, done.body) == (200, busy)
