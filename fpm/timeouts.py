"""The master's watch on requests: request_slowlog_timeout traces a worker into the
slowlog, request_terminate_timeout traces it and stops it (its 504 goes out first), and a
worker that outlives the signal it was sent alone is signalled harder."""
from __future__ import annotations

import select
import signal
import time
from dataclasses import dataclass

from fpm import slowlog, trace
from fpm.scoreboard import FINISHING, IDLE, ORDER_TIMEOUT, READING, RUNNING, now_us
from fpm.signals import name as signal_name
from fpm.timers import MAINTENANCE, Timer


def escalation(last: int | None, stopping: str | None, stage: int) -> int | None:
    """The signal for one worker still alive after the ``last`` one it was sent alone; None:
    not now, look again on the next tick.

    A worker the process manager stopped (``stopping == "idle"``) that is still idle a tick
    after its SIGQUIT ignores that signal (an app that blocks it): SIGKILL, as PHP-FPM does
    since bug #77023, or the pool would stay over size for ever. One serving a request (it
    took one as the QUIT came, or goes on serving with QUIT blocked) is left to finish it.
    Any other worker goes SIGQUIT, SIGTERM, then SIGKILL.
    """
    if stopping == "idle":
        return signal.SIGKILL if stage == IDLE else None
    return signal.SIGTERM if last == signal.SIGQUIT else signal.SIGKILL


def timed_out(slot, timeout: int, track_finished: bool, now: int) -> float | None:
    """Seconds the slot's request has run when that is past ``timeout``, else None."""
    if timeout <= 0 or slot.stage not in (READING, RUNNING, FINISHING):
        return None
    if slot.stage == FINISHING and not track_finished:
        return None
    elapsed = (now - slot.accepted) / 1e6
    return elapsed if elapsed >= timeout else None


def slow(slot, timeout: int, now: int) -> float | None:
    """Seconds the slot's request has run when the app has run it past
    request_slowlog_timeout, else None (PHP-FPM traces Running requests only)."""
    if timeout <= 0 or slot.stage != RUNNING:
        return None
    elapsed = (now - slot.accepted) / 1e6
    return elapsed if elapsed >= timeout else None


@dataclass
class Traced:
    """A worker being traced, and what comes after its stack: the entry, then for
    request_terminate_timeout (``terminate``) the worker's stop."""

    pool: object
    child: object
    slot: object
    elapsed: float
    terminate: bool
    dump: slowlog.Dump | None = None  # the faulthandler dump under way, if any


