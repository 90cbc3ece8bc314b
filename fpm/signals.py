"""The master's signal queue: handlers only enqueue, the event loop dispatches.

The C-level handler writes the signal number as one byte to a non-blocking pipe
(``signal.set_wakeup_fd``); the master waits on the read end together with its timers and
calls ``handle_<name>()`` for each byte, in arrival order. The Python-level handlers do
nothing: they exist so that the default actions (die, stop) do not apply to the master,
while a forked worker that resets them to SIG_DFL gets the defaults back (SIG_IGN would
survive into the worker and across exec).
"""
from __future__ import annotations

import os
import signal

# The signals the master acts on, in PHP-FPM's set. SIGHUP keeps its default, as there.
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGCHLD)


def name(signum: int) -> str:
    """``SIGSEGV`` for 11; ``SIG42`` for a number without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "SIG%d" % signum


def handler_name(signum: int) -> str:
    """The master method that handles ``signum``: ``handle_term`` for SIGTERM."""
    return "handle_" + name(signum)[3:].lower()


def _enqueued(signum, frame) -> None:
    """The byte is already in the pipe (written by the C handler); nothing to do here."""


class SignalQueue:
    """Owns the wakeup pipe and the master's handlers. Create once, in the master."""

    def __init__(self):
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        for sig in HANDLED:
            signal.signal(sig, _enqueued)
        # A full pipe only drops repeats of signals already queued; no warning needed.
        signal.set_wakeup_fd(self.wfd, warn_on_full_buffer=False)

    def drain(self) -> list[int]:
        """Signal numbers received since the last call, oldest first."""
        received = []
        while True:
            try:
                chunk = os.read(self.rfd, 512)
            except BlockingIOError:
                break
            if not chunk:
                break
            received.extend(chunk)
        return received

    def close(self) -> None:
        """Give the signals back their default actions and close the pipe.

        Called in a freshly forked worker before it installs its own handlers, and by the
        master on its way out.
        """
        signal.set_wakeup_fd(-1)
        for sig in HANDLED:
            signal.signal(sig, signal.SIG_DFL)
        os.close(self.rfd)
        os.close(self.wfd)
