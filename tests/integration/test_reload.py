"""SIGUSR2 reload (the master re-executes itself and keeps its sockets), emergency restart, and
request_terminate_timeout, through nginx where a user would notice."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from pathlib import Path

import harness
import load
from fpm import client as fc
from fpm.timers import RECYCLE_HOLD_MAX
from tests.conftest import APPS, find_program, http_request, pool_section, pyfpm_config

def reload(server, timeout=10.0):
    """USR2, then wait until the new master is up and the previous workers are told to go."""
    mark = server.mark()
    server.signal(signal.SIGUSR2)
    server.wait_log(r"NOTICE: ready to handle connections$", timeout, since=mark)
    return mark


def worker_pids(server):
    return set(server.children())


@pytest.mark.parametrize("clients, keep_conn, body", [
    (16, False, None), (64, False, None), (16, True, b"a=1&b=2")],
    ids=["c16", "c64", "keep_conn-post-c16"])
def test_reload_under_load_loses_no_request(pyfpm, nginx, clients, keep_conn, body):
    """wrk through nginx for 10 s, 3 reloads, plus a 3 s request in flight across the first:
    no failed request, no request cut short, no error in nginx's log, the master keeps its
    pid. (PHP-FPM, measured on this machine, fails 1 request per 3 reloads at 16 clients and
    3 at 64.) With fastcgi_keep_conn on, the connections nginx keeps to the old workers
    outlive them, handed to the new ones: POSTs, which nginx never retries, all succeed."""
    wrk = find_program("wrk")
    server = pyfpm(workers=2)
    front = nginx(server.address, keep_conn=keep_conn)
    server.wait_idle(2)
    master, first_workers = server.pid, worker_pids(server)
    slow = {}
    slow_thread = threading.Thread(
        target=lambda: slow.update(r=http_request(front.port, "GET", "/slow?s=3")))
    proc = load.start_wrk(wrk, front.port, "/hello", 10, clients, body)
    time.sleep(1.0)
    slow_thread.start()
    time.sleep(0.3)
    for _ in range(3):
        reload(server)
        time.sleep(2.5)
    result = load.finish(proc)
    slow_thread.join(10)
    print("reload under load, c%d: %d requests, %d failed, p50 %.2f ms, p99 %.2f ms"
          % (clients, result.requests, result.failures, result.p50_ms, result.p99_ms))
    assert result.requests > 1000, result.text
    assert result.failures == 0, result.text
    assert front.upstream_errors() == []
    assert slow["r"].status == 200, "the in-flight request was cut short"
    assert server.pid == master
    text = server.log_text()
    assert text.count("NOTICE: Reloading in progress ...") == 3
    assert len(re.findall(r'NOTICE: using inherited socket fd=\d+, ".*www\.sock"', text)) == 3
    assert not worker_pids(server) & first_workers
    # Old workers left with code 0 (graceful), none was killed.
    assert not re.search(r"exited on signal", text), text


def test_reload_with_a_broken_config_keeps_serving(pyfpm, tmp_path):
    server = pyfpm(workers=2)
    before = server.wait_idle(2)
    good = server.conf_path.read_text()
    server.conf_path.write_text(good.replace("pm.max_children = 2", "pm.max_children = lots"))
    mark = server.mark()
    server.signal(signal.SIGUSR2)
    server.wait_log(r"ERROR: reload failed: the new configuration is invalid; still serving "
                    r"with the current one$", since=mark)
    text = server.log_text()[mark:]
    assert re.search(r"ERROR: \[.*pyfpm\.conf:\d+\] \[pool www\] pm\.max_children: invalid "
                     r"value 'lots'", text), text
    assert "reloading: execvp" not in text
    assert server.request("/hello").body == b"hello world"
    assert sorted(server.children()) == sorted(before), "the workers were disturbed"
    # Fixed, the next reload goes through.
    server.conf_path.write_text(good)
    reload(server)
    server.wait_log(r"child\(ren\) of the previous configuration finish their requests", since=mark)
    assert server.request("/hello").status == 200


def test_reload_applies_a_changed_config(pyfpm, tmp_path):
    server = pyfpm(workers=2)
    server.wait_idle(2)
    old_sock = Path(server.address)
    new_sock = old_sock.parent / "moved.sock"
    text = server.conf_path.read_text()
    text = text.replace("listen = %s" % old_sock, "listen = %s" % new_sock)
    text = text.replace("pm.max_children = 2", "pm.max_children = 3")
    text += "\n" + pool_section("extra", listen=server.tmp / "extra.sock", workers=1, mode="")
    server.conf_path.write_text(text)
    mark = reload(server)
    server.wait_log(r"\[pool www\] 2 child\(ren\) of the previous configuration", since=mark)
    deadline = time.monotonic() + 5
    while len(server.children()) != 4:  # 3 www + 1 extra, the old 2 gone
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.02)
    from fpm import client
    assert client.request(str(new_sock), "/hello").body == b"hello world"
    assert client.request(str(server.tmp / "extra.sock"), "/hello").status == 200
    assert not old_sock.exists(), "the socket no pool listens on any more was left behind"


def test_reload_keeps_the_old_workers_while_the_new_app_fails_to_load(pyfpm):
    server = pyfpm(workers=2)
    before = set(server.wait_idle(2))
    server.conf_path.write_text(server.conf_path.read_text().replace(
        "app = wsgi_app:app", "app = no_such_module:app"))
    mark = reload(server)
    server.wait_log(r"could not load the app \(exited with code 69", since=mark)
    # The previous workers still serve: nobody told them to go.
    assert before <= set(server.children())
    for _ in range(5):
        assert server.request("/hello").body == b"hello world"
    assert "of the previous configuration finish" not in server.log_text()[mark:]


EMERGENCY = "emergency_restart_threshold = 3\nemergency_restart_interval = 10s"


def crash_workers(server, n):
    """Make ``n`` workers die of SIGSEGV; the log position before the first."""
    server.wait_idle(2)
    mark = server.mark()
    for _ in range(n):
        with pytest.raises(Exception):
            server.request("/crash", timeout=5)
    return mark


def test_emergency_restart_after_crashes(pyfpm):
    server = pyfpm(workers=2, global_=EMERGENCY)
    mark = crash_workers(server, 3)
    server.wait_log(r"WARNING: failed processes threshold \(3 in 10 sec\) is reached, "
                    r"initiating reload$", since=mark)
    server.wait_log(r"NOTICE: reloading: execvp", since=mark)
    server.wait_log(r"NOTICE: ready to handle connections$", since=mark)
    text = server.log_text()[mark:]
    assert len(re.findall(r"exited on signal 11 \(SIGSEGV", text)) == 3
    assert server.request("/hello").status == 200


def test_crashes_below_the_threshold_do_not_reload(pyfpm):
    server = pyfpm(workers=2, global_=EMERGENCY)
    mark = crash_workers(server, 2)
    deadline = time.monotonic() + 5
    while server.log_text()[mark:].count("exited on signal 11 (SIGSEGV") < 2:
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.02)
    server.wait_idle(2)
    assert "initiating reload" not in server.log_text()[mark:]


def test_terminate_timeout_answers_504_and_respawns(pyfpm, nginx):
    server = pyfpm(workers=2, extra="request_terminate_timeout = 1s")
    front = nginx(server.address)
    before = set(server.wait_idle(2))
    stuck = {}
    thread = threading.Thread(target=lambda: stuck.update(r=front.get("/slow?s=10")))
    thread.start()
    # The other worker keeps answering meanwhile.
    for _ in range(10):
        assert front.get("/hello").status == 200
    thread.join(15)
    response = stuck["r"]
    assert response.status == 504
    assert b"request_terminate_timeout" in response.body
    assert 1.0 <= response.seconds < 3.0
    text = server.wait_log(r"WARNING: \[pool www\] child (\d+), script 'wsgi_app:app' "
                           r"\(request: \"GET /slow\?s=10\"\) execution timed out "
                           r"\(1\.\d{6} sec\), terminating$")
    victim = int(text[1])
    assert victim in before
    server.wait_log(r"WARNING: \[pool www\] child %d exited on signal 15 \(SIGTERM\)" % victim)
    after = set(server.wait_idle(2))
    assert victim not in after and len(after) == 2


def test_terminate_timeout_off_lets_slow_requests_finish(pyfpm, nginx):
    server = pyfpm(workers=1)
    front = nginx(server.address)
    server.wait_idle(1)
    assert front.get("/slow?s=1.5").status == 200
    assert "timed out" not in server.log_text()


def test_captured_output_of_a_worker_finishing_across_a_reload_is_logged(pyfpm, tmp_path):
    """The pipes of catch_workers_output cross the re-exec with the workers: an old worker
    that prints while it finishes its request is heard, and its request succeeds."""
    from fpm import client
    server = pyfpm(workers=1, app="log_app:app", extra="catch_workers_output = yes")
    old = server.wait_idle(1)[0]
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=client.request(
        server.address, "/print?text=finishing+after+the+reload&sleep=1.5", timeout=10)))
    thread.start()
    time.sleep(0.3)
    reload(server)
    thread.join()
    assert result["r"].status == 200
    server.wait_log(r'WARNING: \[pool www\] child %d said into stdout: "finishing after the '
                    r'reload"' % old)


def test_a_reload_in_a_removed_directory_keeps_serving(tmp_path):
    """A deploy pruned the release directory pyfpm was started in: the reload re-executes
    the master there all the same, and -v works there too."""
    start = tmp_path / "release-1"
    start.mkdir()
    server = harness.Server(pyfpm_config(tmp_path), tmp_path, cwd=start).start()
    try:
        server.wait_idle(2)
        start.rmdir()
        reload(server)
        assert server.request("/hello").body == b"hello world"
        assert server.proc.poll() is None
    finally:
        server.stop()
    gone = tmp_path / "release-2"
    gone.mkdir()
    version = subprocess.run("cd %s && rmdir %s && %s -m fpm -v" % (gone, gone, sys.executable),
                             shell=True, capture_output=True, text=True, env=harness.fpm_env())
    assert version.returncode == 0 and version.stdout.startswith("pyfpm "), version.stderr


def test_a_reload_adopts_workers_whose_scoreboard_has_another_layout(pyfpm):
    """The previous master was another pyfpm version (an upgrade): its scoreboard is not
    this one's, and the new master serves all the same."""
    server = pyfpm(workers=2)
    old = worker_pids(server)
    memfds = [fd for fd in os.listdir("/proc/%d/fd" % server.pid)
              if "pyfpm-scoreboard-www" in os.readlink("/proc/%d/fd/%s" % (server.pid, fd))]
    with open("/proc/%d/fd/%s" % (server.pid, memfds[0]), "r+b", buffering=0) as board:
        board.write(b"FPM0")  # another magic: another layout
    mark = reload(server)
    server.wait_log(r"WARNING: \[pool www\] the previous master's scoreboard has another layout; "
                    r"its workers are not shown until they are retired$", since=mark)
    deadline = time.monotonic() + 10
    while worker_pids(server) & old:  # retired once the new ones serve
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)
    assert server.request("/hello").body == b"hello world"


