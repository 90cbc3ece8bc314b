"""The master's side of the slowlog: read a slow worker's stack, with ptrace (fpm.trace) or,
where the kernel refuses it or the interpreter is not supported, with the faulthandler dump
the worker writes on its channel (fpm.slowlog); then write the entry.

Either way the stack ends where the application's begins: at the worker's own frame that
called it (`app_callers`), found by its code object (ptrace) or by its file and name
(faulthandler), never by a guess an application's file could match.

PHP-FPM's log lines around a ptrace read are kept: ``about to trace N`` and ``finished trace
of N`` (NOTICE).
"""
from __future__ import annotations

import functools
import time
import types
from dataclasses import dataclass

from fpm import slowlog, trace


@functools.cache
def app_callers() -> tuple[types.CodeType, ...]:
    """The code of pyfpm's frames that call into the application, the innermost of which a
    slowlog entry stops before: worker.serve, whose compiled loop (no Python frame of its own)
    calls the WSGI app, the status and ping pages alike; in script mode, ScriptApp's call of
    the script's `application` and its run of the script's top-level code. The worker is a
    fork of the master, so these objects sit at the same addresses in both."""
    from fpm import scripts, worker  # the master imports them before any fork anyway
    return (worker.serve.__code__, scripts.ScriptApp.__call__.__code__,
            scripts.ScriptApp._compile.__code__)


@functools.cache
def _stops() -> tuple[tuple[int, ...], frozenset[tuple[str, str]]]:
    """app_callers() as each back-end sees them: addresses (ptrace), (file, name) (faulthandler,
    which prints co_name)."""
    codes = app_callers()
    return tuple(id(c) for c in codes), frozenset((c.co_filename, c.co_name) for c in codes)


@dataclass(frozen=True)
class Stack:
    frames: list
    fallback: bool  # read from a faulthandler dump: no frame addresses
    failed: bool  # nothing could be read (the entry ends with "+++ dump failed")


class Tracer:
    def __init__(self, log):
        self.log = log
        self.ptrace_refused: str | None = None  # why ptrace is not used, once it failed so

    def prepare(self) -> None:
        """At start, when a pool may be traced: a stack reader built for another interpreter
        is said now, once, with how to rebuild it, and never used; else python-ptrace is
        loaded."""
        reason = trace.unusable()
        if reason is not None:
            self._refuse_ptrace(reason)
        else:
            trace.load()

    def _refuse_ptrace(self, reason: str) -> None:
        self.ptrace_refused = reason
        self.log.warning("slowlog: cannot read worker stacks with ptrace (%s); using "
                         "faulthandler dumps from now on" % reason)

    def stack(self, child, depth: int) -> Stack | slowlog.Dump:
        """Read ``child``'s innermost ``depth`` frames of the application. Where ptrace is not
        used, the worker is asked for its faulthandler dump, which comes on its channel: the
        Dump, for the caller to read as it comes and end with `dumped()`. Raises trace.Gone
        when the worker exited meanwhile (its ``status`` set when it was reaped here)."""
        pid = child.pid
        addresses, names = _stops()
        if self.ptrace_refused is None:
            self.log.notice("about to trace %d" % pid)
            try:
                found = trace.stack(pid, depth, stop=addresses)
            except (trace.Refused, trace.Unsupported) as e:
                self._refuse_ptrace(e.reason)
            except trace.Gone:
                raise
            except trace.TraceError as e:
                self.log.warning("[pool %s] child %d: %s" % (child.pool.name, pid, e.reason))
                return Stack([], False, True)
            else:
                self.log.notice("finished trace of %d" % pid)
                self.log.debug("child %d was stopped for %.0f µs" % (pid, found.stopped_us))
                return Stack(found.frames, False, False)
        if child.channel < 0:
            return Stack([], True, True)
        dump = slowlog.Dump(pid, child.channel, stop=names)
        try:
            dump.ask()
        except trace.Gone:
            dump.close()
            raise
        return dump

    def dumped(self, child, dump: slowlog.Dump, depth: int) -> Stack:
        """The stack a faulthandler dump gave, once complete or out of time; closes it."""
        dump.close()
        try:
            frames = dump.frames()
        except trace.TraceError as e:
            self.log.warning("[pool %s] child %d: %s" % (child.pool.name, child.pid, e.reason))
            return Stack([], True, True)
        return Stack(frames[:depth], True, False)

    def write(self, pool, child, slot, elapsed: float, stack: Stack, fd: int | None) -> None:
        """The entry, into the pool's slowlog (``fd``, which the master opened with the other
        logs); without one, into the error log."""
        text = slowlog.entry(time.time(), pool.name, child.pid, slot.script or pool.app or "",
                             slot.request_method, slot.request_uri, "", elapsed, stack.frames,
                             stack.fallback, debug=self.log.enabled("debug"), failed=stack.failed)
        if fd is None:
            self.log.warning(text.strip("\n"))
            return
        try:
            slowlog.write_entry(fd, text)
        except OSError as e:
            self.log.syserror("[pool %s] unable to write to slowlog '%s'"
                              % (pool.name, pool.slowlog), e)
