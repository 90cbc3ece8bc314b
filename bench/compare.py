#!/usr/bin/env python3
"""pyfpm side by side with PHP-FPM, uWSGI and flup (issue 6), gunicorn and Granian (issue
17), behind one nginx.

    python bench/compare.py [--quick] [--floor F] [--duration 3s] [--rounds 3] [--out bench/results]
    python bench/compare.py --servers all --scenarios issue17 [--rounds 2]
    python bench/compare.py --servers pyfpm,pyfpm-base --base DIR   # this checkout against DIR's

Installs what is missing (scripts/install-bench-deps), starts every server with 2 workers
(each on a unix socket and, if a scenario needs it, on 127.0.0.1; a second instance per
server serving Django, a third recycling its workers, when a scenario needs them), one nginx
with worker_processes 1 in front, then runs `wrk -t1` against each in interleaved rounds
(A B C D A B C D ...) without restarting anything; then counts each server's syscalls per
request under strace and times fresh starts to a first response. Writes compare.md /
compare.json / compare.png (or compare-quick.*) to the out dir and prints the table. Every
process it starts is in its own process group and is killed at the end, also on Ctrl-C or an
error.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]  # tests.harness, fpm (this checkout), the compare_* modules

import compare_measure as measure  # noqa: E402
import compare_report as report  # noqa: E402
from compare_servers import (  # noqa: E402
    BASE, BIG, COUNTED, FASTCGI_PARAMS, FASTCGI_SERVERS, HELLO_PHP, IDLE_TIMEOUT_S, RELOAD_SIGNAL,
    RECYCLING, SERVERS, VARIANTS, Backend, Nginx, answer_ok, serves, software, startup_ms)
from peers.hello_wsgi import SLOW_S  # noqa: E402


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    transport: str
    keep: str  # fastcgi_keep_conn (FastCGI servers; the HTTP ones have their usual front)
    connections: int
    path: str = "hello"  # hello; post: a 1 MiB body; big: a 100 KiB answer; COUNTED: see Nginx;
    # django: the Django page
    headers: tuple = ()  # (name, value) pairs wrk sends with every request
    mib: float | None = None  # MiB a request or its answer carries: MiB/s = req/s × mib
    variant: str = "hello"  # the server instance it runs against (compare_servers.VARIANTS)
    slow: bool = False  # one request for /slow (SLOW_S) kept in flight for the whole cell
    peers_keep: str | None = None  # fastcgi_keep_conn for the other FastCGI servers, if not keep

    def keep_for(self, server: str) -> str:
        """fastcgi_keep_conn for ``server``: ``peers_keep`` for the FastCGI servers but pyfpm
        (and pyfpm-base) when set (their usual front, where keep is what pyfpm is measured
        with)."""
        return self.peers_keep if self.peers_keep and software(server) != "pyfpm" else self.keep

    @property
    def recycle(self) -> bool:
        """RELOADS wrk runs with a reload halfway through each and SHRINK_WAIT s idle after."""
        return self.variant == "recycle"

    @property
    def post(self) -> bool:
        return self.path == "post"

    @property
    def counted(self) -> bool:
        """nginx logs this scenario's requests per client connection (starvation check)."""
        return self.path == COUNTED


STALL_TIMEOUT = 30.0  # how long a cell waits for its backend to answer at all
FLUSH_WAIT = 1.2  # nginx writes its buffered per-connection log (flush=1s) by then
STARVED_IN = ("keep-c64",)  # the scenarios whose report says which connections starved
RELOADS = 3  # per recycle cell, one halfway through each of its wrk runs
# After each of a recycle cell's wrk runs: long enough for an ondemand pool to stop its idle
# workers (pm.process_idle_timeout, checked once a second by pyfpm's and PHP-FPM's masters).
SHRINK_WAIT = IDLE_TIMEOUT_S + 2.0
SLOW_START = 0.2  # from sending the slow request to starting wrk: it is in a worker by then

# 9 request headers with 211-byte values: with nginx's stock fastcgi_params (20 params on
# plain HTTP, HTTP_HOST among them) and SCRIPT_FILENAME, nginx sends 30 params, 2,043 bytes
# of them HTTP_* names and values (forwarded_params(); tests/unit/test_compare.py counts).
BENCH_HEADERS = tuple((f"X-Bench-{i}", (f"{i}-" + "0123456789abcdef" * 14)[:211])
                      for i in range(1, 10))

