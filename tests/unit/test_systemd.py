"""fpm.systemd: the interval rules and their log lines, the STATUS text, LISTEN_* parsing,
matching activated sockets to pools, and sd_notify datagrams on real AF_UNIX sockets."""
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import fpm
from fpm import systemd
from fpm.log import Logger

PID = 4242
ROOT = str(Path(fpm.__file__).resolve().parent.parent)


# --- interval ------------------------------------------------------------------------------

def test_interval_default_is_ten_seconds():
    assert systemd.interval({}, None, PID) == (
        10.0, False, [("notice", "systemd monitor interval set to 10000ms")])
    assert systemd.interval({}, 10, PID)[0] == 10.0


def test_interval_configured_and_disabled():
    assert systemd.interval({}, 3, PID) == (
        3.0, False, [("notice", "systemd monitor interval set to 3000ms")])
    assert systemd.interval({}, 0, PID) == (None, False, [("notice", "systemd monitor disabled")])


def test_watchdog_wins_at_half_its_period():
    env = {"WATCHDOG_USEC": "30000000"}
    assert systemd.interval(env, None, PID) == (
        15.0, True, [("notice", "systemd watchdog configured to 15sec")])
    # The default value cannot be told from an explicit 10, so it draws no warning.
    assert systemd.interval(env, 10, PID)[2] == [("notice", "systemd watchdog configured to 15sec")]
    assert systemd.interval({"WATCHDOG_USEC": "3000000"}, 0, PID) == (
        1.5, True, [("notice", "systemd watchdog configured to 1.5sec")])


def test_configured_interval_is_ignored_under_a_watchdog():
    seconds, watchdog, messages = systemd.interval({"WATCHDOG_USEC": "20000000"}, 5, PID)
    assert (seconds, watchdog) == (10.0, True)
    assert messages == [("warning", "systemd_interval option ignored"),
                        ("notice", "systemd watchdog configured to 10sec")]


def test_short_watchdog_is_served_unlike_php_fpm():
    # PHP-FPM ignores WatchdogSec <= 2 s and is then killed by systemd; we ping at 0.5 s.
    assert systemd.interval({"WATCHDOG_USEC": "1000000"}, None, PID)[:2] == (0.5, True)


def test_watchdog_for_another_pid_is_not_ours():
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "99"}
    seconds, watchdog, messages = systemd.interval(env, 2, PID)
    assert (seconds, watchdog) == (2.0, False)
    assert messages == [
        ("warning", "WATCHDOG_USEC is meant for pid 99, not this master (4242); "
                    "the systemd watchdog is not served"),
        ("notice", "systemd monitor interval set to 2000ms")]
    env["WATCHDOG_PID"] = str(PID)
    assert systemd.interval(env, 2, PID)[:2] == (15.0, True)


@pytest.mark.parametrize("value", ["0", "", "abc", "-5"])
def test_unusable_watchdog_usec_is_ignored(value):
    assert systemd.interval({"WATCHDOG_USEC": value}, 4, PID)[:2] == (4.0, False)


# --- status line ---------------------------------------------------------------------------

def test_status_line_in_php_fpm_words():
    assert systemd.status_line(2, 3, 150, 1, 100, 10.0) == \
        "Processes active: 2, idle: 3, Requests: 150, slow: 1, Traffic: 5req/sec"


def test_status_line_traffic_uses_three_significant_digits():
    assert systemd.status_line(0, 5, 1, 0, 0, 3.0).endswith("Traffic: 0.333req/sec")
    assert systemd.status_line(0, 5, 123456, 0, 0, 10.0).endswith("Traffic: 1.23e+04req/sec")
    assert systemd.status_line(0, 5, 7, 0, 7, 1.0).endswith("Traffic: 0req/sec")


# --- LISTEN_* ------------------------------------------------------------------------------

def test_listen_fds_counts_from_three():
    env = {"LISTEN_PID": str(PID), "LISTEN_FDS": "3"}
    assert systemd.listen_fds(env, PID) == [3, 4, 5]


def test_listen_fds_for_another_process_or_absent():
    assert systemd.listen_fds({"LISTEN_PID": "1", "LISTEN_FDS": "2"}, PID) == []
    assert systemd.listen_fds({"LISTEN_FDS": "2"}, PID) == []
    assert systemd.listen_fds({"LISTEN_PID": str(PID)}, PID) == []


