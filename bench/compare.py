#!/usr/bin/env python3
"""pyfpm side by side with PHP-FPM, uWSGI and flup behind one nginx (issue 6).

    python bench/compare.py [--quick] [--duration 5s] [--rounds 3] [--out bench/results]

Installs what is missing (scripts/install-bench-deps), starts every server with 2 workers
(each on a unix socket and, if a scenario needs it, on 127.0.0.1), one nginx with
worker_processes 1 in front, then runs `wrk -t1` against each in interleaved rounds
(A B C D A B C D ...) without restarting anything. Writes compare.md / compare.json /
compare.png (or compare-quick.*) to the out dir and prints the table. Every process it starts
is in its own process group and is killed at the end, also on Ctrl-C or an error.
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
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]  # tests.harness, fpm (this checkout), the compare_* modules

import compare_measure as measure  # noqa: E402
import compare_report as report  # noqa: E402
from compare_servers import SERVERS, Backend, Nginx  # noqa: E402


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    transport: str
    keep: str  # fastcgi_keep_conn
    connections: int
    post: bool = False

    @property
    def path(self) -> str:
        return "post" if self.post else "hello"


STALL_TIMEOUT = 30.0  # how long a cell waits for its backend to answer at all

SCENARIOS = (
    Scenario("unix-c16", "hello, unix, c16", "unix", "off", 16),
    Scenario("unix-c64", "hello, unix, c64", "unix", "off", 64),
    Scenario("tcp-c16", "hello, TCP, c16", "tcp", "off", 16),
    Scenario("keep-c16", "hello, unix, keep_conn on, c16", "unix", "on", 16),
    Scenario("post-c16", "POST 1 MiB, unix, c16 (req/s = MiB/s)", "unix", "off", 16, post=True),
)


def seconds(text: str) -> float:
    """'5s', '500ms', '1m' or a plain number of seconds."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * scale
    return float(text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="1 round of 2 s, hello world unix c16, pyfpm and PHP-FPM only; prints the ratio")
    p.add_argument("--duration", default=None, help="wrk duration per cell (default 5s, --quick 2s)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, --quick 1)")
    p.add_argument("--warmup", default="1s", help="wrk run per cell before the rounds (default 1s)")
    p.add_argument("--out", default=str(BENCH / "results"), help="where the report goes")
    p.add_argument("--servers", default=None, help="comma-separated subset of " + ",".join(SERVERS))
    p.add_argument("--scenarios", default=None,
                   help="comma-separated subset of " + ",".join(s.key for s in SCENARIOS))
    p.add_argument("--floor", type=float, default=None,
                   help="exit 1 if pyfpm's req/s ÷ PHP-FPM's is below this in any scenario")
    p.add_argument("--no-install", action="store_true", help="do not run scripts/install-bench-deps")
    p.add_argument("--keep-tmp", action="store_true", help="keep the /tmp directory (configs, logs)")
    args = p.parse_args(argv)
    args.duration = seconds(args.duration or ("2s" if args.quick else "5s"))
    args.warmup = seconds(args.warmup)
    args.rounds = args.rounds or (1 if args.quick else 3)
    servers = args.servers.split(",") if args.servers else (
        ["pyfpm", "php-fpm"] if args.quick else list(SERVERS))
    unknown = set(servers) - set(SERVERS)
    if unknown:
        p.error(f"unknown server(s) {', '.join(sorted(unknown))}; known: {', '.join(SERVERS)}")
    args.servers = servers
    keys = args.scenarios.split(",") if args.scenarios else (
        ["unix-c16"] if args.quick else [s.key for s in SCENARIOS])
    known = {s.key: s for s in SCENARIOS}
    if set(keys) - set(known):
        p.error(f"unknown scenario(s) {', '.join(sorted(set(keys) - set(known)))}; "
                f"known: {', '.join(known)}")
    args.scenarios = [known[k] for k in keys]
    return args