SCENARIOS = (
    Scenario("unix-c16", "hello, unix, c16", "unix", "off", 16),
    Scenario("unix-c64", "hello, unix, c64", "unix", "off", 64),
    Scenario("tcp-c16", "hello, TCP, c16", "tcp", "off", 16),
    Scenario("keep-c16", "hello, unix, keep_conn on, c16", "unix", "on", 16),
    Scenario("tcp-keep-c16", "hello, TCP, keep_conn on, c16", "tcp", "on", 16),
    Scenario("keep-c64", "hello, unix, keep_conn on, c64", "unix", "on", 64, path=COUNTED),
    Scenario("params-c16", "hello with 30 params (9 headers, 2,043 B of HTTP_*), unix, c16",
             "unix", "off", 16, headers=BENCH_HEADERS),
    Scenario("big-c16", "100 KiB response, unix, c16", "unix", "off", 16, path="big",
             mib=BIG / 1048576),
    Scenario("post-c16", "POST 1 MiB, unix, c16 (req/s = MiB/s)", "unix", "off", 16,
             path="post", mib=1.0),
    # Issue 17. The slow pair: 2 workers, and in the second one of them busy with a 1.5 s
    # request the whole time; /hello's p99 with ÷ without is the figure. keep_conn on for
    # pyfpm, the others behind their usual front (keep_conn off, nginx's default: with it on,
    # PHP-FPM and flup pin their workers to nginx's first connections).
    Scenario("slow-base-c8", "hello, unix, keep_conn on (pyfpm), c8", "unix", "on", 8,
             peers_keep="off"),
    Scenario("slow-c8", "hello, unix, keep_conn on (pyfpm), c8, a 1.5 s request in flight",
             "unix", "on", 8, slow=True, peers_keep="off"),
    Scenario("django-c16", "Django template view, unix, c16", "unix", "off", 16, path="django",
             variant="django"),
    Scenario("django-keep-c16", "Django template view, unix, keep_conn on (pyfpm), c16", "unix",
             "on", 16, path="django", variant="django", peers_keep="off"),
    Scenario("recycle-c16", f"POST 1 MiB, unix, keep_conn on (pyfpm), c16, {RELOADS} reloads, "
             "workers recycled every 50 requests", "unix", "on", 16, path="post", mib=1.0,
             variant="recycle", peers_keep="off"),
)
# --scenarios takes these names for their sets; the default run is issue 6's.
SCENARIO_SETS = {"issue6": tuple(s.key for s in SCENARIOS[:9]),
                 "issue17": tuple(s.key for s in SCENARIOS[9:])}


def forwarded_params(fastcgi_params: str, headers, host: str = "127.0.0.1") -> dict:
    """The params nginx sends to a location of the harness for a plain-HTTP request with
    ``headers``: every ``fastcgi_param`` of the file but those marked if_not_empty (on plain
    HTTP that is HTTPS, empty), SCRIPT_FILENAME, then HTTP_* for Host (wrk sends it) and each
    header that no param names already (nginx hides those). Values as written in the file
    (nginx's variables), HTTP_HOST's is ``host`` ($host: no port)."""
    params = {}
    for line in fastcgi_params.splitlines():
        fields = line.partition("#")[0].replace(";", " ;").split()
        if fields[:1] == ["fastcgi_param"] and len(fields) >= 4 and "if_not_empty" not in fields:
            params[fields[1]] = " ".join(fields[2:-1])
    params["SCRIPT_FILENAME"] = str(HELLO_PHP)
    for name, value in (("Host", host), *headers):
        params.setdefault("HTTP_" + name.upper().replace("-", "_"), value)
    if "HTTP_HOST" in params:
        params["HTTP_HOST"] = host
    return params


def header_bytes(params: dict) -> int:
    """Bytes of the HTTP_* params' names and values (the request headers nginx forwards)."""
    return sum(len(k) + len(v) for k, v in params.items() if k.startswith("HTTP_"))


def cell_seconds(sc, duration) -> float:
    """How long a cell takes without its pause: a recycle cell is RELOADS wrk runs, each
    followed by SHRINK_WAIT; a slow cell waits for its slow request to start and to end."""
    if sc.recycle:
        return RELOADS * (duration + SHRINK_WAIT)
    return duration + (SLOW_START + SLOW_S if sc.slow else 0)


