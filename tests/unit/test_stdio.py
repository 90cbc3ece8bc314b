"""fpm.stdio: catch_workers_output over real pipes and real forked processes, the end of a
request's output (MARK), a worker's own sys.stdout and sys.stderr, and wsgi.errors lines."""
import errno
import os
import re
import select
import sys
from types import SimpleNamespace

import pytest

from fpm import stdio, workerlog
from fpm.log import Logger
from fpm.stdio import MARK, Capture, decorated

PREFIX = r"\[\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}:\d{2}\] WARNING: "


@pytest.fixture
def log_path(tmp_path):
    return tmp_path / "fpm.log"


def capture(log_path, level="notice", limit=1024, **kwargs):
    return Capture(Logger(str(log_path), level, limit=limit), "www", limit=limit, **kwargs)


def attached(cap, pid=1234):
    """Pipes attached to ``pid`` as after a fork: (stdout write end, stderr write end)."""
    child, parent = cap.pipes()
    # What the child would hold: its own copies, since attach() closes ours.
    ends = (os.dup(child[0]), os.dup(child[1]))
    cap.attach(pid, parent)
    return ends, parent


def lines(log_path):
    return log_path.read_text().splitlines() if log_path.exists() else []


def strip(text_lines):
    return [re.sub("^" + PREFIX, "", x) for x in text_lines]


# --- decorated -----------------------------------------------------------------------------

def test_decorated_lines_are_php_fpm_shaped(log_path):
    cap = capture(log_path)
    (out, err), (out_r, err_r) = attached(cap)
    os.write(err, b"hello\nworld\n")
    os.write(out, b"from stdout\n")
    assert cap.readable(err_r) and cap.readable(out_r)
    got = lines(log_path)
    assert all(re.match(PREFIX, x) for x in got)
    assert strip(got) == ['[pool www] child 1234 said into stderr: "hello"',
                          '[pool www] child 1234 said into stderr: "world"',
                          '[pool www] child 1234 said into stdout: "from stdout"']
    os.close(out)
    os.close(err)


def test_a_partial_line_waits_for_its_newline(log_path):
    cap = capture(log_path)
    (out, err), (_, err_r) = attached(cap)
    os.write(err, b"half")
    cap.readable(err_r)
    assert lines(log_path) == []
    os.write(err, b" and half\n")
    cap.readable(err_r)
    assert strip(lines(log_path)) == ['[pool www] child 1234 said into stderr: "half and half"']
    os.close(out)
    os.close(err)


def test_long_lines_are_wrapped_at_log_limit(log_path):
    cap = capture(log_path, limit=512)
    (out, err), (_, err_r) = attached(cap)
    text = bytes(range(ord("a"), ord("z") + 1)) * 60  # 1560 bytes
    os.write(err, text + b"\n")
    cap.readable(err_r)
    raw = log_path.read_bytes().splitlines(keepends=True)
    assert len(raw) == 4 and all(len(x) <= 512 for x in raw)
    assert all(len(x) == 512 for x in raw[:3])
    body = b"".join(re.match(rb'.*said into stderr: "(.*)"\n', x, re.S).group(1) for x in raw)
    assert body == text
    os.close(out)
    os.close(err)


def test_a_partial_line_is_written_when_it_fills_a_wrapped_line(log_path):
    cap = capture(log_path, limit=512)
    (out, err), (_, err_r) = attached(cap)
    os.write(err, b"x" * 1000)
    cap.readable(err_r)
    written = log_path.read_bytes().splitlines(keepends=True)
    assert len(written) == 2  # two full wrapped lines; the rest waits
    assert all(len(x) == 512 and x.endswith(b'xxx"\n') for x in written)
    os.close(out)
    os.close(err)


def test_wrapping_never_splits_a_utf8_character(log_path):
    cap = capture(log_path, limit=512)
    (out, err), (_, err_r) = attached(cap)
    os.write(err, "é".encode() * 600 + b"\n")
    cap.readable(err_r)
    text = log_path.read_text(encoding="utf-8")  # would fail on a split character
    assert "".join(re.findall(r'"(é+)"', text)) == "é" * 600
    os.close(out)
    os.close(err)


