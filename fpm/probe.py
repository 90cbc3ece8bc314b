"""Checks of a pool run in a throw-away child that becomes a worker of the pool (user, chroot,
chdir, environment), without serving: can its user read the directories its modules come
from, can it import the app. The start, a reload and ``-t`` run them, so that a problem is
named before the first request meets it."""
from __future__ import annotations

import os
import pwd
import select
import signal
import struct
import sys
import time
from typing import Callable

from fpm import apps, unix
from fpm.log import strerror

IMPORT_TIMEOUT = 30.0  # seconds -t waits for the pools' apps to import, all at once
READ_TIMEOUT = 5.0  # seconds the readability checks may take (a hung NFS mount)


class Quiet:
    """A log that writes nowhere: a probe's unix.apply() (its failure is the result)."""

    def __getattr__(self, level):
        return lambda *args, **kwargs: None


def import_dirs(pool) -> list[tuple[str, str]]:
    """(what, directory) a worker of ``pool`` imports from, as the pool names them: the
    interpreter's standard library, the virtualenv, python_path, chdir; those that exist
    (seen from here, inside the pool's chroot if it has one)."""
    dirs = [("the standard library", p) for p in sys.path if p and apps._is_stdlib_entry(p)]
    if pool.virtualenv:
        dirs.append(("virtualenv", pool.virtualenv))
    dirs += [("python_path", p) for p in pool.python_path]
    if pool.chdir:
        dirs.append(("chdir", pool.chdir))
    inside = os.path.join(pool.chroot or "/", (pool.chdir or "/").lstrip("/"))
    return [(what, p) for what, p in dirs
            if os.path.isdir(os.path.join(pool.chroot or "/", p.lstrip("/"))
                             if os.path.isabs(p) else os.path.join(inside, p))]


def unreadable_dirs(dirs: list[tuple[str, str]]) -> list[str]:
    """For each kind of directory in ``dirs``, the first that this process cannot list and
    search, with the path component that refuses it."""
    found, seen = [], set()
    for what, path in dirs:
        if what not in seen:
            problem = _refusal(what, path)
            if problem is not None:
                found.append(problem)
                seen.add(what)
    return found


def _refusal(what: str, path: str) -> str | None:
    full = os.path.abspath(path)
    parts = full.split("/")[1:] if full != "/" else []
    for i in range(len(parts) + 1):
        prefix = "/" + "/".join(parts[:i])
        last = i == len(parts)
        try:
            mode = os.stat(prefix).st_mode & 0o7777
        except OSError as e:
            return "%s '%s': %s" % (what, path, strerror(e))
        if not os.access(prefix, os.R_OK | os.X_OK if last else os.X_OK):
            if last:
                return "%s '%s' (mode %04o)" % (what, path, mode)
            return "%s '%s': '%s' does not let it through (mode %04o)" % (what, path, prefix, mode)
    return None


def who() -> str:
    """This process's user, as a check's message names it."""
    uid = os.getuid()
    try:
        return "user '%s'" % pwd.getpwuid(uid).pw_name
    except KeyError:
        return "uid %d" % uid


def unreadable(dirs: list[tuple[str, str]]) -> list[str]:
    """In a worker (or a probe) of a pool: "<user> cannot read <directory>" for each kind of
    its import ``dirs`` (import_dirs, taken in the master) that its user cannot read."""
    return ["%s cannot read %s" % (who(), problem) for problem in unreadable_dirs(dirs)]


class CannotBecome(Exception):
    """The probe could not become a worker of the pool, or its check failed to run."""


# How long a probe that has answered, or was killed, may take to be reaped before the master
# leaves it to its own reaper (a process stuck in the kernel, on a dead NFS mount).
REAP_WAIT = 0.5


def run_all(jobs: list[tuple], allow_root: bool, timeout: float) -> list:
    """Run each ``(pool, check, become)`` job in a child of its own, all at once; for each,
    in order, ``check()``'s answer (None: all is well) or the CannotBecome that says why the
    child could not get that far. With ``become``, the child is one of ``pool``'s workers but
    for serving (unix.apply: user, chroot, chdir, environment). At most ``timeout`` seconds
    in all: a child that has not answered by then is killed."""
    started = [_start(pool, check, become, allow_root) for pool, check, become in jobs]
    deadline = time.monotonic() + timeout
    return [_collect(pid, fd, deadline, timeout) for pid, fd in started]


def run_as(pool, allow_root: bool, check: Callable[[], str | None], *, become: bool = True,
           timeout: float) -> str | None:
    """One job of run_all: its answer, or raises its CannotBecome."""
    answer = run_all([(pool, check, become)], allow_root, timeout)[0]
    if isinstance(answer, CannotBecome):
        raise answer
    return answer