def plan_seconds(scenarios, servers, rounds, duration, warmup, starts, strace) -> float:
    """About how long a run takes, from the cells and the pauses between them (the constants
    fitted to a 5-scenario run of 381 s that this gives as 400 s)."""
    def gap(sc):  # the pause after a cell, plus ~0.5 s of checks and wrk's start and end
        return (FLUSH_WAIT if sc.counted else 1.2 if sc.keep == "on" else 0.3) + 0.5
    per_round = sum(cell_seconds(sc, duration) + gap(sc) for sc in scenarios) * len(servers)
    warm = sum(cell_seconds(sc, warmup) + gap(sc) for sc in scenarios
               if not sc.recycle) * len(servers) if warmup > 0 else 0
    return (10 + warm + rounds * per_round + starts * len(servers) * 1.2
            + (len(servers) * (strace + 1.5) if strace > 0 else 0))


def seconds(text: str) -> float:
    """'5s', '500ms', '1m' or a plain number of seconds."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * scale
    return float(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="the CI guard: 3 rounds of 2 s, hello world unix c16, pyfpm and PHP-FPM "
                        "only, no starts or strace; prints the ratio")
    p.add_argument("--duration", default=None, help="wrk duration per cell (default 3s, --quick 2s)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    p.add_argument("--warmup", default="1s", help="wrk run per cell before the rounds (default 1s)")
    p.add_argument("--starts", type=int, default=None,
                   help="fresh starts per server timed to a first response (default 5, --quick 0)")
    p.add_argument("--strace", default=None,
                   help="wrk run per server under strace -c for syscalls per request "
                        "(default 2s, --quick 0 = none)")
    p.add_argument("--out", default=str(BENCH / "results"), help="where the report goes")
    p.add_argument("--servers", default=None,
                   help="comma-separated subset of " + ",".join(SERVERS) + ", or all (default: "
                        + ",".join(FASTCGI_SERVERS) + f"); and {BASE} with --base")
    p.add_argument("--scenarios", default=None,
                   help="comma-separated subset of " + ",".join(s.key for s in SCENARIOS)
                        + ", or of the sets " + ", ".join(SCENARIO_SETS) + " (default: issue6)")
    p.add_argument("--base", default=None, metavar="DIR",
                   help=f"a pyfpm checkout (extensions built in place) that {BASE} in --servers "
                        "runs, with pyfpm's config and app: before (DIR) and after (this "
                        "checkout) in one run")
    p.add_argument("--floor", type=float, default=None,
                   help="exit 1 if pyfpm's req/s ÷ PHP-FPM's is below this in a scenario, "
                        "measured again (as many rounds) and below it again")
    p.add_argument("--no-install", action="store_true", help="do not run scripts/install-bench-deps")
    p.add_argument("--keep-tmp", action="store_true", help="keep the /tmp directory (configs, logs)")
    args = p.parse_args(argv)
    args.duration = seconds(args.duration or ("2s" if args.quick else "3s"))
    args.warmup = seconds(args.warmup)
    args.rounds = args.rounds or 3
    args.starts = args.starts if args.starts is not None else (0 if args.quick else 5)
    args.strace = seconds(args.strace or ("0" if args.quick else "2s"))
    servers = (list(SERVERS) if args.servers == "all" else args.servers.split(",")
               if args.servers else ["pyfpm", "php-fpm"] if args.quick else list(FASTCGI_SERVERS))
    unknown = set(servers) - {*SERVERS, BASE}
    if unknown:
        p.error(f"unknown server(s) {', '.join(sorted(unknown))}; known: {', '.join(SERVERS)}, "
                f"{BASE}")
    if BASE in servers and not (args.base and Path(args.base, "fpm", "__init__.py").is_file()):
        p.error(f"{BASE} runs the pyfpm checkout --base DIR names (DIR/fpm/__init__.py): "
                f"{args.base or 'none given'}")
    args.base = args.base and Path(args.base).resolve()
    args.servers = servers
    keys = [key for name in args.scenarios.split(",") for key in SCENARIO_SETS.get(name, [name])
            ] if args.scenarios else ["unix-c16"] if args.quick else list(SCENARIO_SETS["issue6"])
    known = {s.key: s for s in SCENARIOS}
    if set(keys) - set(known):
        p.error(f"unknown scenario(s) {', '.join(sorted(set(keys) - set(known)))}; "
                f"known: {', '.join(known)}")
    args.scenarios = [known[k] for k in keys]
    return args


def install(argv, quick: bool) -> None:
    """Run scripts/install-bench-deps (--quick: only what the quick mode needs); if it names
    another Python (a venv on a Debian system Python), re-run this command with that one."""
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run([str(ROOT / "scripts" / "install-bench-deps")]
                          + (["--quick"] if quick else []), env=env,
                          stdout=subprocess.PIPE, text=True, timeout=1800)
    if done.returncode != 0:
        sys.exit(f"compare: scripts/install-bench-deps failed with code {done.returncode}")
    python = done.stdout.strip().splitlines()[-1]
    here = subprocess.run([python, "-c", "import sys; print(sys.executable)"],
                          capture_output=True, text=True).stdout.strip()
    if os.path.realpath(here) != os.path.realpath(sys.executable):
        print(f"compare: continuing with {here}", file=sys.stderr)
        os.execv(here, [here, __file__, *argv, "--no-install"])


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def through_nginx(front: Nginx, path: str, what: str, headers=(), timeout: float = 10):
    """One request through nginx for ``what`` (a 1 MiB POST for post): (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=timeout)
    try:
        body = b"a" * 1048576 if what == "post" else None
        conn.request("POST" if body else "GET", path, body=body, headers=dict(headers))
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def check_through_nginx(front: Nginx, backend: Backend, scenarios) -> str | None:
    """None if every location this backend serves answers as it should through nginx. (The
    counted location is checked as hello: a check's connection in its log would count as a
    connection served once.)"""
    checks = {(sc.keep_for(backend.server), "hello" if sc.counted else sc.path, sc.headers)
              for sc in scenarios
              if (sc.transport, sc.variant) == (backend.transport, backend.variant)}
    for keep, what, headers in sorted(checks):
        path = front.path(backend, keep, what)
        try:
            status, data = through_nginx(front, path, what, headers)
        except (OSError, http.client.HTTPException) as e:
            return f"through nginx ({path}): {e}"
        if not answer_ok(what, status, data):
            return f"through nginx ({path}): {status}, {len(data)} bytes {data[:80]!r}"
    return None


