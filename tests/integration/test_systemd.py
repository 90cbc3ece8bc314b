"""The real master under a fake systemd: sd_notify datagrams on a socket the test binds
(READY, STATUS every systemd_interval, WATCHDOG, RELOADING, STOPPING), socket activation
through LISTEN_FDS, and the shipped unit files."""
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

import harness
from fpm.client import (END_REQUEST, RecordParser, build_params, connect, encode_request,
                        request)
from tests.conftest import find_program, pool_section, pyfpm_config

CONF = Path(__file__).resolve().parents[2] / "conf"

def config(listen="{sock}", interval=1, more="", path="{tmp}"):
    return pyfpm_config(listen=listen, app="testapp:app", python_path=path, mode="",
                        log_level="", global_="error_log = stderr\nsystemd_interval = %s"
                        % interval, extra=more)


APP = """\
import os

def app(environ, start_response):
    body = b"pid %d" % os.getpid()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

STATUS = re.compile(r"STATUS=Processes active: (\d+), idle: (\d+), Requests: (\d+), slow: (\d+), "
                    r"Traffic: ([0-9.e+-]+)req/sec")


class Systemd:
    """The notify socket: ``NOTIFY_SOCKET`` for the master, datagrams with arrival times."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    @property
    def env(self) -> dict:
        return {"NOTIFY_SOCKET": str(self.path)}

    def next(self, timeout: float = 10.0) -> tuple[float, str]:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            raise AssertionError("no datagram from pyfpm within %g s" % timeout) from None
        return time.monotonic(), data.decode()

    def collect(self, seconds: float) -> list[tuple[float, str]]:
        """Every datagram arriving in the next ``seconds``."""
        end = time.monotonic() + seconds
        got = []
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append((time.monotonic(), self.sock.recv(4096).decode()))
            except socket.timeout:
                break
        return got

    def drain(self) -> list[str]:
        """The datagrams already queued."""
        self.sock.setblocking(False)
        got = []
        try:
            while True:
                got.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return got

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(tmp_path):
    s = Systemd(tmp_path / "notify")
    yield s
    s.close()


def make_server(tmp_path, *, interval=1, listen="{sock}", more="", env=None, cls=None, **kw):
    (tmp_path / "testapp.py").write_text(APP)
    return (cls or harness.Server)(config(listen, interval, more), tmp_path, env=env, **kw)


@pytest.fixture
def served(tmp_path, systemd):
    servers = []

    def start(**kw):
        server = make_server(tmp_path, env=systemd.env, **kw)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


# --- notify ------------------------------------------------------------------------------

def test_ready_once_the_workers_are_forked(tmp_path, systemd):
    server = make_server(tmp_path, env=systemd.env)
    try:
        server.start(wait_ready=False)
        _, message = systemd.next()
        # Checked the moment READY arrives: systemd may route traffic from now on.
        assert len(server.children()) == 2, "READY=1 before the workers were forked"
        assert message == "READY=1\nSTATUS=Ready to handle connections\nMAINPID=%d" % server.pid
        server.wait_log(r"NOTICE: ready to handle connections$")
        server.wait_log(r"NOTICE: systemd monitor interval set to 1000ms$")
        assert server.request("/").status == 200
    finally:
        server.stop()


def test_status_every_interval_in_php_fpm_words(served, systemd):
    server = served()
    systemd.next()  # READY
    server.wait_idle(2)
    systemd.drain()
    first = systemd.collect(3.5)
    assert 3 <= len(first) <= 4, first
    assert all(STATUS.fullmatch(m) for _, m in first), first
    gaps = [b[0] - a[0] for a, b in zip(first, first[1:])]
    assert all(0.8 < gap < 1.5 for gap in gaps), gaps
    assert STATUS.fullmatch(first[-1][1]).groups()[:3] == ("0", "2", "0")

    for _ in range(3):
        assert server.request("/").status == 200
    later = systemd.collect(2.5)
    counts = [STATUS.fullmatch(m).groups() for _, m in later]
    assert counts[-1][:3] == ("0", "2", "3"), later
    # Traffic is requests per second over each interval: together, the three requests.
    assert sum(float(c[4]) for c in counts) == pytest.approx(3.0), later


