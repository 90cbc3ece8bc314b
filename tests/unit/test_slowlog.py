"""fpm.slowlog: entries byte for byte in PHP-FPM's shape, and the faulthandler fallback reading
real dumps from real forked children."""

import os
import select
import signal
import sys
import time
from pathlib import Path

import pytest

from fpm import slowlog
from fpm.log import open_log_file
from fpm.trace import Frame, Gone, TraceError

HERE = Path(__file__).resolve()
# 2026-11-21 10:00:00.250000 UTC
NOW = 1795255200.25


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def mark(name):
    for number, line in enumerate(HERE.read_text().splitlines(), 1):
        if line.rstrip().endswith(f"# mark: {name}"):
            return number
    raise LookupError(name)


FRAMES = [Frame(0x7FC232FCE3C0, "c", "/srv/app/app.py", 45),
          Frame(0x7FC232FCE338, "Handler.get", "/srv/app/app.py", 28)]


def test_entry_in_php_fpm_shape_with_the_request_line(utc):
    text = slowlog.entry(NOW, "www", 1234, "/srv/app.py", "GET", "/slow", "s=3", 2.0041134,
                         FRAMES, fallback=False)
    assert text == (
        "\n"
        "[21-Nov-2026 10:00:00]  [pool www] pid 1234\n"
        "script_filename = /srv/app.py\n"
        'request = "GET /slow?s=3" elapsed = 2.004113 sec\n'
        "[0x00007fc232fce3c0] c() /srv/app/app.py:45\n"
        "[0x00007fc232fce338] Handler.get() /srv/app/app.py:28\n")


def test_debug_time_has_microseconds_fallback_frames_have_no_address(utc):
    text = slowlog.entry(NOW, "www", 7, "/srv/app.py", "POST", "/form", "", 12.5,
                         [Frame(0, "c", "/srv/app/app.py", 45)], fallback=True, debug=True)
    assert text == (
        "\n"
        "[21-Nov-2026 10:00:00.250000]  [pool www] pid 7\n"
        "script_filename = /srv/app.py\n"
        'request = "POST /form" elapsed = 12.500000 sec\n'
        "c() /srv/app/app.py:45\n")


def test_failed_dump_line(utc):
    text = slowlog.entry(NOW, "www", 7, "/srv/app.py", "GET", "/", "", 1, FRAMES[:1],
                         fallback=False, failed=True)
    assert text.endswith("c() /srv/app/app.py:45\n+++ dump failed\n")


def test_entries_append_whole(tmp_path, utc):
    path = tmp_path / "slow.log"
    one = slowlog.entry(NOW, "www", 1, "/a.py", "GET", "/a", "", 1, FRAMES, False)
    two = slowlog.entry(NOW, "www", 2, "/a.py", "GET", "/b", "", 1, FRAMES, False)
    fd = open_log_file(str(path))  # as the master opens it, with the other logs
    try:
        slowlog.write_entry(fd, one)
        slowlog.write_entry(fd, two)
    finally:
        os.close(fd)
    assert path.read_text() == one + two
    assert path.stat().st_mode & 0o777 == 0o600


def test_dump_signal_is_realtime():
    assert signal.SIGRTMIN <= slowlog.DUMP_SIGNAL <= signal.SIGRTMAX


DUMP = ('Stack (most recent call first):\n'
        '  File "/srv/app/app.py", line 45 in c\n'
        '  File "/srv/app/app.py", line ??? in b\n'
        '  File "/usr/lib/python3.11/runpy.py", line 198 in _run_module_as_main\n')
ROOT = ("/usr/lib/python3.11/runpy.py", "_run_module_as_main")


def test_parse_dump_complete_at_the_root_frame():
    frames, complete = slowlog.parse_dump(DUMP, ROOT)
    assert complete
    assert frames == [Frame(0, "c", "/srv/app/app.py", 45), Frame(0, "b", "/srv/app/app.py", 0),
                      Frame(0, "_run_module_as_main", *ROOT[:1], 198)]


def test_parse_dump_incomplete_until_the_root_or_the_truncation_line():
    assert slowlog.parse_dump(DUMP[:-10], ROOT) == (
        [Frame(0, "c", "/srv/app/app.py", 45), Frame(0, "b", "/srv/app/app.py", 0)], False)
    truncated = DUMP.split("\n")[0] + "\n" + '  File "x.py", line 1 in f\n' * 100 + "  ...\n"
    frames, complete = slowlog.parse_dump(truncated, ROOT)
    assert complete and len(frames) == 100
    # From 3.13 on faulthandler stops at its 100th frame with no line after it.
    frames, complete = slowlog.parse_dump(truncated[:-len("  ...\n")], ROOT)
    assert complete and len(frames) == 100
    assert not slowlog.parse_dump(truncated[:-len('  File "x.py", line 1 in f\n  ...\n')],
                                  ROOT)[1]
    # A late dump from an earlier timeout followed by the fresh one: only the last counts.
    frames, complete = slowlog.parse_dump("Stack (most recent call first):\n"
                                          '  File "old.py", line 1 in old\n' + DUMP, ROOT)
    assert complete and frames[0].filename == "/srv/app/app.py"


