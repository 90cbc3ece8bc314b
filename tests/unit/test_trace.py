"""fpm.trace and fpm._pystack against real forked children: the frames a slowlog would show
(names, files, lines found from marker comments in the children's source), and that a traced
child finishes its work unharmed. Plus the line table decoder against CPython's own."""

import ctypes
import glob
import hashlib
import importlib.util
import json
import marshal
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import slow_app
from fpm import _pystack, trace
from tests.conftest import require

HERE = Path(__file__).resolve()
APP = str(Path(slow_app.__file__).resolve())


def mark(name):
    """The line of this file marked `# mark: name`."""
    for number, line in enumerate(HERE.read_text().splitlines(), 1):
        if line.rstrip().endswith(f"# mark: {name}"):
            return number
    raise LookupError(name)


def here(qualname, marker):
    return (qualname, str(HERE), mark(marker))


def app_frame(qualname, marker):
    return (qualname, APP, slow_app.marker_line(marker))


def shown(frames):
    return [(f.qualname, f.filename, f.lineno) for f in frames]


@contextmanager
def child(work, *args):
    """Fork a child that says it is ready, runs work(*args) and sends back its JSON result.
    Yields (pid, result): result() waits for the exit and returns (exit status, value)."""
    ready_r, ready_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            os.close(out_r)
            os.write(ready_w, b"r")
            value = work(*args)
            os.write(out_w, json.dumps(value).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(out_w)
    reaped = []

    def result():
        _, status = os.waitpid(pid, 0)
        reaped.append(status)
        with os.fdopen(out_r, "rb") as f:
            data = f.read()
        return status, json.loads(data) if data else None

    try:
        assert os.read(ready_r, 1) == b"r"
        time.sleep(0.05)  # past the write, into the work
        yield pid, result
    finally:
        os.close(ready_r)
        if not reaped:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(out_r)


# ---- the children's work, at known lines ----

def sleeper_c(seconds):
    start = time.monotonic()
    time.sleep(seconds)  # mark: sleep
    return time.monotonic() - start


def sleeper_b(seconds):
    return sleeper_c(seconds)  # mark: sleeper_b


def sleeper_a(seconds):
    return sleeper_b(seconds)  # mark: sleeper_a


def squares(n):
    total = 0
    for i in range(n): total += i * i  # mark: loop
    return total


def digest(size, rounds):
    data = b"\x5a" * size
    return hashlib.pbkdf2_hmac("sha256", data, b"salt", rounds).hex()  # mark: cdigest


def ticker(n, seconds):
    for i in range(n):
        time.sleep(seconds)  # mark: gen_sleep
        yield i


def consume(n, seconds):
    return sum(ticker(n, seconds))  # mark: consume


def recurse(n, seconds):
    if n == 0:
        time.sleep(seconds)  # mark: rec_sleep
        return 0
    return 1 + recurse(n - 1, seconds)  # mark: rec_call


def call_app(path, query):
    def start_response(status, headers):
        assert status == "200 OK"
    return b"".join(slow_app.app({"PATH_INFO": path, "QUERY_STRING": query},  # mark: call_app
                                 start_response)).decode()


def traced(pid, depth, times, every=0.03):
    """`times` traces of pid, `every` seconds apart."""
    out = []
    for _ in range(times):
        out.append(trace.stack(pid, depth))
        time.sleep(every)
    return out


# ---- live children ----

def test_sleeping_child_shows_its_calls_and_sleeps_as_long():
    with child(sleeper_a, 0.4) as (pid, result):
        traces = traced(pid, 20, 5)
        status, slept = result()
    expected = [here("sleeper_c", "sleep"), here("sleeper_b", "sleeper_b"),
                here("sleeper_a", "sleeper_a")]
    for t in traces:
        assert shown(t.frames)[:3] == expected
        assert all(f.address for f in t.frames)
        assert len({f.address for f in t.frames}) == len(t.frames)
    # Below them: the fork helper, then the test's own stack (the child is a fork of it).
    assert traces[0].frames[3].qualname == "child"
    assert status == 0 and 0.4 <= slept < 0.45


def test_pure_python_loop_is_caught_mid_loop_and_computes_the_same():
    n = 3_000_000
    with child(squares, n) as (pid, result):
        traces = traced(pid, 5, 4, every=0.01)
        status, total = result()
    for t in traces:
        assert shown(t.frames)[0] == here("squares", "loop")
    assert status == 0 and total == (n - 1) * n * (2 * n - 1) // 6


def test_c_call_shows_the_calling_line():
    args = (1 << 16, 900_000)
    with child(digest, *args) as (pid, result):
        t = trace.stack(pid, 5)
        status, value = result()
    assert shown(t.frames)[0] == here("digest", "cdigest")
    assert status == 0 and value == digest(*args)


def test_generator_frame_above_its_consumer():
    with child(consume, 4, 0.1) as (pid, result):
        traces = traced(pid, 5, 3, every=0.05)
        status, total = result()
    for t in traces:
        assert shown(t.frames)[:2] == [here("ticker", "gen_sleep"), here("consume", "consume")]
    assert status == 0 and total == 6


def test_deep_recursion_is_cut_at_depth():
    with child(recurse, 40, 0.3) as (pid, result):
        t = trace.stack(pid, 20)
        status, value = result()
    assert shown(t.frames) == [here("recurse", "rec_sleep")] + [here("recurse", "rec_call")] * 19
    assert status == 0 and value == 40


# Names of every str kind (latin-1, UCS-2, UCS-4), a file name and a line table longer than
# what the reader fetches ahead, so each takes its second read.
EXOTIC_FILE = "/srv/" + "very-long-directory-name/" * 20 + "app.py"
EXOTIC_SOURCE = "import time\n" + """
def café(s):
    return 函数(s)
def 函数(s):
    return 𠀀(s)
def 𠀀(s):
""" + "".join(f"    x{i} = {i} * s\n" for i in range(400)) + """\
    time.sleep(s)
    return x399
"""


def exotic(seconds):
    namespace = {}
    exec(compile(EXOTIC_SOURCE, EXOTIC_FILE, "exec"), namespace)
    return namespace["café"](seconds)


def test_names_of_every_str_kind_long_files_and_long_line_tables():
    lines = EXOTIC_SOURCE.splitlines()
    with child(exotic, 0.3) as (pid, result):
        t = trace.stack(pid, 4)
        status, value = result()
    assert len(EXOTIC_FILE) > 400
    codes = {c.co_name: c for c in code_objects(compile(EXOTIC_SOURCE, EXOTIC_FILE, "exec"))}
    assert len(codes["𠀀"].co_linetable) > 2048
    assert shown(t.frames)[:3] == [
        ("𠀀", EXOTIC_FILE, lines.index("    time.sleep(s)") + 1),
        ("函数", EXOTIC_FILE, lines.index("    return 𠀀(s)") + 1),
        ("café", EXOTIC_FILE, lines.index("    return 函数(s)") + 1)]
    assert status == 0 and value == 399 * 0.3


@pytest.mark.parametrize("path, innermost", [
    ("/sleep", [app_frame("sleep_b", "sleep_b"), app_frame("sleep_a", "sleep_a")]),
    ("/loop", [app_frame("spin", "spin")]),
    ("/cbusy", [app_frame("cbusy", "cbusy")]),  # one C call holding the GIL
])
def test_slow_app_routes_show_their_marked_lines(path, innermost):
    with child(call_app, path, "s=0.3") as (pid, result):
        time.sleep(0.1)  # into the call
        t = trace.stack(pid, 20)
        status, body = result()
    frames = shown(t.frames)
    assert frames[:len(innermost) + 1] == innermost + [app_frame("app", "app")]
    assert status == 0 and body.split()[0] in ("slept", "looped", "summed")


def test_stop_ends_the_stack_before_the_callers_frame_and_depth_counts_above_it():
    """As the slowlog reads a worker: the app's frames only, down to its WSGI callable."""
    stop = (id(call_app.__code__),)
    with child(call_app, "/sleep", "s=0.4") as (pid, result):
        whole = trace.stack(pid, 20, stop=stop)
        cut = trace.stack(pid, 2, stop=stop)
        # A stop code object not on the stack changes nothing.
        unrelated = trace.stack(pid, 20, stop=(id(recurse.__code__), id(sleeper_a.__code__)))
        status, _ = result()
    app = [app_frame("sleep_b", "sleep_b"), app_frame("sleep_a", "sleep_a"),
           app_frame("app", "app")]
    assert shown(whole.frames) == app
    assert shown(cut.frames) == app[:2]
    assert shown(unrelated.frames)[:4] == app + [here("call_app", "call_app")]
    assert status == 0


def test_more_stop_code_objects_than_the_reader_takes():
    with pytest.raises(ValueError, match="9 stop code objects, more than 8"):
        _pystack.read_stack(os.getpid(), 0, os.getpid(), 5, {}, tuple(range(9)))


def test_signal_caught_at_the_stop_is_delivered_once():
    """A signal arriving around the attach may be intercepted by a signal-delivery stop; the
    detach hands it back. A realtime signal is queued, so every one sent must be counted."""
    sig = signal.SIGRTMIN + 5
    sends = 30

    def count_signals():
        got = []
        signal.signal(sig, lambda *_: got.append(1))
        deadline = time.monotonic() + 5
        while len(got) < sends and time.monotonic() < deadline:
            time.sleep(0.001)
        return len(got)

    with child(count_signals) as (pid, result):
        for _ in range(sends):
            os.kill(pid, sig)
            trace.stack(pid, 5)
            time.sleep(0.005)
        status, counted = result()
    assert status == 0 and counted == sends


def test_late_stop_is_released_by_the_reaper():
    """The stop does not come within the timeout (here: the child may only run when this
    process sleeps); the reaper's waitpid sees it later and on_wait_status lets it go."""
    cpu = min(os.sched_getaffinity(0))
    saved = os.sched_getaffinity(0)

    def idle_sleeper(seconds):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return sleeper_a(seconds)

    os.sched_setaffinity(0, {cpu})
    try:
        with child(idle_sleeper, 0.3) as (pid, result):
            with pytest.raises(trace.TraceError) as caught:
                trace.stack(pid, 5, timeout=0)
            assert type(caught.value) is trace.TraceError
            with pytest.raises(trace.TraceError, match="earlier trace"):
                trace.stack(pid, 5)
            _, status = os.waitpid(pid, trace.WALL)  # the master's reaper
            assert os.WIFSTOPPED(status)
            assert trace.on_wait_status(pid, status)
            assert not trace.on_wait_status(pid, status)
            os.sched_setaffinity(0, saved)
            assert shown(trace.stack(pid, 5).frames)[0] == here("sleeper_c", "sleep")
            status, slept = result()
    finally:
        os.sched_setaffinity(0, saved)
    assert status == 0 and 0.3 <= slept < 0.35


def test_exited_child_is_gone_and_its_status_reaches_the_reaper_once():
    # A zombie: Gone, and the exit status is left for the reaper.
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    while open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] != "Z":
        time.sleep(0.001)
    with pytest.raises(trace.Gone) as caught:
        trace.stack(pid, 5)
    assert caught.value.status is None
    assert os.waitpid(pid, 0)[1] == 7 << 8
    # Reaped already: no such process.
    with pytest.raises(trace.Gone):
        trace.stack(pid, 5)


