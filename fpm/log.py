"""Error log in PHP-FPM's line shape: ``[21-Nov-2026 10:00:00] NOTICE: message``.

Targets: ``stderr``, ``syslog`` (``[NOTICE] message``, tagged with syslog.ident, sent with
syslog.facility) or a file. Only the master writes it, one ``os.write`` per message, so a
traceback stays in one piece; workers send their lines to the master (fpm.workerlog) and
never hold the log.
"""
from __future__ import annotations

import os
import re
import syslog
import time
import traceback

LEVELS = ("debug", "notice", "warning", "error", "alert")

# Each message goes to syslog with its own level's priority. PHP-FPM 8.2 passes the priority
# of the configured log_level instead (every line of a notice-level log is a syslog NOTICE),
# which defeats syslog's own filtering and journald's colouring: not copied.
PRIORITIES = {"debug": syslog.LOG_DEBUG, "notice": syslog.LOG_NOTICE,
              "warning": syslog.LOG_WARNING, "error": syslog.LOG_ERR, "alert": syslog.LOG_ALERT}
# Python's syslog module lacks LOG_FTP; <syslog.h> has it as facility 11 (11 << 3).
FACILITIES = {name: getattr(syslog, "LOG_" + name.upper(), 11 << 3) for name in (
    "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog",
    "user", "uucp", *("local%d" % n for n in range(8)))}

# PHP-FPM formats its own messages into a buffer of this size; see limit_line().
MAX_BUF_LENGTH = 2048
DEFAULT_LIMIT = 1024

# strftime's %b follows the locale; PHP-FPM's lines always use the C locale's names.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_time(t: float) -> str:
    """``21-Nov-2026 10:00:00`` in local time, C-locale month name."""
    tm = time.localtime(t)
    return "%02d-%s-%04d %02d:%02d:%02d" % (
        tm.tm_mday, _MONTHS[tm.tm_mon - 1], tm.tm_year, tm.tm_hour, tm.tm_min, tm.tm_sec)


def prefix(level: str, t: float, for_syslog: bool = False) -> bytes:
    """``[21-Nov-2026 10:00:00] NOTICE: `` for a file or stderr, ``[NOTICE] `` for syslog,
    which stamps the time itself."""
    if for_syslog:
        return b"[%s] " % level.upper().encode()
    return ("[%s] %s: " % (format_time(t), level.upper())).encode()


def limit_line(line: bytes, limit: int, syserror: bool = False) -> bytes:
    """PHP-FPM's rule for a master message (prefix included, no newline): it is cut to
    ``min(limit, 2048)`` bytes with the newline, ending in ``...``, only when it does not fit
    PHP-FPM's 2048-byte buffer, or when it is a SYSERROR line that reaches ``limit``;
    a plain message longer than ``limit`` that fits the buffer is written whole."""
    if len(line) < MAX_BUF_LENGTH and not (syserror and len(line) >= limit):
        return line
    cap = min(limit, MAX_BUF_LENGTH)
    return line[:utf8_cut(line, cap - 4)] + b"..."


def utf8_cut(data: bytes, n: int) -> int:
    """Where to cut ``data`` to keep at most ``n`` bytes without splitting a UTF-8 sequence
    (bytes that are not UTF-8 are cut at ``n``)."""
    if n >= len(data):
        return len(data)
    cut = n
    while cut > n - 3 and cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut if cut > 0 and (data[cut] & 0xC0) != 0x80 else n


# What a worker's text must not carry into a line of the log: control characters but the
# tab (a carriage return or an escape sequence makes a terminal show what looks like another
# line), and the characters Unicode counts as line ends (str.splitlines() splits at them).
_UNSAFE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")


def _visible(m: re.Match) -> bytes:
    c = m[0]
    return b"\\x%02x" % c[0] if len(c) == 1 else b"\\u%04x" % ord(c.decode())


def escape(data: bytes) -> bytes:
    """UTF-8 ``data`` with each character that could end or disguise a line written as
    ``\\xNN`` (``\\uNNNN`` beyond ASCII). Backslashes stay: escaping twice changes nothing."""
    return _UNSAFE.sub(_visible, data)


def format_message(level: str, msg: str, t: float, limit: int = DEFAULT_LIMIT,
                   syserror: bool = False, for_syslog: bool = False) -> bytes:
    """Every line of ``msg`` gets the prefix, so each stays greppable by level; each is
    limited by PHP-FPM's rule (``limit_line``)."""
    head = prefix(level, t, for_syslog)
    lines = msg.rstrip("\n").split("\n")
    return b"".join(
        limit_line(head + line.encode("utf-8", "backslashreplace"), limit, syserror) + b"\n"
        for line in lines)


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


# Paths that name one of the process's own descriptors rather than a file.
_STREAMS = {"/dev/stdout": 1, "/dev/stderr": 2}
_FD_DIRS = ("/proc/self/fd/", "/dev/fd/")


