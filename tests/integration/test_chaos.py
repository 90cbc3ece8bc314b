"""Chaos under load (issue 14's reliability suite): faults injected while wrk loads a pool
through real nginx (fastcgi_keep_conn off, loopback): workers killed (SIGKILL) or stopped
(SIGSTOP), apps that segfault or exit, leaks recycled by pm.max_memory, workers out of
descriptors, a full log disk,
the master killed and restarted on its socket, reloads to good and broken configurations.
Each asserts that nothing fails but the request a killed worker had in hand, and prints
its figures (bench/README.md, "Chaos under load", records a run):

    chaos <fault>: <faults> faults, <requests> requests, <failed> failed
"""

import os
import random
import re
import signal
import time

import pytest

import harness
import load
from tests.conftest import find_program, http_request, pyfpm_config

LOAD_SECONDS = 4
CONNECTIONS = 8
WORKERS = 4

# What nginx logs for the request of a worker that died under it.
DIED_UNDER = [r"upstream prematurely closed connection",
              r"(recv|writev)\(\) failed \((104: Connection reset by peer|32: Broken pipe)\)"]


def config(listen="{sock}", global_="", pool=""):
    return pyfpm_config(listen=listen, workers=WORKERS, app="fault_app:app", global_=global_,
                        extra=pool)


