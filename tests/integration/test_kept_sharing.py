"""nginx's kept connections (fastcgi_keep_conn on, upstream keepalive), shared by the pool's
workers (fpm.sharing): a request nginx sends on a connection that a busy worker accepted
earlier does not wait for that worker while another is free (no head-of-line blocking); a
worker's death still ends the connection it served; no copy outlives its connection."""
import bisect
import concurrent.futures
import contextlib
import itertools
import os
import signal
import threading
import time

import pytest

import harness
from fpm import client as fc
from harness import wait_for

# Written into the test's directory: /slow?K blocks until the file `release` or `release-K`
# appears there (at most 20 s, then 504), after writing its pid to `slow-started-K`; any
# other path is a short request (50 ms, so that nginx has several in flight) answered with
# the worker's pid.
GATE_APP = """\
import os, time
HERE = os.path.dirname(os.path.abspath(__file__))


def app(environ, start_response):
    status, body = "200 OK", b"%d" % os.getpid()
    if environ["REQUEST_URI"].partition("?")[0] == "/slow":
        started = os.path.join(HERE, "slow-started-" + environ["QUERY_STRING"])
        with open(started + ".tmp", "wb") as f:
            f.write(body)
        os.rename(started + ".tmp", started)
        deadline = time.monotonic() + 20
        while not any(os.path.exists(os.path.join(HERE, name))
                      for name in ("release", "release-" + environ["QUERY_STRING"])):
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


@pytest.mark.parametrize("listen,workers", [("unix", 2), ("tcp", 2), ("unix", 3)])
def test_a_busy_worker_holds_up_no_request_on_its_kept_connections(served, tmp_path, listen,
                                                                    workers):
    """All workers but one busy with requests that last until the test ends them, begun
    after the pool sat idle (its workers all asleep): 40 requests through nginx meanwhile,
    8 at a time, on the connections nginx keeps to every worker, are all answered (by the
    free worker) before they end; none waits for a busy one."""
    (tmp_path / "gate_app.py").write_text(GATE_APP)
    front, server = served(listen=listen, keep_conn=True, workers=workers, app="gate_app:app",
                           python_path=tmp_path)
    server.wait_idle(workers)
    # Warm up: 8 clients at once make nginx open 8 connections, the workers accept some,
    # and each connection serves enough requests to be shared.
    first = warm(front)
    assert [r.status for r in first] == [200] * len(first)
    assert len({r.body for r in first}) >= 2, "one worker took every kept connection"
    time.sleep(0.5)  # idle: no worker stays awake to watch for one that goes to serve

    def fast(i):
        try:
            return front.get("/fast?i=%d" % i, timeout=5)
        except OSError as e:  # TimeoutError: it waited for the busy worker
            return e

    with concurrent.futures.ThreadPoolExecutor(workers - 1) as background:
        slow, busy = [], []
        try:
            for k in range(workers - 1):
                slow.append(background.submit(front.get, "/slow?%d" % k, timeout=40))
                started = tmp_path / ("slow-started-%d" % k)
                wait_for("/slow?%d in a worker" % k, started.exists, 10, server)
                busy.append(started.read_bytes())
            with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
                results = list(pool.map(fast, range(FAST)))
            in_flight = [not s.done() for s in slow]
        finally:
            (tmp_path / "release").touch()
        done = [s.result(timeout=30) for s in slow]

    failed = ["/fast?i=%d: %r" % (i, r) for i, r in enumerate(results)
              if isinstance(r, Exception) or r.status != 200]
    assert not failed, "%d of %d requests not answered while workers %s were busy:\n%s" % (
        len(failed), FAST, b", ".join(busy).decode(), "\n".join(failed))
    assert all(in_flight), "/slow ended before the test released it: %r" % (done,)
    assert not set(busy) & {r.body for r in results}
    assert [(d.status, d.body) for d in done] == [(200, b) for b in busy]


def test_a_connection_new_to_a_pool_that_shares_waits_for_no_busy_worker(pyfpm, tmp_path):
    """A web server that keeps its connections opens a new one (a burst needs more, or its
    keepalive_timeout closed the others): the second request on it does not wait for the
    worker that served its first, busy meanwhile with another connection's request."""
    (tmp_path / "gate_app.py").write_text(GATE_APP)
    server = pyfpm(workers=2, app="gate_app:app", python_path=tmp_path)
    server.wait_idle(2)

    def slow(conn, k):
        conn.send(fc.encode_request(fc.build_params("/slow?%d" % k), keep_conn=True))
        started = tmp_path / ("slow-started-%d" % k)
        wait_for("/slow?%d in a worker" % k, started.exists, 10, server)
        return started.read_bytes()

    with contextlib.ExitStack() as stack:
        def connect():
            return stack.enter_context(fc.Connection(server.address, timeout=5))
        kept = connect()
        assert [kept.request("/fast").status for _ in range(2)] == [200, 200], "shared now"
        first = connect()
        busy = slow(first, 0)
        new, other = connect(), connect()
        # Both new connections go to the one free worker, which serves a first request on each.
        free = {new.request("/fast").body, other.request("/fast").body}
        assert len(free) == 1 and busy not in free
        (tmp_path / "release-0").touch()
        assert first.read_response().status == 200
        busy = slow(other, 1)
        try:
            second = new.request("/fast")
        except TimeoutError:
            second = None
        finally:
            (tmp_path / "release-1").touch()
        assert second is not None, "the second request waited for the busy worker"
        assert (second.status, second.body != busy) == (200, True)
        assert other.read_response().status == 200