class SlowInFlight:
    """One request for /slow through nginx (``path``) in flight for the length of the
    with-block: re-issued as soon as it completes. Its thread finishes the request in hand
    when the block ends (bounded: SLOW_S + 10 s per request). ``.done`` and ``.failed``
    count the requests answered as they should and the others."""

    def __init__(self, front: Nginx, path: str):
        self.front, self.path = front, path
        self.done = self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self.stop.is_set():
            try:
                ok = answer_ok("slow", *through_nginx(self.front, self.path, "slow",
                                                      timeout=SLOW_S + 10))
            except (OSError, http.client.HTTPException):
                ok = False
            self.done += ok
            self.failed += not ok
            if not ok:
                self.stop.wait(0.1)  # a backend refusing at once is not hammered

    def __enter__(self):
        self.thread.start()
        time.sleep(SLOW_START)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(SLOW_S + 11)


def reload(backend: Backend) -> str:
    """Send the server's reload signal (compare_servers.RELOAD_SIGNAL) to its master."""
    sig = RELOAD_SIGNAL[software(backend.server)]
    os.kill(backend.master(), sig)
    return sig.name


def recycle_runs(front, backend, sc, duration, lua) -> dict:
    """RELOADS wrk runs of ``duration`` with the reload signal halfway through each, and
    SHRINK_WAIT s without load after each (an ondemand pool stops its idle workers then):
    the runs' figures combined, and per run the workers under load (counted just before the
    reload) and after the wait."""
    runs, pools = [], []
    for _ in range(RELOADS):
        url = front.url(backend, sc.keep_for(backend.server), sc.path)
        runs.append(measure.run_wrk(url, sc.connections, duration, lua,
                                    midway=lambda: (len(backend.workers()), reload(backend))))
        time.sleep(SHRINK_WAIT)
        pools.append([runs[-1]["midway"][0], len(backend.workers())])
    return {**measure.combine_runs(runs), "reloads": len(runs), "pools": pools, "midway": None}


