"""fpm.children decisions: how an exit is told, and how soon a pool spawns again."""
import signal

import pytest

from fpm.children import Child, Exit, describe_status, respawn_delay


def exited(code):
    return code << 8


def killed(sig, core=False):
    return sig | (0x80 if core else 0)


class Pool:
    name = "www"


@pytest.mark.parametrize("status, expected", [
    (exited(0), ("notice", "with code 0")),
    (exited(70), ("warning", "with code 70")),
    (killed(signal.SIGQUIT), ("notice", "on signal 3 (SIGQUIT)")),
    (killed(signal.SIGKILL), ("warning", "on signal 9 (SIGKILL)")),
    (killed(signal.SIGSEGV, core=True), ("warning", "on signal 11 (SIGSEGV - core dumped)")),
])
def test_describe_status(status, expected):
    assert describe_status(status) == expected


def test_exit_line():
    gone = Exit(Child(1235, Pool(), 0.0), killed(signal.SIGKILL), 1.2345671)
    assert gone.describe() == (
        "warning", "[pool www] child 1235 exited on signal 9 (SIGKILL) after 1.234567 seconds from start")


def test_app_load_failures_back_off_doubling_up_to_32_seconds():
    failures, delays = 0, []
    for _ in range(8):
        delay, failures = respawn_delay(exited(70), 0.2, failures)
        delays.append(delay)
    assert delays == [1, 2, 4, 8, 16, 32, 32, 32]


@pytest.mark.parametrize("status, lifetime", [
    (exited(70), 1.5),        # loaded, served, then failed: not an app-load loop
    (exited(0), 0.1),
    (exited(1), 0.1),
    (killed(signal.SIGKILL), 0.1),
])
def test_other_exits_respawn_at_once_and_reset(status, lifetime):
    assert respawn_delay(status, lifetime, 5) == (0.0, 0)
