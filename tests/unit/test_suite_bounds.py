"""The test command's own guarantees: every test is bounded, and its packages live in the
checkout's virtualenv, never in the interpreter the command was started with."""
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_has_a_time_bound():
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert 0 < options["timeout"] <= 300
    assert options["timeout_method"] == "signal"  # the test fails; the suite goes on


def test_a_hanging_test_fails_with_its_traceback_and_the_suite_goes_on(tmp_path):
    (tmp_path / "test_hang.py").write_text(
        "import time\n\ndef test_hangs():\n    time.sleep(600)\n\ndef test_after():\n    pass\n")
    started = time.monotonic()
    # The project's own settings (-c), with the bound shortened to keep this test short.
    done = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"),
                           "--rootdir", str(tmp_path), "-p", "no:cacheprovider",
                           "-o", "timeout=2", str(tmp_path / "test_hang.py")],
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    assert done.returncode == 1, done.stdout
    assert "Timeout" in done.stdout and "time.sleep(600)" in done.stdout  # the traceback
    assert "1 failed, 1 passed" in done.stdout


def test_the_suite_runs_in_the_checkouts_own_virtualenv():
    # scripts/install-test-deps makes .venv and prints its python; scripts/test runs with it.
    assert sys.prefix != sys.base_prefix, "not in a virtualenv: %s" % sys.executable
    assert Path(sys.prefix).resolve() == (ROOT / ".venv").resolve()
