"""The slowlog's stack reader: stop a worker with ptrace, read its Python frames, let it go.

Runs in the master's one thread, the thread that reaps children: a ptrace stop is reported to
the tracer through waitpid, so a stop this module does not wait for (it waits at most
`timeout`) reaches the master's reaper, which hands it to `on_wait_status`.

The sequence (see shared/reference/slowlog.md): PTRACE_SEIZE, which does not stop the worker,
then PTRACE_INTERRUPT, which stops it wherever it is (running, in a syscall, in C code); wait
for that stop; read the frame chain with fpm._pystack (process_vm_readv, one syscall per
frame, plus the strings and line table of code objects not seen before); PTRACE_DETACH,
handing back a signal the stop intercepted. Line tables are decoded after the detach. The
worker is a fork of this process, so fpm._pystack finds its interpreter at our own
&_PyRuntime.

fpm._pystack was compiled for one minor version of CPython (its layout comes from that
minor's headers, or at run time from the interpreter's own _Py_DebugOffsets): `unusable()`
says why it must not read this interpreter (another minor or build, or a self-test on a
forked child whose stack is known came out wrong), which the master logs once at start;
stack() refuses then too, so a stale or wrong reader is never used.

python-ptrace provides the ptrace(2) binding; it names neither PTRACE_SEIZE nor
PTRACE_INTERRUPT, so the numbers (linux/ptrace.h) are below. It is imported by load(), which
the master calls only when a pool has a slowlog: its import runs `ldconfig -p` (ctypes'
find_library) and costs 10-20 ms of start-up.
"""

import errno
import functools
import os
import signal
import sys
import time
from dataclasses import dataclass

from fpm import __version__, _pystack

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL: waitpid reports the traced thread whatever its clone flags
_PF_EXITING = 0x4  # in /proc/PID/stat's flags (include/linux/sched.h)

# Waiting for the stop: sleep in sigtimedwait for the SIGCHLD the stop sends the tracer, and
# poll waitpid at least this often anyway (a SIGCHLD may go to another thread, or be merged
# with one sent just before).
_SLICE_S = 0.001
# Code objects cached per worker; past this many the worker's cache starts over.
_MAX_CODES = 4096


@functools.cache
def load():
    """python-ptrace's (ptrace, PtraceError), imported once (the master calls this at start
    when a pool may be traced)."""
    from ptrace import PtraceError
    from ptrace.binding.func import ptrace
    return ptrace, PtraceError


def _ptrace(request, pid, *args):
    """ptrace(2) through python-ptrace; a failure is an OSError."""
    call, error = load()
    try:
        call(request, pid, *args)
    except error as e:
        raise OSError(e.errno, os.strerror(e.errno)) from None


class TraceError(Exception):
    """The stack could not be read; `reason` fits in a log line."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class Refused(TraceError):
    """The kernel refused the attach (EPERM/EACCES): no CAP_SYS_PTRACE, Yama, not dumpable."""


class Unsupported(TraceError):
    """This interpreter's frame layout is not one fpm._pystack was built for."""


class Gone(TraceError):
    """The worker exited around the attach. `status` is its raw wait status when this module
    reaped it (the caller's reaper must then account for the exit), else None."""

    def __init__(self, reason, status=None):
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Frame:
    """One Python frame: the address of its interpreter frame (0 when unknown, as in the
    faulthandler fallback), the code's qualified name, file and current line (0: unknown)."""

    address: int
    qualname: str
    filename: str
    lineno: int


@dataclass(frozen=True)
class Trace:
    """Frames innermost first; `stopped_us` bounds from above how long the worker was stopped:
    from the last moment it was seen running to the return of the detach."""

    frames: list[Frame]
    stopped_us: float


# ---- which interpreter fpm._pystack can read ----