def warm(front, n=6 * CLIENTS):
    """n requests, CLIENTS at a time: nginx opens CLIENTS connections and reuses them, each
    serving enough requests to be shared."""
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(lambda _: front.get("/fast", timeout=10), range(n)))


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def test_a_worker_killed_in_a_request_ends_its_connection_at_once(served, tmp_path):
    """The worker serving a request on a shared connection is killed: nginx sees that
    connection end at once (502), as when a worker held its connections alone. The other
    workers' copies do not keep it open until nginx's fastcgi_read_timeout (30 s here). (A
    POST: nginx would send a GET again, on another connection.)"""
    (tmp_path / "gate_app.py").write_text(GATE_APP)
    front, server = served(keep_conn=True, workers=2, app="gate_app:app", python_path=tmp_path)
    front.expected_errors.append(r"upstream prematurely closed|recv\(\) failed")
    server.wait_idle(2)
    assert {r.status for r in warm(front)} == {200}
    with concurrent.futures.ThreadPoolExecutor(1) as background:
        slow = background.submit(front.request, "POST", "/slow?0", body=b"x", timeout=40)
        started = tmp_path / "slow-started-0"
        wait_for("/slow in a worker", started.exists, 10, server)
        os.kill(int(started.read_bytes()), signal.SIGKILL)
        done = slow.result(timeout=15)
    assert done.status == 502 and done.seconds < 10, (done.status, done.seconds)
    server.wait_idle(2)
    assert {r.status for r in warm(front, CLIENTS)} == {200}, "the pool serves on"


def test_no_copy_outlives_the_connections_nginx_closed(served, tmp_path):
    """Every worker holds a copy of each shared connection: once nginx has gone, and its
    connection with it, the workers and the master close theirs."""
    (tmp_path / "gate_app.py").write_text(GATE_APP)
    front, server = served(keep_conn=True, workers=3, app="gate_app:app", python_path=tmp_path)
    server.wait_idle(3)
    pids = [server.pid, *server.children()]
    before = {pid: open_fds(pid) for pid in pids}
    assert {front.get("/fast", timeout=10).status for _ in range(4)} == {200}
    wait_for("copies in every worker", lambda: all(open_fds(p) > before[p] for p in pids), 5,
             server)
    harness.kill_group(front.proc)
    wait_for("every copy closed", lambda: all(open_fds(p) <= before[p] for p in pids), 10,
             server)