# A sitecustomize that makes the reload's check of the new configuration (the new master's
# command with --reload-test) take SLOW_CHECK_S: a slow disk, a big configuration.
SLOW_CHECK_S = 2.0
SLOW_CHECK = """import sys, time
if any(a.startswith("--reload-test") for a in sys.argv):
    time.sleep(%g)
""" % SLOW_CHECK_S


def slow_check_server(tmp_path, extra, workers=1, **section):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_CHECK)
    path = os.pathsep.join([harness.fpm_env()["PYTHONPATH"], str(site)])
    config = pyfpm_config(tmp_path, workers=workers, extra=extra, **section)
    return harness.Server(config, tmp_path, env={"PYTHONPATH": path}).start()


def served_by(server, n):
    return [json.loads(server.request("/slow?s=0", timeout=10).body)["pid"] for _ in range(n)]


def test_a_worker_due_to_recycle_serves_on_while_the_master_reloads(tmp_path):
    """pm.max_requests = 5, one worker. While the master checks the new configuration and
    re-executes (a few hundred ms; 2 s here), it can replace nobody: a worker that recycled
    then left the pool empty (a reload under load stalled the site for that long). It serves
    on past its limit until the new master retires it."""
    server = slow_check_server(tmp_path, "pm.max_requests = 5")
    try:
        (worker,) = server.wait_idle(1)
        assert served_by(server, 3) == [worker] * 3
        mark = server.mark()
        server.signal(signal.SIGUSR2)
        server.wait_log(r"NOTICE: Reloading in progress \.\.\.$", since=mark)
        assert served_by(server, 8) == [worker] * 8
        server.wait_log(r"NOTICE: ready to handle connections$", SLOW_CHECK_S + 10, since=mark)
        server.wait_log(r"NOTICE: \[pool www\] 1 child\(ren\) of the previous configuration "
                        r"finish their requests and exit$", since=mark)
        harness.wait_for("the old worker to exit", lambda: worker not in server.children(),
                         server=server)
        assert worker not in served_by(server, 3)
    finally:
        server.stop()