@dataclass(frozen=True)
class Build:
    """What fpm._pystack's layout depends on: the interpreter's minor version (any patch
    release of it lays its frames out alike; sys.hexversion is kept to name it) and the
    build options that change its objects' layout."""

    hexversion: int
    debug: bool = False  # Py_DEBUG
    trace_refs: bool = False  # Py_TRACE_REFS: two more pointers in every object's header

    def __str__(self):
        level = {0xA: "a", 0xB: "b", 0xC: "rc", 0xF: ""}.get(self.hexversion >> 4 & 0xF, "?")
        serial = self.hexversion & 0xF if level else ""
        flags = [name for name, on in (("debug", self.debug), ("trace-refs", self.trace_refs))
                 if on]
        return "CPython %d.%d.%d%s%s%s" % (self.hexversion >> 24, self.hexversion >> 16 & 0xFF,
                                           self.hexversion >> 8 & 0xFF, level, serial,
                                           " (%s build)" % ", ".join(flags) if flags else "")

    def layout(self):
        return self.hexversion >> 16, self.debug, self.trace_refs


def built() -> Build:
    """The interpreter fpm._pystack was compiled for."""
    return Build(_pystack.BUILT_FOR, bool(_pystack.BUILT_DEBUG), bool(_pystack.BUILT_TRACE_REFS))


def running() -> Build:
    """This interpreter."""
    return Build(sys.hexversion, hasattr(sys, "gettotalrefcount"), hasattr(sys, "getobjects"))


def mismatch(built: Build, running: Build) -> str | None:
    """Why a reader compiled for `built` must not read the frames of `running`, or None."""
    if built.layout() == running.layout():
        return None
    return f"fpm._pystack was built for {built}, this is {running}"


def rebuild_command(python: str, version: str, source: str | None) -> str:
    """How to compile fpm._pystack for the interpreter `python`: from the checkout `source`
    pyfpm runs from, else from pyfpm's sdist (never a cached or published wheel)."""
    if source is not None:
        return f"{python} -m pip install --no-deps --no-cache-dir -e {source}"
    return (f"{python} -m pip install --force-reinstall --no-deps --no-cache-dir "
            f"--no-binary pyfpm pyfpm=={version}")


@functools.cache
def unusable() -> str | None:
    """Why stack() cannot read this interpreter's workers, or None: said once at start."""
    problem = mismatch(built(), running())
    if problem is not None:
        source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if not os.path.exists(os.path.join(source, "setup.py")):
            source = None  # installed, not run from a checkout
        return "%s; rebuild it for this interpreter: %s" % (
            problem, rebuild_command(sys.executable, __version__, source))
    if not _pystack.SUPPORTED:
        return "%s (this is %s)" % (_pystack.UNSUPPORTED, running())
    return self_test()


# ---- the self-test: a forked child's known stack, read as a worker's would be ----

def _probe_outer(w, hold):
    os.write(w, b"%d " % (sys._getframe().f_lineno + 1))
    _probe_inner(w, hold)


def _probe_inner(w, hold):
    os.write(w, b"%d\n" % (sys._getframe().f_lineno + 1))
    os.read(hold, 1)  # blocks here: nothing is ever written


def expected_probe(lines: bytes) -> list[tuple[str, str, int]]:
    """The frames the probe child's stack must read as, from the lines it reported."""
    outer, inner = (int(n) for n in lines.split())
    return [(_probe_inner.__qualname__, __file__, inner),
            (_probe_outer.__qualname__, __file__, outer)]


def probe_mismatch(frames: list[Frame], expected: list[tuple[str, str, int]]) -> str | None:
    """Why frames read from the probe child are not the `expected` (qualname, file, line)
    ones, or None."""
    got = [(f.qualname, f.filename, f.lineno) for f in frames]
    if got == expected:
        return None
    return "a self-test read %s where the stack is %s" % (
        _show(got), _show(expected))


def _show(frames):
    return "[%s]" % ", ".join("%s() %s:%d" % f for f in frames) if frames else "no frame"


