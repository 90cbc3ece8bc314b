"""Pools stay apart (issue 14): a worker holds no descriptor but those its pool needs, never
the error log; it leads a session of its own, so it can SIGCONT neither another pool's
workers nor the master; its lines reach the log through the master, which makes each one
unmistakably that worker's. Two pools, each with its own user, in a real master as root.
"""
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

import harness
from fpm import client
from harness import wait_for
from tests.conftest import APPS, make_account, pool_section, pyfpm_config

STAMP = r"\[\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}:\d{2}\] "

# Pool a on TCP with a status address, a slowlog and captured output; pool b on a unix
# socket. harness.Server fills in the users, the app's directory and the log level.
CONFIG = pyfpm_config(
    log_level="{log_level}", global_="error_log = {tmp}/error.log", pool="a",
    listen="127.0.0.1:{port}", workers=1, mode="", app="isolation_app:app",
    python_path="{app_dir}",
    extra="user = {user_a}\ncatch_workers_output = yes\naccess.log = {tmp}/a.access.log\n"
          "slowlog = {tmp}/a.slow.log\nrequest_slowlog_timeout = 30s\n"
          "pm.status_listen = {tmp}/a-status.sock\npm.status_path = /status") + "\n" + \
    pool_section("b", listen="{tmp}/b.sock", workers=1, app="isolation_app:app",
                 python_path="{app_dir}",
                 extra="user = {user_b}\naccess.log = {tmp}/b.access.log\npm.max_memory = 512M")


@pytest.fixture(scope="module")
def accounts():
    """Two pool users, and the test app in a directory both can read."""
    base = Path(tempfile.mkdtemp(prefix="pyfpm-isolation-"))
    base.chmod(0o755)
    (base / "app").mkdir()
    shutil.copy(APPS / "isolation_app.py", base / "app")
    try:
        with make_account(base, "home-a") as a, make_account(base, "home-b") as b:
            yield a, b
    finally:
        shutil.rmtree(base, ignore_errors=True)


class Pools:
    """The running master and a worker of each pool."""

    def __init__(self, server):
        self.server = server
        self.tmp = server.tmp
        self.error_log = self.tmp / "error.log"
        self.a = server.address  # pool a, TCP
        self.b = str(self.tmp / "b.sock")
        self.status = str(self.tmp / "a-status.sock")

    def whoami(self, address):
        return json.loads(client.request(address, "/whoami").body)

    def log(self):
        return self.error_log.read_text(errors="replace")


@contextlib.contextmanager
def pools(tmp_path, accounts, log_level="notice", server_class=harness.Server):
    a, b = accounts
    server = server_class(CONFIG, tmp_path, flags=("-F",), user_a=a.name, user_b=b.name,
                          app_dir=a.app_dir, log_level=log_level)
    try:
        server.start(wait_ready=False)
        error_log = tmp_path / "error.log"
        wait_for("the master ready", lambda: error_log.exists()
                 and "ready to handle connections" in error_log.read_text(), 10, server)
        server.wait_idle(2)
        yield Pools(server)
    finally:
        server.stop()


# --- what a worker holds --------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
SYS_PIDFD_GETFD = 438


def grab(pid, fd):
    """A copy, in this process, of descriptor ``fd`` of process ``pid`` (pidfd_getfd)."""
    pidfd = os.pidfd_open(pid)
    try:
        copy = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if copy < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd(%d, %d)" % (pid, fd))
        return copy
    finally:
        os.close(pidfd)


def fd_flags(pid, fd):
    with open("/proc/%d/fdinfo/%d" % (pid, fd)) as f:
        return next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))


def links(pid):
    return {os.readlink("/proc/%d/fd/%s" % (pid, n)) for n in os.listdir("/proc/%d/fd" % pid)}