def test_after_a_failed_reload_workers_recycle_again(tmp_path):
    """The reload is refused (the new configuration is broken): the workers' recycling,
    held back during the check, applies again."""
    server = slow_check_server(tmp_path, "pm.max_requests = 5")
    try:
        (worker,) = server.wait_idle(1)
        server.conf_path.write_text(server.conf_path.read_text() + "pm.max_children = many\n")
        mark = server.mark()
        server.signal(signal.SIGUSR2)
        server.wait_log(r"reload failed", SLOW_CHECK_S + 10, since=mark)
        pids = served_by(server, 8)
        assert pids[:5] == [worker] * 5 and worker not in pids[5:], pids
    finally:
        server.stop()


def test_old_workers_recycle_as_usual_while_the_new_app_fails_to_load(pyfpm):
    """Held back across the re-exec, the previous workers' recycling applies again once the
    new master sees that the new app cannot load (they serve on meanwhile, for as long as
    it takes the operator, within pm.max_requests as before)."""
    server = pyfpm(workers=1, extra="pm.max_requests = 5")
    (worker,) = server.wait_idle(1)
    server.conf_path.write_text(server.conf_path.read_text().replace(
        "app = wsgi_app:app", "app = no_such_module:app"))
    mark = reload(server)
    server.wait_log(r"could not load the app \(exited with code 69", since=mark)
    answers = [server.request("/slow?s=0", timeout=10) for _ in range(8)]
    by_old = [r for r in answers if r.status == 200 and json.loads(r.body)["pid"] == worker]
    assert len(by_old) == 5, [(r.status, r.body[:60]) for r in answers]
    harness.wait_for("the old worker to recycle", lambda: worker not in server.children(),
                     server=server)