def test_eof_flushes_the_last_words_with_pipe_is_closed(log_path):
    forgotten = []
    cap = capture(log_path, forget=forgotten.append)
    (out, err), (out_r, err_r) = attached(cap)
    os.write(err, b"done\nlast words")
    os.close(err)
    assert cap.readable(err_r) is False
    assert strip(lines(log_path)) == [
        '[pool www] child 1234 said into stderr: "done"',
        '[pool www] child 1234 said into stderr: "last words", pipe is closed']
    assert forgotten == [err_r]
    os.close(out)
    assert cap.readable(out_r) is False  # nothing pending: nothing logged
    assert len(lines(log_path)) == 2 and forgotten == [err_r, out_r]
    # The worker is not reaped yet: its fd numbers stay its own (a reload passes them on).
    assert sorted(cap.fds()) == sorted([out_r, err_r])
    os.fstat(err_r)
    cap.drop(1234)
    assert cap.fds() == [] and forgotten == [err_r, out_r]  # forgotten once each
    for fd in (out_r, err_r):
        with pytest.raises(OSError) as e:
            os.fstat(fd)
        assert e.value.errno == errno.EBADF


def test_decorated_helper_puts_the_suffix_on_the_last_line_only():
    head = b'H: "'
    assert decorated(head, b"abc", 100, b", pipe is closed") == [b'H: "abc", pipe is closed\n']
    out = decorated(head, b"a" * 40, 30, b"!")
    assert out == [b'H: "' + b"a" * 24 + b'"\n', b'H: "' + b"a" * 16 + b'"!\n']


# --- the end of a request's output -------------------------------------------------------

def test_a_mark_ends_the_partial_line_before_it(log_path):
    cap = capture(log_path)
    (out, err), (_, err_r) = attached(cap)
    os.write(err, b"half")
    cap.readable(err_r)
    assert lines(log_path) == []
    os.write(err, MARK + b"next request" + MARK + MARK + b"third\n")
    cap.readable(err_r)
    assert strip(lines(log_path)) == ['[pool www] child 1234 said into stderr: "half"',
                                      '[pool www] child 1234 said into stderr: "next request"',
                                      '[pool www] child 1234 said into stderr: "third"']
    os.close(out)
    os.close(err)


@pytest.mark.parametrize("cut", range(1, len(MARK)))
def test_a_mark_cut_by_a_read_is_still_a_mark(log_path, cut):
    cap = capture(log_path, limit=512)
    (out, err), (_, err_r) = attached(cap)
    os.write(err, b"x" * 1000 + MARK[:cut])  # also fills wrapped lines: the cut mark waits
    cap.readable(err_r)
    os.write(err, MARK[cut:] + b"rest\n")
    cap.readable(err_r)
    got = strip(lines(log_path))
    assert "".join(re.match(r'.*said into stderr: "(x*)"$', x)[1] for x in got[:-1]) == "x" * 1000
    assert got[-1] == '[pool www] child 1234 said into stderr: "rest"'
    assert b"fscf" not in log_path.read_bytes()
    os.close(out)
    os.close(err)


def test_undecorated_and_unbuffered_drop_marks(log_path):
    cap = capture(log_path, buffering=False, decorate=False)
    (out, err), (out_r, _) = attached(cap)
    os.write(out, b"abc" + MARK + b"def")
    cap.readable(out_r)
    assert log_path.read_bytes() == b"abcdef"
    os.close(out)
    os.close(err)


# --- undecorated -----------------------------------------------------------------------------

def test_undecorated_lines_are_written_raw_and_whole(log_path):
    cap = capture(log_path, limit=512, decorate=False)
    (out, err), (out_r, err_r) = attached(cap)
    long_line = b"{" + b'"k": 1, ' * 300 + b"}"  # a JSON log line longer than log_limit
    os.write(out, long_line + b"\nsecond\n")
    cap.readable(out_r)
    assert log_path.read_bytes() == long_line + b"\nsecond\n"
    os.close(out)
    os.close(err)