def self_test(timeout: float = 2.0) -> str | None:
    """Read the stack of a forked child blocked in a known place, as a slow worker's is read:
    None when every frame reads right, else what came out (the reader must not be used).
    Costs a fork and one trace, once per master."""
    r, w = os.pipe()
    hold, never = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: it only blocks, then is killed
        try:
            os.close(r)
            _probe_outer(w, hold)
        finally:
            os._exit(0)
    os.close(w)
    try:
        lines = b""
        deadline = time.monotonic() + timeout
        while not lines.endswith(b"\n") and time.monotonic() < deadline:
            chunk = os.read(r, 64)
            if not chunk:
                break
            lines += chunk
        if not lines.endswith(b"\n"):
            return "a self-test child did not reach its known stack"
        expected = expected_probe(lines)
        problem = None
        for _ in range(50):  # until it is blocked in the read, not still on its way there
            try:
                found = _stack(pid, len(expected) + 1, 0.5, (id(self_test.__code__),))
            except TraceError as e:
                return "a self-test read failed: %s" % e.reason
            problem = probe_mismatch(found.frames, expected)
            innermost = found.frames[0] if found.frames else None
            still_writing = innermost is not None and innermost.lineno == expected[0][2] - 1 \
                and innermost.qualname == expected[0][0]
            if not still_writing:
                break
            time.sleep(0.002)
        return problem
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        forget(pid)
        for fd in (r, hold, never):
            os.close(fd)


# ---- reading a worker ----

_tstates: dict[int, int] = {}            # pid -> address of its main thread's PyThreadState
_codes: dict[int, dict[int, tuple]] = {}  # pid -> code address -> (key, qualname, file, table, line)
_unstopped: set[int] = set()             # seized pids whose stop came after stack() gave up


def stack(pid: int, depth: int, timeout: float = 0.1, stop: tuple[int, ...] = ()) -> Trace:
    """The innermost `depth` Python frames of worker `pid` (a fork of this process), up to
    the first frame running one of the code objects whose addresses (id()) are in `stop`:
    that frame and those below it are not shown, nor counted.

    Raises Refused, Unsupported, Gone, or TraceError (the stop did not come within `timeout`:
    the worker stays seized until the reaper's waitpid sees the stop and calls on_wait_status;
    or its memory could not be read)."""
    _check_supported()
    return _stack(pid, depth, timeout, stop)


def _stack(pid, depth, timeout, stop):
    if pid in _unstopped:
        raise TraceError("still waiting for the stop of an earlier trace")
    # SIGCHLD is blocked from before the interrupt, so the stop's SIGCHLD waits for
    # sigtimedwait instead of the master's handler; one taken there is raised again after.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    took_sigchld = []
    try:
        return _trace(pid, depth, timeout, stop, took_sigchld)
    finally:
        if signal.SIGCHLD not in blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        if took_sigchld:
            os.kill(os.getpid(), signal.SIGCHLD)


def _trace(pid, depth, timeout, stop, took_sigchld):
    _seize(pid)
    floor = time.monotonic_ns()
    try:
        _ptrace(PTRACE_INTERRUPT, pid)
    except OSError as e:
        if e.errno != errno.ESRCH:  # ESRCH: it is exiting; the wait below collects the exit
            _detach(pid, 0)
            raise TraceError(f"ptrace(INTERRUPT) failed: {os.strerror(e.errno)}") from None
    status, floor = _wait_stop(pid, timeout, floor, took_sigchld)
    if status is None:
        _unstopped.add(pid)
        raise TraceError(f"no stop within {timeout * 1000:.0f} ms (uninterruptible sleep?); "
                         "it is released when the stop comes")
    if not os.WIFSTOPPED(status):
        forget(pid)
        raise Gone(f"exited during the attach ({_describe(status)})", status)
    try:
        rows, codes = _read(pid, depth, stop)
    finally:
        _detach(pid, _signal_to_deliver(status))
        stopped_us = (time.monotonic_ns() - floor) / 1000
    return Trace([_frame(row, codes) for row in rows], stopped_us)


def on_wait_status(pid: int, status: int) -> bool:
    """For the master's reaper: True when a WIFSTOPPED `status` of `pid` is the late stop of a
    trace that gave up waiting, now detached (the reaper ignores it). False for anything else."""
    if pid not in _unstopped:
        return False
    if not os.WIFSTOPPED(status):
        _unstopped.discard(pid)  # it exited while seized; the reaper accounts for that
        forget(pid)
        return False
    _unstopped.discard(pid)
    _detach(pid, _signal_to_deliver(status))
    return True