SLOW_LOAD = """import os, sys, time
sys.path.insert(0, %(apps)r)


def slow():
    if not os.path.exists(%(marker)r):
        return False
    if %(first_fast)r:
        try:
            os.close(os.open(%(marker)r + ".first", os.O_CREAT | os.O_EXCL))
            return False
        except FileExistsError:
            pass
    return True


if slow():
    time.sleep(%(seconds)r)
from wsgi_app import app
"""


def slow_load_app(tmp_path, seconds, first_fast=False):
    """The test app as module ``slowload`` in tmp_path, ``seconds`` slower to import once the
    returned marker file exists (``first_fast``: but for the first worker to import it
    then): the new workers of a reload take that long to be ready, and the previous ones
    serve meanwhile."""
    marker = tmp_path / "load-slowly"
    (tmp_path / "slowload.py").write_text(SLOW_LOAD % dict(
        apps=str(APPS), marker=str(marker), first_fast=first_fast, seconds=seconds))
    return marker


def slowest_of_a_burst(port, clients=8, each=10):
    """Seconds of the slowest of ``clients`` x ``each`` GETs through nginx, ``clients`` at
    a time (nginx opens as many connections to the pool and keeps them)."""
    times = []

    def client():
        for _ in range(each):
            r = http_request(port, "GET", "/hello", timeout=10)
            assert r.status == 200, r.status
            times.append(r.seconds)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(times) == clients * each
    return max(times)