def test_undecorated_partial_line_is_bounded(log_path):
    cap = capture(log_path, decorate=False)
    (out, err), (out_r, _) = attached(cap)
    os.set_blocking(out, False)
    sent = 0
    while sent < stdio.UNDECORATED_MAX + 10:
        sent += os.write(out, b"y" * min(4096, stdio.UNDECORATED_MAX + 10 - sent))
        cap.readable(out_r)
    assert log_path.read_bytes() == b"y" * stdio.UNDECORATED_MAX + b"\n"
    os.close(out)
    cap.readable(out_r)
    assert log_path.read_bytes() == b"y" * stdio.UNDECORATED_MAX + b"\n" + b"y" * 10 + b"\n"
    os.close(err)


def test_undecorated_eof_adds_the_newline_only(log_path):
    cap = capture(log_path, decorate=False)
    (out, err), (_, err_r) = attached(cap)
    os.write(err, b"no newline")
    os.close(err)
    cap.readable(err_r)
    assert log_path.read_bytes() == b"no newline\n"
    os.close(out)


# --- log_buffering = no ---------------------------------------------------------------------

def test_unbuffered_decorated_writes_a_partial_line_at_once(log_path):
    cap = capture(log_path, buffering=False)
    (out, err), (_, err_r) = attached(cap)
    os.write(err, b"progress: 50%")
    cap.readable(err_r)
    assert strip(lines(log_path)) == ['[pool www] child 1234 said into stderr: "progress: 50%"']
    os.close(out)
    os.close(err)


def test_unbuffered_undecorated_passes_bytes_through(log_path):
    cap = capture(log_path, buffering=False, decorate=False)
    (out, err), (out_r, _) = attached(cap)
    for chunk in (b"a", b"b\nc", b"\x00\xff"):
        os.write(out, chunk)
        cap.readable(out_r)
    assert log_path.read_bytes() == b"ab\nc\x00\xff"
    os.close(out)
    os.close(err)


# --- levels, drop, cancel ---------------------------------------------------------------------

def test_log_level_error_hides_worker_output_but_drains_the_pipe(log_path):
    cap = capture(log_path, level="error")
    (out, err), (_, err_r) = attached(cap)
    os.write(err, b"x" * 50000 + b"\n")
    cap.readable(err_r)
    assert lines(log_path) == []
    with pytest.raises(BlockingIOError):
        os.read(err_r, 1)  # nothing left behind
    os.close(out)
    os.close(err)


def test_drop_logs_what_is_left_and_closes_even_if_the_pipe_is_still_held(log_path):
    forgotten = []
    cap = capture(log_path, forget=forgotten.append)
    (out, err), (out_r, err_r) = attached(cap)
    os.write(out, b"unread line\npartial")
    cap.drop(1234)  # out/err still open: a process the worker started holds them
    assert strip(lines(log_path)) == ['[pool www] child 1234 said into stdout: "unread line"',
                                      '[pool www] child 1234 said into stdout: "partial"']
    assert sorted(forgotten) == sorted([out_r, err_r]) and cap.fds() == []
    os.close(out)
    os.close(err)


def test_cancel_closes_both_pipes(log_path):
    cap = capture(log_path)
    child, parent = cap.pipes()
    assert sorted(cap.fds()) == sorted(parent)
    cap.cancel(parent)
    for fd in (*child, *parent):
        with pytest.raises(OSError):
            os.fstat(fd)
    assert cap.fds() == []


def test_pipes_are_non_blocking_for_the_master_and_close_on_exec(log_path):
    import fcntl
    cap = capture(log_path)
    child, parent = cap.pipes()
    assert all(not os.get_blocking(fd) for fd in parent)
    assert all(os.get_blocking(fd) for fd in child)
    assert all(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in (*child, *parent))
    cap.cancel(parent)


# --- with real workers ---------------------------------------------------------------------------