def run_cell(front, backend, sc, duration, lua) -> dict:
    """One wrk run against one backend (or a recycle cell's runs, recycle_runs()); its
    figures, or {"error": why}. The backend must first answer a request of its own
    (bounded): a server left stalled by the cell before is measured once it serves again,
    and the wait is reported."""
    waited, why = backend.wait_answering(STALL_TIMEOUT)
    if why:
        return {"error": f"{backend.key} not answering before the run: {why}", "stalled_s": waited}
    keep = sc.keep_for(backend.server)
    url = front.url(backend, keep, sc.path)
    front.new_errors()  # only what this cell makes nginx log counts
    front.new_counted()
    slow = SlowInFlight(front, front.path(backend, keep, "slow")) if sc.slow else nullcontext()
    try:
        if sc.recycle:  # the workers come and go: no CPU figures
            result = recycle_runs(front, backend, sc, duration, lua)
        else:
            with slow, measure.Meter(backend.pids(), front.pids()) as meter:
                result = measure.run_wrk(url, sc.connections, duration, lua if sc.post else None,
                                         midway=lambda: measure.accept_queue(backend.address),
                                         headers=sc.headers)
            result.update(meter.figures(result["requests"], result.pop("wrk_ns")))
    except RuntimeError as e:
        return {"error": str(e), "stalled_s": waited}
    if sc.slow:
        result.update(slow_done=slow.done, slow_failed=slow.failed)
    if sc.counted:
        time.sleep(FLUSH_WAIT)
    errors = front.new_errors()
    result["nginx_errors"] = len(errors)
    result["upstream_errors"] = sum("upstream" in line for line in errors)
    if sc.counted:
        counts = measure.connection_counts(front.new_counted())
        result["conns"] = report.starvation(
            counts.values(), sc.connections, result["timeouts"],
            sum("upstream timed out" in line for line in errors))
    result["stalled_s"] = waited
    if not backend.running:
        result["error"] = f"{backend.key} died during the run: {backend.log_tail()}"
    return result


def idle_memory(backend: Backend) -> dict:
    workers = [m for m in map(measure.memory_kb, backend.workers()) if m]
    master = measure.memory_kb(backend.master())
    return {**{k: report.median(w[k] for w in workers) for k in ("uss", "pss", "rss")},
            "master_pss": master["pss"] if master else None, "workers": len(workers)}


def interrupted(signum, frame):
    """A TERM (CI's timeout, kill) unwinds like Ctrl-C, through main()'s cleanup."""
    raise KeyboardInterrupt


def start_servers(args, tmp: Path, stack: ExitStack):
    """Every server once per transport and variant the scenarios use (that it serves), and
    nginx in front of those that started; (backends by (server, transport, variant), nginx,
    {Backend.label: why it is not in the run}). A server whose hello-world instance fails
    is out of the run; one whose Django or recycling instance fails only misses those cells."""
    wanted = ({(sc.transport, sc.variant) for sc in args.scenarios}
              | ({("unix", "hello")} if args.strace > 0 else set()))
    instances = sorted(wanted, key=lambda tv: (tv[0] != "unix", VARIANTS.index(tv[1]), tv))
    backends, failures = {}, {}
    for server in args.servers:
        for transport, variant in instances:
            if not serves(server, variant):
                continue
            b = Backend(server, transport, tmp / f"{server}-{variant}-{transport}", variant,
                        root=checkout(args, server))
            stack.callback(b.stop)
            log(f"starting {b.key}")
            if b.start().error:
                failures.setdefault(b.label, f"{transport}: {b.error}")
                log(f"{b.key} did not start: {b.error}")
            else:  # before any load, even the checks through nginx (one is a 1 MiB POST)
                time.sleep(0.3)
                b.fresh_memory = idle_memory(b)
            backends[server, transport, variant] = b
    for key, b in list(backends.items()):
        if key[0] in failures or b.label in failures:
            b.stop()
            del backends[key]
    front = Nginx(tmp / "nginx", list(backends.values()))
    stack.callback(front.stop)
    front.start()
    for b in backends.values():
        why = b.label not in failures and check_through_nginx(front, b, args.scenarios)
        if why:
            failures[b.label] = why
            log(f"{b.key}: {why}")
    for key, b in list(backends.items()):  # an instance that answered wrong is not measured
        if key[0] in failures or b.label in failures:
            del backends[key]
    return backends, front, failures


