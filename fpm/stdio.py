"""Where what the app prints goes: its stdout and stderr (wsgi.errors: fpm.workerlog).

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
and logging's last-resort lines, goes to the master over the worker's log socket
(fpm.workerlog), which writes it in the same lines as captured output. What bypasses them
(``os.write(2, ...)``, C libraries, child processes) reaches the log only with
catch_workers_output, at its newline.

In decorated lines the worker's control characters are written as ``\\xNN`` (fpm.log.escape),
so that nothing it prints can start, or look like, a line of its own.

Master side of catch_workers_output:

    capture = Capture(log, pool.name, pool.decorate_workers_output, log.limit, log.buffering,
                      forget=poller.unregister)
    child_fds, parent_fds = capture.pipes()       # before fork
    # child:  redirect(child_fds), having closed capture.fds()
    # parent: capture.attach(pid, parent_fds); register each fd of parent_fds, level-triggered
    # fd readable: capture.readable(fd)   (False once the worker's end is closed)
    # worker reaped: capture.drop(pid)    (reads what is left, then closes)
"""
from __future__ import annotations

import io
import os
import re
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from fpm.log import Logger, escape, prefix, utf8_cut, write_all

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


def redirect(child_fds: tuple[int, int] | None) -> None:
    """In a new worker: stdin onto /dev/null (never the master's terminal), stdout and
    stderr onto the capture pipes, or onto /dev/null when the pool does not catch workers'
    output."""
    null = os.open(os.devnull, os.O_RDWR)
    for target, fd in zip((0, 1, 2), (null, *(child_fds or (null, null)))):
        os.dup2(fd, target)
    for fd in {null, *(child_fds or ())} - {0, 1, 2}:
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


def room(head: bytes, limit: int) -> int:
    """How much text a decorated line with ``head`` holds: log_limit less the head, the
    closing quote and the newline."""
    return max(limit - len(head) - 2, 16)


def decorated(head: bytes, text: bytes, limit: int, suffix: bytes = b"") -> list[bytes]:
    """``text``, escaped, as lines ``head + "chunk" (+ suffix) + newline``, each at most
    ``limit`` bytes; the suffix goes on the last line only. ``head`` ends with the opening
    quote."""
    size = room(head, limit)
    pieces = wrap(escape(text), size)
    if len(pieces[-1]) > size - len(suffix):
        pieces.append(b"")  # the suffix goes on a line of its own
    return ([head + piece + b'"\n' for piece in pieces[:-1]]
            + [head + pieces[-1] + b'"' + suffix + b"\n"])


_ESCAPE = re.compile(rb"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4})")


def wrap(text: bytes, size: int) -> list[bytes]:
    """Escaped ``text`` in pieces of at most ``size`` bytes (the last may be empty), cut
    neither inside a UTF-8 sequence nor inside an escape."""
    pieces = []
    while len(text) > size:
        n = utf8_cut(text, size)
        slash = text.rfind(b"\\", max(n - 5, 1), n)
        if slash > 0:
            escaped = _ESCAPE.match(text, slash)
            if escaped is not None and escaped.end() > n:
                n = slash
        pieces.append(text[:n])
        text = text[n:]
    return pieces + [text]


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
            size = room(head, self.limit)
            text = escape(bytes(buf[:len(buf) - keep]))
            if len(text) >= size:
                pieces = wrap(text, size)
                rest = pieces.pop() if len(pieces[-1]) < size else b""
                out += [head + piece + b'"\n' for piece in pieces]
                buf[:len(buf) - keep] = rest  # escaped already: escaping again keeps it
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
    ended: bool = False  # the worker's end is closed: no longer watched, not yet closed


class Capture:
    """One pool's captured worker output (see the module docstring)."""

    def __init__(self, log: Logger, pool_name: str, decorate: bool = True, limit: int = 1024,
                 buffering: bool = True, *, forget: Callable[[int], None] | None = None):
        self.log = log
        self.pool_name = pool_name
        self.decorate = decorate
        self.limit = limit
        self.buffering = buffering
        self.forget = forget  # called with a read fd once it is no longer to be watched
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
        closed (the rest has been logged and ``forget(fd)`` called). The fd itself stays
        open until ``drop``: until its worker is reaped, its number is the worker's (a
        reload passes it on)."""
        stream = self._streams[fd]
        open_ = self._read(stream)
        if not open_:
            self._end(stream)
        return open_

    def drop(self, pid: int) -> None:
        """``pid`` was reaped: log what its pipes still hold, then close them. A pipe kept
        open by a process the worker started is closed all the same."""
        for stream in [s for s in self._streams.values() if s.pid == pid]:
            if not stream.ended:
                self._read(stream, final=True)
                self._end(stream)
            del self._streams[stream.fd]
            os.close(stream.fd)

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

    def _end(self, stream: _Stream) -> None:
        stream.ended = True
        if self.forget is not None:
            self.forget(stream.fd)

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


class _ByLine:
    """Whole lines to ``send`` (a capture pipe, or the log socket), one call each; at a
    request's end, the partial line and MARK. With log_buffering = no, bytes go as they are
    written."""

    def __init__(self, send: Callable[[bytes], None], buffering: bool):
        self.send = send
        self.buffering = buffering
        self.pending = bytearray()

    def write(self, data: bytes) -> None:
        if not self.buffering:
            self.send(data)
            return
        self.pending += data
        nl = self.pending.rfind(b"\n")
        if nl >= 0:
            self.send(bytes(self.pending[:nl + 1]))
            del self.pending[:nl + 1]

    def flush(self) -> None:
        if self.pending:
            self.send(bytes(self.pending))
            self.pending.clear()

    def end(self) -> None:
        if self.buffering:  # else the master held nothing back
            self.send(bytes(self.pending) + MARK)
            self.pending.clear()


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


def worker_output(pool, log, mark: Callable[[], None]) -> Callable[[], None]:
    """In a worker: sys.stdout and sys.stderr go where the module docstring says (``log``
    is the worker's fpm.workerlog.WorkerLog); ``mark()`` is called when a request writes to
    either, and the function returned must then be called at the request's end."""
    out, err = install()
    if pool.catch_workers_output:
        out.target = _ByLine(partial(write_all, 1), log.buffering)
        err.target = _ByLine(partial(write_all, 2), log.buffering)
    else:
        out.target = _Drop()
        # log_level = error hides these lines: then they are not even sent.
        err.target = _ByLine(log.stderr, log.buffering) if log.enabled(LEVEL) else _Drop()
    out.mark = err.mark = mark
    return end_request


def end_request() -> None:
    """A request that wrote to sys.stdout or sys.stderr ended: so do their last lines."""
    for writer in _writers or ():
        writer.end_request()
