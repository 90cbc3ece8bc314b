"""nginx → pyfpm under wrk, as reference/baseline.md measured PHP-FPM, uWSGI and flup:
hello world, 2 workers, nginx worker_processes 1, `wrk -t1 -cN -dD --latency`. Prints
req/s and latency percentiles per transport × keep_conn; compare ratios, not absolutes."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import nginx, pyfpm, pyfpm_config  # noqa: F401  (fixtures reused)
from tests.harness import children_of as children

from compare_measure import cpu_ns, parse_wrk  # bench/ is on sys.path: its conftest's folder

BENCH = Path(__file__).resolve().parent
DURATION = os.environ.get("BENCH_DURATION", "5s")


def wrk(port, connections):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{DURATION}", "--latency",
                          f"http://127.0.0.1:{port}/hello"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return parse_wrk(out), out


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
    got, out = wrk(front.port, connections)
    backend, proxy = ((cpu_ns(p) - b) / got["requests"] / 1000
                      for p, b in zip((pyfpm_pids, nginx_pids), before))
    report(f"nginx → pyfpm: wrk -t1 -d{DURATION}, hello world, 2 workers",
           f"{got['rate']:9,.0f} req/s  p50 {got['p50']} ms  p99 {got['p99']} ms  "
           f"CPU/request pyfpm {backend:.1f} µs, nginx {proxy:.1f} µs")
    assert not got["non2xx"] and not got["socket_errors"], out
    assert "upstream timed out" not in front.error_log()

