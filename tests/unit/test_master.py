"""fpm.master decisions: the state overrides, the escalation rounds, the timers."""
import signal

import pytest

from fpm.master import record_fault
from fpm.states import State, may_switch, next_signal
from fpm.timeouts import escalation, timed_out
from fpm.timers import Timer, Timers, heartbeat
from fpm.scoreboard import FINISHING, IDLE, READING, RUNNING
from tests.conftest import blank_slot


@pytest.mark.parametrize("current, allowed", [
    (State.NORMAL, {State.FINISHING, State.TERMINATING}),
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


@pytest.mark.parametrize("stage, sig", [(IDLE, signal.SIGKILL), (READING, None),
                                        (RUNNING, None), (FINISHING, None)])
def test_an_idle_stop_is_killed_only_while_the_worker_is_still_idle(stage, sig):
    """bug77023: a worker that ignored its idle SIGQUIT and sits idle gets SIGKILL; one
    serving a request is left to finish it (looked at again next tick)."""
    assert escalation(signal.SIGQUIT, "idle", stage) == sig
    assert escalation(signal.SIGKILL, "idle", stage) == sig


@pytest.mark.parametrize("stopping", [None, "reload", "stop"])
def test_other_escalations_go_quit_term_kill(stopping):
    assert escalation(signal.SIGQUIT, stopping, RUNNING) == signal.SIGTERM
    assert escalation(signal.SIGTERM, stopping, IDLE) == signal.SIGKILL
    assert escalation(signal.SIGKILL, stopping, RUNNING) == signal.SIGKILL


def test_emergency_restart_needs_threshold_crashes_within_interval():
    faults, hits = (), []
    for t in (0, 5, 20, 21, 22):  # threshold 3 in 10 s: only 20, 21, 22 qualify
        faults, hit = record_fault(faults, float(t), 3, 10)
        hits.append(hit)
    assert hits == [False, False, False, False, True]
    assert faults == (), "counting starts afresh after a reload is triggered"


@pytest.mark.parametrize("threshold, interval", [(0, 10), (3, 0)])
def test_emergency_restart_off_unless_both_are_set(threshold, interval):
    faults = ()
    for t in range(10):
        faults, hit = record_fault(faults, float(t), threshold, interval)
        assert not hit


def slot(stage, accepted_s):
    return blank_slot(pid=1, stage=stage, accepted=int(accepted_s * 1e6), request_method="GET",
                      request_uri="/")


@pytest.mark.parametrize("stage, track, expected", [
    (READING, False, 12.0), (RUNNING, False, 12.0), (FINISHING, False, None),
    (FINISHING, True, 12.0), (IDLE, True, None)])
def test_terminate_timeout_applies_to_requests_in_progress(stage, track, expected):
    assert timed_out(slot(stage, 8.0), 10, track, int(20e6)) == expected


def test_terminate_timeout_not_yet_and_off():
    assert timed_out(slot(RUNNING, 15.0), 10, False, int(20e6)) is None
    assert timed_out(slot(RUNNING, 0.0), 0, False, int(20e6)) is None


def test_heartbeat_is_a_third_of_the_shortest_timeout():
    class P:
        def __init__(self, t, slow=0):
            self.request_terminate_timeout = t
            self.request_slowlog_timeout = slow
    assert heartbeat([P(0)]) is None
    assert heartbeat([P(30), P(9), P(0)]) == 3.0
    assert heartbeat([P(0), P(0)]) is None
    assert heartbeat([P(1)]) == pytest.approx(1 / 3)
    assert heartbeat([P(30, 6), P(0)]) == 2.0  # the slowlog timeout counts too
    assert heartbeat([P(0, 9)]) == 3.0


def test_timers():
    timers = Timers()
    assert timers.timeout(100.0) is None
    timers.set((Timer.PCTL,), 101.0)
    timers.set((Timer.SPAWN, "www"), 100.5)
    assert timers.timeout(100.0) == 0.5
    assert timers.pending((Timer.SPAWN, "www"))
    assert timers.pop_due(100.0) == []
    assert timers.pop_due(100.7) == [(Timer.SPAWN, "www")]
    assert timers.timeout(102.0) == 0.0
    timers.cancel((Timer.PCTL,))
    timers.cancel((Timer.PCTL,))
    assert timers.timeout(102.0) is None