def forget(pid: int) -> None:
    """Drop what is cached about `pid` (call when the worker is reaped)."""
    _tstates.pop(pid, None)
    _codes.pop(pid, None)
    _unstopped.discard(pid)


def _check_supported():
    reason = unusable()
    if reason is not None:
        raise Unsupported(reason)


def _seize(pid):
    try:
        _ptrace(PTRACE_SEIZE, pid)
    except OSError as e:
        if e.errno == errno.ESRCH:
            forget(pid)
            raise Gone("no such process") from None
        if e.errno in (errno.EPERM, errno.EACCES):
            # Seizing a zombie or an exiting process is EPERM too: an exit, not a refusal.
            if _is_exiting(pid):
                forget(pid)
                raise Gone("exited before the attach") from None
            raise Refused(f"ptrace(SEIZE) refused: {os.strerror(e.errno)} "
                          "(needs CAP_SYS_PTRACE, or a same-uid dumpable worker)") from None
        raise TraceError(f"ptrace(SEIZE) failed: {os.strerror(e.errno)}") from None


def _is_exiting(pid):
    """A zombie, dead, or PF_EXITING (the kernel refuses to attach to a process on its way out)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[0] in (b"Z", b"X") or bool(int(fields[6]) & _PF_EXITING)


def _wait_stop(pid, timeout, floor, took_sigchld):
    """(status, floor) once waitpid reports something for pid, else (None, floor) after
    `timeout`. `floor` moves up to the start of each empty poll: the stop came after it."""
    end = floor + int(timeout * 1e9)
    while True:
        polled = time.monotonic_ns()
        try:
            got, status = os.waitpid(pid, os.WNOHANG | WALL)
        except ChildProcessError:
            forget(pid)
            raise Gone("reaped elsewhere during the attach") from None
        if got:
            return status, floor
        floor = polled
        if polled >= end:
            return None, floor
        if signal.sigtimedwait({signal.SIGCHLD}, min(_SLICE_S, (end - polled) / 1e9)):
            took_sigchld.append(True)


def _signal_to_deliver(status):
    """A signal-delivery stop (no event in the high bits) intercepted a signal meant for the
    worker: the detach hands it back. The interrupt's own stop and a group stop carry none."""
    if status >> 16 == PTRACE_EVENT_STOP:
        return 0
    return os.WSTOPSIG(status)


def _detach(pid, sig):
    try:
        _ptrace(PTRACE_DETACH, pid, 0, sig)
    except OSError as e:
        if e.errno != errno.ESRCH:  # ESRCH: killed while stopped; its exit goes to the reaper
            raise TraceError(f"ptrace(DETACH) failed: {os.strerror(e.errno)}") from None


def _read(pid, depth, stop):
    """While stopped: the frame rows and the code cache for pid, updated."""
    codes = _codes.setdefault(pid, {})
    if len(codes) > _MAX_CODES:
        codes.clear()
    try:
        for _ in range(2):  # once more when a cached thread state turns out stale
            tstate = _tstates.get(pid) or _pystack.find_tstate(pid, pid)
            if not tstate:
                raise TraceError("no Python thread state for the worker's main thread")
            got = _pystack.read_stack(pid, tstate, pid, depth, codes, stop)
            if got is not None:
                _tstates[pid] = tstate
                rows, fresh = got
                codes.update(fresh)
                return rows, codes
            _tstates.pop(pid, None)
    except OSError as e:
        raise TraceError(f"reading the worker's memory failed: {e.strerror}") from None
    raise TraceError("the worker's thread state keeps changing")


def _frame(row, codes):
    address, code, offset = row
    _, qualname, filename, table, firstlineno = codes[code]
    return Frame(address, qualname, filename, max(_pystack.line_at(table, firstlineno, offset), 0))


def _describe(status):
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"code {os.WEXITSTATUS(status)}"