def describe(result) -> str:
    if "error" in result:
        return f"failed: {result['error']}"
    conns = result.get("conns")
    ms = lambda name: "-" if result.get(name) is None else f"{result[name]:.2f}"  # noqa: E731
    return (f"{result['rate']:9,.0f} req/s  p50 {ms('p50')} ms  p99 {ms('p99')} ms  "
            + (f"backend {result['backend_us']:.1f} µs/req  " if "backend_us" in result else "")
            + f"errors {result['non2xx']}/{result['socket_errors']}/{result['nginx_errors']}"
            f"  queue {result['midway']}"
            + (f"  connections served {conns['served']}/{conns['clients']}, min/median/max "
               f"{conns['min']}/{conns['median']:.0f}/{conns['max']}"
               f"{' STARVED' if conns['starved'] else ''}"
               if conns else "")
            + (f"  max {ms('max')} ms, slow requests answered {result['slow_done']}"
               f"/failed {result['slow_failed']}" if "slow_done" in result else "")
            + (f"  {result['reloads']} reloads, workers {result['pools']}" if "pools" in result
               else "")
            + (f"  (answered after {result['stalled_s']:.1f} s)" if result["stalled_s"] > 0.5 else ""))


def gap(sc) -> float:
    """The pause after a cell: keep_conn on lets nginx's cached upstream connections (1 s)
    go first; a counted cell has waited for nginx's log already."""
    return 0.0 if sc.counted else 1.2 if sc.keep == "on" else 0.3


def cells_for(scenarios, servers, backends) -> list:
    """[(scenario, backend)] in interleaved order, for the servers that serve each scenario."""
    return [(sc, backends[key]) for sc in scenarios for s in servers
            if (key := (s, sc.transport, sc.variant)) in backends]


def run_rounds(args, cells_of, front, lua: str, rounds: int, attempt: int = 1) -> list[dict]:
    """``rounds`` interleaved rounds over ``cells_of`` [(scenario, backend)]."""
    cells = []
    for rnd in range(1, rounds + 1):
        for sc, b in cells_of:
            result = run_cell(front, b, sc, args.duration, lua)
            result.update(round=rnd, attempt=attempt, scenario=sc.key, server=b.server)
            cells.append(result)
            log(f"round {rnd} {sc.key:12} {b.server:8} {describe(result)}")
            time.sleep(gap(sc))
    return cells


def measure_all(args, backends, front, servers, lua: str):
    """Warm-up, idle memory, then the interleaved rounds; (cells, memory by server)."""
    cells_of = cells_for(args.scenarios, servers, backends)
    if args.warmup > 0:  # recycle cells are not warmed: their workers live 50 requests
        warm = [(sc, b) for sc, b in cells_of if not sc.recycle]
        log(f"warm-up: {len(warm)} cells x {args.warmup:g} s")
        for sc, b in warm:
            run_cell(front, b, sc, args.warmup, lua)
            time.sleep(gap(sc))
    time.sleep(1.0)
    # Memory of each server's hello-world instance (unix first), else of its first one.
    idle = {}
    for (server, transport, variant), b in sorted(
            backends.items(), key=lambda kv: (kv[0][2] != "hello", kv[0][1] != "unix")):
        if server in servers:
            idle.setdefault(server, b)
    for b in idle.values():  # flup is left without children by aborted uploads for a while
        b.wait_answering(STALL_TIMEOUT)
    time.sleep(0.5)
    memory = {s: {**idle_memory(b), "fresh": b.fresh_memory} for s, b in idle.items()}
    return run_rounds(args, cells_of, front, lua, args.rounds), memory


def measure_syscalls(args, backends, front, servers, tmp: Path) -> dict:
    """Per server: wrk for ``args.strace`` s of hello world (unix, c16, keep_conn off) with
    ``strace -c -f`` attached to the workers, and another to the master; {"requests",
    "workers", "master"} (syscall counts), or {"error"}."""
    out = {}
    for server in servers:
        b = backends.get((server, "unix", "hello"))
        if b is None:
            continue
        waited, why = b.wait_answering(STALL_TIMEOUT)
        if why:
            out[server] = {"error": f"not answering: {why}"}
            continue
        try:
            with measure.Strace(b.workers(), tmp / f"strace-{server}-workers.txt") as workers, \
                    measure.Strace([b.master()], tmp / f"strace-{server}-master.txt") as master:
                result = measure.run_wrk(front.url(b, "off", "hello"), 16, args.strace)
        except RuntimeError as e:
            out[server] = {"error": str(e)}
            continue
        out[server] = {"requests": result["requests"], "workers": workers.counts,
                       "master": master.counts}
        f = report.syscall_figures(out[server])
        log(f"strace {server:8} {result['requests']:,} requests, "
            f"{f['per_request']:.1f} syscalls per request in the workers, "
            f"{f['master_per_request']:.2f} in the master")
        time.sleep(0.3)
    return out