class Load:
    """wrk -c CONNECTIONS on ``path`` through ``front`` for ``seconds``; killed on exit."""

    def __init__(self, front, path="/pid", seconds=LOAD_SECONDS, connections=CONNECTIONS):
        self.seconds = seconds
        self.proc = load.start_wrk(find_program("wrk"), front.port, path, seconds, connections)
        self.started = time.monotonic()

    def running(self, margin=1.0) -> bool:
        """True while the load has more than ``margin`` seconds to go."""
        return time.monotonic() - self.started < self.seconds - margin

    def finish(self) -> load.WrkResult:
        return load.finish(self.proc, timeout=self.seconds + 30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def report(fault: str, faults: int, result: load.WrkResult, failed: int | None = None) -> int:
    failed = result.failures if failed is None else failed
    print("chaos %s: %d faults, %d requests, %d failed" % (fault, faults, result.requests, failed))
    assert result.requests > 100, result.text
    return failed


def upstream_errors(front) -> list[str]:
    return [line for line in front.error_log().splitlines() if "[error]" in line]


def back_to_full_strength(server, timeout=15.0):
    """The pool is whole again: every worker idle, none held back."""
    server.wait_idle(WORKERS, timeout=timeout)
    assert "next spawn in" not in server.log_text()


@pytest.fixture
def pool(pyfpm, nginx):
    """pyfpm (fault_app, WORKERS workers) behind nginx; returns (front, server)."""
    def start(**kwargs):
        server = pyfpm(config(**kwargs))
        front = nginx(server.address)
        server.wait_idle(WORKERS)
        return front, server
    return start


# --- workers ---------------------------------------------------------------------------------

def test_workers_killed_lose_only_the_request_in_hand(pool):
    front, server = pool()
    front.expected_errors += DIED_UNDER
    seen: dict[int, float] = {}
    kills = 0
    with Load(front, seconds=6) as run:  # 5 kills at least, each of a settled worker
        while run.running():
            time.sleep(0.4)
            now = time.monotonic()
            for pid in server.children():
                seen.setdefault(pid, now)
            # Settled ones only: a worker killed while it starts holds its pool back.
            settled = [pid for pid in server.children() if now - seen[pid] > 0.5]
            if settled:
                os.kill(random.choice(settled), signal.SIGKILL)
                kills += 1
        result = run.finish()
    failed = report("worker SIGKILL", kills, result)
    assert kills >= 5
    assert failed <= kills, result.text
    assert len(upstream_errors(front)) <= kills
    back_to_full_strength(server)


def test_workers_stopped_and_continued_delay_but_lose_nothing(pool):
    front, server = pool()
    stops = 0
    with Load(front, seconds=6) as run:  # two stops
        time.sleep(0.5)
        while run.running(2.5):
            victim = random.choice(server.children())
            os.kill(victim, signal.SIGSTOP)
            stops += 1
            time.sleep(1.5)
            os.kill(victim, signal.SIGCONT)
            time.sleep(0.3)
        result = run.finish()
    assert report("worker SIGSTOP 1.5 s", stops, result) == 0, result.text
    assert stops >= 2
    assert upstream_errors(front) == []


@pytest.mark.parametrize("route", ["/segfault", "/exit"])
def test_apps_that_crash_lose_only_the_crashing_request(pool, route):
    """Each crash takes its worker and its own request (nginx: 502), and nothing else."""
    front, server = pool()
    front.expected_errors += DIED_UNDER
    crashes = []
    with Load(front) as run:
        while run.running():
            time.sleep(0.5)
            crashes.append(http_request(front.port, "GET", route, timeout=10).status)
        result = run.finish()
    report("app %s" % route.lstrip("/"), len(crashes), result,
           result.failures + crashes.count(502))
    assert crashes == [502] * len(crashes)
    assert result.failures == 0, result.text
    assert len(upstream_errors(front)) == len(crashes)
    back_to_full_strength(server)


def test_leaking_workers_recycled_by_max_memory_lose_nothing(pool):
    front, server = pool(pool="pm.max_memory = 48M")
    with Load(front, "/leak?mb=2") as run:
        result = run.finish()
    recycled = server.log_text().count("exceeds pm.max_memory")
    assert report("pm.max_memory recycling", recycled, result) == 0, result.text
    assert recycled >= WORKERS
    back_to_full_strength(server)


def test_workers_out_of_descriptors_lose_nothing(pool):
    """Every 0.5 s a request makes its worker's app take all its free descriptors for a
    second: that worker's accept() fails with EMFILE meanwhile, it pauses accepting, and
    the connections go to the others."""
    front, server = pool(pool="rlimit_files = 64")
    pids = server.children()
    bursts = []
    with Load(front) as run:
        while run.running():
            time.sleep(0.5)
            bursts.append(http_request(front.port, "GET", "/fds?s=1", timeout=10).status)
        result = run.finish()
    assert report("workers out of descriptors", len(bursts), result) == 0, result.text
    assert bursts == [200] * len(bursts)
    assert upstream_errors(front) == []
    server.wait_log(r"WARNING: \[pool www\] workers could not accept connections: Too many "
                    r"open files \(EMFILE\)")
    assert server.children() == pids, "no worker died"


def test_a_full_log_disk_loses_nothing(pyfpm, nginx, tmp_path):
    """Every log the pool has on a device that is always full (ENOSPC): the error log, the
    access log, the app's captured output and wsgi.errors."""
    server = harness.Server(config(global_="error_log = /dev/full",
                                   pool="access.log = /dev/full\ncatch_workers_output = yes\n"
                                        "wsgi_errors = log"), tmp_path, flags=("-F",))
    try:
        server.start(wait_ready=False)
        server.wait_idle(WORKERS, timeout=10)
        front = nginx(server.address)
        with Load(front, "/log") as run:
            result = run.finish()
        # Three lines a request (wsgi.errors, stderr, stdout) and its access line.
        assert report("log disk full", 4 * result.requests, result) == 0, result.text
        assert server.children() and server.proc.poll() is None
    finally:
        server.stop()


# --- the master ------------------------------------------------------------------------------

def test_a_killed_master_restarted_on_its_socket_loses_only_the_requests_in_hand(tmp_path,
                                                                                  nginx):
    """With the listening socket held outside the master (systemd socket activation),
    connections wait in its queue while the master is down: a SIGKILL costs the requests
    its workers had in hand (they die with it: 503 before a response began), no more."""
    sock, address = _held_socket()
    front = nginx(address)
    front.expected_errors += DIED_UNDER
    servers = []

    def start():
        server = harness.ActivatedServer(config(listen=address), tmp_path / str(len(servers)),
                                         sockets=[sock], names=["www"])
        servers.append(server)
        return server.start()

    try:
        for n in range(2):
            (tmp_path / str(n)).mkdir()
        first = start()
        first.wait_idle(WORKERS)
        with Load(front) as run:
            time.sleep(2)
            os.kill(first.pid, signal.SIGKILL)
            first.proc.wait(5)
            second = start()
            result = run.finish()
        failed = report("master SIGKILL + restart", 1, result)
        assert failed <= WORKERS, result.text
        second.wait_idle(WORKERS)
    finally:
        for server in servers:
            server.stop()
        sock.close()


def _held_socket():
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    return sock, "127.0.0.1:%d" % sock.getsockname()[1]


BROKEN = [
    ("a NUL in env[]", lambda text: text + "env[TOKEN] = a\0b\n"),
    ("a pid file in a missing directory",
     lambda text: text.replace("[global]\n", "[global]\npid = /nonexistent/dir/fpm.pid\n")),
    ("a syntax error", lambda text: text + "pm.max_children\n"),
]


def test_reloads_to_good_and_broken_configurations_lose_nothing(pyfpm, nginx):
    """Item 8's measure: USR2s under wrk -c16 through nginx, 0 non-2xx and no upstream
    error in nginx's log; the broken ones are refused while the current one serves."""
    server = pyfpm(config())
    front = nginx(server.address)
    server.wait_idle(WORKERS)
    master, good = server.pid, server.conf_path.read_text()
    reloads = refused = 0
    with Load(front, seconds=14, connections=16) as run:
        time.sleep(0.5)
        for name, breaks in [(None, None)] + [b for pair in zip(BROKEN, [(None, None)] * 3)
                                              for b in pair]:
            server.conf_path.write_text(good if breaks is None else breaks(good))
            mark = server.mark()
            server.signal(signal.SIGUSR2)
            if breaks is None:
                server.wait_log(r"NOTICE: \[pool www\] \d child\(ren\) of the previous "
                                r"configuration finish", 15, since=mark)
                reloads += 1
            else:
                server.wait_log(r"ERROR: reload failed: ", 15, since=mark)
                refused += 1
            time.sleep(0.5)
        assert run.running(0), "the reloads took longer than the load"
        result = run.finish()
    assert report("reload (%d done, %d refused)" % (reloads, refused), reloads + refused,
                  result) == 0, result.text
    assert upstream_errors(front) == []
    assert server.pid == master
    assert not re.search(r"exited on signal|exited with code [1-9]", server.log_text())
