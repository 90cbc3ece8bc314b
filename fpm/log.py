"""Error log in PHP-FPM's line shape: ``[21-Nov-2026 10:00:00] NOTICE: message``.

One ``os.write`` per message, so lines from the master and its workers (which inherit
the fd) never interleave mid-line, and a traceback stays in one piece.
"""
from __future__ import annotations

import os
import time
import traceback

LEVELS = ("debug", "notice", "warning", "error", "alert")

# strftime's %b follows the locale; PHP-FPM's lines always use the C locale's names.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_time(t: float) -> str:
    """``21-Nov-2026 10:00:00`` in local time, C-locale month name."""
    tm = time.localtime(t)
    return "%02d-%s-%04d %02d:%02d:%02d" % (
        tm.tm_mday, _MONTHS[tm.tm_mon - 1], tm.tm_year, tm.tm_hour, tm.tm_min, tm.tm_sec)


def format_message(level: str, msg: str, t: float) -> bytes:
    """Every line of ``msg`` gets the prefix, so each stays greppable by level."""
    prefix = "[%s] %s: " % (format_time(t), level.upper())
    lines = msg.rstrip("\n").split("\n")
    return "".join(prefix + line + "\n" for line in lines).encode("utf-8", "backslashreplace")


def strerror(err: OSError | int) -> str:
    """PHP-FPM's SYSERROR suffix body: ``Address already in use (98)``."""
    errno = err if isinstance(err, int) else err.errno
    if errno is None:
        return str(err)
    return "%s (%d)" % (os.strerror(errno), errno)


def choose_target(error_log: str, daemon: bool, force_stderr: bool, stderr_is_tty: bool) -> str:
    """Where the master logs, by PHP-FPM's rule: a foreground master writes to stderr when
    it is a terminal or ``-O`` is given; otherwise to ``error_log``."""
    if not daemon and (force_stderr or stderr_is_tty):
        return "stderr"
    return error_log


class Logger:
    """Writes to fd 2 (``target="stderr"``) or to a file opened O_APPEND, mode 0600.

    ``echo_stderr`` copies NOTICE and above to stderr as well while the master is starting
    up with a file target, as PHP-FPM does until it is "launched", so a failed start is
    visible on the terminal that ran it.
    """

    def __init__(self, target: str = "stderr", level: str = "notice", echo_stderr: bool = False):
        if level not in LEVELS:
            raise ValueError("log_level '%s' is not one of %s" % (level, ", ".join(LEVELS)))
        self.target = target
        self.level = level
        self._threshold = LEVELS.index(level)
        self.echo_stderr = echo_stderr
        self.fd = self._open()

    def _open(self) -> int:
        if self.target == "stderr":
            return 2
        return os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @property
    def is_file(self) -> bool:
        return self.target != "stderr"

    def reopen(self) -> None:
        """Reopen the file (after logrotate moved it) onto the same fd number.

        Keeping the number matters: workers forked earlier write to it too. Raises OSError.
        """
        if not self.is_file:
            return
        fd = self._open()
        try:
            os.dup2(fd, self.fd, inheritable=False)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.is_file:
            os.close(self.fd)
            self.fd = -1

    def enabled(self, level: str) -> bool:
        return LEVELS.index(level) >= self._threshold

    def log(self, level: str, msg: str) -> None:
        if not self.enabled(level):
            return
        data = format_message(level, msg, time.time())
        _write_all(self.fd, data)
        if self.echo_stderr and self.is_file and LEVELS.index(level) >= 1:
            _write_all(2, data)

    def debug(self, msg: str) -> None:
        self.log("debug", msg)

    def notice(self, msg: str) -> None:
        self.log("notice", msg)

    def warning(self, msg: str) -> None:
        self.log("warning", msg)

    def error(self, msg: str) -> None:
        self.log("error", msg)

    def alert(self, msg: str) -> None:
        self.log("alert", msg)

    def syserror(self, msg: str, err: OSError | int, level: str = "error") -> None:
        """``msg: strerror (errno)``, PHP-FPM's ZLOG_SYSERROR."""
        self.log(level, "%s: %s" % (msg, strerror(err)))

    def exception(self, msg: str) -> None:
        """ERROR lines: ``msg`` and the traceback being handled, in one write."""
        self.log("error", msg + "\n" + traceback.format_exc())


def _write_all(fd: int, data: bytes) -> None:
    # A blocking write to a file or pipe is normally whole; loop for the rare short write.
    # A log line must never take the process down, so a broken target is ignored.
    try:
        while data:
            n = os.write(fd, data)
            data = data[n:]
    except OSError:
        pass


LOG = Logger()


def set_logger(logger: Logger) -> None:
    """Make ``logger`` the module default (``fpm.log.LOG``)."""
    global LOG
    LOG = logger


def get_logger() -> Logger:
    return LOG

