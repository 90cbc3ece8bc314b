"""Status page latency while every worker of the pool is busy: the pool's 2 workers sit in
slow requests, and the status is asked for on pm.status_listen (the hidden <pool>_status
pool), the way a monitoring scraper asks a saturated pool. Prints median and p99 over
STATUS_REQUESTS requests, each on a new connection as nginx or a scraper would make."""

import json
import statistics
import threading
import time

from fpm import client
from tests.conftest import pyfpm_config
from tests.harness import Server

STATUS_REQUESTS = 500

CONFIG = pyfpm_config(listen="{sock}", mode="",
                      extra="pm.status_path = /status\npm.status_listen = {tmp}/status.sock")


def occupy(address):
    """Keep a worker in a request until the server is stopped under it."""
    try:
        client.request(address, "/slow?s=30", timeout=60)
    except (OSError, client.FastCGIError):
        pass


def test_status_latency_with_every_worker_busy(tmp_path):
    server = Server(CONFIG, tmp_path).start()
    status = str(tmp_path / "status.sock")
    try:
        server.wait_idle(2)
        busy = [threading.Thread(target=occupy, args=(server.address,), daemon=True)
                for _ in range(2)]
        for thread in busy:
            thread.start()
        deadline = time.monotonic() + 5
        while json.loads(client.request(status, "/status?json").body)["active processes"] < 2:
            assert time.monotonic() < deadline
        times = []
        for _ in range(STATUS_REQUESTS):
            started = time.perf_counter()
            page = client.request(status, "/status?json&full")
            times.append(time.perf_counter() - started)
            assert page.status == 200 and json.loads(page.body)["active processes"] == 2
        times.sort()
        median = statistics.median(times) * 1000
        p99 = times[int(len(times) * 0.99) - 1] * 1000
        print("\nstatus over pm.status_listen with 2/2 workers busy, %d requests: "
              "median %.2f ms, p99 %.2f ms, max %.2f ms"
              % (STATUS_REQUESTS, median, p99, times[-1] * 1000))
    finally:
        server.stop()