def describe(pid, fd, master):
    """What descriptor ``fd`` of worker ``pid`` is, in words that do not depend on numbers."""
    link = os.readlink("/proc/%d/fd/%d" % (pid, fd))
    access = {os.O_RDONLY: "read", os.O_WRONLY: "write", os.O_RDWR: "read-write"}[
        fd_flags(pid, fd) & os.O_ACCMODE]
    if link.startswith("pipe:"):
        ends = [n for n in os.listdir("/proc/%d/fd" % pid)
                if os.readlink("/proc/%d/fd/%s" % (pid, n)) == link]
        if len(ends) == 2:
            return "pipe (%s end) of its own" % access  # the loop's wake-up pipe
        return "pipe (%s end) to %s" % (access, "the master" if link in links(master) else "?")
    if link.startswith("socket:"):
        s = socket.socket(fileno=grab(pid, fd))
        try:
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                name = s.getsockname()
                return "listening socket %s" % (name if isinstance(name, str) else "%s:%d" % name)
            peer, _, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          12))
            kind = {socket.SOCK_STREAM: "stream", socket.SOCK_SEQPACKET: "seqpacket"}.get(
                s.type, str(s.type))
            return "%s socket pair with %s" % (kind, "the master" if peer == master else peer)
        finally:
            s.close()
    if link == "anon_inode:[eventpoll]":
        return "epoll"
    if link.startswith("/memfd:"):
        return "memfd " + link
    path = re.sub(r"^/proc/%d/" % pid, "/proc/self/", link)
    if (os.path.exists(path) and stat.S_ISREG(os.stat(path).st_mode)
            and fd_flags(pid, fd) & os.O_APPEND):
        access += ", append"
    return "%s (%s)" % (path, access)


def holdings(pid, master):
    return sorted(describe(pid, int(fd), master) for fd in os.listdir("/proc/%d/fd" % pid))


def test_a_worker_of_each_pool_holds_only_what_its_pool_needs(tmp_path, accounts):
    with pools(tmp_path, accounts) as p:
        master = p.server.pid
        a, b = p.whoami(p.a)["pid"], p.whoami(p.b)["pid"]
        client.request(p.status, "/status")  # its ondemand worker is there now
        status = wait_for("the status worker", lambda: [w for w in p.server.children()
                                                        if w not in (a, b)], 5, p.server)[0]
        wait_for("the status worker idle", lambda: harness._polling(status))
        tmp = str(tmp_path)
        assert holdings(a, master) == sorted([
            "/dev/null (read-write)",  # stdin
            # catch_workers_output's stdout and stderr
            "pipe (write end) to the master", "pipe (write end) to the master",
            "listening socket %s" % p.a,
            "stream socket pair with the master",  # its channel: access log, faulthandler dumps
            "seqpacket socket pair with the master",  # its log
            "seqpacket socket pair with the master",  # its kept channel (fpm.sharing)
            # its pool's park and hand-off sockets (fpm.parking), and the descriptor it keeps
            # in reserve for a connection it is woken for
            "seqpacket socket pair with the master", "seqpacket socket pair with the master",
            "/dev/null (read)",
            "%s/a.access.log (write, append)" % tmp,
            "epoll", "pipe (read end) of its own", "pipe (write end) of its own",  # its loop's
            # its pool's bell, and the epoll set it sleeps on when it does not watch the
            # shared kept connections; its pool's queue, which it sleeps on when it does,
            # and the eventfd that wakes it there when a worker is told to stop (fpm._kept)
            "anon_inode:[eventfd] (read-write)", "epoll",
            "epoll", "anon_inode:[eventfd] (read-write)",
        ])
        assert holdings(b, master) == sorted([
            "/dev/null (read-write)", "/dev/null (read-write)", "/dev/null (read-write)",
            "listening socket %s" % p.b,
            "stream socket pair with the master",
            "seqpacket socket pair with the master", "seqpacket socket pair with the master",
            "%s/b.access.log (write, append)" % tmp,
            "seqpacket socket pair with the master", "seqpacket socket pair with the master",
            "/dev/null (read)",
            "epoll", "pipe (read end) of its own", "pipe (write end) of its own",
            "anon_inode:[eventfd] (read-write)", "epoll",
            "epoll", "anon_inode:[eventfd] (read-write)",
            "/proc/self/statm (read)",  # its own, for pm.max_memory
        ])
        assert holdings(status, master) == sorted([
            "/dev/null (read-write)", "/dev/null (read-write)", "/dev/null (read-write)",
            "listening socket %s" % p.status,
            "seqpacket socket pair with the master", "seqpacket socket pair with the master",
            "seqpacket socket pair with the master", "seqpacket socket pair with the master",
            "/dev/null (read)",
            "epoll", "pipe (read end) of its own", "pipe (write end) of its own",
            "anon_inode:[eventfd] (read-write)", "epoll",
            "epoll", "anon_inode:[eventfd] (read-write)",
        ])
        # Nor does a worker map another pool's scoreboard: only its own (the status
        # worker's also the pool's it shows); nor another pool's kept connections.
        for pid, own in ((a, {"a"}), (b, {"b"}), (status, {"a_status", "a"})):
            with open("/proc/%d/maps" % pid) as f:
                maps = f.read()
            boards = set(re.findall(r"/memfd:pyfpm-scoreboard-(\S+) ", maps))
            assert boards == own, (pid, boards)
            kept = set(re.findall(r"/memfd:pyfpm-kept-(\S+) ", maps))
            assert kept == own - {"a"} if pid == status else kept == own, (pid, kept)


