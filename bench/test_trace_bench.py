"""How long a slowlog trace stops a worker: fpm.trace.stack() on a forked child with a 6-frame
stack, 300 times, while the child sleeps or runs a pure-Python loop; and the first trace of
fresh children, whose code objects are not cached yet. Trace.stopped_us is an upper bound:
from the last poll that saw the child running to the return of PTRACE_DETACH.

Also checks what a user would notice: the child's sleep is not lengthened and its loop
computes the right result. Unpinned, as master and workers run."""

import gc
import os
import statistics
import time

import pytest

from fpm import trace

TRACES = 300
EVERY_S = 0.002


def f6(work, arg):
    return work(arg)


def f5(work, arg):
    return f6(work, arg)


def f4(work, arg):
    return f5(work, arg)


def f3(work, arg):
    return f4(work, arg)


def f2(work, arg):
    return f3(work, arg)


def f1(work, arg):
    return f2(work, arg)


def sleep_for(seconds):
    start = time.monotonic()
    time.sleep(seconds)
    return time.monotonic() - start


def squares(n):
    total = 0
    for i in range(n): total += i * i
    return total


def fork(work, arg):
    """A child running f1..f6 -> work(arg); exit code 0 when the check on its result passes."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            os.write(ready_w, b"r")
            value = f1(work, arg)
            ok = (0 <= value - arg < 0.02) if work is sleep_for else \
                value == (arg - 1) * arg * (2 * arg - 1) // 6
        finally:
            os._exit(0 if ok else 1)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    time.sleep(0.02)
    return pid


def summary(us):
    us = sorted(us)
    p99 = us[min(len(us) - 1, int(len(us) * 0.99))]
    return f"median {statistics.median(us):.0f} µs, p99 {p99:.0f} µs, max {us[-1]:.0f} µs"


@pytest.mark.parametrize("work, arg", [(sleep_for, 2.0), (squares, 40_000_000)],
                         ids=["sleeping", "looping"])
def test_stop_time(work, arg, report):
    pid = fork(work, arg)
    stopped, depths = [], set()
    try:
        for _ in range(TRACES):
            t = trace.stack(pid, 20)
            stopped.append(t.stopped_us)
            depths.add(sum(f.qualname.startswith("f") and len(f.qualname) == 2
                           for f in t.frames))
            time.sleep(EVERY_S)
    finally:
        _, status = os.waitpid(pid, 0)
        trace.forget(pid)
    report("slowlog: ptrace stop time", f"{len(stopped)} traces, {summary(stopped)}")
    print(work.__name__, summary(stopped))
    assert depths == {6}
    assert status == 0  # slept 2 s and no longer, or summed right, through 300 stops
    assert statistics.median(stopped) < 1000


def test_first_trace_of_a_worker(report):
    """Code objects not cached yet: their names and line tables are read during the stop.
    The workers are forked first and gc.collect() then writes to every tracked object, as a
    master long past its last fork has: otherwise this process's own copy-on-write faults
    after each fork would be timed too."""
    pids = [fork(sleep_for, 1.0) for _ in range(30)]
    gc.collect()
    stopped = []
    try:
        for pid in pids:
            stopped.append(trace.stack(pid, 20).stopped_us)
    finally:
        statuses = [os.waitpid(pid, 0)[1] for pid in pids]
        for pid in pids:
            trace.forget(pid)
    report("slowlog: ptrace stop time", f"{len(stopped)} fresh workers, {summary(stopped)}")
    print("first trace", summary(stopped))
    assert statuses == [0] * len(pids)
    assert statistics.median(stopped) < 1000
