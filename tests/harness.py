"""The real pyfpm master under test: started from a config, watched through its log, killed
with its whole process group at the end.

    with Server(CONFIG, tmp) as server:       # CONFIG may use {tmp}, {port} and {sock}
        server.request("/")                  # fpm.client.request on server.address
        server.wait_log(r"child \\d+ started")
"""
from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fpm
from fpm import config as fpm_config
from tests.conftest import free_port

# Run the same fpm package the tests import (installed or the source tree).
COMMAND = [sys.executable, "-m", "fpm"]
READY = "ready to handle connections"


def fpm_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(fpm.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def run_fpm(*args: str, timeout: float = 10.0, cwd=None,
            allow_root: bool = True) -> subprocess.CompletedProcess:
    """Run ``pyfpm ARGS`` to completion (for -t, --version, failing starts); text output.

    ``-R`` goes first unless ``allow_root`` is false (or for ``pyfpm request``): the suite
    runs as root with pools that set no ``user``.
    """
    if allow_root and args[:1] != ("request",):
        args = ("-R",) + args
    return subprocess.run(COMMAND + list(args), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=fpm_env(), start_new_session=True)


def substitute(template: str, values: dict) -> str:
    """Replace ``{name}`` for the given names only: INI's ``${VAR}`` and other braces stay."""
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m[1]]) if m[1] in values else m[0],
                  template)


def parent_of(pid: int) -> int | None:
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields resume after the last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    return None if fields[0] == b"Z" else int(fields[1])


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    return parent_of(pid) is not None


def _polling(pid: int) -> bool:
    try:
        with open("/proc/%d/wchan" % pid) as f:
            return "poll" in f.read()
    except OSError:
        return False


def children_of(pid: int) -> list[int]:
    return sorted(int(d) for d in os.listdir("/proc") if d.isdigit() and parent_of(int(d)) == pid)