@pytest.mark.parametrize("env", [{"LISTEN_PID": "x", "LISTEN_FDS": "1"},
                                 {"LISTEN_PID": str(PID), "LISTEN_FDS": "-1"}])
def test_listen_fds_malformed(env):
    with pytest.raises(ValueError):
        systemd.listen_fds(env, PID)


def test_fd_names():
    assert systemd.fd_names({"LISTEN_FDNAMES": "www:api"}, 2) == ["www", "api"]
    assert systemd.fd_names({}, 2) == ["unknown", "unknown"]
    assert systemd.fd_names({"LISTEN_FDNAMES": "www"}, 2) == ["unknown", "unknown"]


def test_forget_listen_env_keeps_the_rest():
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x", "NOTIFY_SOCKET": "/n",
           "WATCHDOG_USEC": "5"}
    systemd.forget_listen_env(env)
    assert env == {"NOTIFY_SOCKET": "/n", "WATCHDOG_USEC": "5"}


# --- matching sockets to pools -------------------------------------------------------------

INET, INET6, UNIX = socket.AF_INET, socket.AF_INET6, socket.AF_UNIX


def test_match_tcp_and_unix(tmp_path):
    sock = str(tmp_path / "www.sock")
    fds = [(3, INET, ("127.0.0.1", 9000)), (4, UNIX, sock), (5, INET6, ("::1", 9001, 0, 0))]
    match = systemd.match_listeners(fds, [("api", "127.0.0.1:9000"), ("www", sock),
                                          ("v6", "[::1]:9001")])
    assert match.by_pool == {"api": 3, "www": 4, "v6": 5}
    assert match.unused == [] and match.missing == []


def test_match_bare_port_takes_any_address_of_that_port():
    pools = [("www", "9000")]
    assert systemd.match_listeners([(3, INET6, ("::", 9000, 0, 0))], pools).by_pool == {"www": 3}
    assert systemd.match_listeners([(3, INET, ("0.0.0.0", 9000))], pools).by_pool == {"www": 3}
    other = systemd.match_listeners([(3, INET, ("127.0.0.1", 9000))], pools)
    assert other.by_pool == {} and other.unused == [3] and other.missing == ["www"]


def test_match_ipv6_any_and_spelling():
    fds = [(3, INET6, ("::", 9000, 0, 0)), (4, INET6, ("::1", 9001, 0, 0))]
    match = systemd.match_listeners(fds, [("a", "[::]:9000"), ("b", "[0:0::1]:9001")])
    assert match.by_pool == {"a": 3, "b": 4}


def test_match_needs_the_same_port_and_host():
    fds = [(3, INET, ("127.0.0.1", 9001)), (4, INET, ("127.0.0.2", 9000))]
    match = systemd.match_listeners(fds, [("www", "127.0.0.1:9000")])
    assert match.by_pool == {} and match.unused == [3, 4] and match.missing == ["www"]