def run_child(log_path, body, catch=True, buffering=True, decorate=True, level="notice"):
    """Fork a 'worker' that redirects its stdio as fpm.stdio.redirect does, with its log
    socket (fpm.workerlog), and runs body(log); read its pipes and its log socket as the
    master's loop would until all are closed; its pid."""
    log = Logger(str(log_path), level, buffering=buffering)
    cap = Capture(log, "www", decorate, buffering=buffering)
    reader = workerlog.Reader(log)
    child_fds, parent_fds = cap.pipes() if catch else (None, ())
    ours, theirs = workerlog.pair()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for fd in (*parent_fds, ours):
                os.close(fd)
            stdio.redirect(child_fds)
            body(workerlog.WorkerLog(theirs, level, buffering))
            code = 0
        finally:
            os._exit(code)
    os.close(theirs)
    if catch:
        cap.attach(pid, parent_fds)
    reader.attach(pid, SimpleNamespace(name="www", decorate_workers_output=decorate), ours)
    readers = {fd: cap for fd in parent_fds} | {ours: reader}
    while readers:
        for fd in select.select(list(readers), [], [], 5)[0]:
            if not readers[fd].readable(fd):
                del readers[fd]
    assert os.waitpid(pid, 0)[1] == 0
    return pid


def test_a_forked_worker_printing_to_stdout_and_stderr(log_path):
    def body(log):
        sys.stdout = open(1, "w", closefd=False)  # pytest replaced ours
        sys.stderr = open(2, "w", closefd=False)
        print("to stdout")
        print("to stderr", file=sys.stderr)
        sys.stderr.write("unfinished")
        sys.stdout.flush()
        sys.stderr.flush()
    pid = run_child(log_path, body)
    assert sorted(strip(lines(log_path))) == sorted([
        '[pool www] child %d said into stdout: "to stdout"' % pid,
        '[pool www] child %d said into stderr: "to stderr"' % pid,
        '[pool www] child %d said into stderr: "unfinished", pipe is closed' % pid])


def test_a_workers_stdin_is_dev_null_and_the_master_has_its_lines(log_path):
    def body(log):
        assert os.read(0, 10) == b""
        assert os.path.samestat(os.fstat(0), os.stat(os.devnull))
        log.error("from the worker's log")
    pid = run_child(log_path, body)
    assert re.match(r"\[.*\] ERROR: \[pool www\] child %d: from the worker's log$" % pid,
                    lines(log_path)[0])


def test_without_capture_the_output_goes_to_dev_null(log_path, capfd):
    def body(log):
        os.write(1, b"lost\n")
        os.write(2, b"lost too\n")
        log.error("kept")
    pid = run_child(log_path, body, catch=False)
    assert capfd.readouterr() == ("", "")
    assert [x.split("ERROR: ")[1] for x in lines(log_path)] == ["[pool www] child %d: kept" % pid]


def test_syslog_target_gets_syslog_shaped_warning_lines(dev_log):
    import syslog
    log = Logger("syslog", ident="pyfpm-test")
    cap = Capture(log, "www")
    (out, err), (_, err_r) = attached(cap, pid=77)
    os.write(err, b"hello\n")
    cap.readable(err_r)
    got = dev_log.recv(4096).decode()
    assert re.match(r'<%d>.* pyfpm-test\[%d\]: \[WARNING\] \[pool www\] child 77 said into '
                    r'stderr: "hello"$' % (syslog.LOG_DAEMON | syslog.LOG_WARNING, os.getpid()),
                    got)
    os.close(out)
    os.close(err)
    syslog.closelog()