def install(argv) -> None:
    """Run scripts/install-bench-deps; if it names another Python (a venv on a Debian system
    Python), re-run this command with that one."""
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run([str(ROOT / "scripts" / "install-bench-deps")], env=env,
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


def check_through_nginx(front: Nginx, backend: Backend, scenarios) -> str | None:
    """None if every location this backend serves answers as it should through nginx."""
    checks = {(sc.keep, sc.post) for sc in scenarios if sc.transport == backend.transport}
    for keep, post in sorted(checks):
        conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
        try:
            path = f"/{backend.server}/{backend.transport}/{keep}/{'post' if post else 'hello'}"
            body = b"a" * 1048576 if post else None
            conn.request("POST" if post else "GET", path, body=body)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as e:
            return f"through nginx ({path}): {e}"
        finally:
            conn.close()
        want = b"1048576" if post else b"Hello world\n"
        if resp.status != 200 or data != want:
            return f"through nginx ({path}): {resp.status} {data[:80]!r}"
    return None


def run_cell(front, backend, sc, duration, lua) -> dict:
    """One wrk run against one backend; its figures, or {"error": why}. The backend must
    first answer a request of its own (bounded): a server left stalled by the cell before
    is measured once it serves again, and the wait is reported."""
    waited, why = backend.wait_answering(STALL_TIMEOUT)
    if why:
        return {"error": f"{backend.key} not answering before the run: {why}", "stalled_s": waited}
    url = front.url(backend, sc.keep, sc.path)
    front.new_errors()  # only what this cell makes nginx log counts
    try:
        with measure.Meter(backend.pids(), front.pids()) as meter:
            result = measure.run_wrk(url, sc.connections, duration, lua if sc.post else None,
                                     midway=lambda: measure.accept_queue(backend.address))
    except RuntimeError as e:
        return {"error": str(e), "stalled_s": waited}
    result.update(meter.figures(result["requests"], result.pop("wrk_ns")))
    result["nginx_errors"] = len(front.new_errors())
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
    """Every server once per transport the scenarios use, and nginx in front of those that
    started; (backends by (server, transport), nginx, {server: why it is not in the run})."""
    transports = sorted({sc.transport for sc in args.scenarios}, reverse=True)  # unix first
    backends, failures = {}, {}
    for server in args.servers:
        for transport in transports:
            b = Backend(server, transport, tmp / f"{server}-{transport}")
            stack.callback(b.stop)
            log(f"starting {b.key}")
            if b.start().error:
                failures.setdefault(server, f"{transport}: {b.error}")
                log(f"{b.key} did not start: {b.error}")
            backends[server, transport] = b
    for key, b in list(backends.items()):
        if key[0] in failures:
            b.stop()
            del backends[key]
    front = Nginx(tmp / "nginx", list(backends.values()))
    stack.callback(front.stop)
    front.start()
    for (server, _), b in backends.items():
        why = server not in failures and check_through_nginx(front, b, args.scenarios)
        if why:
            failures[server] = why
            log(f"{b.key}: {why}")
    return backends, front, failures


def describe(result) -> str:
    if "error" in result:
        return f"failed: {result['error']}"
    return (f"{result['rate']:9,.0f} req/s  p50 {result['p50']:.2f} ms  p99 {result['p99']:.2f} ms  "
            f"backend {result['backend_us']:.1f} µs/req  errors {result['non2xx']}/"
            f"{result['socket_errors']}/{result['nginx_errors']}  queue {result['midway']}"
            + (f"  (answered after {result['stalled_s']:.1f} s)" if result["stalled_s"] > 0.5 else ""))


def measure_all(args, backends, front, servers, lua: str):
    """Warm-up, idle memory, then the interleaved rounds; (cells, memory by server)."""
    cells_of = [(sc, backends[s, sc.transport]) for sc in args.scenarios for s in servers]
    if args.warmup > 0:
        log(f"warm-up: {len(cells_of)} cells x {args.warmup:g} s")
        for sc, b in cells_of:
            run_cell(front, b, sc, args.warmup, lua)
            time.sleep(1.2 if sc.keep == "on" else 0.2)
    time.sleep(1.0)
    transport = "unix" if any(sc.transport == "unix" for sc in args.scenarios) else "tcp"
    idle = {s: backends[s, transport] for s in servers}
    for b in idle.values():  # flup is left without children by aborted uploads for a while
        b.wait_answering(STALL_TIMEOUT)
    time.sleep(0.5)
    memory = {s: idle_memory(b) for s, b in idle.items()}
    cells = []
    for rnd in range(1, args.rounds + 1):
        for sc, b in cells_of:
            result = run_cell(front, b, sc, args.duration, lua)
            result.update(round=rnd, scenario=sc.key, server=b.server)
            cells.append(result)
            log(f"round {rnd} {sc.key:9} {b.server:8} {describe(result)}")
            # keep_conn on: let nginx's cached upstream connections (1 s) go first.
            time.sleep(1.2 if sc.keep == "on" else 0.3)
    return cells, memory


def write_report(args, argv, cells, memory, failures, elapsed) -> int:
    """The markdown, JSON and PNG in the out dir; prints the table and pyfpm ÷ PHP-FPM.
    Exit status 1 if a ratio is under --floor."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "compare-quick" if args.quick else "compare"
    summary = report.summarize(cells)
    command = "python bench/compare.py " + " ".join(argv)
    meta = {
        "title": f"`{command.strip()}` ({time.strftime('%Y-%m-%d %H:%M')}, {elapsed:.0f} s)",
        "description": (f"wrk -t1 -d{args.duration:g}s --latency, {args.rounds} interleaved "
                        f"round(s), hello world and 2 workers per server, one nginx "
                        f"(worker_processes 1), {os.cpu_count()} CPUs, load average before "
                        f"{args.load:.2f}."),
    }
    text = report.markdown(args.scenarios, args.servers, summary, memory, failures, meta)
    png = report.chart(out / f"{stem}.png", args.scenarios, args.servers, summary,
                       f"req/s, median of {args.rounds} round(s) of {args.duration:g} s")
    (out / f"{stem}.md").write_text(text + (f"\n![req/s]({stem}.png)\n" if png else ""))
    (out / f"{stem}.json").write_text(json.dumps(
        {"command": command, "meta": meta, "failures": failures, "memory": memory,
         "cells": [{k: v for k, v in c.items() if k != "raw"} for c in cells]}, indent=1))
    print(text)
    print(f"report: {out / (stem + '.md')}, chart: {png or 'not drawn (no matplotlib)'}, "
          f"{elapsed:.0f} s")
    code = 0
    if "pyfpm" in args.servers and "php-fpm" in args.servers:
        for sc in args.scenarios:
            r = report.ratio(summary, sc.key, "php-fpm")
            print(f"pyfpm ÷ php-fpm, {sc.title}: " + ("n/a" if r is None else f"{r:.2f}×"))
            if args.floor is not None and (r is None or r < args.floor):
                print(f"compare: below the floor {args.floor:g}×", file=sys.stderr)
                code = 1
    return code


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not args.no_install:
        install(argv)
    if not shutil.which("wrk"):
        sys.exit("compare: wrk is not installed (scripts/install-bench-deps)")
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)  # also when started in the background (SIG_IGN)
    args.load = os.getloadavg()[0]
    started = time.monotonic()
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
    return write_report(args, argv, cells, memory, failures, time.monotonic() - started)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit("compare: interrupted; every server was stopped")
    except RuntimeError as e:  # nginx would not start, and the like: servers already stopped
        sys.exit(f"compare: {e}")
