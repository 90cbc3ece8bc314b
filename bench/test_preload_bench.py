"""Memory per idle worker with and without ``preload``: the real master with a static pool of
4 workers serving an app that imports something sizeable (the Django test project, or
bulky_app's ~20 MB of Python objects built at import), started once with ``preload = no`` and
once with ``preload = yes``. Each worker's USS and PSS (psutil ``memory_full_info()``, from
/proc/PID/smaps) are read once the workers are idle, then again after REQUESTS requests
spread over them: a request's reference counting and the garbage collector write to the
objects they touch, which copies the shared pages back into the worker.

    python -m pytest bench/test_preload_bench.py -s

USS: memory only this process maps; PSS: that plus its share of pages mapped by several
processes. The pool's real cost is the total PSS of the master and its workers.
"""
import concurrent.futures
import statistics

import psutil
import pytest

from fpm import client
from tests.conftest import pyfpm_config
from tests.harness import Server

WORKERS = 4
REQUESTS = 2000
MiB = 2 ** 20

CONFIG = pyfpm_config(listen="{sock}", workers=WORKERS, mode="", app="{app}",
                      extra="preload = {preload}")

APPS_MEASURED = {"django": ("django_project.wsgi:application", "/"),
                 "bulky": ("bulky_app:app", "/")}


def memory(pid):
    info = psutil.Process(pid).memory_full_info()
    return info.uss, info.pss


def snapshot(server):
    """{"workers": [(uss, pss)] of the idle workers, "master": (uss, pss)}."""
    workers = server.wait_idle(WORKERS, timeout=30)
    return {"workers": [memory(pid) for pid in workers], "master": memory(server.pid)}


def load(server, uri):
    """REQUESTS requests over 8 concurrent connections, so every worker takes its share."""
    def some(n):
        for _ in range(n):
            assert client.request(server.values["sock"], uri).status == 200
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for done in [pool.submit(some, REQUESTS // 8) for _ in range(8)]:
            done.result()


def row(label, snap):
    uss = [w[0] for w in snap["workers"]]
    pss = [w[1] for w in snap["workers"]]
    total = sum(pss) + snap["master"][1]
    return ("| %-34s | %7.1f | %7.1f | %10.1f | %9.1f |"
            % (label, statistics.median(uss) / MiB, statistics.median(pss) / MiB,
               snap["master"][1] / MiB, total / MiB))


@pytest.mark.parametrize("name", list(APPS_MEASURED))
def test_preload_memory_per_idle_worker(tmp_path, name):
    spec, uri = APPS_MEASURED[name]
    lines = ["", "%s (%s), %d static workers; MiB" % (name, spec, WORKERS),
             "| %-34s | %7s | %7s | %10s | %9s |" % ("", "USS/wkr", "PSS/wkr", "master PSS",
                                                      "total PSS"),
             "|%s|%s|%s|%s|%s|" % ("-" * 36, "-" * 9, "-" * 9, "-" * 12, "-" * 11)]
    totals = {}
    for preload in ("no", "yes"):
        (tmp_path / preload).mkdir()
        with Server(CONFIG, tmp_path / preload, app=spec, preload=preload,
                    ready_timeout=30) as server:
            idle = snapshot(server)
            load(server, uri)
            used = snapshot(server)
            assert "exited" not in server.log_text()  # the same workers throughout
        for snap in (idle, used):
            assert all(uss > 0 and pss > 0 for uss, pss in snap["workers"] + [snap["master"]])
        totals[preload] = sum(w[1] for w in idle["workers"]) + idle["master"][1]
        lines.append(row("preload = %s, idle" % preload, idle))
        lines.append(row("preload = %s, after %d requests" % (preload, REQUESTS), used))
    lines.append("idle total PSS with preload: %.0f %% of without" % (100 * totals["yes"]
                                                                       / totals["no"]))
    print("\n".join(lines))