def test_child_dying_during_the_attach():
    """Killed just before the attach: whichever way the race goes, Gone, and the exit status
    is seen exactly once, by trace (Gone.status) or else by the reaper."""
    for _ in range(20):
        pid = os.fork()
        if pid == 0:
            time.sleep(10)
            os._exit(0)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(trace.Gone) as caught:
            trace.stack(pid, 5)
        status = caught.value.status
        if status is None:
            status = os.waitpid(pid, 0)[1]
        else:
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


REFUSED_SCRIPT = """
import ctypes, os, select, sys, time
from fpm import slowlog, trace

def parked():
    time.sleep(5)

r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    slowlog.arm_worker(w)
    ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    parked()
    os._exit(0)
time.sleep(0.2)
try:
    trace.stack(pid, 5)
    outcome = "traced"
except trace.Refused as e:
    outcome = "refused: " + e.reason
dump = slowlog.Dump(pid, r)
dump.ask()
while not dump.complete and select.select([dump.fd], [], [], 2)[0]:
    dump.feed()
frames = dump.frames()
os.kill(pid, 9)
os.waitpid(pid, 0)
print(outcome)
print(frames[0].qualname, frames[0].lineno)
"""


def test_refused_without_cap_sys_ptrace_and_the_fallback_still_works():
    setpriv = shutil.which("setpriv")
    require("setpriv", setpriv, "util-linux")
    root = HERE.parents[2]
    out = subprocess_run([setpriv, "--bounding-set=-sys_ptrace", sys.executable, "-c",
                          REFUSED_SCRIPT], root)
    outcome, top = out.splitlines()
    assert outcome.startswith("refused: ptrace(SEIZE) refused: Operation not permitted")
    assert top == "parked %d" % (REFUSED_SCRIPT.splitlines().index("    time.sleep(5)") + 1)


