"""The slowlog on the real master: a slow request's Python stack, read from the worker while
it runs (ptrace) or, where ptrace is refused, from its faulthandler dump; and the trace that
comes before a request_terminate_timeout kill. Either way an entry holds the application's
frames only: from the innermost down to its WSGI callable (or a script's), none of pyfpm's."""
import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

import fpm
import otherpython
import slow_app
from fpm import _pystack, client
from tests.conftest import APPS, pyfpm_config, require
from tests.harness import Server

FRAME = re.compile(r"^\[0x[0-9a-f]{16}\] (\S+)\(\) (.+):(\d+)$")


def start(tmp_path, app="slow_app:app", path=str(APPS), extra="", prefix=(),
          slowlog="slowlog = {tmp}/www.slow.log", env=None, workers=1, log_level="notice"):
    """The master with a pool of `workers`; `app` None: script mode. `prefix` goes before
    its command line (setpriv), `env` into its environment."""
    config = pyfpm_config(log_level=log_level, listen="{sock}", workers=workers, app=app,
                          python_path=app and path,
                          mode="", extra="pm.status_path = /status\n%s\n"
                          "request_slowlog_timeout = 1\nrequest_slowlog_trace_depth = 20\n%s"
                          % (slowlog, extra))
    server = Server(config, tmp_path, env=env)
    server.argv = list(prefix) + server.argv
    server.start()
    server.wait_idle(workers)
    return server


def get(server, uri, timeout=30):
    return client.request(server.address, uri, timeout=timeout)


def entries(server) -> list[list[str]]:
    """The slowlog's entries, each as its lines (the blank line before each dropped)."""
    text = (server.tmp / "www.slow.log").read_text()
    return [block.strip("\n").split("\n") for block in text.split("\n\n") if block.strip()]


def where(name: str) -> tuple[str, str, int]:
    return name, slow_app.__file__, slow_app.marker_line(name)


# /sleep's stack, innermost first, down to the WSGI callable: all an entry may show of it.
SLEEP = ["sleep_b", "sleep_a", "app"]


def fallback_line(name: str) -> str:
    """A frame as the faulthandler fallback writes it: no address."""
    return "%s() %s:%d" % where(name)


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
    ("/sleep?s=2.5", SLEEP[:-1]),   # blocked in a system call
    ("/loop?s=2.5", ["spin"]),      # running Python code
    ("/cbusy?s=2.5", ["cbusy"]),    # inside one long C call holding the GIL
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
        # The app's frames, down to its WSGI callable: not one of pyfpm's below it.
        assert frames(lines) == [where(name) for name in inner + ["app"]]
        status = json.loads(get(server, "/status?json").body)
        assert status["slow requests"] == 1
        assert server.children() == [worker]  # traced, not restarted
    finally:
        server.stop()


@pytest.mark.parametrize("extra, shown", [
    ("request_slowlog_trace_depth = 4", SLEEP),  # more than the app has: its frames, no more
    ("request_slowlog_trace_depth = 2", SLEEP[:2]),  # the innermost, as PHP-FPM's
    ("preload = yes", SLEEP),  # the app imported by the master before the fork
])
def test_depth_counts_the_apps_frames_only(tmp_path, extra, shown):
    server = start(tmp_path, extra=extra)
    try:
        assert get(server, "/sleep?s=1.6").status == 200
        server.wait_log(r"finished trace of")
        [lines] = entries(server)
        assert frames(lines) == [where(name) for name in shown]
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


def without_ptrace(tmp_path, extra="", app=UNDUMPABLE_APP, **options):
    """A master without CAP_SYS_PTRACE (Docker's default) and a non-dumpable worker: the
    kernel refuses the attach, and the slowlog falls back to faulthandler dumps."""
    setpriv = shutil.which("setpriv")
    require("setpriv", setpriv, "util-linux")
    (tmp_path / "undumpable.py").write_text(app)
    return start(tmp_path, app="undumpable:app", path="%s:%s" % (tmp_path, APPS), extra=extra,
                 prefix=(setpriv, "--bounding-set=-sys_ptrace"), **options)


def test_refused_ptrace_falls_back_to_faulthandler(tmp_path):
    """The entry still comes, from the worker's faulthandler dump, with the app's frames
    only, and the error log says so once."""
    server = without_ptrace(tmp_path)
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
            assert lines[3:] == [fallback_line(name) for name in SLEEP]
        log = server.log_text()
        assert log.count("slowlog: cannot read worker stacks with ptrace") == 1
        assert "using faulthandler dumps from now on" in log
    finally:
        server.stop()


def test_fallback_depth_counts_the_apps_frames_only(tmp_path):
    server = without_ptrace(tmp_path, extra="request_slowlog_trace_depth = 2")
    try:
        assert get(server, "/sleep?s=1.6").status == 200
        server.wait_log(r"executing too slow")
        [lines] = entries(server)
        assert lines[3:] == [fallback_line(name) for name in SLEEP[:2]]
    finally:
        server.stop()