# Each request takes 20 ms and is answered with its place in the worker's order.
ORDER_APP = """\
import itertools, time
served = itertools.count(1)


def app(environ, start_response):
    time.sleep(0.02)
    body = b"%d" % next(served)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def test_a_burst_of_new_connections_waits_one_round_of_the_kept_ones(pyfpm, tmp_path):
    """One worker serves 6 kept connections, each sending its next request as soon as it has
    its answer (a busy site behind nginx); 6 new connections come at once (nginx opens more
    for a burst). Each is served within about a round of the kept connections' requests, not
    one new connection per round (the 6th would wait 6 rounds)."""
    (tmp_path / "order_app.py").write_text(ORDER_APP)
    server = pyfpm(workers=1, app="order_app:app", python_path=tmp_path)
    server.wait_idle(1)
    kept, new = 6, 6
    seen, stop = [], threading.Event()

    def loop(conn):
        while not stop.is_set():
            seen.append(int(conn.request("/kept").body))

    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(fc.Connection(server.address, timeout=10))
                 for _ in range(kept + new)]
        for conn in conns[:kept]:
            assert [conn.request("/kept").status for _ in range(2)] == [200, 200], "shared now"
        with concurrent.futures.ThreadPoolExecutor(kept) as pool:
            loops = [pool.submit(loop, conn) for conn in conns[:kept]]
            try:
                wait_for("the kept connections' requests go round", lambda: len(seen) >= 3 * kept,
                         10, server)
                mark = max(seen)
                for conn in conns[kept:]:
                    conn.send(fc.encode_request(fc.build_params("/new"), keep_conn=True))
                waits = sorted(int(conn.read_response().body) - mark for conn in conns[kept:])
            finally:
                stop.set()
            for done in loops:
                done.result(timeout=10)
    # Served before them: the rest of the round in progress (at most one request per kept
    # connection), a round of the kept ones, and the other new ones.
    assert waits[-1] <= 2 * kept + new, "places after the burst came: %s" % waits


# Each request takes 10 ms and is answered with the time (CLOCK_MONOTONIC, ns) it began.
STAMP_APP = """\
import time


def app(environ, start_response):
    body = b"%d" % time.monotonic_ns()
    time.sleep(0.01)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def test_requests_on_shared_connections_are_served_in_the_order_they_came(pyfpm, tmp_path):
    """Two workers, eight kept connections each sending its next request as soon as it has
    its answer (a busy site behind nginx): a request is not overtaken by one that came
    later on another connection (the workers take them from one queue)."""
    (tmp_path / "stamp_app.py").write_text(STAMP_APP)
    server = pyfpm(workers=2, app="stamp_app:app", python_path=tmp_path)
    server.wait_idle(2)
    clients, rounds = 8, 30
    # Later by more than this (a thread's stamp before it sends, a worker's before its app
    # begins), a request that begins first has overtaken.
    slack_ns = 5_000_000

    def loop(conn):
        times = []
        for _ in range(rounds):
            sent = time.monotonic_ns()
            times.append((sent, int(conn.request("/").body)))
        return times

    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(fc.Connection(server.address, timeout=10))
                 for _ in range(clients)]
        for conn in conns:
            assert [conn.request("/").status for _ in range(2)] == [200, 200], "shared now"
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            times = sorted(t for done in pool.map(loop, conns) for t in done)
    # One overtaken began after a request sent later than it (by more than the slack): the
    # earliest beginning among those sent after that later one is before its own.
    sent = [s for s, _ in times]
    earliest = list(itertools.accumulate(reversed([b for _, b in times]), min))[::-1]
    overtaken = sum(1 for s, b in times
                    if (j := bisect.bisect_right(sent, s + slack_ns)) < len(times)
                    and earliest[j] < b)
    assert overtaken <= len(times) // 20, "%d of %d requests overtaken" % (overtaken, len(times))