def subprocess_run(argv, cwd):
    env = dict(os.environ, PYTHONPATH=str(cwd))
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


# ---- which interpreter the reader was built for ----

def test_build_check_names_both_builds():
    built = trace.Build(0x030B04F0)
    assert trace.mismatch(built, trace.Build(0x030B04F0)) is None
    # Any patch release of the minor reads alike (the self-test checks it at start).
    assert trace.mismatch(built, trace.Build(0x030B07F0)) is None
    assert trace.mismatch(built, trace.Build(0x030D05F0)) == \
        "fpm._pystack was built for CPython 3.11.4, this is CPython 3.13.5"
    # Same version, another build: a debug interpreter's objects are laid out otherwise.
    assert trace.mismatch(built, trace.Build(0x030B04F0, debug=True)) == \
        "fpm._pystack was built for CPython 3.11.4, this is CPython 3.11.4 (debug build)"
    assert trace.mismatch(trace.Build(0x030B00C1, True, True), trace.Build(0x030B00F0)) == (
        "fpm._pystack was built for CPython 3.11.0rc1 (debug, trace-refs build), this is "
        "CPython 3.11.0")


def test_rebuild_command_builds_from_source_with_this_interpreter():
    assert trace.rebuild_command("/opt/py/bin/python", "1.2.0", "/src/pyfpm") == \
        "/opt/py/bin/python -m pip install --no-deps --no-cache-dir -e /src/pyfpm"
    assert trace.rebuild_command("/opt/py/bin/python", "1.2.0", None) == (
        "/opt/py/bin/python -m pip install --force-reinstall --no-deps --no-cache-dir "
        "--no-binary pyfpm pyfpm==1.2.0")


