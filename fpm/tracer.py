"""The master's side of the slowlog: read a slow worker's stack, with ptrace (fpm.trace) or,
where the kernel refuses it or the interpreter is not supported, with the faulthandler dump
the worker writes on its channel (fpm.slowlog); then write the entry.

PHP-FPM's log lines around a ptrace read are kept: ``about to trace N`` and ``finished trace
of N`` (NOTICE).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from fpm import slowlog, trace


@dataclass(frozen=True)
class Stack:
    frames: list
    fallback: bool  # read from a faulthandler dump: no frame addresses
    failed: bool  # nothing could be read (the entry ends with "+++ dump failed")


class Tracer:
    def __init__(self, log):
        self.log = log
        self.ptrace_refused: str | None = None  # why ptrace is not used, once it failed so

    def stack(self, child, depth: int) -> Stack:
        """Read ``child``'s innermost ``depth`` frames. Raises trace.Gone when the worker
        exited meanwhile (its ``status`` set when it was reaped here)."""
        pid = child.pid
        if self.ptrace_refused is None:
            self.log.notice("about to trace %d" % pid)
            try:
                found = trace.stack(pid, depth)
            except (trace.Refused, trace.Unsupported) as e:
                self.ptrace_refused = e.reason
                self.log.warning("slowlog: cannot read worker stacks with ptrace (%s); using "
                                 "faulthandler dumps from now on" % e.reason)
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
        try:
            frames = slowlog.dump_with_faulthandler(pid, child.channel)
        except trace.Gone:
            raise
        except trace.TraceError as e:
            self.log.warning("[pool %s] child %d: %s" % (child.pool.name, pid, e.reason))
            return Stack([], True, True)
        return Stack(frames[:depth], True, False)

    def write(self, pool, child, slot, elapsed: float, stack: Stack, fd: int | None) -> None:
        """The entry, into the pool's slowlog (``fd``, which the master opened with the other
        logs); without one, into the error log."""
        text = slowlog.entry(time.time(), pool.name, child.pid, slot.script or pool.app or "",
                             slot.method, slot.request_uri, "", elapsed, stack.frames,
                             stack.fallback, debug=self.log.enabled("debug"), failed=stack.failed)
        if fd is None:
            self.log.warning(text.strip("\n"))
            return
        try:
            slowlog.write_entry(fd, text)
        except OSError as e:
            self.log.syserror("[pool %s] unable to write to slowlog '%s'"
                              % (pool.name, pool.slowlog), e)
