"""Where what the app says goes: its stdout and stderr, and wsgi.errors.

**catch_workers_output** (the master's side, ``Capture``): each worker gets two pipes; the
master writes what they carry to the error log at WARNING (so ``log_level = error`` hides
it, as in PHP-FPM). Decorated lines (decorate_workers_output = yes) look like PHP-FPM's and
are wrapped so that no line, prefix and newline included, is longer than log_limit:

    [21-Nov-2026 10:00:00] WARNING: [pool www] child 12 said into stderr: "text"

Undecorated, each line is written as printed, plus its newline, never cut (PHP-FPM wraps them
at log_limit too, php-src #13118); a line still without its newline after UNDECORATED_MAX
bytes is written in pieces of that size. With ``log_buffering = no`` nothing waits for a
newline: a partial line is written as soon as it is read (undecorated: the bytes exactly as
printed, no newline added, for a container's log collector). When a worker exits, a line it
left without newline is written with PHP-FPM's ``, pipe is closed`` after the closing quote.

**The end of a request ends its output's last line**, as in PHP-FPM (php-src's
fpm_stdio_flush_child): a worker writes MARK to a pipe after a request that wrote to it, and
the master ends the partial line there, so no line joins two requests and none waits for the
worker to exit. Unlike PHP-FPM, which writes its marker after every request (a write, and a
wake-up of the master, per request), the worker learns which requests wrote at all from its
own sys.stdout and sys.stderr, so a request that printed nothing costs nothing.

**A worker's sys.stdout and sys.stderr** (``install``, ``worker_output``) are text streams
over ``_Writer``: with catch_workers_output they write whole lines to the pipes; without it,
stdout goes nowhere (PHP-FPM's rule) but stderr, where Python writes tracebacks, warnings
and logging's last-resort lines, is written to the error log by the worker itself, in the
same lines the master would write. What bypasses them (``os.write(2, ...)``, C libraries,
child processes) reaches the log only with catch_workers_output, at its newline.

**wsgi.errors** (``ErrorsLog``, with ``wsgi_errors = log`` or ``both``): each line written
is a WARNING line that names the request, wrapped at log_limit:

    [21-Nov-2026 10:00:00] WARNING: [pool www] child 12 said into wsgi.errors on "GET /x": "text"

Master side of catch_workers_output:

    capture = Capture(log, pool.name, pool.decorate_workers_output, log.limit, log.buffering,
                      forget=poller.unregister)
    child_fds, parent_fds = capture.pipes()       # before fork
    # child:  redirect(log, child_fds) then close capture.fds()
    # parent: capture.attach(pid, parent_fds); register each fd of parent_fds, level-triggered
    # fd readable: capture.readable(fd)   (False once the worker's end is closed)
    # worker reaped: capture.drop(pid)    (reads what is left, then closes)
"""
from __future__ import annotations

import io
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from fpm.log import Logger, prefix, utf8_cut, write_all

STREAMS = ("stdout", "stderr")
LEVEL = "warning"
UNDECORATED_MAX = 65536
READ_SIZE = 65536
# At most this much is read per readable() call, so a worker printing without pause cannot
# hold up the master's loop; the rest is read on the next turn (the fds are level-triggered).
READ_BUDGET = 1 << 20
CLOSED_SUFFIX = b", pipe is closed"
# End of a request's output (PHP-FPM's FPM_STDIO_CMD_FLUSH bytes): no text holds a NUL.
MARK = b"\0fscf\0"


def redirect(log: Logger, child_fds: tuple[int, int] | None) -> None:
    """In a new worker: stdout and stderr onto the capture pipes, or onto /dev/null when the
    pool does not catch workers' output. A logger writing to stderr keeps the real one."""
    if log.fd == 2:
        log.fd = os.dup(2)
    if child_fds is None:
        null = os.open(os.devnull, os.O_WRONLY)
        child_fds = (null, null)
    for target, fd in zip((1, 2), child_fds):
        os.dup2(fd, target)
    for fd in set(child_fds):
        os.close(fd)
    # Python would buffer stdout by blocks on a pipe: a print() would reach the log only
    # some kilobytes later, or never, since a worker ends with os._exit.
    install()


