"""A worker's lines reach the error log through the master, never directly: no worker holds
the log, so none can forge or erase it (PHP-FPM's children, too, write to pipes the master
reads: fpm_stdio.c).

Each worker gets one end of a SOCK_SEQPACKET socket pair (``pair``) and the master reads the
other (``Reader``). A message is one record, a kind byte and its payload:

=========== ===================================================================
kind        payload
=========== ===================================================================
d n w e a   the worker's own line(s), at that level (debug, notice ... alert)
s           bytes the app wrote to sys.stderr (without catch_workers_output)
r           wsgi.errors: the request line, a NUL, the bytes the app wrote
=========== ===================================================================

The master knows whose socket it reads, and writes each line it gets under a prefix of its
own making, every line of a record alike:

    [21-Nov-2026 10:00:00] ERROR: [pool www] child 12: the application raised an exception ...
    [21-Nov-2026 10:00:00] ERROR: [pool www] child 12: Traceback (most recent call last):
    [21-Nov-2026 10:00:00] WARNING: [pool www] child 12 said into stderr: "text"
    [21-Nov-2026 10:00:00] WARNING: [pool www] child 12 said into wsgi.errors on "GET /x": "text"

A worker writes any text it likes, but only after that prefix: a newline starts a new line
with the same prefix, and other control characters are written as ``\\xNN``
(fpm.log.escape). So no line a worker sends can pass for the master's or another worker's.
(``decorate_workers_output = no`` asks for lines as printed, without prefix: that pool's
output is trusted with the log's format.)

``s`` is cut into lines as captured output is (fpm.stdio.Lines: the pool's decoration,
log_limit, log_buffering, MARK at a request's end). ``r`` lines are always decorated and
wrapped at log_limit, the request line cut to a quarter of it; the worker sends MARK at the
end of a request that wrote to wsgi.errors, which ends its last line.

Messages keep their bounds and the master alone writes the log, so a line is never cut or
mixed with another. A record longer than a message (MAX_MESSAGE) is sent in pieces; the
worker filters by log_level before it sends, so a line nobody logs costs nothing, and a
request that logs nothing sends nothing.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Callable

from fpm.log import LEVELS, MAX_BUF_LENGTH, Levels, Logger, escape, limit_line, prefix
from fpm.stdio import CLOSED_SUFFIX, LEVEL, MARK, Lines, said_head

KINDS = {level: level[:1].encode() for level in LEVELS}  # d n w e a
_LEVEL_OF = {kind[0]: level for level, kind in KINDS.items()}
STDERR, ERRORS = b"s", b"r"
MAX_MESSAGE = 65536
# A request line longer than this is cut by the worker; the master cuts it to log_limit / 4.
MAX_REQUEST = 1024
# Read per readable() call, so that a worker logging without pause cannot hold up the
# master's loop; the rest is read on the next turn (the fds are level-triggered).
READ_BUDGET = 1 << 20


def pair() -> tuple[int, int]:
    """(master end, worker end); close-on-exec, the master's end non-blocking."""
    master, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    master.setblocking(False)
    return master.detach(), worker.detach()


# --- the worker's side -------------------------------------------------------------------------

class WorkerLog(Levels):
    """A worker's log: the part of fpm.log.Logger's interface worker code uses, and the
    streams fpm.stdio sends (``stderr``) and wsgi.errors (``ErrorsLog``). Lines are the
    text after the worker's prefix, which the master adds."""

    def __init__(self, fd: int, level: str = "notice", buffering: bool = True):
        self.sock = socket.socket(fileno=fd)
        self.level = level
        self._threshold = LEVELS.index(level)
        self.buffering = buffering

    def enabled(self, level: str) -> bool:
        return LEVELS.index(level) >= self._threshold

    def log(self, level: str, text: str) -> None:
        if not self.enabled(level):
            return
        # A line cut here still fills PHP-FPM's buffer, so the master cuts it the same way.
        lines = [line[:MAX_BUF_LENGTH] for line in
                 text.rstrip("\n").encode("utf-8", "backslashreplace").split(b"\n")]
        piece: list[bytes] = []
        size = 1
        for line in lines:
            if piece and size + len(line) + 1 > MAX_MESSAGE:
                self._send(KINDS[level] + b"\n".join(piece))
                piece, size = [], 1
            piece.append(line)
            size += len(line) + 1
        self._send(KINDS[level] + b"\n".join(piece))

    def stderr(self, data: bytes) -> None:
        """Bytes for the worker's ``said into stderr`` lines."""
        self._stream(STDERR, data)

    def _stream(self, head: bytes, data: bytes) -> None:
        room = MAX_MESSAGE - len(head)
        for start in range(0, len(data), room):
            self._send(head + data[start:start + room])

    def _send(self, message: bytes) -> None:
        # Blocks while the master's end is full, as a write to the log file would. A master
        # that is gone is no error: the worker follows it (PR_SET_PDEATHSIG).
        try:
            self.sock.send(message, socket.MSG_NOSIGNAL)
        except OSError:
            pass


class ErrorsLog:
    """wsgi.errors into the error log, for fpm._worker: ``say(request, text)`` with the
    request's line (``GET /x``), ``end()`` when a request that said something ends."""

    def __init__(self, log: WorkerLog):
        self.log = log
        self.head = ERRORS + b"-\0"

    def say(self, request: str, text: str) -> None:
        if self.log.enabled(LEVEL):
            self.head = (ERRORS + request.encode("utf-8", "backslashreplace")[:MAX_REQUEST]
                         + b"\0")
            self.log._stream(self.head, text.encode("utf-8", "backslashreplace"))

    def end(self) -> None:
        if self.log.enabled(LEVEL):
            self.log._send(self.head + MARK)


