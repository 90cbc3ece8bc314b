"""The master's timers: named deadlines the loop sleeps until, and the periods they keep."""
from __future__ import annotations

MIN_HEARTBEAT = 0.13  # floor of the request-timeout check interval, as PHP-FPM's
HANDOVER_POLL = 0.02  # how often a reload checks whether the new workers are ready
MAINTENANCE = 1.0  # seconds between pm decisions (PHP-FPM's heartbeat)


def heartbeat(pools) -> float | None:
    """How often to check request timeouts: a third of the shortest, at least 130 ms."""
    timeouts = [t for p in pools for t in (p.request_terminate_timeout, p.request_slowlog_timeout)
                if t > 0]
    return max(MIN_HEARTBEAT, min(timeouts) / 3) if timeouts else None


class Timers:
    """Named deadlines on the monotonic clock; the loop sleeps until the earliest."""

    def __init__(self):
        self._at: dict[tuple, float] = {}

    def set(self, key: tuple, at: float) -> None:
        self._at[key] = at

    def cancel(self, key: tuple) -> None:
        self._at.pop(key, None)

    def pending(self, key: tuple) -> bool:
        return key in self._at

    def timeout(self, now: float) -> float | None:
        """Seconds until the earliest deadline (0 if one is due), None if there is none."""
        if not self._at:
            return None
        return max(0.0, min(self._at.values()) - now)

    def pop_due(self, now: float) -> list[tuple]:
        due = [key for key, at in self._at.items() if at <= now]
        for key in due:
            del self._at[key]
        return due