def said_head(t: float, for_syslog: bool, pool_name: str, pid: int, into: str) -> bytes:
    """``[time] WARNING: [pool www] child 12 said into stderr: "``, PHP-FPM's prefix of a
    worker's line, up to its opening quote."""
    return prefix(LEVEL, t, for_syslog) + ('[pool %s] child %d said into %s: "'
                                           % (pool_name, pid, into)).encode("utf-8",
                                                                            "backslashreplace")


def decorated(head: bytes, text: bytes, limit: int, suffix: bytes = b"") -> list[bytes]:
    """``text`` as lines ``head + "chunk" (+ suffix) + newline``, each at most ``limit``
    bytes; the suffix goes on the last line only. ``head`` ends with the opening quote."""
    room = max(limit - len(head) - 2, 16)  # the closing quote and the newline
    lines = []
    while True:
        last_room = room - len(suffix)
        if len(text) <= last_room:
            return lines + [head + text + b'"' + suffix + b"\n"]
        n = utf8_cut(text, room)
        lines.append(head + text[:n] + b'"\n')
        text = text[n:]


def _mark_started(buf: bytearray) -> int:
    """How many bytes at the end of ``buf`` may be the start of a MARK cut by a read."""
    nul = buf.rfind(b"\0", max(len(buf) - len(MARK) + 1, 0))
    return len(buf) - nul if nul >= 0 and MARK.startswith(buf[nul:]) else 0


class Lines:
    """One stream of text cut into log lines (the module docstring's rules); a partial line
    is kept until its newline, a MARK or ``end()``."""

    def __init__(self, decorate: bool = True, limit: int = 1024, buffering: bool = True):
        self.decorate = decorate
        self.limit = limit
        self.buffering = buffering
        self.pending = bytearray()

    def feed(self, head: bytes, data: bytes) -> list[bytes]:
        """What to write for ``data``; ``head`` is the decorated lines' prefix."""
        if not self.decorate and not self.buffering:
            return [data.replace(MARK, b"")] if data else []  # pass-through
        buf = self.pending
        buf += data
        out: list[bytes] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            mark = buf.find(MARK, start, len(buf) if nl < 0 else nl)
            if mark >= 0:  # a request ended: so does its last line
                if mark > start:
                    out += self._format(head, bytes(buf[start:mark]))
                start = mark + len(MARK)
                continue
            if nl < 0:
                break
            out += self._format(head, bytes(buf[start:nl]))
            start = nl + 1
        del buf[:start]
        keep = _mark_started(buf)
        if not self.buffering:
            if len(buf) > keep:
                out += self._format(head, bytes(buf[:len(buf) - keep]))
                del buf[:len(buf) - keep]
        elif self.decorate:
            # A partial line waits until it fills a wrapped line.
            room = max(self.limit - len(head) - 2, 16)
            while len(buf) - keep >= room:
                n = utf8_cut(buf, room)
                out.append(head + bytes(buf[:n]) + b'"\n')
                del buf[:n]
        elif len(buf) - keep >= UNDECORATED_MAX:
            out.append(bytes(buf[:len(buf) - keep]) + b"\n")
            del buf[:len(buf) - keep]
        return out

    def end(self, head: bytes, suffix: bytes = b"") -> list[bytes]:
        """The partial line, if any, as a line of its own (``suffix`` after its quote)."""
        if not self.pending:
            return []
        out = self._format(head, bytes(self.pending), suffix)
        self.pending.clear()
        return out

    def _format(self, head: bytes, text: bytes, suffix: bytes = b"") -> list[bytes]:
        if not self.decorate:
            return [text + b"\n"]
        return decorated(head, text, self.limit, suffix)


@dataclass
class _Stream:
    pid: int
    name: str  # stdout or stderr
    fd: int
    lines: Lines = field(default_factory=Lines)


