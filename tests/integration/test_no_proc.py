"""pm.max_memory where /proc cannot be seen (issue 14, item 7): a chroot without /proc, a
master without /proc. No worker may fail for it; what pyfpm measures then is said at start."""

import json
import re
import shutil
import sys

import pytest

import harness
from tests.conftest import APPS, make_jail, pyfpm_config

# The master (and so each worker before it chroots) in a mount namespace of its own,
# without /proc: a container that does not mount it.
WITHOUT_PROC = ["unshare", "--mount", "--", "sh", "-c", 'umount -l /proc && exec "$@"', "sh",
                sys.executable, "-m", "fpm"]
MEASURES_PEAK = ("WARNING: [pool www] pm.max_memory: /proc/self/statm cannot be read (no "
                 "/proc); the workers compare their peak RSS (getrusage) with it instead of "
                 "their current RSS")


def grow_past_the_limit(server):
    """A worker that grows past pm.max_memory answers, then is recycled and replaced."""
    (worker,) = server.wait_idle(1)
    body = json.loads(server.request("/leak?mb=8").body)
    assert body == {"pid": worker, "held_mb": 8}
    mark = server.mark()
    assert json.loads(server.request("/leak?mb=64").body)["pid"] == worker
    server.wait_log(r"NOTICE: \[pool www\] child %d: RSS \d+\.\d MiB exceeds pm.max_memory "
                    r"\(48\.0 MiB\) after request 2; recycling$" % worker, since=mark)
    (fresh,) = server.wait_idle(1, timeout=10)
    assert fresh != worker
    assert json.loads(server.request("/pid").body)["pid"] == fresh


def test_a_chroot_without_proc_measures_rss_as_any_pool(tmp_path):
    jail = make_jail(tmp_path / "jail")
    (jail / "app").mkdir()
    shutil.copy(APPS / "fault_app.py", jail / "app")
    config = pyfpm_config(tmp_path, app="fault_app:app", workers=1, python_path="/app",
                          extra="pm.max_memory = 48M\nchroot = %s\nchdir = /app" % jail)
    with harness.Server(config, tmp_path) as server:
        grow_past_the_limit(server)
        assert "/proc" not in server.log_text()
        assert "exited with code 70" not in server.log_text()


@pytest.fixture
def unshare():
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = harness.subprocess.run(WITHOUT_PROC[:-3] + ["true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot make a mount namespace without /proc here: %s" % probe.stderr)


def test_a_master_without_proc_says_it_recycles_on_the_peak_rss(tmp_path, unshare):
    config = pyfpm_config(tmp_path, app="fault_app:app", workers=1, extra="pm.max_memory = 48M")
    conf = tmp_path / "test.conf"
    conf.write_text(config)
    test = harness.subprocess.run(WITHOUT_PROC + ["-R", "-t", "-y", str(conf)],
                                  capture_output=True, text=True, timeout=60,
                                  env=harness.fpm_env())
    assert test.returncode == 0, test.stderr
    assert MEASURES_PEAK in test.stderr
    with harness.Server(config, tmp_path, command=WITHOUT_PROC) as server:
        assert re.search(re.escape(MEASURES_PEAK) + "$", server.log_text(), re.M)
        grow_past_the_limit(server)
        assert "exited with code 70" not in server.log_text()