def test_a_worker_cannot_write_or_truncate_the_error_log(tmp_path, accounts):
    """The issue's attack: os.write(3, forged_line) and os.ftruncate(3, 0), by any fd that
    is the error log."""
    with pools(tmp_path, accounts) as p:
        log = p.error_log.stat()
        assert stat.S_IMODE(log.st_mode) == 0o600 and log.st_uid == 0
        before = p.log()
        for address in (p.a, p.b):
            r = client.request(address, "/forge?dev=%d&ino=%d" % (log.st_dev, log.st_ino))
            assert json.loads(r.body) == {"found": [], "done": []}
        after = p.log()
        assert after.startswith(before) and "fpm is running, pid 1\n" not in after


def test_a_worker_cannot_sigcont_another_pools_worker_nor_the_master(tmp_path, accounts):
    with pools(tmp_path, accounts) as p:
        a, b = p.whoami(p.a), p.whoami(p.b)
        assert a["uid"] != b["uid"]
        # Each worker leads a session of its own, apart from the master's.
        for worker in (a, b):
            assert worker["sid"] == worker["pid"] == os.getsid(worker["pid"])
            assert os.getsid(worker["pid"]) != os.getsid(p.server.pid)

        def kill(address, pid, sig=signal.SIGCONT):
            return client.request(address, "/kill?pid=%d&sig=%d" % (pid, sig)).body.decode()
        assert kill(p.a, a["pid"]) == "sent"  # the way works: to itself
        assert kill(p.a, b["pid"]) == "EPERM"
        assert kill(p.b, a["pid"]) == "EPERM"
        assert kill(p.a, p.server.pid) == "EPERM"
        assert kill(p.b, p.server.pid) == "EPERM"


