"""The master's states (PHP-FPM's), which may follow which, and the signals that stop the
workers in each; fpm.master's docstring has the table."""
from __future__ import annotations

import enum
import signal


class State(enum.Enum):
    NORMAL = "normal"
    FINISHING = "finishing"
    TERMINATING = "terminating"


_OVERRIDES = {
    State.NORMAL: {State.FINISHING, State.TERMINATING},
    State.FINISHING: {State.TERMINATING},
    State.TERMINATING: set(),
}


def may_switch(current: State, new: State) -> bool:
    return new in _OVERRIDES[current]


def next_signal(state: State, last: int | None, timeout: int) -> tuple[int, float | None]:
    """The signal for the workers' next round and how long to wait before the round after.

    ``None`` as the wait means no escalation: a graceful stop with process_control_timeout 0
    waits for in-flight requests however long they take (PHP-FPM would kill them after 1 s).
    """
    if last is None:
        if state is State.TERMINATING:
            return signal.SIGTERM, float(timeout or 1)
        return signal.SIGQUIT, (float(timeout) if timeout > 0 else None)
    if last == signal.SIGQUIT:
        return signal.SIGTERM, 1.0
    return signal.SIGKILL, 1.0