def test_match_unix_path_through_a_symlinked_directory(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    match = systemd.match_listeners([(3, UNIX, str(tmp_path / "real" / "s"))],
                                    [("www", str(tmp_path / "link" / "s"))])
    assert match.by_pool == {"www": 3}


def test_match_hostname():
    match = systemd.match_listeners([(3, INET, ("127.0.0.1", 9000))], [("www", "localhost:9000")])
    assert match.by_pool == {"www": 3}


def test_match_leftovers_abstract_and_duplicates(tmp_path):
    fds = [(3, UNIX, b"\0abstract"), (4, INET, ("127.0.0.1", 9000)),
           (5, INET, ("127.0.0.1", 9000)), (6, UNIX, str(tmp_path / "nobody.sock"))]
    pools = [("first", "127.0.0.1:9000"), ("second", "127.0.0.1:9000"),
             ("own", str(tmp_path / "own.sock"))]
    match = systemd.match_listeners(fds, pools)
    assert match.by_pool == {"first": 4}
    assert match.unused == [3, 5, 6]
    assert match.missing == ["second", "own"]


def test_match_ignores_an_unparsable_listen():
    match = systemd.match_listeners([(3, INET, ("127.0.0.1", 9000))], [("www", "1.2.3.4:0")])
    assert match.missing == ["www"] and match.unused == [3]


# --- adopt_sockets, in a child whose fds 3.. are what systemd would pass -------------------

ADOPT = textwrap.dedent("""\
    import fcntl, json, os, socket, sys
    from types import SimpleNamespace
    from fpm import systemd
    from fpm.log import Logger
    tmp, mode = sys.argv[1], sys.argv[2]
    def unix(name):
        s = socket.socket(socket.AF_UNIX)
        s.bind(os.path.join(tmp, name))
        s.listen()
        return s
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pipe_r, pipe_w = os.pipe()
    port = tcp.getsockname()[1]
    passed = [s.detach() for s in (unix("www.sock"), tcp, unix("other.sock"), udp)] + [pipe_r]
    os.close(pipe_w)
    # Move them to 3, 4, ... as systemd would pass them, inheritable as systemd leaves them.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in passed]
    for fd in passed:
        os.close(fd)
    for i, fd in enumerate(high):
        os.dup2(fd, 3 + i, inheritable=True)
        os.close(fd)
    os.environ.update(LISTEN_PID=str(os.getpid()) if mode == "ours" else "1",
                      LISTEN_FDS=str(len(passed)),
                      LISTEN_FDNAMES="www:api:other:udp:pipe")
    pools = [SimpleNamespace(name="www", listen=(os.path.join(tmp, "www.sock"),)),
             SimpleNamespace(name="api", listen=("127.0.0.1:%d" % port,)),
             SimpleNamespace(name="admin", listen=(os.path.join(tmp, "admin.sock"),))]
    adopted = systemd.adopt_sockets(pools, Logger("stderr"))
    def is_open(fd):
        try:
            os.fstat(fd)
            return True
        except OSError:
            return False
    print(json.dumps({
        "port": port,
        "adopted": {name: [s.fileno(), s.getblocking(), os.get_inheritable(s.fileno())]
                    for name, s in adopted.items()},
        "open": [fd for fd in range(3, 8) if is_open(fd)],
        "env": sorted(k for k in os.environ if k.startswith("LISTEN_")),
    }))
    """)


def run_adopt(tmp_path, mode):
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", ADOPT, str(tmp_path), mode], capture_output=True,
                         text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), [re.sub(r"^\[[^]]+\] ", "", line)
                                    for line in out.stderr.splitlines()]


def test_adopt_sockets(tmp_path):
    result, log = run_adopt(tmp_path, "ours")
    # Adopted sockets keep their fd, do not block, and are close-on-exec like pyfpm's own.
    port = result["port"]
    www = tmp_path / "www.sock"
    # By the listen address each stands for (a pool may have several).
    assert result["adopted"] == {str(www): [3, False, False],
                                 "127.0.0.1:%d" % port: [4, False, False]}
    # The unused, the non-stream and the non-socket fds are closed; nothing leaks to workers.
    assert result["open"] == [3, 4]
    assert result["env"] == []
    assert log == [
        'WARNING: systemd passed socket fd=6 "udp", which is not a listening stream socket '
        '(Accept=yes is not supported); closed',
        'WARNING: systemd passed fd=7 "pipe", which is not a socket: '
        'Socket operation on non-socket (88)',
        'WARNING: systemd passed socket fd=5 "other" (%s), which no pool listens on; closed'
        % (tmp_path / "other.sock"),
        'NOTICE: [pool www] using inherited socket fd=3, "%s" from systemd' % www,
        'NOTICE: [pool api] using inherited socket fd=4, "127.0.0.1:%d" from systemd' % port,
        "NOTICE: [pool admin] systemd passed no socket for '%s'; binding it"
        % (tmp_path / "admin.sock"),
    ]
    # Closing our copy of an unused unix socket leaves its file to systemd.
    assert (tmp_path / "other.sock").exists()


def test_adopt_sockets_meant_for_another_process(tmp_path):
    result, log = run_adopt(tmp_path, "theirs")
    assert result["adopted"] == {} and log == []
    assert result["env"] == [], "LISTEN_* must not reach a re-exec'd master"


# --- Notifier against real datagram sockets ------------------------------------------------