def stream_fd(path: str) -> int | None:
    """The descriptor number ``path`` names when it is one of this process's own
    (``/dev/stderr``, ``/dev/stdout``, ``/proc/self/fd/N``, ``/dev/fd/N``), else None.

    An access log there (the container pattern) must follow what that descriptor was at
    start: opening the path again later would follow what it is now, and the master's fd 2
    is the error log once it has launched (php-src GH-8885)."""
    path = os.path.normpath(path)
    if path in _STREAMS:
        return _STREAMS[path]
    for prefix in _FD_DIRS:
        number = path.removeprefix(prefix)
        if number != path and number.isascii() and number.isdigit():
            return int(number)
    return None


def open_log_file(path: str) -> int:
    """A log file as PHP-FPM opens one: write-only, appending, created 0600, close-on-exec.

    The master opens every log before it forks, so workers that drop privileges or chroot
    still write to files they could not open themselves."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


class Levels:
    """A method per level, and ``exception()``, over ``self.log(level, msg)``: the master's
    Logger and a worker's fpm.workerlog.WorkerLog."""

    def log(self, level: str, msg: str) -> None:
        raise NotImplementedError

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

    def exception(self, msg: str) -> None:
        """ERROR lines: ``msg`` and the traceback being handled, written at once."""
        self.log("error", msg + "\n" + traceback.format_exc())


class Logger(Levels):
    """Writes to fd 2 (``target="stderr"``), to syslog (``target="syslog"``) or to a file
    opened O_APPEND, mode 0600.

    ``echo_stderr`` copies NOTICE and above to stderr as well while the master is starting
    up with a file or syslog target, as PHP-FPM does until it is "launched", so a failed
    start is visible on the terminal that ran it. ``limit`` is log_limit (``limit_line``);
    ``buffering`` is log_buffering, which only captured worker output (fpm.stdio) uses.
    """

    def __init__(self, target: str = "stderr", level: str = "notice", echo_stderr: bool = False,
                 *, limit: int = DEFAULT_LIMIT, ident: str = "pyfpm", facility: str = "daemon",
                 buffering: bool = True):
        if level not in LEVELS:
            raise ValueError("log_level '%s' is not one of %s" % (level, ", ".join(LEVELS)))
        if facility not in FACILITIES:
            raise ValueError("syslog.facility '%s' is not one of %s"
                             % (facility, ", ".join(FACILITIES)))
        self.target = target
        self.level = level
        self._threshold = LEVELS.index(level)
        self.echo_stderr = echo_stderr
        self.limit = limit
        self.buffering = buffering
        self.ident = ident
        self.facility = facility
        self.fd = self._open()

    def _open(self) -> int:
        if self.target == "stderr":
            return 2
        if self.target == "syslog":
            # NDELAY connects now, so that a failure shows at start. PID and CONS as
            # PHP-FPM's openlog().
            syslog.openlog(self.ident, syslog.LOG_PID | syslog.LOG_CONS | syslog.LOG_NDELAY,
                           FACILITIES[self.facility])
            return -1
        return open_log_file(self.target)

    @property
    def is_file(self) -> bool:
        return self.target not in ("stderr", "syslog")

    @property
    def is_syslog(self) -> bool:
        return self.target == "syslog"

    def reopen(self) -> None:
        """Reopen the file (after logrotate moved it) onto the same fd number. Raises OSError."""
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

    def leave(self) -> None:
        """In a new worker, which must not hold the log: let go of the target. syslog's
        socket is closed here, so that a syslog() call of the app connects afresh rather
        than send on a number the worker reuses; a file's fd is closed with the others the
        worker does not keep. The master's object is no use to the worker after this."""
        if self.is_syslog:
            syslog.closelog()
        self.fd = -1

    def enabled(self, level: str) -> bool:
        return LEVELS.index(level) >= self._threshold

    def log(self, level: str, msg: str, syserror: bool = False) -> None:
        if not self.enabled(level):
            return
        t = time.time()
        data = format_message(level, msg, t, self.limit, syserror, self.is_syslog)
        self.write(level, data)
        if self.echo_stderr and self.target != "stderr" and LEVELS.index(level) >= 1:
            write_all(2, data if not self.is_syslog else
                       format_message(level, msg, t, self.limit, syserror))

    def write(self, level: str, data: bytes) -> None:
        """Complete lines, already formatted for this target, in one write (one syslog
        message per line); ``level`` is the syslog priority."""
        if self.is_syslog:
            priority = PRIORITIES[level]
            for line in data.decode("utf-8", "backslashreplace").splitlines():
                syslog.syslog(priority, line)
        else:
            write_all(self.fd, data)

    def syserror(self, msg: str, err: OSError | int, level: str = "error") -> None:
        """``msg: strerror (errno)``, PHP-FPM's ZLOG_SYSERROR."""
        self.log(level, "%s: %s" % (msg, strerror(err)), syserror=True)



def write_all(fd: int, data: bytes) -> None:
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
