"""catch_workers_output: what workers print on stdout and stderr, read by the master and
written to the error log at WARNING (so ``log_level = error`` hides it, as in PHP-FPM).

Each worker gets two pipes. Decorated lines (decorate_workers_output = yes) look like
PHP-FPM's and are wrapped so that no line, prefix and newline included, is longer than
log_limit:

    [21-Nov-2026 10:00:00] WARNING: [pool www] child 12 said into stderr: "text"

Undecorated, each line is written as printed, plus its newline, never cut (PHP-FPM wraps them
at log_limit too, php-src #13118); a line still without its newline after UNDECORATED_MAX
bytes is written in pieces of that size. With ``log_buffering = no`` nothing waits for a
newline: a partial line is written as soon as it is read (undecorated: the bytes exactly as
printed, no newline added, for a container's log collector).

When a worker exits, a line it left without newline is written with PHP-FPM's
``, pipe is closed`` after the closing quote.

Master side:

    capture = Capture(log, pool.name, pool.decorate_workers_output, log.limit, log.buffering,
                      forget=poller.unregister)
    child_fds, parent_fds = capture.pipes()       # before fork
    # child:  redirect(log, child_fds) then close capture.fds()
    # parent: capture.attach(pid, parent_fds); register each fd of parent_fds, level-triggered
    # fd readable: capture.readable(fd)   (False once the worker's end is closed)
    # worker reaped: capture.drop(pid)    (reads what is left, then closes)
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from fpm.log import Logger, prefix, utf8_cut

STREAMS = ("stdout", "stderr")
LEVEL = "warning"
UNDECORATED_MAX = 65536
READ_SIZE = 65536
# At most this much is read per readable() call, so a worker printing without pause cannot
# hold up the master's loop; the rest is read on the next turn (the fds are level-triggered).
READ_BUDGET = 1 << 20
CLOSED_SUFFIX = b", pipe is closed"


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
    # On a pipe Python buffers stdout by blocks: a print() would reach the log only some
    # kilobytes later, or when the worker exits. stderr is line-buffered already.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)


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


@dataclass
class _Stream:
    pid: int
    name: str  # stdout or stderr
    fd: int
    pending: bytearray = field(default_factory=bytearray)


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
            self._streams[fd] = _Stream(pid, name, fd)

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
        if not self.decorate and not self.buffering:
            return data  # pass-through
        buf = stream.pending
        buf += data
        head = self._head(stream)
        out: list[bytes] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            out += self._format(head, bytes(buf[start:nl]))
            start = nl + 1
        del buf[:start]
        if buf and (eof or final or not self.buffering):
            out += self._format(head, bytes(buf), CLOSED_SUFFIX if eof else b"")
            buf.clear()
        elif self.decorate:
            # A partial line waits until it fills a wrapped line.
            room = max(self.limit - len(head) - 2, 16)
            while len(buf) >= room:
                n = utf8_cut(buf, room)
                out.append(head + bytes(buf[:n]) + b'"\n')
                del buf[:n]
        elif len(buf) >= UNDECORATED_MAX:
            out.append(bytes(buf) + b"\n")
            buf.clear()
        return b"".join(out)

    def _head(self, stream: _Stream) -> bytes:
        if not self.decorate:
            return b""
        return prefix(LEVEL, time.time(), self.log.is_syslog) + (
            '[pool %s] child %d said into %s: "' % (self.pool_name, stream.pid, stream.name)
        ).encode("utf-8", "backslashreplace")

    def _format(self, head: bytes, text: bytes, suffix: bytes = b"") -> list[bytes]:
        if not self.decorate:
            return [text + b"\n"]
        return decorated(head, text, self.limit, suffix)