def test_requests_on_kept_connections_never_wait_for_a_reload(tmp_path, nginx):
    """fastcgi_keep_conn on. The master checks the new configuration (2 s here), re-executes,
    then the new workers load the app (2 s here). Meanwhile the previous workers serve every
    request on the connections nginx keeps: none waits for the master or the new workers
    (before: a connection shared while the master was away waited for the new master, and
    the previous workers left their places among the sleepers at the exec: 0.3-0.9 s
    without a response per reload under load)."""
    marker = slow_load_app(tmp_path, 2)
    server = slow_check_server(tmp_path, "", workers=2, app="slowload:app",
                               python_path=str(tmp_path))
    try:
        front = nginx(server.address, keep_conn=True)
        server.wait_idle(2)
        # Each burst has nginx open more connections: shared before, during, after the exec.
        assert slowest_of_a_burst(front.port, clients=4) < 1.0
        marker.touch()
        mark = server.mark()
        server.signal(signal.SIGUSR2)
        server.wait_log(r"NOTICE: Reloading in progress \.\.\.$", since=mark)
        during_check = slowest_of_a_burst(front.port, clients=8)
        print("slowest request while the master checked: %.3f s" % during_check)
        assert during_check < 1.0
        assert "reloading: execvp" not in server.log_text()[mark:], "the burst came too late"
        server.wait_log(r"NOTICE: ready to handle connections$", SLOW_CHECK_S + 10, since=mark)
        while_loading = slowest_of_a_burst(front.port, clients=12)
        print("slowest request while the new workers loaded: %.3f s" % while_loading)
        assert while_loading < 1.0
        assert "of the previous configuration finish" not in server.log_text()[mark:], \
            "the burst came too late"
        server.wait_log(r"of the previous configuration finish their requests and exit$",
                        10, since=mark)
        assert slowest_of_a_burst(front.port) < 1.0
    finally:
        server.stop()


def test_a_new_app_that_does_not_load_lifts_the_hold_on_recycling_in_time(tmp_path):
    """The new workers hang importing the app (a database unreachable at import): the
    previous worker serves on past pm.max_requests for RECYCLE_HOLD_MAX (10 s) only, then
    recycles as usual, so that pm.max_memory and pm.max_requests are not lifted for good."""
    marker = slow_load_app(tmp_path, 60)
    config = pyfpm_config(tmp_path, workers=1, extra="pm.max_requests = 5", app="slowload:app",
                          python_path=str(tmp_path))
    server = harness.Server(config, tmp_path).start()
    try:
        (worker,) = server.wait_idle(1)
        marker.touch()
        mark = server.mark()
        server.signal(signal.SIGUSR2)
        server.wait_log(r"NOTICE: ready to handle connections$", 10, since=mark)
        adopted = time.monotonic()
        assert served_by(server, 8) == [worker] * 8
        while worker in server.children():
            assert time.monotonic() - adopted < RECYCLE_HOLD_MAX + 5, "the hold was not lifted"
            assert served_by(server, 1) == [worker]
            time.sleep(0.5)  # its last request answered, it is gone by then
        assert time.monotonic() - adopted > RECYCLE_HOLD_MAX - 1
        assert "of the previous configuration finish" not in server.log_text()[mark:]
    finally:
        server.stop()