def test_interval_zero_disables_status(served, systemd):
    server = served(interval=0)
    assert systemd.next()[1].startswith("READY=1\n")
    server.wait_log(r"NOTICE: systemd monitor disabled$")
    assert systemd.collect(1.5) == []


def test_watchdog_at_half_its_period(tmp_path, systemd):
    env = dict(systemd.env, WATCHDOG_USEC="2000000")
    with make_server(tmp_path, interval=5, env=env) as server:
        systemd.next()  # READY
        server.wait_log(r"NOTICE: systemd watchdog configured to 1sec$")
        assert "WARNING: systemd_interval option ignored\n" in server.log_text()
        messages = [m for _, m in systemd.collect(2.6)]
    assert messages.count("WATCHDOG=1") >= 2, messages
    assert sum(1 for m in messages if STATUS.fullmatch(m)) >= 2, messages


@pytest.mark.parametrize("sig, word", [(signal.SIGTERM, "Terminating"), (signal.SIGQUIT, "Finishing")])
def test_stopping(served, systemd, sig, word):
    server = served(interval=0)
    systemd.next()  # READY
    server.signal(sig)
    assert systemd.next(5)[1] == "STOPPING=1"
    assert server.wait_exit() == 0
    assert "NOTICE: %s ...\n" % word in server.log_text()


def test_reload_says_reloading_then_ready_with_the_same_pid(served, systemd):
    server = served(interval=0)
    systemd.next()  # READY
    server.wait_idle(2)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    server.signal(signal.SIGUSR2)
    _, reloading = systemd.next(5)
    m = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", reloading)
    assert m and int(m[1]) >= before, reloading
    _, ready = systemd.next(10)
    assert ready == "READY=1\nSTATUS=Ready to handle connections\nMAINPID=%d" % server.pid
    assert server.request("/").status == 200


def test_without_notify_socket_nothing_about_systemd(tmp_path):
    with make_server(tmp_path) as server:
        server.wait_idle(2)
        time.sleep(1.2)  # past one systemd_interval
        assert "systemd" not in server.log_text()


# --- socket activation ---------------------------------------------------------------------