def wait_for(what: str, predicate, timeout: float = 5.0, server: "Server | None" = None,
             every: float = 0.01):
    """predicate()'s first true value, polled ``every`` seconds; after ``timeout`` an
    AssertionError naming ``what`` (with the server's workers and log when given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = ("; workers %s; log:\n%s" % (server.children(), server.log_text())
                      if server is not None else "")
            raise AssertionError("timed out waiting for %s after %g s%s" % (what, timeout, detail))
        time.sleep(every)


class Server:
    """One pyfpm master: ``Server(config_text, tmp).start()`` ... ``.stop()``.

    ``config`` is written to ``tmp/pyfpm.conf`` after substituting ``{tmp}`` (the directory),
    ``{sock}`` (``tmp/fpm.sock``), ``{port}`` (a free TCP port) and any keyword given.
    The master runs as ``python -m fpm -F -O -R -y CONF`` (``flags`` replaces ``-F -O``;
    ``allow_root=False`` drops ``-R``, which the suite needs as root with pools that set no
    ``user``) in its own session, in ``cwd`` (default: ``tmp``); its stderr and stdout go to
    ``.log_path``, its stdout to ``stdout`` instead when given (a path). ``command`` replaces
    ``python -m fpm`` (the ``pyfpm`` console script).
    """

    def __init__(self, config: str, tmp=None, *, flags=("-F", "-O"), args=(),
                 allow_root: bool = True, ready_timeout: float = 10.0, env=None, cwd=None,
                 command=COMMAND, stdout=None, **values):
        self._own_tmp = tmp is None
        self.tmp = Path(tempfile.mkdtemp(prefix="pyfpm-")) if tmp is None else Path(tmp)
        values = {"tmp": self.tmp, "sock": self.tmp / "fpm.sock", **values}
        if "{port}" in config and "port" not in values:
            values["port"] = free_port()
        self.values = values
        self.config_text = substitute(config, values)
        self.conf_path = self.tmp / "pyfpm.conf"
        self.conf_path.write_text(self.config_text)
        self.log_path = self.tmp / "fpm-stderr.log"
        self.cwd = self.tmp if cwd is None else cwd
        self.stdout_path = stdout
        self.argv = (list(command) + list(flags) + (["-R"] if allow_root else [])
                     + ["-y", str(self.conf_path)] + list(args))
        self.ready_timeout = ready_timeout
        self.env = {**fpm_env(), **(env or {})}  # env: extra variables (NOTIFY_SOCKET, ...)
        self.proc: subprocess.Popen | None = None

    # --- life cycle ---------------------------------------------------------------------

    def start(self, wait_ready: bool = True) -> "Server":
        argv, fds = self.launch()
        with open(self.log_path, "wb") as log, \
                open(self.stdout_path or os.devnull, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=out if self.stdout_path else log,
                                         stderr=log, cwd=self.cwd, env=self.env, pass_fds=fds,
                                         start_new_session=True)
        if wait_ready:
            self.wait_log(re.escape(READY), self.ready_timeout)
        return self

    def launch(self) -> tuple[list[str], tuple[int, ...]]:
        """The command line that starts the master, and the descriptors it inherits."""
        return self.argv, ()

    def stop(self) -> None:
        """Kill the master's whole process group, and each worker's; never fails."""
        if self.proc is not None:
            # Each worker leads a session (so a group) of its own: the master's group does
            # not hold it, and its parent-death signal is a TERM, which an app may catch.
            workers = self.children() if self.proc.poll() is None else []
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for pid in workers:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            # Gone, not dying: a worker still holding a listening socket would keep its
            # address from the next master (or test) binding it.
            deadline = time.monotonic() + 5
            while any(map(alive, workers)) and time.monotonic() < deadline:
                time.sleep(0.005)
        if self._own_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float = 5.0) -> int:
        """The master's exit code once it has exited; AssertionError after ``timeout``.

        Waits on a pidfd, so the moment of exit is seen at once (Popen.wait polls).
        """
        assert self.proc is not None, "not started"
        if self.proc.returncode is None:
            fd = os.pidfd_open(self.proc.pid)
            try:
                ready = select.select([fd], [], [], timeout)[0]
            finally:
                os.close(fd)
            if not ready:
                raise AssertionError("pyfpm (pid %d) still running after %g s\n%s"
                                     % (self.proc.pid, timeout, self.log_text()))
        return self.proc.wait()

    def children(self) -> list[int]:
        """Pids of the master's live children (its workers)."""
        return children_of(self.pid)

    def wait_idle(self, count: int | None = None, timeout: float = 5.0) -> list[int]:
        """Wait until ``count`` workers (default: any number > 0) all sleep in poll(), i.e.
        have loaded the app and wait for connections; their pids.

        "ready to handle connections" only means the workers were forked.
        """
        deadline = time.monotonic() + timeout
        while True:
            workers = self.children()
            if workers and (count is None or len(workers) == count) and all(map(_polling, workers)):
                return workers
            if time.monotonic() > deadline:
                raise AssertionError("workers %s not idle after %g s; log:\n%s"
                                     % (workers, timeout, self.log_text()))
            time.sleep(0.005)

    # --- what it says ---------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The first pool's (first) listen address, as fpm.client and nginx take it."""
        return fpm_config.loads(self.config_text, str(self.conf_path)).pools[0].listen[0]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def mark(self) -> int:
        """A position in the log; pass it as ``since`` to wait only for what comes after."""
        return len(self.log_text())

    def wait_log(self, pattern: str, timeout: float = 5.0, since: int = 0) -> re.Match:
        """The first match of ``pattern`` (multiline) in the log after ``since``.

        AssertionError, with the log, on timeout or if the master exits without it.
        """
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc is not None and self.proc.poll() is not None
            m = regex.search(self.log_text(), since)
            if m:
                return m
            if exited or time.monotonic() > deadline:
                why = ("exited with code %s" % self.proc.returncode if exited
                       else "no match after %g s" % timeout)
                raise AssertionError("pyfpm %s waiting for /%s/; log:\n%s"
                                     % (why, pattern, self.log_text()))
            time.sleep(0.01)

    def request(self, uri: str = "/", **kwargs):
        """One FastCGI request to the first pool → fpm.client.Response."""
        from fpm import client
        return client.request(self.address, uri, **kwargs)


def kill_group(proc, grace=3.0):
    """Stop a process started with start_new_session: TERM its group, then KILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # the leader is gone; make sure none of its children outlive it
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# What systemd does before exec: the sockets at fds 3, 4, ... and LISTEN_* naming this pid.
ACTIVATE = """\
import fcntl, os, sys
fds = [int(fd) for fd in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=sys.argv[2])
os.execvp(sys.argv[3], sys.argv[3:])
"""


class ActivatedServer(Server):
    """A master started the way systemd starts a socket-activated service."""

    def __init__(self, *args, sockets, names, **kw):
        super().__init__(*args, **kw)
        self.sockets, self.names = sockets, names

    def launch(self) -> tuple[list[str], tuple[int, ...]]:
        fds = tuple(s.fileno() for s in self.sockets)
        return ([sys.executable, "-c", ACTIVATE, ",".join(map(str, fds)), ":".join(self.names),
                 *self.argv], fds)
