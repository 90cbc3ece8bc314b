"""bench/soak.py's verdict: a series is flat unless its fitted line rises past its bound over
the measured part of the run (the first fifth is warm-up). No server is started."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
_PATH = list(sys.path)  # bench/ on the path for this import only (see test_compare.py)
sys.path.insert(0, str(BENCH))
import soak  # noqa: E402
sys.path[:] = _PATH


def samples(n=20, **series):
    """n samples 15 s apart; each series a function of the sample's index."""
    base = {"master_rss_kib": 25000, "workers_rss_kib": 40000, "master_fds": 9,
            "workers_fds": 20, "p99_ms": 5.0}
    return [{"t": 15.0 * i, **{k: series.get(k, lambda i, v=v: v)(i) for k, v in base.items()}}
            for i in range(n)]


def test_fit_growth_is_the_rise_of_the_least_squares_line():
    assert soak.fit_growth([0, 1, 2, 3], [10, 12, 14, 16]) == 6
    assert soak.fit_growth([0, 1, 2, 3], [5, 5, 5, 5]) == 0
    assert abs(soak.fit_growth([0, 1, 2, 3], [0, 2, 0, 2]) - 1.2) < 1e-9  # noise: a small rise


def test_flat_series_pass_and_a_leak_fails():
    assert all(ok for _, _, ok in soak.verdict(samples()).values())
    leaking = soak.verdict(samples(master_rss_kib=lambda i: 25000 + 300 * i))
    assert not leaking["master_rss_kib"][2]
    assert all(ok for key, (_, _, ok) in leaking.items() if key != "master_rss_kib")


def test_one_fd_more_per_sample_is_a_leak_a_blip_is_not():
    assert not soak.verdict(samples(workers_fds=lambda i: 20 + i))["workers_fds"][2]
    assert soak.verdict(samples(workers_fds=lambda i: 21 if i == 10 else 20))["workers_fds"][2]


def test_the_warm_up_is_not_measured():
    # The master's memory settles in the first fifth: not a leak.
    assert soak.verdict(samples(master_rss_kib=lambda i: 20000 + 1000 * min(i, 3)))["master_rss_kib"][2]