class Capture:
    """One pool's captured worker output (see the module docstring)."""

    def __init__(self, log: Logger, pool_name: str, decorate: bool = True, limit: int = 1024,
                 buffering: bool = True, *, forget: Callable[[int], None] | None = None):
        self.log = log
        self.pool_name = pool_name
        self.decorate = decorate
        self.limit = limit
        self.buffering = buffering
        self.forget = forget  # called with a read fd just before it is closed
        self._streams: dict[int, _Stream] = {}
        self._unattached: dict[tuple[int, int], tuple[int, int]] = {}

    # --- life cycle of a worker's pipes ----------------------------------------------------

    def pipes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Two new pipes: ((stdout, stderr) write ends for the child, read ends for us)."""
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        self._unattached[(out_r, err_r)] = (out_w, err_w)
        return (out_w, err_w), (out_r, err_r)

    def attach(self, pid: int, parent_fds: tuple[int, int]) -> None:
        """After fork, in the master: the read ends now belong to ``pid``; our copies of the
        write ends are closed, so the pipes read EOF when the worker is gone."""
        for fd in self._unattached.pop(tuple(parent_fds)):
            os.close(fd)
        self.adopt(pid, parent_fds)

    def adopt(self, pid: int, parent_fds: tuple[int, int]) -> None:
        """Read ``pid``'s pipes: after attach, or after a re-exec handed them over."""
        for name, fd in zip(STREAMS, parent_fds):
            self._streams[fd] = _Stream(pid, name, fd,
                                        Lines(self.decorate, self.limit, self.buffering))

    def cancel(self, parent_fds: tuple[int, int]) -> None:
        """fork() failed: close both pipes."""
        for fd in (*self._unattached.pop(tuple(parent_fds)), *parent_fds):
            os.close(fd)

    def fds(self) -> list[int]:
        """The read ends in use, to register in the master's loop (and close in children)."""
        return [*self._streams, *(fd for pair in self._unattached for fd in pair)]

    def readable(self, fd: int) -> bool:
        """Read what ``fd`` holds and log its complete lines; False when the worker's end is
        closed (the rest has been logged, the fd closed after ``forget(fd)``)."""
        stream = self._streams[fd]
        open_ = self._read(stream)
        if not open_:
            self._close(stream)
        return open_

    def drop(self, pid: int) -> None:
        """``pid`` was reaped: log what its pipes still hold, then close them. A pipe kept
        open by a process the worker started is closed all the same."""
        for stream in [s for s in self._streams.values() if s.pid == pid]:
            self._read(stream, final=True)
            self._close(stream)

    # --- reading and writing ------------------------------------------------------------------

    def _read(self, stream: _Stream, final: bool = False) -> bool:
        """Read up to READ_BUDGET and log it; False at end of file. A partial line is logged
        at the end of file (with the closed suffix) or when ``final``."""
        got = 0
        chunks = []
        eof = False
        while got < READ_BUDGET:
            try:
                data = os.read(stream.fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                eof = True
                break
            if not data:
                eof = True
                break
            chunks.append(data)
            got += len(data)
        out = self._lines(stream, b"".join(chunks), eof, final)
        if out and self.log.enabled(LEVEL):
            self.log.write(LEVEL, out)
        return not eof

    def _close(self, stream: _Stream) -> None:
        del self._streams[stream.fd]
        if self.forget is not None:
            self.forget(stream.fd)
        os.close(stream.fd)

    def _lines(self, stream: _Stream, data: bytes, eof: bool, final: bool = False) -> bytes:
        """What to write for ``data`` newly read from ``stream``; keeps a partial line."""
        head = self._head(stream)
        out = stream.lines.feed(head, data)
        if eof or final:
            out += stream.lines.end(head, CLOSED_SUFFIX if eof else b"")
        return b"".join(out)

    def _head(self, stream: _Stream) -> bytes:
        if not self.decorate:
            return b""
        return said_head(time.time(), self.log.is_syslog, self.pool_name, stream.pid,
                         stream.name)


# --- a worker's sys.stdout and sys.stderr --------------------------------------------------------

class _Writer(io.BufferedIOBase):
    """The bytes under sys.stdout or sys.stderr. Until a worker gives it a ``target`` they go
    to fd 1 or 2 as they are written; then to the target, and the first write since the
    last ``end_request()`` calls ``mark()``."""

    def __init__(self, fd: int):
        super().__init__()
        self.fd = fd
        self.target = None
        self.mark: Callable[[], None] | None = None
        self.said = False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def write(self, data) -> int:
        data = bytes(data)
        if self.target is None:
            write_all(self.fd, data)
        else:
            if not self.said:
                self.said = True
                if self.mark is not None:
                    self.mark()
            self.target.write(data)
        return len(data)

    def flush(self) -> None:
        if self.target is not None:
            self.target.flush()

    def end_request(self) -> None:
        if self.said:
            self.said = False
            self.target.end()


class _ToPipe:
    """catch_workers_output: whole lines to the pipe, one write each; at a request's end,
    the partial line and MARK. With log_buffering = no, bytes go as they are written."""

    def __init__(self, fd: int, buffering: bool):
        self.fd = fd
        self.buffering = buffering
        self.pending = bytearray()

    def write(self, data: bytes) -> None:
        if not self.buffering:
            write_all(self.fd, data)
            return
        self.pending += data
        nl = self.pending.rfind(b"\n")
        if nl >= 0:
            write_all(self.fd, bytes(self.pending[:nl + 1]))
            del self.pending[:nl + 1]

    def flush(self) -> None:
        if self.pending:
            write_all(self.fd, bytes(self.pending))
            self.pending.clear()

    def end(self) -> None:
        if self.buffering:  # else the master held nothing back
            write_all(self.fd, bytes(self.pending) + MARK)
            self.pending.clear()


class _ToLog:
    """Lines of one stream written to the error log by the worker itself, as the master
    would write them (``before()`` first: it takes the log files a USR1 reopened)."""

    def __init__(self, log: Logger, lines: Lines, head: Callable[[], bytes],
                 before: Callable[[], None]):
        self.log = log
        self.lines = lines
        self.head = head
        self.before = before

    def write(self, data: bytes) -> None:
        if self.log.enabled(LEVEL):
            self._out(self.lines.feed(self.head(), data))

    def flush(self) -> None:
        pass  # lines are what the log holds: a partial one waits for its end

    def end(self) -> None:
        self._out(self.lines.end(self.head()))

    def _out(self, out: list[bytes]) -> None:
        if out:
            self.before()
            self.log.write(LEVEL, b"".join(out))


class _Drop:
    """Without catch_workers_output, stdout: PHP-FPM's /dev/null, without the system call."""

    def write(self, data: bytes) -> None:
        pass

    def flush(self) -> None:
        pass

    def end(self) -> None:
        pass


_writers: tuple[_Writer, _Writer] | None = None


def install() -> tuple[_Writer, _Writer]:
    """sys.stdout and sys.stderr as text streams over our writers, once per process. The
    master calls it before it preloads an app, so that a stream the app keeps (a logging
    handler made at import) is one its workers point where their pool says."""
    global _writers
    if _writers is None:
        _writers = (_Writer(1), _Writer(2))
        for name, writer in zip(STREAMS, _writers):
            old = getattr(sys, name)
            if old is not None:
                try:
                    old.flush()
                except (OSError, ValueError):
                    pass
            setattr(sys, name, io.TextIOWrapper(writer, encoding="utf-8",
                                                errors="backslashreplace", write_through=True))
    return _writers


def worker_output(pool, log: Logger, pid: int, mark: Callable[[], None],
                  before: Callable[[], None]) -> Callable[[], None]:
    """In a worker: sys.stdout and sys.stderr go where the module docstring says; ``mark()``
    is called when a request writes to either, and the function returned must then be
    called at the request's end."""
    out, err = install()
    if pool.catch_workers_output:
        out.target = _ToPipe(1, log.buffering)
        err.target = _ToPipe(2, log.buffering)
    else:
        out.target = _Drop()
        decorate = pool.decorate_workers_output
        err.target = _ToLog(log, Lines(decorate, log.limit, log.buffering),
                            lambda: said_head(time.time(), log.is_syslog, pool.name, pid,
                                              "stderr") if decorate else b"", before)
    out.mark = err.mark = mark
    return end_request


def end_request() -> None:
    """A request that wrote to sys.stdout or sys.stderr ended: so do their last lines."""
    for writer in _writers or ():
        writer.end_request()


class ErrorsLog(_ToLog):
    """wsgi.errors into the error log (module docstring): ``say(request, text)`` with the
    request's line (``GET /x``), ``end()`` when the request ends."""

    def __init__(self, log: Logger, pool_name: str, pid: int,
                 before: Callable[[], None] = lambda: None):
        super().__init__(log, Lines(True, log.limit, True), self._head, before)
        self.pool_name = pool_name
        self.pid = pid
        self.request = ""

    def say(self, request: str, text: str) -> None:
        # A long request line is cut to a quarter of log_limit: each wrapped line keeps
        # most of its room for the text.
        room = self.log.limit // 4
        self.request = request if len(request) <= room else request[:room - 3] + "..."
        self.write(text.encode("utf-8", "backslashreplace"))

    def _head(self) -> bytes:
        return said_head(time.time(), self.log.is_syslog, self.pool_name, self.pid,
                         'wsgi.errors on "%s"' % self.request)
