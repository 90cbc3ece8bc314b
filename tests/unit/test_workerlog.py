"""fpm.workerlog: a worker's lines, its sys.stderr and wsgi.errors, sent over a real socket
pair to the master's reader, which writes them to the error log under its own prefix."""
import os
import re
import syslog
from types import SimpleNamespace

import pytest

from fpm import workerlog
from fpm.log import Logger
from fpm.stdio import MARK

STAMP = r"\[\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}:\d{2}\] "


@pytest.fixture
def log_path(tmp_path):
    return tmp_path / "fpm.log"


class Pair:
    """A worker's WorkerLog and the master's Reader over one socket pair."""

    def __init__(self, master_log, level="notice", decorate=True, pid=12, pool="www"):
        self.forgotten = []
        self.reader = workerlog.Reader(master_log, self.forgotten.append)
        self.fd, theirs = workerlog.pair()
        self.worker = workerlog.WorkerLog(theirs, level, master_log.buffering)
        self.reader.attach(pid, SimpleNamespace(name=pool, decorate_workers_output=decorate),
                           self.fd)

    def read(self):
        return self.reader.readable(self.fd)


def lines(log_path):
    return log_path.read_text().splitlines() if log_path.exists() else []


def body(line):
    return re.sub("^" + STAMP, "", line)


def test_the_master_names_the_worker_on_every_line_of_a_record(log_path):
    p = Pair(Logger(str(log_path)))
    p.worker.error('the application raised an exception on "GET /x"\nTraceback (most recent '
                   'call last):\n  File "app.py", line 3, in app\nValueError: no')
    p.worker.notice("[pool other] child 1: forged\n[21-Nov-2026 10:00:00] NOTICE: fpm is running")
    assert p.read()
    assert [body(x) for x in lines(log_path)] == [
        'ERROR: [pool www] child 12: the application raised an exception on "GET /x"',
        "ERROR: [pool www] child 12: Traceback (most recent call last):",
        'ERROR: [pool www] child 12:   File "app.py", line 3, in app',
        "ERROR: [pool www] child 12: ValueError: no",
        "NOTICE: [pool www] child 12: [pool other] child 1: forged",
        "NOTICE: [pool www] child 12: [21-Nov-2026 10:00:00] NOTICE: fpm is running"]


def test_control_characters_are_written_visibly(log_path):
    p = Pair(Logger(str(log_path)))
    p.worker.warning("a\rb\x1b[2K\u2028c\x85d\te")
    p.read()
    (line,) = log_path.read_text().split("\n")[:-1]
    assert body(line) == "WARNING: [pool www] child 12: a\\x0db\\x1b[2K\\u2028c\\u0085d\te"
    assert line.splitlines() == [line]


def test_levels_below_log_level_are_not_even_sent(log_path):
    p = Pair(Logger(str(log_path), "warning"), level="warning")
    p.worker.debug("no")
    p.worker.notice("no")
    with pytest.raises(BlockingIOError):
        os.read(p.fd, 100)
    p.worker.alert("yes")
    p.read()
    assert [body(x) for x in lines(log_path)] == ["ALERT: [pool www] child 12: yes"]


def test_a_level_the_master_filters_out_is_not_written(log_path):
    # A worker that sends below log_level anyway (it chose its threshold itself).
    p = Pair(Logger(str(log_path), "error"), level="debug")
    p.worker.notice("hidden")
    p.worker.error("shown")
    p.read()
    assert [body(x) for x in lines(log_path)] == ["ERROR: [pool www] child 12: shown"]


def test_a_record_longer_than_a_message_arrives_whole_and_lines_keep_php_fpms_limit(log_path):
    p = Pair(Logger(str(log_path), limit=1024))
    traceback = "\n".join("  line %05d " % i + "x" * 100 for i in range(2000))  # ~230 KB
    long_line = "y" * 5000
    p.worker.error("boom\n" + traceback + "\n" + long_line)
    p.read()
    got = [body(x) for x in lines(log_path)]
    assert len(got) == 2002
    assert got[1].startswith("ERROR: [pool www] child 12:   line 00000 ")
    assert got[2000].startswith("ERROR: [pool www] child 12:   line 01999 ")
    # PHP-FPM's rule, as the master's own lines: at most log_limit bytes, ending in "...".
    last = log_path.read_bytes().splitlines()[-1]
    assert len(last) + 1 == 1024 and last.endswith(b"...")


def test_syslog_gets_each_worker_line_at_its_own_level(dev_log):
    p = Pair(Logger("syslog", "debug", ident="pyfpm-test"), level="debug")
    p.worker.error("bad")
    p.worker.debug("detail")
    p.read()
    got = [dev_log.recv(4096).decode() for _ in range(2)]
    assert re.match(r"<%d>.* pyfpm-test\[\d+\]: \[ERROR\] \[pool www\] child 12: bad$"
                    % (syslog.LOG_DAEMON | syslog.LOG_ERR), got[0])
    assert re.match(r"<%d>.* \[DEBUG\] \[pool www\] child 12: detail$"
                    % (syslog.LOG_DAEMON | syslog.LOG_DEBUG), got[1])
    syslog.closelog()


