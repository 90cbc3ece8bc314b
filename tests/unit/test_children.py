"""fpm.children decisions: how an exit is told, and how soon a pool spawns again."""
import os
import signal

import pytest

from fpm.children import Child, Exit, app_retry, describe_status, exit_level, respawn_delay


def exited(code):
    return code << 8


def killed(sig, core=False):
    return sig | (0x80 if core else 0)


class Pool:
    name = "www"


@pytest.mark.parametrize("status, expected", [
    (exited(0), "with code 0"),
    (exited(70), "with code 70"),
    (killed(signal.SIGQUIT), "on signal 3 (SIGQUIT)"),
    (killed(signal.SIGKILL), "on signal 9 (SIGKILL)"),
    (killed(signal.SIGSEGV, core=True), "on signal 11 (SIGSEGV - core dumped)"),
])
def test_describe_status(status, expected):
    assert describe_status(status) == expected


def test_exit_line():
    gone = Exit(Child(1235, Pool(), 0.0), killed(signal.SIGKILL), 1.2345671)
    assert gone.describe() == (
        "warning", "[pool www] child 1235 exited on signal 9 (SIGKILL) after 1.234567 seconds from start")


QUIT, TERM, INT, KILL = signal.SIGQUIT, signal.SIGTERM, signal.SIGINT, signal.SIGKILL


@pytest.mark.parametrize("status, stopping, asked, level", [
    # Nobody asked: PHP-FPM's levels in its normal state.
    (exited(0), None, set(), "notice"),           # pm.max_requests, pm.max_memory
    (killed(QUIT), None, set(), "notice"),        # someone's kill -QUIT: graceful
    (exited(70), None, set(), "warning"),
    (killed(KILL), None, set(), "warning"),       # the OOM killer
    (killed(TERM), None, {TERM}, "warning"),      # request_terminate_timeout, as PHP-FPM
    # QUIT, TERM, INT of the master and a reload: what was asked is expected (bug68381).
    (exited(0), "stop", {QUIT}, "debug"),
    (killed(TERM), "stop", {TERM}, "debug"),
    (killed(INT), "stop", {INT, TERM}, "debug"),  # Ctrl-C reached the group
    (killed(KILL), "stop", {QUIT, TERM, KILL}, "debug"),  # process_control_timeout ran out
    (exited(0), "reload", {QUIT}, "debug"),
    (killed(TERM), "reload", {QUIT, TERM}, "debug"),
    # ... but not a crash, nor a signal nobody sent.
    (killed(signal.SIGSEGV), "stop", {QUIT}, "warning"),
    (killed(KILL), "stop", {QUIT}, "warning"),
    (exited(70), "reload", {QUIT}, "warning"),
    # Idle stop: SIGQUIT obeyed is routine; the SIGKILL for ignoring it is not (bug77023).
    (exited(0), "idle", {QUIT}, "debug"),
    (killed(QUIT), "idle", {QUIT}, "debug"),
    (killed(KILL), "idle", {QUIT, KILL}, "warning"),
    (killed(signal.SIGSEGV), "idle", {QUIT}, "warning"),
])
def test_exit_level(status, stopping, asked, level):
    assert exit_level(status, stopping, asked) == level


def test_idle_stop_line_is_php_fpms():
    child = Child(7, Pool(), 0.0, stopping="idle", asked={QUIT})
    assert Exit(child, exited(0), 2.5).describe() == (
        "debug", "[pool www] child 7 has been killed by the process management after "
                 "2.500000 seconds from start")
    child.asked.add(KILL)
    assert Exit(child, killed(KILL), 3.5).describe() == (
        "warning", "[pool www] child 7 exited on signal 9 (SIGKILL) after 3.500000 seconds "
                   "from start")


def gone_after(status, lifetime, ready=True, app_failed=False, tries=0):
    return Exit(Child(9, Pool(), 0.0, tries=tries), status, lifetime, ready, app_failed)


def test_app_load_failures_back_off_doubling_up_to_32_seconds():
    """Workers that exit at once (a reload: the previous workers still serve) make the
    pool wait 1, 2, 4 ... 32 s between tries; one that ended before it was ready to serve
    (its chdir, its user, its import killed it) counts the same."""
    failures, delays = 0, []
    for status in [exited(os.EX_UNAVAILABLE)] * 4 + [exited(70), killed(signal.SIGSEGV)] * 2:
        delay, failures = respawn_delay(gone_after(status, 0.25, ready=False, tries=failures),
                                        failures)
        delays.append(delay)
    assert delays == [0.75, 1.75, 3.75, 7.75, 15.75, 31.75, 31.75, 31.75]


def test_the_count_of_failed_tries_is_bounded():
    assert respawn_delay(gone_after(exited(70), 0.0, ready=False, tries=5000), 5000) == (32.0, 5)
    assert app_retry(10 ** 6) == 32.0


def test_a_worker_that_answered_503_for_its_while_is_replaced_at_once():
    assert respawn_delay(gone_after(exited(os.EX_UNAVAILABLE), app_retry(3), app_failed=True,
                                    tries=3), 3) == (0.0, 4)
    # However it ended: it failed its try.
    assert respawn_delay(gone_after(killed(signal.SIGKILL), 0.5, app_failed=True, tries=1),
                         1) == (0.0, 2)
    assert [app_retry(n) for n in range(7)] == [1, 2, 4, 8, 16, 32, 32]


def test_workers_of_one_try_that_fail_together_count_once():
    failures = 2
    for _ in range(4):  # the pool's 4 workers, all forked at try 2
        _, failures = respawn_delay(gone_after(exited(os.EX_UNAVAILABLE), 4.0, app_failed=True,
                                               tries=2), failures)
    assert failures == 3


@pytest.mark.parametrize("status, lifetime", [
    (exited(70), 1.5),        # loaded, served, then failed: not an app-load loop
    (exited(70), 0.1),
    (exited(0), 0.1),
    (exited(1), 0.1),
    (killed(signal.SIGKILL), 0.1),
])
def test_other_exits_respawn_at_once_and_reset(status, lifetime):
    assert respawn_delay(gone_after(status, lifetime, tries=5), 5) == (0.0, 0)