def test_fallback_terminate_timeout_writes_the_dump_then_stops_the_worker(tmp_path):
    server = without_ptrace(tmp_path, extra="request_slowlog_timeout = 0\n"
                                            "request_terminate_timeout = 1")
    try:
        worker = server.wait_idle(1)[0]
        assert get(server, "/sleep?s=10").status == 504
        server.wait_log(r"child %d exited on signal 15" % worker)
        [lines] = entries(server)
        assert lines[3:] == [fallback_line(name) for name in SLEEP]
    finally:
        server.stop()


SILENT_APP = UNDUMPABLE_APP + """\
import signal
from fpm.slowlog import DUMP_SIGNAL
signal.pthread_sigmask(signal.SIG_BLOCK, {DUMP_SIGNAL})  # no dump will ever come
"""
STAMP = re.compile(r"^\[(\d\d-\w{3}-\d{4} \d\d:\d\d:\d\d\.\d{6})\]  \[pool www\] pid \d+$")


def test_fallback_dumps_are_awaited_together_never_one_after_the_other(tmp_path):
    """Four workers go slow at once and none of them answers the dump signal: the master asks
    all four and goes on with its loop; each entry is written, failed, when its dump is out of
    time (500 ms), all four together. A master that waited for each dump in turn wrote the
    last one 1.5 s after the first, its loop stopped meanwhile."""
    server = without_ptrace(tmp_path, app=SILENT_APP, workers=4, log_level="debug")
    try:
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda _: get(server, "/sleep?s=2.5").status, range(4)))
        assert statuses == [200] * 4
        logged = entries(server)
        assert len(logged) == 4
        stamps = []
        for lines in logged:
            assert lines[3:] == ["+++ dump failed"]
            stamps.append(datetime.strptime(STAMP.match(lines[0])[1], "%d-%b-%Y %H:%M:%S.%f"))
        assert (max(stamps) - min(stamps)).total_seconds() < 0.5, stamps
        assert server.log_text().count("no faulthandler dump within 500 ms") == 4
    finally:
        server.stop()


SCRIPT = """\
import ctypes
import time

{prelude}
time.sleep(1.6)  # slowlog: top


def work(seconds):
    time.sleep(seconds)  # slowlog: work


def application(environ, start_response):
    work(float(environ["QUERY_STRING"] or 0))  # slowlog: application
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"worked\\n"]
"""
ANY_FRAME = re.compile(r"^(?:\[0x[0-9a-f]{16}\] )?(\S+)\(\) (.+):(\d+)$")


@pytest.mark.parametrize("backend", ["ptrace", "faulthandler"])
def test_script_mode_shows_the_scripts_frames_only(tmp_path, backend):
    """A script's top-level code, run by its first request, and its `application`: the
    entries end at the script's frames, above pyfpm's script runner."""
    prelude = ""
    prefix = ()
    if backend == "faulthandler":
        setpriv = shutil.which("setpriv")
        require("setpriv", setpriv, "util-linux")
        prefix = (setpriv, "--bounding-set=-sys_ptrace")
        prelude = "ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # not dumpable: ptrace is refused"
    (tmp_path / "www").mkdir()
    script = tmp_path / "www" / "slow.py"
    script.write_text(SCRIPT.format(prelude=prelude))
    real = os.path.realpath(script)
    numbers = {line.rsplit("# slowlog: ", 1)[1]: number
               for number, line in enumerate(script.read_text().splitlines(), 1)
               if "# slowlog: " in line}
    server = start(tmp_path, app=None, prefix=prefix)
    try:
        for query in ("", "1.6"):
            response = client.request(server.address, "/slow.py?" + query, timeout=30,
                                      params={"SCRIPT_FILENAME": str(script)})
            assert response.status == 200 and response.body == b"worked\n"
        first, second = entries(server)
        for lines in (first, second):
            assert lines[1] == f"script_filename = {script}"
            assert all(ANY_FRAME.match(line)[0].startswith("[0x") == (backend == "ptrace")
                       for line in lines[3:])
        shown = [[ANY_FRAME.match(line).group(1, 2, 3) for line in lines[3:]]
                 for lines in (first, second)]
        assert shown == [[("<module>", real, str(numbers["top"]))],
                         [("work", real, str(numbers["work"])),
                          ("application", real, str(numbers["application"]))]]
    finally:
        server.stop()


def test_a_reader_built_with_another_patch_releases_headers_reads_real_frames(tmp_path):
    """pyfpm whose fpm._pystack was compiled with another patch release's headers (a wheel
    built elsewhere, a Python upgraded under the install): it passes its self-test at start
    and every entry is read with ptrace, addresses and the app's frames."""
    other = otherpython.find()
    package = tmp_path / "pkg" / "fpm"
    shutil.copytree(Path(fpm.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.c", "*.html"))
    otherpython.compile_pystack(other, package / Path(_pystack.__file__).name)
    server = start(tmp_path, env={"PYTHONPATH": str(package.parent)})
    try:
        for _ in range(2):
            assert get(server, "/sleep?s=1.6").status == 200
        logged = entries(server)
        assert len(logged) == 2
        for lines in logged:
            assert frames(lines) == [where(name) for name in SLEEP]
            assert all(re.match(r"\[0x[0-9a-f]{16}\] ", line) for line in lines[3:])
        log = server.log_text()
        assert "cannot read worker stacks" not in log
        assert log.count("about to trace") == 2
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