# --- sys.stderr ----------------------------------------------------------------------------------

def test_stderr_bytes_become_said_into_stderr_lines(log_path):
    p = Pair(Logger(str(log_path)))
    p.worker.stderr(b"one\ntw")
    p.worker.stderr(b"o" + MARK + b"three")
    p.read()
    assert [body(x) for x in lines(log_path)] == [
        'WARNING: [pool www] child 12 said into stderr: "one"',
        'WARNING: [pool www] child 12 said into stderr: "two"']
    p.reader.drop(12)  # the worker is gone: its partial line is written, its socket closed
    assert body(lines(log_path)[-1]) == 'WARNING: [pool www] child 12 said into stderr: "three"'
    assert p.forgotten == [p.fd] and p.reader.fds() == []


def test_undecorated_stderr_is_written_as_printed(log_path):
    p = Pair(Logger(str(log_path)), decorate=False)
    p.worker.stderr(b'{"level": "info"}\n')
    p.read()
    assert log_path.read_bytes() == b'{"level": "info"}\n'


def test_the_last_words_of_a_worker_that_closed_its_socket(log_path):
    p = Pair(Logger(str(log_path)))
    p.worker.stderr(b"last words")
    p.worker.sock.close()
    assert p.read() is False
    assert body(lines(log_path)[0]) == ('WARNING: [pool www] child 12 said into stderr: '
                                        '"last words", pipe is closed')
    # Not watched any more, but open until the worker is reaped: a reload passes it on.
    assert p.forgotten == [p.fd] and p.reader.fds() == [p.fd]
    os.fstat(p.fd)
    p.reader.drop(12)
    assert p.forgotten == [p.fd] and p.reader.fds() == []
    with pytest.raises(OSError):
        os.fstat(p.fd)


def test_a_record_of_no_known_kind_is_ignored(log_path):
    p = Pair(Logger(str(log_path)))
    p.worker._send(b"Zwhatever")
    p.worker.error("after")
    p.read()
    assert [body(x) for x in lines(log_path)] == ["ERROR: [pool www] child 12: after"]


# --- wsgi.errors ---------------------------------------------------------------------------------

def test_wsgi_errors_lines_name_the_request_and_end_with_it(log_path):
    p = Pair(Logger(str(log_path)))
    errors = workerlog.ErrorsLog(p.worker)
    errors.say("GET /x?y=1", "one\ntwo")
    errors.say("GET /x?y=1", " halves\n\nthree")
    p.read()
    assert [body(x) for x in lines(log_path)] == [
        'WARNING: [pool www] child 12 said into wsgi.errors on "GET /x?y=1": "%s"' % x
        for x in ("one", "two halves", "")]
    errors.end()
    errors.say("POST /next", "four")
    p.read()
    assert [body(x) for x in lines(log_path)][3:] == [
        'WARNING: [pool www] child 12 said into wsgi.errors on "GET /x?y=1": "three"']
    errors.end()
    p.read()
    assert body(lines(log_path)[-1]) == ('WARNING: [pool www] child 12 said into wsgi.errors '
                                         'on "POST /next": "four"')


def test_wsgi_errors_lines_are_wrapped_and_a_long_request_line_is_cut(log_path):
    p = Pair(Logger(str(log_path), limit=512))
    errors = workerlog.ErrorsLog(p.worker)
    errors.say("GET /" + "u" * 300, "é" * 400 + "\n")
    p.read()
    raw = log_path.read_bytes().splitlines(keepends=True)
    assert len(raw) > 1 and all(len(x) <= 512 for x in raw)
    assert all(b'on "GET /' + b"u" * 120 + b'...": "' in x for x in raw)  # 128 = 512 / 4
    assert "".join(re.findall(r'"(é+)"', log_path.read_text(encoding="utf-8"))) == "é" * 400


def test_wsgi_errors_lines_are_warnings(log_path):
    p = Pair(Logger(str(log_path), "error"), level="error")
    errors = workerlog.ErrorsLog(p.worker)
    errors.say("GET /", "hidden\n")
    errors.end()
    p.read()
    assert lines(log_path) == []
    p = Pair(Logger(str(log_path), "warning"), level="warning")
    workerlog.ErrorsLog(p.worker).say("GET /", "shown\n")
    p.read()
    assert body(lines(log_path)[0]).startswith("WARNING: ")


def test_a_request_line_cannot_carry_a_line_of_its_own(log_path):
    p = Pair(Logger(str(log_path)))
    workerlog.ErrorsLog(p.worker).say("GET /x\n[21-Nov-2026 10:00:00] NOTICE: forged", "t\n")
    p.read()
    (line,) = lines(log_path)
    assert body(line) == ('WARNING: [pool www] child 12 said into wsgi.errors on '
                          '"GET /x\\x0a[21-Nov-2026 10:00:00] NOTICE: forged": "t"')
