"""What bench/compare.py reads: wrk's output, processes' CPU time and memory from /proc, the
whole machine's busy time (to see how much other work disturbed a cell), and the system calls
of a server's processes (strace -c)."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}
TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")

POST_LUA = """\
-- 1 MiB POST body, as shared/reference/baseline.md sent it
wrk.method = "POST"
wrk.body = string.rep("a", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def parse_ms(text: str) -> float:
    """wrk's duration ("812.00us", "1.54ms", "2.01s") in milliseconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m[1]) * UNITS_MS[m[2]]


def parse_wrk(out: str) -> dict:
    """req/s, requests, p50/p99/max (ms), non-2xx and socket errors from ``wrk --latency``."""
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.M))  # "1.28s " has a space
    latency = re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", out, re.M)  # avg, stdev, max
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        "requests": int(re.search(r"(\d+) requests in", out)[1]),
        "p50": parse_ms(pct["50"]) if "50" in pct else None,
        "p99": parse_ms(pct["99"]) if "99" in pct else None,
        "max": parse_ms(latency[1]) if latency else None,
        "non2xx": int(non2xx[1]) if non2xx else 0,
        "socket_errors": sum(map(int, sock.groups())) if sock else 0,
        "timeouts": int(sock[4]) if sock else 0,
    }


def run_wrk(url: str, connections: int, seconds: float, script: str | None = None,
            midway=None, headers=()) -> dict:
    """One bounded ``wrk -t1`` run; its parsed figures plus its own CPU time and raw output,
    and ``midway()``'s value at half time as "midway". ``headers``: (name, value) pairs sent
    with every request. Raises RuntimeError if wrk fails or outlives its duration by 30 s."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    if script:
        argv += ["-s", script]
    for name, value in headers:
        argv += ["-H", f"{name}: {value}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(argv + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(seconds / 2)
        middle = midway() if midway else None
        stdout, stderr = proc.communicate(timeout=seconds / 2 + 30)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"wrk still running {seconds + 30:g} s after start (killed)") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or "Requests/sec" not in stdout:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {(stderr or stdout)[-300:]}")
    result = parse_wrk(stdout)
    result["wrk_ns"] = ((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)) * 1e9
    result["midway"] = middle
    result["seconds"] = seconds
    result["raw"] = stdout
    return result


def combine_runs(runs: list[dict]) -> dict:
    """Several wrk runs of one cell (the recycle scenario's) as one: requests and errors
    summed, req/s over their summed durations (``seconds`` each), the median p50 and the worst
    p99 and max."""
    seconds = sum(r["seconds"] for r in runs)
    def worst(name):
        return max((r[name] for r in runs if r[name] is not None), default=None)
    p50 = sorted(r["p50"] for r in runs if r["p50"] is not None)
    return {"rate": sum(r["requests"] for r in runs) / seconds if seconds else 0.0,
            "requests": sum(r["requests"] for r in runs),
            "p50": p50[len(p50) // 2] if p50 else None, "p99": worst("p99"), "max": worst("max"),
            **{name: sum(r[name] for r in runs)
               for name in ("non2xx", "socket_errors", "timeouts")}}


def accept_queue(address: str) -> int | None:
    """Connections waiting in a listening socket's accept queue (its Recv-Q in ``ss -l``):
    connections nginx opened that no worker has taken. None if ss cannot tell."""
    unix = address.startswith("/")
    try:
        out = subprocess.run(["ss", "-xlnH" if unix else "-tlnH"], capture_output=True,
                             text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        fields = line.split()
        if "LISTEN" in fields:
            i = fields.index("LISTEN")
            if len(fields) > i + 3 and fields[i + 3] == address:
                return int(fields[i + 1])
    return None


def cpu_ns(pids) -> int:
    """Nanoseconds these processes have run (user + kernel), from the schedstat of each of
    their threads (/proc/PID/schedstat is the main thread's alone, and Granian serves from
    other threads); a process or thread that has gone counts 0."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError):
                pass
    return total


def machine_ns() -> tuple[float, float]:
    """(busy, wall) of all CPUs together so far, from /proc/stat, in nanoseconds."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) * TICK_NS, time.monotonic() * 1e9


def memory_kb(pid: int) -> dict | None:
    """{"pss", "uss", "rss"} in KiB from /proc/PID/smaps_rollup (USS = private pages)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            text = f.read()
    except OSError:
        return None
    v = {k: int(n) for k, n in re.findall(r"^(\w+):\s+(\d+) kB", text, re.M)}
    return {"pss": v.get("Pss", 0), "uss": v.get("Private_Clean", 0) + v.get("Private_Dirty", 0),
            "rss": v.get("Rss", 0)}


class Meter:
    """CPU of the backend, of nginx and of the machine across one wrk run."""

    def __init__(self, backend_pids, nginx_pids):
        self.backend_pids, self.nginx_pids = list(backend_pids), list(nginx_pids)

    def __enter__(self):
        self.start = cpu_ns(self.backend_pids), cpu_ns(self.nginx_pids), machine_ns()
        return self

    def __exit__(self, *exc):
        self.end = cpu_ns(self.backend_pids), cpu_ns(self.nginx_pids), machine_ns()

    def figures(self, requests: int, wrk_ns: float) -> dict:
        backend = self.end[0] - self.start[0]
        nginx = self.end[1] - self.start[1]
        busy = self.end[2][0] - self.start[2][0]
        wall = self.end[2][1] - self.start[2][1]
        per = max(requests, 1) * 1000  # ns → µs per request
        return {"backend_us": backend / per, "nginx_us": nginx / per,
                "backend_pct": 100 * backend / wall, "nginx_pct": 100 * nginx / wall,
                "wrk_pct": 100 * wrk_ns / wall,
                # Work on the machine that was none of the three: other sessions, the harness.
                "other_pct": 100 * (busy - backend - nginx - wrk_ns) / wall}


def connection_counts(log_lines) -> Counter:
    """Requests answered 200 per client connection, from nginx access-log lines in the
    ``$connection $status`` format (the 499s of connections wrk closed at the end of a cell
    are not answers)."""
    counts = Counter()
    for line in log_lines:
        fields = line.split()
        if len(fields) == 2 and fields[1] == "200":
            counts[fields[0]] += 1
    return counts


def parse_strace(text: str) -> dict:
    """{syscall: calls} from the table ``strace -c`` writes, with its "total" row. Columns
    are read at the header's positions (the errors column is blank for most rows)."""
    lines = text.splitlines()
    head = next((i for i, line in enumerate(lines) if line.lstrip().startswith("% time")), None)
    if head is None:
        return {}
    header = lines[head]
    usecs_end = header.index("usecs/call") + len("usecs/call")
    calls_end = header.index("calls", usecs_end) + len("calls")
    errors_end = header.index("errors") + len("errors")
    counts = {}
    for line in lines[head + 1:]:
        if not line.strip() or line.startswith("---"):
            continue
        name = line[errors_end:].strip()
        calls = line[usecs_end:calls_end].strip()
        if name and calls.isdigit():
            counts[name] = int(calls)
    return counts


def traced(pid: int) -> bool:
    """True once a tracer (strace) is attached to ``pid``, or if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("TracerPid:")) != 0
    except (OSError, StopIteration):
        return True


class Strace:
    """``strace -c -f`` attached to ``pids`` for the length of the with-block (waits until
    every pid has its tracer, at most 5 s); ``.counts`` is {syscall: calls} afterwards. The
    strace process has its own group and is interrupted (it then writes its table), killed
    if it has not finished 10 s later."""

    def __init__(self, pids, out: Path):
        self.pids, self.out, self.counts, self.proc = list(pids), Path(out), {}, None

    def __enter__(self):
        argv = ["strace", "-c", "-f", "-o", str(self.out)]
        for pid in self.pids:
            argv += ["-p", str(pid)]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 5
        while not all(map(traced, self.pids)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"strace did not attach to {self.pids}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __exit__(self, *exc):
        self.stop()
        try:
            self.counts = parse_strace(self.out.read_text(errors="replace"))
        except OSError:
            self.counts = {}