def test_parse_dump_ends_before_a_stop_frame_and_is_complete_there():
    stop = frozenset({("/srv/app/app.py", "b"), ("/srv/other.py", "c")})
    assert slowlog.parse_dump(DUMP, ROOT, stop) == ([Frame(0, "c", "/srv/app/app.py", 45)], True)
    # Complete at the stop frame, even with more of the dump still to come.
    assert slowlog.parse_dump(DUMP[:-10], ROOT, stop)[1]
    # Only the exact (file, name) stops: the same name in another file is the app's.
    frames, complete = slowlog.parse_dump(DUMP, ROOT, frozenset({("/srv/app/b.py", "b")}))
    assert len(frames) == 3 and complete


# ---- real dumps from real children ----

def parked(seconds):
    start = time.monotonic()
    time.sleep(seconds)  # mark: parked
    return time.monotonic() - start


def caller(seconds):
    return parked(seconds)  # mark: caller


def deep(n, seconds):
    if n:
        return deep(n - 1, seconds)  # mark: deep
    return parked(seconds)  # mark: deep_end


def fork_armed(work, *args, arm=True):
    """A child that arms the fallback on a pipe of its own, says it is ready, runs work and
    exits with 0 if work returned within 10 ms of 0.3 s (a dump must not cut a sleep short)."""
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            os.close(r)
            if arm:
                slowlog.arm_worker(w)
            else:
                signal.signal(slowlog.DUMP_SIGNAL, signal.SIG_IGN)
            os.write(ready_w, b"r")
            ok = 0.3 <= work(*args) < 0.31
        finally:
            os._exit(0 if ok else 1)
    os.close(w)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    time.sleep(0.05)
    return pid, r


def read_dump(pid, r, timeout=2.0, stop=frozenset()):
    """A fallback dump read as the master's loop reads it: on each readable event, until it
    is complete or `timeout` has passed."""
    dump = slowlog.Dump(pid, r, stop=stop)
    try:
        dump.ask()
        poller = select.poll()
        poller.register(dump.fd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while not dump.complete and poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            dump.feed()
        return dump.frames()
    finally:
        dump.close()


def dump_of(work, *args):
    """(frames, seconds the read took, the child's wait status) of a real fallback dump."""
    pid, r = fork_armed(work, *args)
    try:
        start = time.monotonic()
        frames = read_dump(pid, r)
        took = time.monotonic() - start
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(r)
    return frames, took, status


def test_fallback_reads_a_real_dump_and_the_child_sleeps_on():
    frames, took, status = dump_of(caller, 0.3)
    assert [(f.qualname, f.filename, f.lineno) for f in frames[:2]] == [
        ("parked", str(HERE), mark("parked")), ("caller", str(HERE), mark("caller"))]
    assert all(f.address == 0 for f in frames)
    # It ends at this process's own outermost frame (the child is a fork of it), which is how
    # the reader knew the dump was complete instead of waiting for the timeout.
    root = sys._getframe()
    while root.f_back:
        root = root.f_back
    assert (frames[-1].filename, frames[-1].qualname) == (root.f_code.co_filename,
                                                          root.f_code.co_name)
    assert took < 0.2
    assert status == 0


def test_fallback_dump_ends_before_the_stop_frame():
    pid, r = fork_armed(caller, 0.3)
    try:
        start = time.monotonic()
        frames = read_dump(pid, r, stop=frozenset({(str(HERE), "caller")}))
        took = time.monotonic() - start
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(r)
    assert [(f.qualname, f.filename, f.lineno) for f in frames] == [
        ("parked", str(HERE), mark("parked"))]
    assert took < 0.2 and status == 0


def test_fallback_dump_of_a_deep_stack_ends_at_the_100th_frame():
    frames, took, status = dump_of(deep, 150, 0.3)
    assert len(frames) == 100 and took < 0.2
    assert [f.qualname for f in frames[:3]] == ["parked", "deep", "deep"]
    assert [f.lineno for f in frames[1:3]] == [mark("deep_end"), mark("deep")]
    assert status == 0


def test_fallback_without_a_dump_times_out():
    pid, r = fork_armed(parked, 0.3, arm=False)
    try:
        with pytest.raises(TraceError, match="no faulthandler dump within 500 ms"):
            read_dump(pid, r, timeout=0.1)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(r)
    assert status == 0
    r, w = os.pipe()
    try:
        with pytest.raises(Gone):
            read_dump(pid, r, timeout=0.1)
    finally:
        os.close(r)
        os.close(w)