def test_redirect_makes_print_line_buffered():
    """A worker exits with os._exit (no flush): each printed line must be out already."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            sys.stdout = open(1, "w", closefd=False)  # not a terminal: block-buffered
            stdio.redirect((w, os.dup(w)))
            print("one")
        finally:
            os._exit(0)
    os.close(w)
    assert os.waitpid(pid, 0)[1] == 0
    assert os.read(r, 100) == b"one\n"
    os.close(r)


def test_a_workers_control_characters_cannot_make_a_line_of_their_own(log_path):
    cap = capture(log_path)
    (out, err), (_, err_r) = attached(cap)
    os.write(err, b"x\r[21-Nov-2026 10:00:00] NOTICE: forged\x1b[2K\xe2\x80\xa8y\n")
    cap.readable(err_r)
    (line,) = log_path.read_text().split("\n")[:-1]
    assert line.splitlines() == [line]  # not even str.splitlines() finds another line
    assert strip([line]) == ['[pool www] child 1234 said into stderr: "x\\x0d[21-Nov-2026 '
                             '10:00:00] NOTICE: forged\\x1b[2K\\u2028y"']
    os.close(out)
    os.close(err)


def test_wrapping_never_splits_an_escape(log_path):
    cap = capture(log_path, limit=512)
    (out, err), (_, err_r) = attached(cap)
    head = len(b"[21-Nov-2026 10:00:00] WARNING: [pool www] child 1234 said into stderr: \"")
    for shift in range(6):
        os.write(err, b"a" * (512 - head - 2 - shift) + b"\x1b" * 3 + b"\n")
    cap.readable(err_r)
    for line in log_path.read_bytes().splitlines():
        assert re.fullmatch(rb'.*: "a*(\\x1b)*"', line), line
        assert len(line) < 512
    os.close(out)
    os.close(err)


# --- a worker's own sys.stdout and sys.stderr --------------------------------------------------

def pool(catch, decorate=True):
    return SimpleNamespace(name="www", catch_workers_output=catch, decorate_workers_output=decorate)


def run_worker(log_path, catch, body, buffering=True, decorate=True, level="notice"):
    """A 'worker' with fpm.stdio's streams (worker_output) that runs body(end_request, marks);
    what reaches the log, as the master would write it; its pid."""
    def worker(log):
        marks = []
        end = stdio.worker_output(pool(catch, decorate), log, lambda: marks.append(1))
        body(end, marks)
    return run_child(log_path, worker, catch, buffering, decorate, level)


@pytest.mark.parametrize("catch", [True, False], ids=["caught", "not_caught"])
def test_a_requests_last_line_ends_with_it(log_path, catch):
    def body(end_request, marks):
        print("first", end="", file=sys.stderr)
        sys.stderr.write(" request")
        assert len(marks) == 1  # the request's end is told once
        end_request()
        sys.stderr.write("second request\n")
        end_request()
        end_request()  # nothing written since: nothing to do
        sys.stderr.write("third")
        sys.stderr.flush()
        sys.stderr.write(" request")
        end_request()
        assert len(marks) == 3
    pid = run_worker(log_path, catch, body)
    assert strip(lines(log_path)) == ['[pool www] child %d said into stderr: "%s request"'
                                      % (pid, n) for n in ("first", "second", "third")]


def test_without_catch_stdout_is_dropped_and_stderr_is_logged(log_path, capfd):
    def body(end_request, marks):
        print("dropped")
        print("kept", file=sys.stderr)
        end_request()
    pid = run_worker(log_path, False, body)
    assert strip(lines(log_path)) == ['[pool www] child %d said into stderr: "kept"' % pid]
    assert capfd.readouterr() == ("", "")


def test_without_catch_stderr_is_not_even_sent_when_log_level_hides_it(log_path):
    def body(end_request, marks):
        print("hidden", file=sys.stderr)
        end_request()
        assert sys.stderr.buffer.target.__class__.__name__ == "_Drop"
    run_worker(log_path, False, body, level="error")
    assert lines(log_path) == []


def test_unbuffered_output_passes_at_once_and_ends_no_line(log_path):
    def body(end_request, marks):
        sys.stdout.write("progress: ")
        os.write(1, b"|")  # after it in the pipe: it was not held back
        end_request()
        sys.stdout.write("done\n")
    run_worker(log_path, True, body, buffering=False, decorate=False)
    assert log_path.read_bytes() == b"progress: |done\n"
