"""The master's timers: deadlines the loop sleeps until, what each is for, and the periods
they keep."""
from __future__ import annotations

import enum

MIN_HEARTBEAT = 0.13  # floor of the request-timeout check interval, as PHP-FPM's
HANDOVER_POLL = 0.02  # how often a reload checks whether the new workers are ready
# How long the previous workers may serve past their recycling limits while the new ones
# are not ready (their app still loading): a hung import must not lift pm.max_memory for good.
RECYCLE_HOLD_MAX = 10.0
MAINTENANCE = 1.0  # seconds between pm decisions (PHP-FPM's heartbeat)
# A finishing master's TCP listener, SYNs held back, stops listening once nothing has come
# for SHUT_QUIET (fpm.stopping): the handshakes under way then have completed, their round
# trip shorter (a web server on the same network). The master takes what comes for up to
# SHUT_SPIN at a time, then looks again SHUT_POLL later. A connect() meanwhile waits for
# its SYN to be sent again, a second later.
SHUT_QUIET = 0.001
SHUT_SPIN = 0.005
SHUT_POLL = 0.001


def heartbeat(pools) -> float | None:
    """How often to check request timeouts: a third of the shortest, at least 130 ms."""
    timeouts = [t for p in pools for t in (p.request_terminate_timeout, p.request_slowlog_timeout)
                if t > 0]
    return max(MIN_HEARTBEAT, min(timeouts) / 3) if timeouts else None


class Timer(enum.Enum):
    """What a deadline is for. A timer's key is the Timer alone, or with the pool (its name),
    the pool's parking lot or the worker (its pid) it is for."""

    MAINTENANCE = "maintenance"  # every pool's pm decision, each MAINTENANCE s
    HEARTBEAT = "heartbeat"  # request timeouts, each heartbeat() s
    SPAWN = "spawn"  # a pool's delayed fork (pool)
    ONDEMAND = "ondemand"  # an ondemand pool's listen queue, looked at again (pool)
    HANDOVER = "handover"  # retire the previous master's workers once the new ones serve
    ESCALATE = "escalate"  # a worker that outlived its signal, signalled harder (pid)
    DUMP = "dump"  # a slowlog faulthandler dump, out of time (pid)
    PCTL = "pctl"  # the next round of stop signals (process_control_timeout)
    SHUT = "shut"  # a finishing master's listeners, looked at until they can stop listening
    SYSTEMD = "systemd"  # a status report to systemd
    PARKED = "parked"  # a lot's next head deadline (pool)
    HANDOFF = "handoff"  # a lot's hand-off, tried again (pool)
    RECHECK = "recheck"  # a lot's partial heads, peeked at again (pool)

    @property
    def normal_only(self) -> bool:
        """Due only while the master runs normally: a stopping master forks nothing."""
        return self in (Timer.MAINTENANCE, Timer.SPAWN, Timer.ONDEMAND, Timer.HANDOVER)


Key = tuple  # (Timer,) or (Timer, pool name or pid)


class Timers:
    """Deadlines on the monotonic clock, by key; the loop sleeps until the earliest."""

    def __init__(self):
        self._at: dict[Key, float] = {}

    def set(self, key: Key, at: float) -> None:
        self._at[key] = at

    def cancel(self, key: Key) -> None:
        self._at.pop(key, None)

    def pending(self, key: Key) -> bool:
        return key in self._at

    def timeout(self, now: float) -> float | None:
        """Seconds until the earliest deadline (0 if one is due), None if there is none."""
        if not self._at:
            return None
        return max(0.0, min(self._at.values()) - now)

    def pop_due(self, now: float) -> list[Key]:
        due = [key for key, at in self._at.items() if at <= now]
        for key in due:
            del self._at[key]
        return due