class Capture:
    """A Logger writing to a file, read back without timestamps."""

    def __init__(self, tmp_path):
        self.path = tmp_path / "log"
        self.log = Logger(str(self.path), "debug")

    def lines(self):
        text = self.path.read_text() if self.path.exists() else ""
        return [re.sub(r"^\[[^]]+\] ", "", line) for line in text.splitlines()]


@pytest.fixture
def receiver(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    yield sock, str(tmp_path / "notify")
    sock.close()


@pytest.fixture
def abstract_receiver():
    name = "pyfpm-test-%s" % uuid.uuid4().hex
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    yield sock, "@" + name
    sock.close()


def exchange(receiver, tmp_path, call):
    sock, address = receiver
    capture = Capture(tmp_path)
    notifier = systemd.Notifier.from_env({"NOTIFY_SOCKET": address}, capture.log)
    assert call(notifier) is True
    return sock.recv(4096).decode(), capture


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_ready_datagram(kind, receiver, abstract_receiver, tmp_path):
    chosen = receiver if kind == "path" else abstract_receiver
    message, capture = exchange(chosen, tmp_path, lambda n: n.ready())
    assert message == "READY=1\nSTATUS=Ready to handle connections\nMAINPID=%d" % os.getpid()
    assert capture.lines() == ["DEBUG: have notify start to systemd"]


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_status_stopping_watchdog_datagrams(kind, receiver, abstract_receiver, tmp_path):
    chosen = receiver if kind == "path" else abstract_receiver
    line = systemd.status_line(1, 4, 10, 0, 0, 10.0)
    assert exchange(chosen, tmp_path, lambda n: n.status(line))[0] == "STATUS=" + line
    assert exchange(chosen, tmp_path, lambda n: n.stopping())[0] == "STOPPING=1"
    assert exchange(chosen, tmp_path, lambda n: n.watchdog())[0] == "WATCHDOG=1"


def test_reloading_datagram_carries_the_monotonic_clock(receiver, tmp_path):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message, _ = exchange(receiver, tmp_path, lambda n: n.reloading())
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    m = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", message)
    assert m and before <= int(m[1]) <= after


def test_from_env_without_or_with_a_bad_socket(tmp_path):
    capture = Capture(tmp_path)
    assert systemd.Notifier.from_env({}, capture.log) is None
    assert systemd.Notifier.from_env({"NOTIFY_SOCKET": ""}, capture.log) is None
    assert capture.lines() == []
    assert systemd.Notifier.from_env({"NOTIFY_SOCKET": "relative/sock"}, capture.log) is None
    assert capture.lines() == ["WARNING: NOTIFY_SOCKET 'relative/sock' is neither an absolute "
                               "path nor an abstract '@name'; not notifying systemd"]


def test_failed_sends_warn_once_per_outage(tmp_path):
    capture = Capture(tmp_path)
    path = tmp_path / "gone"
    notifier = systemd.Notifier.from_env({"NOTIFY_SOCKET": str(path)}, capture.log)
    assert notifier.ready() is False
    assert notifier.status("x") is False  # no second warning for the same outage
    assert capture.lines() == ["WARNING: failed to notify start to systemd: "
                               "No such file or directory (2)"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        assert notifier.status("back") is True
        assert sock.recv(100) == b"STATUS=back"
    finally:
        sock.close()
    os.unlink(path)
    assert notifier.stopping() is False  # a new outage: warned again
    assert capture.lines()[1:] == ["WARNING: failed to notify stop to systemd: "
                                   "No such file or directory (2)"]


def test_a_full_systemd_queue_does_not_hang_the_master(receiver, tmp_path, monkeypatch):
    monkeypatch.setattr(systemd, "SEND_TIMEOUT", 0.2)
    sock, address = receiver
    capture = Capture(tmp_path)
    notifier = systemd.Notifier.from_env({"NOTIFY_SOCKET": address}, capture.log)
    start = time.monotonic()
    sent = 0
    while notifier.status("x" * 1000):  # nobody reads: systemd's queue fills up
        sent += 1
        assert time.monotonic() - start < 10
    assert sent > 0
    assert time.monotonic() - start < 2, "the send did not give up after SEND_TIMEOUT"
    assert capture.lines() == ["WARNING: failed to notify status to systemd: timed out"]
