"""nginx → pyfpm under wrk, as reference/baseline.md measured PHP-FPM, uWSGI and flup:
hello world, 2 workers, nginx worker_processes 1, `wrk -t1 -cN -dD --latency`. Prints
req/s and latency percentiles per transport × keep_conn; compare ratios, not absolutes."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import nginx, pyfpm, pyfpm_config  # noqa: F401  (fixtures reused)
from tests.harness import children_of as children

BENCH = Path(__file__).resolve().parent
DURATION = os.environ.get("BENCH_DURATION", "5s")


def cpu_ns(pids):
    """Nanoseconds these processes have run on a CPU (the scheduler's count, not ticks)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total


def wrk(port, connections):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{DURATION}", "--latency",
                          f"http://127.0.0.1:{port}/hello"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    total = int(re.search(r"(\d+) requests in", out)[1])
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    return rate, total, pct, errors[0] if errors else "", out


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk not installed (apt-get install wrk)")
@pytest.mark.parametrize("connections", [16, 64])
@pytest.mark.parametrize("keep_conn", [False, True], ids=["keep_conn_off", "keep_conn_on"])
@pytest.mark.parametrize("listen", ["unix", "tcp"])
def test_load(pyfpm, nginx, report, tmp_path, listen, keep_conn, connections):
    config = pyfpm_config(tmp_path, listen=listen, app="hello_app:app", workers=2,
                          python_path=BENCH)
    server = pyfpm(config)
    front = nginx(server.address, keep_conn=keep_conn)
    assert front.get("/hello").body == b"Hello world\n"
    # CPU per request of pyfpm (master + workers) and of nginx, as baseline.md reports it.
    pyfpm_pids, nginx_pids = [server.pid, *server.children()], [front.proc.pid, *children(front.proc.pid)]
    before = cpu_ns(pyfpm_pids), cpu_ns(nginx_pids)
    rate, total, pct, errors, out = wrk(front.port, connections)
    backend, proxy = ((cpu_ns(p) - b) / total / 1000 for p, b in zip((pyfpm_pids, nginx_pids), before))
    report(f"nginx → pyfpm: wrk -t1 -d{DURATION}, hello world, 2 workers",
           f"{rate:9,.0f} req/s  p50 {pct.get('50')}  p99 {pct.get('99')}  "
           f"CPU/request pyfpm {backend:.1f} µs, nginx {proxy:.1f} µs  {errors}")
    assert not errors, out
    assert "upstream timed out" not in front.error_log()