# --- the master's side -------------------------------------------------------------------------

@dataclass
class _Source:
    pid: int
    pool: str
    stderr: Lines
    errors: Lines
    request: bytes = b"-"
    ended: bool = False  # the worker's end is closed: no longer watched, not yet closed


class Reader:
    """The master's ends of the workers' log sockets: ``attach`` one after the fork (or
    after a re-exec handed it over), ``readable(fd)`` when the loop sees it readable,
    ``drop(pid)`` once the worker is reaped. ``forget(fd)`` is called once an fd is no longer
    to be watched: at its end of file, or at ``drop``. It is closed at ``drop`` only: until
    its worker is reaped, the number is the worker's (a reload passes it on)."""

    def __init__(self, log: Logger, forget: Callable[[int], None] | None = None):
        self.log = log
        self.forget = forget
        self._sources: dict[int, _Source] = {}

    def attach(self, pid: int, pool, fd: int) -> None:
        """Read ``fd``, the log socket of worker ``pid`` of ``pool`` (a PoolConfig)."""
        log = self.log
        self._sources[fd] = _Source(pid, pool.name,
                                    Lines(pool.decorate_workers_output, log.limit, log.buffering),
                                    Lines(True, log.limit, True))

    def fds(self) -> list[int]:
        return list(self._sources)

    def readable(self, fd: int) -> bool:
        """Log the records ``fd`` holds; False once the worker's end is closed (then the
        fd is closed too)."""
        source = self._sources[fd]
        if not self._read(fd, source):
            self._end(fd, source, CLOSED_SUFFIX)
            return False
        return True

    def drop(self, pid: int) -> None:
        """``pid`` was reaped: log what its socket still holds, then close it."""
        for fd, source in [(fd, s) for fd, s in self._sources.items() if s.pid == pid]:
            if not source.ended:
                self._end(fd, source, CLOSED_SUFFIX if not self._read(fd, source) else b"")
            del self._sources[fd]
            os.close(fd)

    def _read(self, fd: int, source: _Source) -> bool:
        """Log what ``fd`` holds, up to READ_BUDGET; False at its end. What one call reads
        is written at once: a file gets one write (syslog, a message per line)."""
        got = 0
        out: list[tuple[str, bytes]] = []
        open_ = True
        t = time.time()
        while got < READ_BUDGET:
            try:
                message = os.read(fd, MAX_MESSAGE)
            except BlockingIOError:
                break
            except OSError:
                open_ = False
                break
            if not message:
                open_ = False
                break
            got += len(message)
            lines = self._record(source, message, t)
            if lines is not None:
                out.append(lines)
        if out and not self.log.is_syslog:
            self.log.write(LEVEL, b"".join(data for _, data in out))
        else:
            for level, data in out:
                self.log.write(level, data)
        return open_

    def _record(self, source: _Source, message: bytes, t: float) -> tuple[str, bytes] | None:
        """(level, lines) to write for one record, if any."""
        kind, payload = message[0], message[1:]
        level = _LEVEL_OF.get(kind)
        if level is not None:
            if self.log.enabled(level):
                return level, self.own_lines(level, source, payload, t)
            return None
        if not self.log.enabled(LEVEL):
            return None
        if kind == STDERR[0]:
            out = source.stderr.feed(self._said(source, "stderr", t), payload)
        elif kind == ERRORS[0]:
            request, _, text = payload.partition(b"\0")
            out = []
            if request != source.request:  # a line left open by the last request ends
                out += source.errors.end(self._errors_head(source, t))
                source.request = request
            out += source.errors.feed(self._errors_head(source, t), text)
        else:
            return None  # not a record any worker of ours sends
        return (LEVEL, b"".join(out)) if out else None

    def own_lines(self, level: str, source: _Source, text: bytes, t: float) -> bytes:
        """The worker's own lines: each line of ``text`` after the worker's prefix."""
        head = prefix(level, t, self.log.is_syslog) + (
            "[pool %s] child %d: " % (source.pool, source.pid)).encode("utf-8", "backslashreplace")
        return b"".join(limit_line(head + escape(line), self.log.limit) + b"\n"
                        for line in text.rstrip(b"\n").split(b"\n"))

    def _said(self, source: _Source, into: str, t: float) -> bytes:
        if into == "stderr" and not source.stderr.decorate:
            return b""
        return said_head(t, self.log.is_syslog, source.pool, source.pid, into)

    def _errors_head(self, source: _Source, t: float) -> bytes:
        # A long request line is cut to a quarter of log_limit: each wrapped line keeps
        # most of its room for the text.
        request = escape(source.request).decode("utf-8", "backslashreplace")
        room = self.log.limit // 4
        if len(request) > room:
            request = request[:room - 3] + "..."
        return self._said(source, 'wsgi.errors on "%s"' % request, t)

    def _end(self, fd: int, source: _Source, suffix: bytes) -> None:
        """Log the lines the worker left open; stop watching its socket."""
        t = time.time()
        out = (source.stderr.end(self._said(source, "stderr", t), suffix)
               + source.errors.end(self._errors_head(source, t), suffix))
        if out and self.log.enabled(LEVEL):
            self.log.write(LEVEL, b"".join(out))
        source.ended = True
        if self.forget is not None:
            self.forget(fd)
