"""fpm.signals: handlers only enqueue; the queue gives the signals back in order."""
import os
import signal

import pytest

from fpm.signals import HANDLED, SignalQueue, handler_name, name


def test_names():
    assert name(signal.SIGSEGV) == "SIGSEGV"
    assert name(200) == "SIG200"
    assert [handler_name(s) for s in HANDLED] == [
        "handle_term", "handle_int", "handle_quit", "handle_usr1", "handle_usr2", "handle_chld"]


@pytest.fixture(autouse=True)
def pytest_handlers():
    """Give pytest its own handlers back (SIGINT is its KeyboardInterrupt)."""
    saved = {s: signal.getsignal(s) for s in HANDLED}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.fixture
def queue():
    q = SignalQueue()
    yield q
    q.close()


def test_signals_are_queued_in_order_not_acted_on(queue):
    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR2):
        os.kill(os.getpid(), sig)
    assert queue.drain() == [signal.SIGUSR1, signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR2]
    assert queue.drain() == []


def test_close_restores_defaults():
    q = SignalQueue()
    q.close()
    assert all(signal.getsignal(s) == signal.SIG_DFL for s in HANDLED)
    assert signal.set_wakeup_fd(-1) == -1