def test_the_installed_reader_was_built_for_this_interpreter():
    assert trace.built().layout() == trace.running().layout()
    assert trace.unusable() is None


def test_the_self_test_reads_a_forked_childs_known_stack():
    assert trace.self_test() is None


def test_the_self_test_says_what_a_wrong_layout_read(monkeypatch):
    """A reader whose offsets land elsewhere reads other frames (or none): said, not used."""
    real = _pystack.read_stack

    def instructions_elsewhere(*args):  # every frame read as not started: its def line
        got = real(*args)
        return got and ([(a, c, -2) for a, c, _ in got[0]], got[1])

    monkeypatch.setattr(_pystack, "read_stack", instructions_elsewhere)
    problem = trace.self_test()
    assert problem.startswith("a self-test read [_probe_inner() %s:" % trace.__file__)
    assert "where the stack is [_probe_inner() %s:" % trace.__file__ in problem


def test_probe_mismatch_names_both_stacks():
    expected = [("inner", "/t.py", 5), ("outer", "/t.py", 2)]
    assert trace.probe_mismatch([trace.Frame(1, "inner", "/t.py", 5),
                                 trace.Frame(2, "outer", "/t.py", 2)], expected) is None
    assert trace.probe_mismatch([], expected) == (
        "a self-test read no frame where the stack is [inner() /t.py:5, outer() /t.py:2]")
    assert trace.probe_mismatch([trace.Frame(1, "?", "?", 0)], expected) == (
        "a self-test read [?() ?:0] where the stack is [inner() /t.py:5, outer() /t.py:2]")