def _start(pool, check, become: bool, allow_root: bool) -> tuple[int, int]:
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's side, seen through its answer
        answer = b"!"
        try:
            # The master's handlers write to its signal pipe: a stray signal here must not.
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                        signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            # It runs the pool's code as the pool's user: none of the master's descriptors
            # (the error log, other pools' sockets) stays within its reach.
            unix.close_fds_except({0, 1, 2, write_fd})
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # what an app prints while it imports is not -t's output
                os.dup2(null, fd)
            os.close(null)
            if become:
                unix.apply(pool, Quiet(), allow_root)
            answer = b"=" + (check() or "").encode("utf-8", "backslashreplace")
        except unix.UnixError as e:
            answer = b"!" + e.reason.encode("utf-8", "backslashreplace")
        except BaseException as e:
            answer = b"!" + ("%s: %s" % (type(e).__name__, e)).encode("utf-8", "backslashreplace")
        finally:
            try:
                # Its length first: a process the check started may hold the pipe open
                # after this one is gone, so the end of the answer is not the pipe's end.
                os.write(write_fd, struct.pack("!I", len(answer)) + answer)
            finally:
                os._exit(0)
    os.close(write_fd)
    return pid, read_fd


def _collect(pid: int, read_fd: int, deadline: float, timeout: float):
    try:
        answer = _read_answer(read_fd, deadline)
    finally:
        os.close(read_fd)
    if answer is None:
        os.kill(pid, signal.SIGKILL)
    _reap(pid)
    if answer is None:
        return CannotBecome("gave no answer within %g seconds" % timeout)
    if answer[:1] != "=":
        return CannotBecome(answer[1:] or "ended without an answer")
    return answer[1:] or None


def _read_answer(read_fd: int, deadline: float) -> str | None:
    """The length-prefixed answer; "" if the child ended without one, None at the deadline."""
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack("!I", data[:4])[0]:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([read_fd], [], [], left)[0]:
            return None
        chunk = os.read(read_fd, 65536)
        if not chunk:
            return ""
        data += chunk
    return data[4:4 + struct.unpack("!I", data[:4])[0]].decode("utf-8", "replace")


def _reap(pid: int) -> None:
    end = time.monotonic() + REAP_WAIT
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] or time.monotonic() > end:
                return
        except ChildProcessError:
            return
        time.sleep(0.002)


def check_pools(config, allow_root: bool) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the start, a reload and -t: a pool whose workers cannot become
    its user (or enter its chroot) cannot start; one whose user cannot read where its modules
    come from gets a warning naming each such place."""
    errors, warnings = [], []
    jobs = [(pool, lambda dirs=import_dirs(pool): "\n".join(unreadable(dirs)), True)
            for pool in config.pools]
    for pool, found in zip(config.pools, run_all(jobs, allow_root, READ_TIMEOUT)):
        if isinstance(found, CannotBecome):
            errors.append("[pool %s] a worker cannot start: %s" % (pool.name, found))
            continue
        warnings += ["[pool %s] %s; the workers cannot import what the master has not "
                     "imported" % (pool.name, text) for text in (found or "").splitlines()]
    return errors, warnings


def check_apps(config, allow_root: bool) -> list[str]:
    """-t's import of each pool's app, in a throw-away child as its workers would (a
    preloaded app as the master would: before it becomes the pool's user); one problem
    per pool that cannot import its app."""
    pools = [pool for pool in config.pools if pool.app is not None]

    def load(pool, dirs):
        try:
            apps.load(pool.app, pool.chdir, pool.python_path, pool.virtualenv)
        except apps.AppLoadError as e:
            return explain(e, dirs)
        return None

    jobs = [(pool, lambda pool=pool, dirs=import_dirs(pool): load(pool, dirs), not pool.preload)
            for pool in pools]
    return ["[pool %s] app '%s' cannot be loaded: %s" % (pool.name, pool.app, problem)
            for pool, problem in zip(pools, run_all(jobs, allow_root, IMPORT_TIMEOUT))
            if problem is not None]


def explain(error: apps.AppLoadError, dirs: list[tuple[str, str]]) -> str:
    """The app load error, and, for an import error, which of the import ``dirs`` this
    process's user cannot read: the usual cause of "No module named 'subprocess'"."""
    text = str(error)
    if isinstance(error.__cause__, ImportError):
        text += "".join(" (%s)" % problem for problem in unreadable(dirs))
    return text
