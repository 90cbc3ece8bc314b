"""fpm.master decisions: the state overrides, the escalation rounds, the timers."""
import signal

import pytest

from fpm.master import State, Timers, may_switch, next_signal


@pytest.mark.parametrize("current, allowed", [
    (State.NORMAL, {State.RELOADING, State.FINISHING, State.TERMINATING}),
    (State.RELOADING, {State.FINISHING, State.TERMINATING}),
    (State.FINISHING, {State.TERMINATING}),
    (State.TERMINATING, set()),
])
def test_overrides(current, allowed):
    assert {new for new in State if may_switch(current, new)} == allowed


def rounds(state, timeout, n=4):
    out, last = [], None
    for _ in range(n):
        sig, wait = next_signal(state, last, timeout)
        out.append((sig, wait))
        if wait is None:
            break
        last = sig
    return out


def test_terminating_kills_after_a_second_by_default():
    assert rounds(State.TERMINATING, 0, 3) == [
        (signal.SIGTERM, 1.0), (signal.SIGKILL, 1.0), (signal.SIGKILL, 1.0)]


def test_terminating_waits_process_control_timeout():
    assert rounds(State.TERMINATING, 5, 2) == [(signal.SIGTERM, 5.0), (signal.SIGKILL, 1.0)]


def test_finishing_without_timeout_waits_for_the_workers():
    assert rounds(State.FINISHING, 0) == [(signal.SIGQUIT, None)]


def test_finishing_escalates_quit_term_kill():
    assert rounds(State.FINISHING, 10, 3) == [
        (signal.SIGQUIT, 10.0), (signal.SIGTERM, 1.0), (signal.SIGKILL, 1.0)]


def test_reloading_starts_like_finishing():
    assert next_signal(State.RELOADING, None, 3) == (signal.SIGQUIT, 3.0)


def test_timers():
    timers = Timers()
    assert timers.timeout(100.0) is None
    timers.set(("pctl",), 101.0)
    timers.set(("spawn", "www"), 100.5)
    assert timers.timeout(100.0) == 0.5
    assert timers.pending(("spawn", "www"))
    assert timers.pop_due(100.0) == []
    assert timers.pop_due(100.7) == [("spawn", "www")]
    assert timers.timeout(102.0) == 0.0
    timers.cancel(("pctl",))
    timers.cancel(("pctl",))
    assert timers.timeout(102.0) is None