def checkout(args, server: str) -> Path | None:
    """The pyfpm checkout ``server`` runs if not this one (Backend.root): --base's for BASE."""
    return args.base if server == BASE else None


def measure_starts(args, servers, tmp: Path, n: int) -> dict:
    """{server: [ms from Popen to the first answer, or why not]} of ``n`` fresh starts each,
    interleaved across the servers. Python servers start from compiled bytecode, as a pip
    install leaves them: with PYTHONDONTWRITEBYTECODE set (this VM sets it) every start
    would compile pyfpm's sources again (~60 ms)."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    roots = [ROOT] + ([args.base] if BASE in servers else [])
    subprocess.run([sys.executable, "-m", "compileall", "-q", *(str(r / "fpm") for r in roots),
                    str(BENCH / "peers")], check=True, stdout=subprocess.DEVNULL)
    times = {s: [] for s in servers}
    for i in range(n):
        for server in servers:
            times[server].append(startup_ms(server, tmp / f"start-{server}-{i}",
                                            root=checkout(args, server)))
            t = times[server][-1]
            log(f"start {i + 1} {server:8} " + (f"failed: {t}" if isinstance(t, str)
                                                 else f"{t:.1f} ms"))
    return times


def guard_ratios(args, summary, servers) -> dict:
    """{scenario title: pyfpm ÷ PHP-FPM} when both servers are in the run."""
    if "pyfpm" not in servers or "php-fpm" not in servers:
        return {}
    return {sc.title: report.ratio(summary, sc.key, "php-fpm") for sc in args.scenarios}


def measure_again(args, backends, front, servers, lua, summary) -> list[dict]:
    """The CI guard's second chance: the same rounds again, pyfpm and PHP-FPM only, for the
    scenarios where pyfpm ÷ PHP-FPM is under --floor (a noisy neighbour on a CI machine)."""
    if args.floor is None or "pyfpm" not in servers or "php-fpm" not in servers:
        return []
    below = [sc for sc in args.scenarios
             if (r := report.ratio(summary, sc.key, "php-fpm")) is None or r < args.floor]
    if not below:
        return []
    log(f"pyfpm ÷ php-fpm below {args.floor:g}× in {', '.join(sc.key for sc in below)}: "
        f"measuring again")
    cells_of = cells_for(below, ("pyfpm", "php-fpm"), backends)
    return run_rounds(args, cells_of, front, lua, args.rounds, attempt=2)


def checkouts_text(args) -> str:
    """Which checkouts pyfpm and pyfpm-base run, for the report (their commits)."""
    if BASE not in args.servers:
        return ""
    def commit(root):
        done = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "fpm"],
                               capture_output=True, text=True).stdout.strip()
        return f"{done.stdout.strip() or 'not a git checkout'}{', fpm/ modified' if dirty else ''}"
    return f" pyfpm: {ROOT} ({commit(ROOT)}); {BASE}: {args.base} ({commit(args.base)})."


def write_report(args, argv, cells, memory, failures, elapsed, starts=None, syscalls=None,
                 again=()) -> int:
    """The markdown, JSON and PNG in the out dir; prints the table and pyfpm ÷ PHP-FPM.
    Exit status 1 if a ratio is under --floor both times (report.floor_verdict)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "compare-quick" if args.quick else "compare"
    summary = report.summarize(cells)
    command = "python bench/compare.py " + " ".join(argv)
    extra = ""
    if any(sc.headers for sc in args.scenarios) and FASTCGI_PARAMS.exists():
        params = forwarded_params(FASTCGI_PARAMS.read_text(), BENCH_HEADERS)
        extra = (f" With {len(BENCH_HEADERS)} X-Bench headers nginx sends {len(params)} params, "
                 f"{header_bytes(params):,} bytes of HTTP_* names and values ({FASTCGI_PARAMS}).")
    meta = {
        "title": f"`{command.strip()}` ({time.strftime('%Y-%m-%d %H:%M')}, {elapsed:.0f} s)",
        "description": (f"wrk -t1 -d{args.duration:g}s --latency, {args.rounds} interleaved "
                        f"round(s), 2 workers per server, one nginx "
                        f"(worker_processes 1), {os.cpu_count()} CPUs, load average before "
                        f"{args.load:.2f}.{extra}{args.checkouts}"),
    }
    start_figs = {s: report.start_figures(t) for s, t in (starts or {}).items()}
    call_figs = {s: report.syscall_figures(e) for s, e in (syscalls or {}).items()}
    recycling = {s: RECYCLING[software(s)] for s in args.servers}
    text = report.markdown(args.scenarios, args.servers, summary, memory, failures, meta,
                           start_figs, call_figs, recycling)
    first, guard = guard_ratios(args, summary, args.servers), ""
    if args.floor is None:
        code, lines = 0, [f"pyfpm ÷ php-fpm, {t}: " + ("n/a" if r is None else f"{r:.2f}×")
                          for t, r in first.items()]
    else:
        second = guard_ratios(args, report.summarize(again), args.servers) if again else None
        code, lines = report.floor_verdict(first, second, args.floor)
        guard = ("\nRegression guard (--floor, pyfpm ÷ PHP-FPM; a scenario under the floor is "
                 "measured again and fails only if under it again):\n\n"
                 + "".join(f"- {line}\n" for line in lines))
    png = report.chart(out / f"{stem}.png", args.scenarios, args.servers, summary,
                       f"req/s, median of {args.rounds} round(s) of {args.duration:g} s")
    (out / f"{stem}.md").write_text(text + guard + (f"\n![req/s]({stem}.png)\n" if png else ""))
    (out / f"{stem}.json").write_text(json.dumps(
        {"command": command, "meta": meta, "failures": failures, "memory": memory,
         "starts": starts or {}, "syscalls": syscalls or {},
         "cells": [{k: v for k, v in c.items() if k != "raw"} for c in [*cells, *again]]},
        indent=1))
    print(text)
    print(f"report: {out / (stem + '.md')}, chart: {png or 'not drawn (no matplotlib)'}, "
          f"{elapsed:.0f} s")
    for line in lines:
        print(line)
    if code:
        print(f"compare: pyfpm ÷ php-fpm below the floor {args.floor:g}×", file=sys.stderr)
    return code


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not args.no_install:
        install(argv, args.quick)
    if not shutil.which("wrk"):
        sys.exit("compare: wrk is not installed (scripts/install-bench-deps)")
    if args.strace > 0 and not shutil.which("strace"):
        sys.exit("compare: strace is not installed (scripts/install-bench-deps)")
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # also when started in the background (SIG_IGN)
    args.load = os.getloadavg()[0]
    args.checkouts = checkouts_text(args)  # before the run: a commit during it is not what ran
    started = time.monotonic()
    plan = plan_seconds(args.scenarios, args.servers, args.rounds, args.duration, args.warmup,
                        args.starts, args.strace)
    log(f"{len(args.scenarios)} scenario(s) x {len(args.servers)} server(s), "
        f"{args.rounds} round(s) of {args.duration:g} s: about {plan / 60:.1f} min")
    tmp = Path(tempfile.mkdtemp(prefix="pyfpm-compare-", dir="/tmp"))
    with ExitStack() as stack:  # unwinds in reverse: nginx, the servers, then tmp
        if args.keep_tmp:
            stack.callback(log, f"kept {tmp}")
        else:
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        lua = tmp / "post.lua"
        lua.write_text(measure.POST_LUA)
        backends, front, failures = start_servers(args, tmp, stack)
        servers = [s for s in args.servers if s not in failures]
        cells, memory = measure_all(args, backends, front, servers, str(lua))
        again = measure_again(args, backends, front, servers, str(lua), report.summarize(cells))
        syscalls = measure_syscalls(args, backends, front, servers, tmp) if args.strace > 0 else {}
        starts = measure_starts(args, servers, tmp, args.starts) if args.starts > 0 else {}
    return write_report(args, argv, cells, memory, failures, time.monotonic() - started,
                        starts, syscalls, again)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("compare: interrupted; every server was stopped")
    except RuntimeError as e:  # nginx would not start, and the like: servers already stopped
        sys.exit(f"compare: {e}")