def test_a_workers_lines_cannot_pass_for_the_masters_or_another_pools(tmp_path, accounts):
    """Whatever a worker writes (wsgi.errors, sys.stderr, stdout, an exception), every line
    of the log that holds it begins with that worker's pool and pid, even read by
    str.splitlines(), which also breaks lines at \\r, \\x0b ... \\x1e, \\x85, \\u2028."""
    mark = "FORGED-MARK"
    text = (mark + "\n[21-Nov-2026 10:00:00] NOTICE: [pool b] child 7: " + mark
            + "\r[21-Nov-2026 10:00:00] ALERT: " + mark + "\u2028[pool b] " + mark
            + "\x1c[pool b] " + mark + "\x85NOTICE: " + mark)
    with pools(tmp_path, accounts) as p:
        pid = p.whoami(p.a)["pid"]
        assert client.request(p.a, "/say?text=" + client_quote(text)).status == 500
        # Two lines each: wsgi.errors, sys.stderr, stdout (both captured), the exception.
        marked = lambda: [line for line in p.log().splitlines() if mark in line]
        found = wait_for("8 lines", lambda: len(marked()) >= 8 and marked(), 5, p.server)
        own = re.compile(r"%s(WARNING|ERROR): \[pool a\] child %d(: | said into )" % (STAMP, pid))
        assert [line for line in found if not own.match(line)] == []


def client_quote(text):
    from urllib.parse import quote
    return quote(text, safe="")


# --- sessions: the master's signals, its death, a terminal's Ctrl-C -------------------------------

def test_workers_in_sessions_of_their_own_still_die_with_the_master(tmp_path, accounts):
    with pools(tmp_path, accounts) as p:
        workers = p.server.children()
        assert len(workers) == 2
        os.kill(p.server.pid, signal.SIGKILL)
        wait_for("no worker left", lambda: not any(map(harness.alive, workers)), 5)


class TerminalServer(harness.Server):
    """A master started as it is from a shell: in the foreground of a terminal (a pty), its
    stdin that terminal, so that typing Ctrl-C into it sends SIGINT to its process group."""

    def start(self, wait_ready=True):
        import fcntl
        import termios
        self.pty, slave = os.openpty()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, stdin=slave, stdout=log, stderr=log, cwd=self.cwd, env=self.env,
                start_new_session=True,  # then, before the exec, the terminal becomes its own
                preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        return self

    def ctrl_c(self):
        os.write(self.pty, b"\x03")

    def stop(self):
        super().stop()
        os.close(self.pty)


def test_ctrl_c_in_a_terminal_reaches_the_master_which_stops_its_workers(tmp_path, accounts):
    with pools(tmp_path, accounts, "debug", TerminalServer) as p:
        workers = p.server.children()
        assert os.tcgetpgrp(p.server.pty) == p.server.pid  # the master is in the foreground
        p.server.ctrl_c()
        assert p.server.wait_exit(10) == 0
        wait_for("no worker left", lambda: not any(map(harness.alive, workers)), 5)
        log = p.log()
        assert "NOTICE: Terminating ..." in log and "exiting, bye-bye!" in log
        # The terminal's SIGINT reached the master alone; its workers got its SIGTERM.
        for pid in workers:
            assert re.search(r"DEBUG: \[pool \w+\] sending signal 15 SIGTERM to child %d$" % pid,
                             log, re.M), log
            assert not re.search(r"child %d exited on signal 2 " % pid, log), log


# --- a preloaded app keeps what it opened --------------------------------------------------------

def test_a_preloaded_app_keeps_the_files_it_opened_at_import(tmp_path):
    """The master imports it; the objects its workers use hold descriptors the master opened
    for it, which they keep (and no other pool's worker does)."""
    app_log = tmp_path / "app.log"
    conf = pyfpm_config(listen="{sock}", workers=1, app="isolation_app:app",
                        extra="preload = yes") + "\n" + \
        pool_section("other", listen="{tmp}/other.sock", workers=1, app="isolation_app:app")
    server = harness.Server(conf, tmp_path, env={"ISOLATION_APP_LOG": str(app_log)})
    with server:
        assert server.request("/applog?text=from+the+worker").body == b"written"
        assert app_log.read_text() == "from the worker\n"
        other = json.loads(client.request(str(tmp_path / "other.sock"), "/whoami").body)["pid"]
        held = [os.readlink("/proc/%d/fd/%s" % (other, fd))
                for fd in os.listdir("/proc/%d/fd" % other)]
        assert str(app_log) not in held