def listening(kind: str, tmp_path: Path) -> tuple[socket.socket, str]:
    """A listening socket as systemd would bind it, and the pool ``listen`` naming it."""
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(tmp_path / "activated.sock"))
        address = str(tmp_path / "activated.sock")
    else:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        address = "127.0.0.1:%d" % sock.getsockname()[1]
    sock.listen()
    return sock, address


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_socket_activation(tmp_path, systemd, kind):
    activated, address = listening(kind, tmp_path)
    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    spare.listen()
    own = tmp_path / "own.sock"
    more = pool_section("own", listen=own, workers=1, mode="", app="testapp:app",
                        python_path=tmp_path)
    server = make_server(tmp_path, listen=address, more=more, env=systemd.env,
                         cls=harness.ActivatedServer, sockets=[activated, spare], names=["www", "spare"])
    try:
        server.start()
        text = server.log_text()
        assert 'NOTICE: [pool www] using inherited socket fd=3, "%s" from systemd\n' % address in text
        assert "NOTICE: [pool own] systemd passed no socket for '%s'; binding it\n" % own in text
        assert ('WARNING: systemd passed socket fd=4 "spare" (127.0.0.1:%d), which no pool '
                'listens on; closed\n' % spare.getsockname()[1]) in text
        assert systemd.next()[1].startswith("READY=1\n")
        response = request(address, "/")
        assert response.status == 200 and int(response.body.split()[1]) in server.children()
        assert request(str(own), "/").status == 200
        # A reload re-executes the master with the same pid: it must keep serving on the
        # socket without taking LISTEN_* (which still name that pid) a second time.
        mark = server.mark()
        server.signal(signal.SIGUSR2)
        assert systemd.next()[1].startswith("RELOADING=1\n")
        assert systemd.next()[1].startswith("READY=1\n")
        after = server.log_text()[mark:]
        assert "from systemd" not in after and "systemd passed" not in after, after
        assert request(address, "/").status == 200
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
    finally:
        server.stop()
        spare.close()
    if kind == "unix":
        # The socket belongs to systemd, which keeps listening on it for the next start.
        assert os.path.exists(address), "pyfpm removed systemd's socket file"
    assert not own.exists()
    activated.close()


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_a_quit_leaves_systemds_socket_listening_with_its_queue(tmp_path, systemd, kind):
    """systemctl restart of a socket-activated service: QUIT, then the next start. The
    finishing master stops listening on its own sockets only: systemd's goes on queueing,
    and what came while no master ran is answered by the next one, none refused."""
    activated, address = listening(kind, tmp_path)
    first = make_server(tmp_path, listen=address, env=systemd.env, cls=harness.ActivatedServer,
                        sockets=[activated], names=["www"])
    waiting = []
    try:
        first.start()
        assert request(address, "/").status == 200
        first.signal(signal.SIGQUIT)
        assert first.wait_exit() == 0
        for _ in range(3):
            conn = connect(address, 5)
            conn.sendall(encode_request(build_params("/")))
            waiting.append(conn)
        second = make_server(tmp_path, listen=address, env=systemd.env, cls=harness.ActivatedServer,
                             sockets=[activated], names=["www"])
        try:
            second.start()
            for conn in waiting:
                records = RecordParser()
                got = []
                while not got or got[-1][0] != END_REQUEST:
                    data = conn.recv(65536)
                    assert data, "the connection was closed before its response"
                    got += records.feed(data)
                assert got[0][2].startswith(b"Status: 200"), got
        finally:
            second.stop()
    finally:
        first.stop()
        for conn in waiting:
            conn.close()
        activated.close()


# --- the shipped units ---------------------------------------------------------------------

def unit_commands(name: str, key: str) -> list[list[str]]:
    lines = (CONF / name).read_text().splitlines()
    return [shlex.split(line.split("=", 1)[1]) for line in lines if line.startswith(key + "=")]


def test_unit_commands_are_accepted_by_pyfpm(tmp_path):
    """ExecStart= and the ExecReload= test run as written (binary and config swapped)."""
    (tmp_path / "testapp.py").write_text(APP)
    conf = tmp_path / "pyfpm.conf"
    conf.write_text(config(tmp_path / "s.sock", 10, path=tmp_path))
    [start] = unit_commands("pyfpm.service", "ExecStart")
    test, kill = unit_commands("pyfpm.service", "ExecReload")
    assert kill == ["/bin/kill", "-USR2", "$MAINPID"]
    assert "--nodaemonize" in start and "--daemonize" not in start
    for argv in (start + ["--test"], test):
        args = [str(conf) if a == "/etc/pyfpm/pyfpm.conf" else a for a in argv[1:]]
        out = harness.run_fpm(*args)
        assert out.returncode == 0, (argv, out.stderr)
        assert "configuration file %s test is successful" % conf in out.stderr


def test_shipped_units_pass_systemd_analyze(tmp_path):
    analyze = find_program("systemd-analyze")
    binary = tmp_path / "pyfpm"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    for name in ("pyfpm.service", "pyfpm.socket"):
        text = (CONF / name).read_text().replace("/opt/pyfpm/bin/pyfpm", str(binary))
        (tmp_path / name).write_text(text)
    out = subprocess.run([analyze, "verify", str(tmp_path / "pyfpm.socket"),
                          str(tmp_path / "pyfpm.service")], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr
