"""Checks of a pool run in a throw-away child that becomes a worker of the pool (user, chroot,
chdir, environment), without serving: can its user read the directories its modules come
from, can it import the app. The start, a reload and ``-t`` run them, so that a problem is
named before the first request meets it."""
from __future__ import annotations

import os
import pwd
import select
import signal
import sys
import time
from typing import Callable

from fpm import apps, unix
from fpm.log import strerror

IMPORT_TIMEOUT = 30.0  # seconds -t waits for one pool's app to import
READ_TIMEOUT = 5.0  # seconds the readability check may take (a hung NFS mount)


class _Quiet:
    """The log a probe's unix.apply() writes to: nowhere (its failure is the result)."""

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


def run_as(pool, allow_root: bool, check: Callable[[], str | None], *, become: bool = True,
           timeout: float) -> str | None:
    """``check()`` in a child that is, with ``become``, one of ``pool``'s workers but for
    serving (unix.apply: user, chroot, chdir, environment): its answer (None: all is well).
    Raises CannotBecome with the reason when the child cannot get that far."""
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
            os.close(read_fd)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # what an app prints while it imports is not -t's output
                os.dup2(null, fd)
            if become:
                unix.apply(pool, _Quiet(), allow_root)
            answer = b"=" + (check() or "").encode("utf-8", "backslashreplace")
        except unix.UnixError as e:
            answer = b"!" + e.reason.encode("utf-8", "backslashreplace")
        except BaseException as e:
            answer = b"!" + ("%s: %s" % (type(e).__name__, e)).encode("utf-8", "backslashreplace")
        finally:
            try:
                os.write(write_fd, answer)
            finally:
                os._exit(0)
    os.close(write_fd)
    try:
        answer = _answer(pid, read_fd, timeout)
    finally:
        os.close(read_fd)
    if answer[:1] != "=":
        raise CannotBecome(answer[1:])
    return answer[1:] or None


def _answer(pid: int, read_fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([read_fd], [], [], left)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "!gave no answer within %g seconds" % timeout
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    answer = b"".join(chunks).decode("utf-8", "replace")
    return answer or "!ended without an answer (wait status %d)" % status


def check_pools(config, allow_root: bool) -> tuple[list[str], list[str]]:
    """(errors, warnings) of the start, a reload and -t: a pool whose workers cannot become
    its user (or enter its chroot) cannot start; one whose user cannot read where its modules
    come from gets a warning naming each such place."""
    errors, warnings = [], []
    for pool in config.pools:
        dirs = import_dirs(pool)
        try:
            found = run_as(pool, allow_root, lambda: "\n".join(unreadable(dirs)),
                           timeout=READ_TIMEOUT)
        except CannotBecome as e:
            errors.append("[pool %s] a worker cannot start: %s" % (pool.name, e))
            continue
        warnings += ["[pool %s] %s; the workers cannot import what the master has not "
                     "imported" % (pool.name, text) for text in (found or "").splitlines()]
    return errors, warnings


def check_apps(config, allow_root: bool) -> list[str]:
    """-t's import of each pool's app, in a throw-away child as its workers would (a
    preloaded app as the master would: before it becomes the pool's user); one problem
    per pool that cannot import its app."""
    problems = []
    for pool in config.pools:
        if pool.app is None:
            continue
        dirs = import_dirs(pool)

        def load(pool=pool):
            try:
                apps.load(pool.app, pool.chdir, pool.python_path, pool.virtualenv)
            except apps.AppLoadError as e:
                return explain(e, dirs)
            return None

        try:
            problem = run_as(pool, allow_root, load, become=not pool.preload,
                             timeout=IMPORT_TIMEOUT)
        except CannotBecome as e:
            problem = str(e)
        if problem is not None:
            problems.append("[pool %s] app '%s' cannot be loaded: %s"
                            % (pool.name, pool.app, problem))
    return problems


def explain(error: apps.AppLoadError, dirs: list[tuple[str, str]]) -> str:
    """The app load error, and, for an import error, which of the import ``dirs`` this
    process's user cannot read: the usual cause of "No module named 'subprocess'"."""
    text = str(error)
    if isinstance(error.__cause__, ImportError):
        text += "".join(" (%s)" % problem for problem in unreadable(dirs))
    return text