class Timeouts:
    """Part of fpm.master.Master: request timeouts and per-worker escalation."""

    def _needs_channel(self, pool) -> bool:
        """A worker gets a channel when it has an access log to reopen on USR1, or may be
        traced (the faulthandler fallback sends its stack over it)."""
        return pool.access_log is not None or self._traced(pool)

    @staticmethod
    def _traced(pool) -> bool:
        """Its workers' stacks may be read: into the slowlog, or when a request is killed."""
        return pool.request_slowlog_timeout > 0 or pool.request_terminate_timeout > 0

    def _check_timeouts(self) -> None:
        """request_slowlog_timeout: trace the worker into the slowlog, once per request;
        request_terminate_timeout: trace it, then stop it (its 504 goes out first)."""
        now = now_us()
        for child in list(self.children.by_pid.values()):
            pool = self.pools.get(child.pool.name)
            if pool is None or child.pid not in self.children.by_pid:
                continue  # not a pool of this configuration, or gone during an earlier trace
            if not self._traced(pool) or child.pid in self.dumps:
                continue  # untraced, or its stack is still coming
            slot = child.board.read(child.slot)
            elapsed = slow(slot, pool.request_slowlog_timeout, now)
            if elapsed is not None and child.slow_logged != slot.accepted:
                child.slow_logged = slot.accepted
                self.log.warning('[pool %s] child %d, script \'%s\' (request: "%s %s") '
                                 'executing too slow (%.6f sec), logging'
                                 % self._request_words(pool, child, slot, elapsed))
                child.board.mem.count_slow_request()
                self._trace(Traced(pool, child, slot, elapsed, terminate=False))
                if child.pid not in self.children.by_pid or child.pid in self.dumps:
                    continue  # gone, or the terminate timeout waits for this stack
            elapsed = timed_out(slot, pool.request_terminate_timeout,
                                pool.request_terminate_timeout_track_finished, now)
            if elapsed is None or child.timed_out == slot.accepted:
                continue
            child.timed_out = slot.accepted
            self.log.warning('[pool %s] child %d, script \'%s\' (request: "%s %s") execution '
                             'timed out (%.6f sec), terminating'
                             % self._request_words(pool, child, slot, elapsed))
            self._trace(Traced(pool, child, slot, elapsed, terminate=True))

    @staticmethod
    def _request_words(pool, child, slot, elapsed: float) -> tuple:
        return (pool.name, child.pid, _printable(slot.script or pool.app or ""),
                slot.request_method, _printable(slot.request_uri), elapsed)

    def _trace(self, t: Traced) -> None:
        """Write the worker's stack (slowlog, else error log), then stop it if ``t.terminate``;
        a faulthandler dump is read as it comes (`_on_dump`, Timer.DUMP), the loop never
        waits for it. Nothing when the worker exited meanwhile."""
        try:
            stack = self.tracer.stack(t.child, t.pool.request_slowlog_trace_depth)
        except trace.Gone as e:
            if e.status is not None:  # reaped by the tracer: account for it as the reaper would
                gone = self.children.bury(t.child.pid, e.status)
                if gone is not None:
                    self.reaped.append(gone)
            return
        if isinstance(stack, slowlog.Dump):
            t.dump = stack
            self.dumps[t.child.pid] = t
            self.dump_fds[stack.fd] = t.child.pid
            self.poller.register(stack.fd, select.EPOLLIN)
            self.timers.set((Timer.DUMP, t.child.pid), time.monotonic() + slowlog.DUMP_TIMEOUT)
            return
        self._write_trace(t, stack)

    def _on_dump(self, fd: int) -> None:
        """The channel of a worker being dumped is readable."""
        t = self.dumps[self.dump_fds[fd]]
        if t.dump.feed():
            self._end_dump(t.child.pid)

    def _end_dump(self, pid: int) -> None:
        """A dump is complete, or out of time: what came is the stack."""
        t = self.dumps.pop(pid)
        self.timers.cancel((Timer.DUMP, pid))
        del self.dump_fds[t.dump.fd]
        self.poller.unregister(t.dump.fd)
        self._write_trace(t, self.tracer.dumped(t.child, t.dump, t.pool.request_slowlog_trace_depth))

    def _write_trace(self, t: Traced, stack) -> None:
        self.tracer.write(t.pool, t.child, t.slot, t.elapsed, stack,
                          self.slowlog_fds.get(t.pool.name))
        if t.terminate and t.child.pid in self.children.by_pid:
            t.child.board.mem.set_order(t.child.slot, ORDER_TIMEOUT)
            self._signal(t.child, signal.SIGTERM, 1.0)

    def _escalate(self, pid: int) -> None:
        child = self.children.by_pid.get(pid)
        if child is None:
            return
        sig = escalation(child.last_signal, child.stopping, child.board.read(child.slot).stage)
        if sig is None:
            self.timers.set((Timer.ESCALATE, pid), time.monotonic() + MAINTENANCE)
            return
        self.log.notice("[pool %s] child %d still alive, sending %s"
                        % (child.pool.name, pid, signal_name(sig)))
        self._signal(child, sig, 1.0)


def _printable(text: str) -> str:
    """PHP-FPM's rule for the script in timeout lines: non-printable bytes become '.'."""
    return "".join(ch if ch.isprintable() else "." for ch in text)
