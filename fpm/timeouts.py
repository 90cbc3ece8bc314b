"""The master's watch on requests: request_slowlog_timeout traces a worker into the
slowlog, request_terminate_timeout traces it and stops it (its 504 goes out first), and a
worker that outlives the signal it was sent alone is signalled harder."""
from __future__ import annotations

import signal
import time

from fpm import trace
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


class Timeouts:
    """Part of fpm.master.Master: request timeouts and per-worker escalation."""

    def _check_timeouts(self) -> None:
        """request_slowlog_timeout: trace the worker into the slowlog, once per request;
        request_terminate_timeout: trace it, then stop it (its 504 goes out first)."""
        now = now_us()
        for child in list(self.children.by_pid.values()):
            pool = self.pools.get(child.pool.name)
            if pool is None or child.pid not in self.children.by_pid:
                continue  # not a pool of this configuration, or gone during an earlier trace
            if not self._traced(pool):
                continue
            slot = child.board.read(child.slot)
            elapsed = slow(slot, pool.request_slowlog_timeout, now)
            if elapsed is not None and child.slow_logged != slot.accepted:
                child.slow_logged = slot.accepted
                self.log.warning('[pool %s] child %d, script \'%s\' (request: "%s %s") '
                                 'executing too slow (%.6f sec), logging'
                                 % self._request_words(pool, child, slot, elapsed))
                child.board.mem.count_slow_request()
                if not self._trace(pool, child, slot, elapsed):
                    continue
            elapsed = timed_out(slot, pool.request_terminate_timeout,
                                pool.request_terminate_timeout_track_finished, now)
            if elapsed is None or child.timed_out == slot.accepted:
                continue
            child.timed_out = slot.accepted
            self.log.warning('[pool %s] child %d, script \'%s\' (request: "%s %s") execution '
                             'timed out (%.6f sec), terminating'
                             % self._request_words(pool, child, slot, elapsed))
            if not self._trace(pool, child, slot, elapsed):
                continue
            child.board.mem.set_order(child.slot, ORDER_TIMEOUT)
            self._signal(child, signal.SIGTERM, 1.0)

    @staticmethod
    def _request_words(pool, child, slot, elapsed: float) -> tuple:
        return (pool.name, child.pid, _printable(slot.script or pool.app or ""),
                slot.request_method, _printable(slot.request_uri), elapsed)

    def _trace(self, pool, child, slot, elapsed: float) -> bool:
        """Write the worker's stack (slowlog, else error log); False if it exited meanwhile."""
        try:
            stack = self.tracer.stack(child, pool.request_slowlog_trace_depth)
        except trace.Gone as e:
            if e.status is not None:  # reaped by the tracer: account for it as the reaper would
                gone = self.children.bury(child.pid, e.status)
                if gone is not None:
                    self.reaped.append(gone)
            return False
        self.tracer.write(pool, child, slot, elapsed, stack, self.slowlog_fds.get(pool.name))
        return True

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