def epolls(pid):
    """The epoll instances ``pid`` holds (a descriptor closed while they are counted is
    skipped: the master opens and closes others meanwhile)."""
    count = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            count += os.readlink("/proc/%d/fd/%s" % (pid, fd)) == "anon_inode:[eventpoll]"
        except FileNotFoundError:
            pass
    return count


def test_a_connection_a_new_worker_shares_before_the_hand_over_waits_for_nobody(tmp_path):
    """After the exec the previous workers sleep among the new ones (the pool's table of
    kept connections crosses it) until the hand-over, which waits here for the second new
    worker's import (4 s). A kept connection the first new worker shares meanwhile: its
    next request is answered at once, whichever worker watches (before: it waited for the
    hand-over when a previous worker watched, which watched the previous master's queue).
    Once the previous workers are gone, the master closes their queue."""
    marker = slow_load_app(tmp_path, 4, first_fast=True)
    config = pyfpm_config(tmp_path, workers=2, app="slowload:app", python_path=str(tmp_path))
    server = harness.Server(config, tmp_path).start()

    def pid_of(response):
        assert response.status == 200, (response.status, response.body[:200])
        return json.loads(response.body)["pid"]
    try:
        old = set(server.wait_idle(2))
        with fc.Connection(server.address, timeout=5) as kept:
            assert [kept.request("/slow?s=0").status for _ in range(2)] == [200, 200]
            queues = epolls(server.pid)
            marker.touch()
            mark = reload(server)
            shared, deadline = 0, time.monotonic() + 2.5
            while shared < 5 and time.monotonic() < deadline:
                with fc.Connection(server.address, timeout=5) as conn:
                    if pid_of(conn.request("/slow?s=0")) in old:
                        continue  # a previous worker took it: the test wants a new one's
                    shared += 1  # the pool shares it after its first request
                    time.sleep(0.05)  # the new worker asleep again: a previous one watches
                    conn.sock.settimeout(1)
                    try:
                        pid_of(conn.request("/slow?s=0"))
                    except TimeoutError:
                        pytest.fail("a request on a connection shared by a new worker waited "
                                    "for the hand-over")
            assert shared == 5, "the first new worker took no new connection in 2.5 s"
            assert "of the previous configuration finish" not in server.log_text()[mark:], \
                "the hand-over came too soon"
            server.wait_log(r"of the previous configuration finish their requests and exit$",
                            10, since=mark)
            harness.wait_for("the previous workers to exit and their queue to close",
                             lambda: not old & set(server.children())
                             and epolls(server.pid) == queues, server=server)
            assert kept.request("/slow?s=0").status == 200
    finally:
        server.stop()


def test_a_reload_of_an_ondemand_pool_at_rest_leaves_no_queue_behind(pyfpm):
    """An ondemand pool without a worker (idle timeout) whose kept connection is shared:
    the master watches it alone. After a reload the previous master's queue, which no
    worker watches, is closed at once."""
    server = pyfpm(pm="ondemand", workers=2, extra="pm.process_idle_timeout = 1s")
    with fc.Connection(server.address, timeout=5) as kept:
        assert [kept.request("/slow?s=0").status for _ in range(2)] == [200, 200]
        harness.wait_for("the idle worker to stop", lambda: not server.children(), 10, server)
        queues = epolls(server.pid)
        reload(server)
        assert epolls(server.pid) == queues, "the previous master's queue is still open"
        assert kept.request("/slow?s=0").status == 200
