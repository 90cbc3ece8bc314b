"""Hostile peers against pyfpm behind nginx: how long a request through nginx takes while
each attack runs (loopback only, bounded in connections and seconds).

    python bench/attacks.py [--root DIR] [--workers 4] [--seconds 12] [--only NAME ...]

pyfpm (static, ``--workers``, hello world, the default timeouts) on a unix socket, nginx
(worker_processes 1, the test suite's config) in front. For each attack (tests/hostile.py,
aimed at pyfpm's socket) the script probes GET /hello through nginx every 0.1 s for
``--seconds`` (5 s timeout each) and prints the probes' median and max, how many failed,
and what became of the attackers' connections (closed by the server, answered). ``--root``
runs the pyfpm of another checkout (its extension built in place), for a before/after in
one run. The process raises its RLIMIT_NOFILE to the hard limit (pyfpm inherits it) to open
the 2,000 connections of a flood.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(REPO), help="the pyfpm checkout to run")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--only", nargs="*", default=None)
    args = p.parse_args(argv)
    sys.path[:0] = [args.root, str(REPO / "tests"), str(REPO / "tests" / "apps")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import conftest
    import harness
    import hostile

    scenarios = {
        "idle-flood": lambda a: hostile.IdleFlood(a, 2000),
        "slowloris": lambda a: hostile.Slowloris(a, 300, every=2.0),
        "half-records": lambda a: hostile.HalfRecords(a, 300),
        "slow-bodies": lambda a: hostile.SlowBody(a, 300, size=100_000, chunk=10, every=1.0),
        "oversize-values": lambda a: hostile.OversizeParams(a, 2000, params_max=1 << 20),
        "storm": lambda a: hostile.Storm(a, 5000),
    }
    names = args.only or list(scenarios) + ["idle-flood-rlimit128"]
    print("pyfpm from %s, %d workers, nginx in front; probes GET /hello every 0.1 s for %g s"
          % (args.root, args.workers, args.seconds))
    for name in names:
        extra = "rlimit_files = 128" if name == "idle-flood-rlimit128" else ""
        make = scenarios.get(name.replace("-rlimit128", ""))
        tmp = Path(tempfile.mkdtemp(prefix="pyfpm-attacks-"))
        config = conftest.pyfpm_config(tmp, app="hello_app:app", workers=args.workers,
                                       python_path=HERE, extra=extra)
        with harness.Server(config, tmp) as server:
            server.wait_idle(args.workers)
            front = _nginx(conftest, tmp, server.address)
            try:
                pids = set(server.children())
                attack = make(server.address)
                with attack:
                    times, failed = _probe(front, args.seconds)
                    attack.halt()
                    survived = _closed_by_server(attack.socks)
                deaths = len(pids - set(server.children()))
                crashed = server.log_text().count("worker failed")
            finally:
                harness.kill_group(front)
        print("%-22s probes %3d: median %7.1f ms, max %7.1f ms, failed %3d | attackers "
              "opened %5d, of those held closed by pyfpm %5d of %5d | workers replaced %d, "
              "tracebacks %d" % (name, len(times), statistics.median(times) * 1000 if times else 0,
                                 max(times) * 1000 if times else 0, failed, attack.opened,
                                 survived[0], survived[1], deaths, crashed))
    return 0


def _nginx(conftest, tmp, upstream):
    ntmp = tmp / "nginx"
    ntmp.mkdir()
    port = conftest.free_port()
    (ntmp / "nginx.conf").write_text(conftest.nginx_config(ntmp, port, upstream))
    proc = subprocess.Popen(["nginx", "-p", str(ntmp), "-e", str(ntmp / "error.log"), "-c",
                             str(ntmp / "nginx.conf")], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    conftest.wait_port(port, proc, 10, "nginx")
    proc.port = port
    return proc


def _probe(front, seconds):
    """Probe through nginx every 0.1 s: (seconds of each answered probe, failures)."""
    import http.client
    times, failed = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=5)
            conn.request("GET", "/hello")
            response = conn.getresponse()
            response.read()
            conn.close()
            if response.status == 200:
                times.append(time.monotonic() - started)
            else:
                failed += 1
        except OSError:
            failed += 1
        time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
    return times, failed


def _closed_by_server(socks):
    """(how many of the attack's connections the server closed, how many it holds)."""
    closed = 0
    for sock in socks:
        try:
            sock.setblocking(False)
            while sock.recv(65536):
                pass
            closed += 1  # EOF
        except BlockingIOError:
            pass
        except OSError:
            closed += 1  # reset
    return closed, len(socks)


if __name__ == "__main__":
    sys.exit(main())