# ---- offsets and line tables ----

def test_offsets_describe_this_interpreter():
    """Read this process's own code object through the offsets: they must land on its fields."""
    code = test_offsets_describe_this_interpreter.__code__
    o = _pystack.OFFSETS

    def pointer(offset):
        return ctypes.c_void_p.from_address(id(code) + offset).value

    assert pointer(o["code.co_qualname"]) == id(code.co_qualname)
    assert pointer(o["code.co_filename"]) == id(code.co_filename)
    assert pointer(o["code.co_linetable"]) == id(code.co_linetable)
    assert ctypes.c_int.from_address(id(code) + o["code.co_firstlineno"]).value == code.co_firstlineno
    # The first instruction (RESUME) is never specialised, so it reads the same in both.
    assert ctypes.string_at(id(code) + o["code.co_code_adaptive"], 2) == code.co_code[:2]
    assert _pystack.find_tstate(os.getpid(), os.getpid()) != 0


def code_objects(code):
    yield code
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            yield from code_objects(const)


def stdlib_code():
    """Every code object of the standard library's modules (not its tests): from the .pyc
    where there is one, else compiled."""
    lib = sysconfig.get_paths()["stdlib"]
    for path in sorted(glob.glob(f"{lib}/**/*.py", recursive=True)):
        rel = os.path.relpath(path, lib)
        if rel.startswith(("site-packages", "test/", "idlelib", "lib2to3/tests")):
            continue
        cached = importlib.util.cache_from_source(path)
        try:
            if os.path.exists(cached):
                with open(cached, "rb") as f:
                    top = marshal.loads(f.read()[16:])
            else:
                top = compile(Path(path).read_bytes(), path, "exec")
        except (SyntaxError, ValueError, EOFError):
            continue
        yield from code_objects(top)


def expected_lines(code):
    lines = []
    for start, end, line in code.co_lines():
        lines += [line] * ((end - start) // 2)
    return lines


def check_code(code):
    positions = _pystack.positions(code.co_linetable, code.co_firstlineno)
    assert positions == list(code.co_positions()), code
    assert [p[0] for p in positions] == expected_lines(code), code
    return len(positions)


def test_line_tables_of_the_whole_stdlib_decode_as_cpython_does():
    codes = units = 0
    for code in stdlib_code():
        units += check_code(code)
        codes += 1
    assert codes > 15_000 and units > 1_500_000


def test_line_at_matches_co_lines_at_every_offset():
    for code in code_objects(compile(HERE.read_text(), str(HERE), "exec")):
        for unit, line in enumerate(expected_lines(code)):
            assert _pystack.line_at(code.co_linetable, code.co_firstlineno, unit * 2) \
                == (-1 if line is None else line)
        # A frame that has not started (prev_instr before the first unit): its first line.
        assert _pystack.line_at(code.co_linetable, code.co_firstlineno, -2) == code.co_firstlineno


statement = st.one_of(
    st.builds("x = {}".format, st.integers(-10**6, 10**6)),
    st.builds("y = ({} +\n{}{})".format, st.integers(0, 9), st.text(" ", max_size=200),
              st.integers(0, 9)),
    st.builds("z = f({!r}, {})".format, st.text(max_size=150), st.integers()),
    st.builds("{}if x:\n    pass".format, st.text("\n", max_size=3)),
    st.just("for i in range(3):\n    x += i\nelse:\n    x = -x"),
    st.just("try:\n    x = 1 / x\nexcept Exception as e:\n    x = 0\nfinally:\n    x += 1"),
    st.builds("def g{}(a, b=2):\n    return [a * b for _ in range(a)]".format,
              st.integers(0, 3)),
    st.builds("{}x = (lambda q: q)(\n    1)".format, st.text("\n", min_size=60, max_size=400)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(statement, min_size=1, max_size=12), st.integers(1, 200_000))
def test_line_tables_of_generated_code_decode_as_cpython_does(body, first):
    source = "\n" * (first - 1) + "\n".join(body)
    for code in code_objects(compile(source, "<generated>", "exec")):
        check_code(code)
