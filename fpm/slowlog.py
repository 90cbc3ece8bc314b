"""Slowlog entries in PHP-FPM's shape, and the faulthandler fallback for reading a stack.

An entry (one write() by the master, to the file it opened at start with the other logs and
reopens on SIGUSR1; PHP-FPM opens the file per entry):

    (blank line)
    [21-Nov-2026 10:00:00]  [pool www] pid 1234
    script_filename = /srv/app.py
    request = "GET /slow?s=3" elapsed = 2.004113 sec
    [0x00007fc232fce3c0] c() /srv/app/app.py:45

The `request =` line is pyfpm's. Frames are innermost first, the application's only (the
reader stops at the worker's frame that called it, as PHP-FPM shows the script's frames only);
each shows the function and the line it is executing (Python's convention, as in a traceback;
PHP-FPM shows the call site).
The address is that of the frame's interpreter frame in the worker; fallback frames come from
faulthandler, which gives none, and are printed without one.

The fallback, for when ptrace is refused or the interpreter is not supported: each worker
registers faulthandler on DUMP_SIGNAL writing to its own pipe (`arm_worker`, after the fork:
the registration and the fd are inherited), and the master signals it and reads the pipe
in its event loop (`Dump`), never waiting for it.
"""

import faulthandler
import os
import re
import signal
import sys

from fpm.log import format_time
from fpm.trace import Frame, Gone, TraceError

# A realtime signal: never sent by the kernel or a terminal, queued rather than merged.
DUMP_SIGNAL = signal.SIGRTMIN + 3

_HEADER = "Stack (most recent call first):"
_FRAME = re.compile(r'  File "(.*)", line (\d+|\?\?\?) in (.*)')
_TRUNCATED = "  ..."  # faulthandler's line after its last frame, up to 3.12
_MAX_FRAMES = 100  # faulthandler's MAX_FRAME_DEPTH: from 3.13 on no line follows the last
_NO_FRAME = "  <no Python frame>"


def entry(now_epoch, pool, pid, script, method, uri, query, elapsed_s, frames, fallback,
          debug=False, failed=False) -> str:
    """One slowlog entry. `debug` (log_level = debug) adds microseconds to the time, as
    PHP-FPM does; `failed` ends it with PHP-FPM's `+++ dump failed` line."""
    stamp = format_time(now_epoch)
    if debug:
        stamp += ".%06d" % (int(now_epoch * 1e6) % 1000000)
    request = f"{method} {uri}" + (f"?{query}" if query else "")
    lines = [
        "",
        f"[{stamp}]  [pool {pool}] pid {pid}",
        f"script_filename = {script}",
        f'request = "{request}" elapsed = {elapsed_s:.6f} sec',
    ]
    lines += [frame_line(f, fallback) for f in frames]
    if failed:
        lines.append("+++ dump failed")
    return "\n".join(lines) + "\n"


def frame_line(frame: Frame, fallback: bool) -> str:
    where = f"{frame.qualname}() {frame.filename}:{frame.lineno}"
    return where if fallback else f"[0x{frame.address:016x}] {where}"


def write_entry(fd, text):
    """Append one entry in one write() to the slowlog's fd (opened O_APPEND, so that nothing
    else writing the file interleaves with it)."""
    os.write(fd, text.encode("utf-8", "backslashreplace"))


def arm_worker(fd):
    """In a worker, after the fork: dump this thread's stack to `fd` on DUMP_SIGNAL."""
    faulthandler.register(DUMP_SIGNAL, file=fd, all_threads=False, chain=False)


DUMP_TIMEOUT = 0.5  # seconds a dump may take to come; what came by then is the entry


class Dump:
    """One worker's faulthandler dump, read as it comes without ever waiting for it: the
    master's loop watches `fd` and calls `feed()` when it is readable, and `frames()` once the
    dump is complete or DUMP_TIMEOUT has passed.

    `fd` is a duplicate of the master's end of the worker's channel, this dump's own: the
    worker may be reaped (and its channel closed) while the dump is read. Frames come
    innermost first, address 0, up to the first frame whose (filename, name) is in `stop`,
    which is left out with those below it.

    A dump comes in many small writes and has no terminator; it is complete at a `stop`
    frame, at the truncation line or the 100th frame (faulthandler's limit), at the outermost
    frame (the worker is a fork of this process, so its stack ends where ours does: `root`,
    (filename, name), defaults to our outermost frame), or when the worker closes its end."""

    def __init__(self, pid, channel_fd, stop=frozenset(), root=None):
        self.pid = pid
        self.stop = stop
        self.root = root or _outermost()
        self.text = b""
        self.complete = False
        self.fd = os.dup(channel_fd)
        os.set_blocking(self.fd, False)

    def ask(self):
        """Signal the worker, after dropping what an earlier, timed out dump left behind.
        Raises Gone if the worker no longer exists."""
        _drain(self.fd)
        try:
            os.kill(self.pid, DUMP_SIGNAL)
        except ProcessLookupError:
            raise Gone("no such process") from None

    def feed(self) -> bool:
        """Take what the channel holds; True once the dump is complete."""
        chunk = _drain(self.fd)
        if not chunk:
            self.complete = True  # readable and empty: the worker closed its end (it exited)
            return True
        self.text += chunk
        _, self.complete = parse_dump(self.text.decode("utf-8", "replace"), self.root, self.stop)
        return self.complete

    def frames(self) -> list[Frame]:
        """The frames that came; TraceError if none did."""
        frames, _ = parse_dump(self.text.decode("utf-8", "replace"), self.root, self.stop)
        if not frames:
            raise TraceError(f"no faulthandler dump within {DUMP_TIMEOUT * 1000:.0f} ms "
                             "(signal blocked, or handled by the application?)")
        return frames

    def close(self):
        os.close(self.fd)


def parse_dump(text, root, stop=frozenset()):
    """(frames, complete) from faulthandler's text, ending before a frame whose (filename,
    name) is in `stop`; only the last dump in it counts, and only whole lines."""
    start = text.rfind(_HEADER)
    if start < 0:
        return [], False
    frames = []
    for line in text[start:].split("\n")[1:-1]:
        if line in (_TRUNCATED, _NO_FRAME):
            return frames, True
        m = _FRAME.fullmatch(line)
        if m is None:
            continue
        filename, lineno, name = m.groups()
        if (filename, name) in stop:
            return frames, True
        frames.append(Frame(0, name, filename, 0 if lineno == "???" else int(lineno)))
        if (filename, name) == root or len(frames) == _MAX_FRAMES:
            return frames, True
    return frames, False


def _outermost():
    f = sys._getframe()
    while f.f_back is not None:
        f = f.f_back
    return f.f_code.co_filename, f.f_code.co_name


def _drain(fd):
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk
