"""The slowlog on the real master: a slow request's Python stack, read from the worker while
it runs (ptrace) or, where ptrace is refused, from its faulthandler dump; and the trace that
comes before a request_terminate_timeout kill."""
import json
import re
import shutil

import pytest

import slow_app
from fpm import client
from tests.conftest import APPS, require
from tests.harness import Server

CONFIG = """\
[global]
log_level = notice

[www]
listen = {sock}
pm = static
pm.max_children = 1
app = {app}
python_path = {path}
pm.status_path = /status
{slowlog}
request_slowlog_timeout = 1
request_slowlog_trace_depth = 20
{extra}
"""

FRAME = re.compile(r"^\[0x[0-9a-f]{16}\] (\S+)\(\) (.+):(\d+)$")


def start(tmp_path, app="slow_app:app", path=str(APPS), extra="", prefix=(),
          slowlog="slowlog = {tmp}/www.slow.log"):
    server = Server(CONFIG.format(app=app, path=path, extra=extra, sock="{sock}",
                                  slowlog=slowlog), tmp_path)
    server.argv = list(prefix) + server.argv
    server.start()
    server.wait_idle(1)
    return server


def get(server, uri, timeout=30):
    return client.request(server.address, uri, timeout=timeout)


def entries(server) -> list[list[str]]:
    """The slowlog's entries, each as its lines (the blank line before each dropped)."""
    text = (server.tmp / "www.slow.log").read_text()
    return [block.strip("\n").split("\n") for block in text.split("\n\n") if block.strip()]


def where(name: str) -> tuple[str, str, int]:
    return name, slow_app.__file__, slow_app.marker_line(name)


def frames(lines: list[str]) -> list[tuple[str, str, int]]:
    found = []
    for line in lines[3:]:
        m = FRAME.match(line)
        assert m, line
        found.append((m[1], m[2], int(m[3])))
    return found


def check_header(lines, server, worker, uri):
    assert re.fullmatch(r"\[\d\d-\w{3}-\d{4} \d\d:\d\d:\d\d\]  \[pool www\] pid %d" % worker,
                        lines[0]), lines[0]
    assert lines[1] == "script_filename = slow_app:app"
    m = re.fullmatch(r'request = "GET %s" elapsed = (\d+\.\d{6}) sec' % re.escape(uri), lines[2])
    assert m and 1.0 <= float(m[1]) < 2.0, lines[2]


@pytest.mark.parametrize("uri, inner", [
    ("/sleep?s=2.5", ["sleep_b", "sleep_a"]),   # blocked in a system call
    ("/loop?s=2.5", ["spin"]),                  # running Python code
    ("/cbusy?s=2.5", ["cbusy"]),                # inside one long C call holding the GIL
])
def test_slow_request_stack_is_logged_and_the_request_completes(tmp_path, uri, inner):
    server = start(tmp_path)
    try:
        worker = server.wait_idle(1)[0]
        mark = server.mark()
        response = get(server, uri)
        # The trace stopped the worker for a moment only: the request ends normally.
        assert response.status == 200 and response.body.startswith(
            {"sleep_b": b"slept", "spin": b"looped", "cbusy": b"summed"}[inner[0]])
        server.wait_log(r"\[pool www\] child %d, script 'slow_app:app' \(request: \"GET %s\"\) "
                        r"executing too slow \(1\.\d{6} sec\), logging"
                        % (worker, re.escape(uri)), since=mark)
        server.wait_log(r"finished trace of %d" % worker, since=mark)
        [lines] = entries(server)
        check_header(lines, server, worker, uri)
        stack = frames(lines)
        assert stack[:len(inner)] == [where(name) for name in inner]
        assert ("app", slow_app.__file__) in [(name, path) for name, path, _ in stack]
        status = json.loads(get(server, "/status?json").body)
        assert status["slow requests"] == 1
        assert server.children() == [worker]  # traced, not restarted
    finally:
        server.stop()


def test_depth_cuts_the_stack_and_one_entry_per_request(tmp_path):
    server = start(tmp_path, extra="request_slowlog_trace_depth = 1")
    try:
        for _ in range(2):
            assert get(server, "/sleep?s=1.6").status == 200
        logged = entries(server)
        assert len(logged) == 2  # one per slow request, however many heartbeats it spans
        for lines in logged:
            assert frames(lines) == [where("sleep_b")]
    finally:
        server.stop()


UNDUMPABLE_APP = """\
import ctypes
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: tracing now needs CAP_SYS_PTRACE
from slow_app import app
"""


def test_refused_ptrace_falls_back_to_faulthandler(tmp_path):
    """A master without CAP_SYS_PTRACE (Docker's default) and a non-dumpable worker: the
    kernel refuses the attach; the entry still comes, from the worker's faulthandler dump,
    and the error log says so once."""
    setpriv = shutil.which("setpriv")
    require("setpriv", setpriv, "util-linux")
    (tmp_path / "undumpable.py").write_text(UNDUMPABLE_APP)
    server = start(tmp_path, app="undumpable:app", path="%s:%s" % (tmp_path, APPS),
                   prefix=(setpriv, "--bounding-set=-sys_ptrace"))
    try:
        worker = server.wait_idle(1)[0]
        for _ in range(2):
            assert get(server, "/sleep?s=1.6").status == 200
        server.wait_log(r"executing too slow")
        logged = entries(server)
        assert len(logged) == 2
        for lines in logged:
            assert lines[0].endswith("[pool www] pid %d" % worker)
            # faulthandler gives no frame address: none is printed.
            assert lines[3:5] == ["%s() %s:%d" % where("sleep_b"), "%s() %s:%d" % where("sleep_a")]
        log = server.log_text()
        assert log.count("slowlog: cannot read worker stacks with ptrace") == 1
        assert "using faulthandler dumps from now on" in log
    finally:
        server.stop()


def test_terminate_timeout_traces_before_the_kill(tmp_path):
    server = start(tmp_path, extra="request_slowlog_timeout = 0\nrequest_terminate_timeout = 1")
    try:
        worker = server.wait_idle(1)[0]
        response = get(server, "/loop?s=10")
        assert response.status == 504
        server.wait_log(r"child %d, script 'slow_app:app' \(request: \"GET /loop\?s=10\"\) "
                        r"execution timed out" % worker)
        [lines] = entries(server)
        check_header(lines, server, worker, "/loop?s=10")
        assert frames(lines)[0] == where("spin")
        server.wait_log(r"child %d exited on signal 15" % worker)
    finally:
        server.stop()


def test_without_a_slowlog_file_the_stack_goes_to_the_error_log(tmp_path):
    server = start(tmp_path, slowlog="", extra="request_slowlog_timeout = 0\n"
                                                "request_terminate_timeout = 1")
    try:
        worker = server.wait_idle(1)[0]
        assert get(server, "/sleep?s=10").status == 504
        server.wait_log(r"WARNING: \[.*\]  \[pool www\] pid %d" % worker)
        server.wait_log(r"WARNING: \[0x[0-9a-f]{16}\] sleep_b\(\) %s:%d"
                        % (re.escape(slow_app.__file__), slow_app.marker_line("sleep_b")))
    finally:
        server.stop()
