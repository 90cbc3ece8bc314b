"""Packaging (issue 16): the sdist carries what its own tests and benchmarks need, and the
wheel scripts/build-wheels makes for this interpreter is a stripped manylinux wheel that
installs with no compiler reachable and serves the demo page.

One run of the script builds both (the wheel from the sdist) with PyPI's setuptools and
Cython (pyproject's build-system, in pip's isolated build environment), from a copy of the
checkout: the tree itself is never built in."""
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

import harness
from fpm import __version__
from fpm import client
from tests.conftest import DEFAULT_ADDRESS, find_program, require_default_address

ROOT = Path(__file__).resolve().parents[2]
TAG = "cp%d%d" % sys.version_info[:2]
DEMO = "%s:%d" % DEFAULT_ADDRESS
# What the sdist must hold whatever git says (its own tests read them).
ALWAYS = ["LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in",
          "fpm/_pystack.c", "fpm/_worker.pyx", "fpm/default.conf",
          "tests/apps/scripts/readme.txt", "bench/peers/nginx.conf"]

pytestmark = pytest.mark.timeout(1500)  # an isolated build, the wheel's with -O2 C


def git_checkout() -> bool:
    return shutil.which("git") is not None and subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--is-inside-work-tree"],
        capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The folder scripts/build-wheels --here fills for this interpreter: its one wheel and
    the sdist it was built from (`python -m build` in pip's isolated environment)."""
    for tool in ("bash", "strip", "readelf", "cc"):
        find_program(tool)
    out = tmp_path_factory.mktemp("wheels")
    build = subprocess.run([str(ROOT / "scripts/build-wheels"), "--here", "--out", str(out)],
                           env={**os.environ, "PYTHON": sys.executable}, capture_output=True,
                           text=True, timeout=1200)
    assert build.returncode == 0, build.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def sdist(built) -> set[str]:
    """The names in the sdist, without their top folder."""
    (archive,) = built.glob("pyfpm-*.tar.gz")
    with tarfile.open(archive) as tar:
        return {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}


def test_sdist_carries_the_license_sources_and_data(sdist):
    assert [name for name in ALWAYS if name not in sdist] == []
    # Build output and generated C never go in: the sdist's build regenerates the C with
    # the Cython it requires.
    assert [name for name in sdist if name.endswith(".so") or "__pycache__" in name
            or re.fullmatch(r"fpm/_(codec|board|passing|worker)\.c", name)] == []


def test_sdist_carries_every_file_git_tracks_in_tests_bench_scripts_conf(sdist):
    if not git_checkout():
        pytest.skip("not a git checkout (an unpacked sdist or a copy): no list to compare with")
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "tests", "bench",
                              "scripts", "conf"], capture_output=True, check=True,
                             timeout=60).stdout.decode().split("\0")
    tracked = [name for name in tracked if name and (ROOT / name).is_file()]
    assert len(tracked) > 100
    missing = [name for name in tracked if name not in sdist]
    assert not missing, "%d files missing, e.g. %s" % (len(missing), missing[:20])


# --- the wheel -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wheel(built) -> Path:
    wheels = list(built.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_is_manylinux_for_this_interpreter(wheel):
    # name-version-python-abi-platform.whl; auditwheel lists each platform tag, dot-separated
    name, version, python, abi, platforms = wheel.name[:-len(".whl")].split("-")
    assert (name, version, python, abi) == ("pyfpm", __version__, TAG, TAG)
    assert platforms.split(".") and all(re.fullmatch(r"manylinux(_\d+_\d+|\d+)_x86_64", p)
                                        for p in platforms.split(".")), platforms
    assert any(p.startswith("manylinux_") for p in platforms.split("."))


def debug_sections(path: Path) -> list[str]:
    """The section names of an ELF file that hold debug information (.debug_*, .zdebug_*)."""
    out = subprocess.run([find_program("readelf"), "-S", "-W", str(path)], capture_output=True,
                         text=True, check=True, timeout=30).stdout
    names = re.findall(r"^\s*\[\s*\d+\]\s+(\S+)", out, re.MULTILINE)
    assert ".text" in names, out  # the parse found the section table
    return [n for n in names if n.startswith((".debug", ".zdebug"))]


def test_wheel_extensions_are_built_for_it_and_stripped(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as z:
        sos = [n for n in z.namelist() if n.endswith(".so")]
        assert sorted(re.sub(r"\..*", "", n) for n in sos) == [
            "fpm/_board", "fpm/_codec", "fpm/_kept", "fpm/_passing", "fpm/_pystack",
            "fpm/_worker"]
        for name in sos:
            assert ".cpython-%s-x86_64-linux-gnu.so" % TAG[2:] in name, name
            path = Path(z.extract(name, tmp_path))
            assert debug_sections(path) == [], name
        # The wheel carries compiled modules, not their sources.
        assert [n for n in z.namelist() if n.endswith((".pyx", ".c"))] == []


def test_wheel_metadata_has_license_and_this_version_classifier(wheel):
    with zipfile.ZipFile(wheel) as z:
        info = "pyfpm-%s.dist-info/" % __version__
        metadata = z.read(info + "METADATA").decode()
        assert "MIT License" in z.read(info + "licenses/LICENSE").decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "Classifier: Programming Language :: Python :: %d.%d" % sys.version_info[:2] \
        in metadata.splitlines()
    assert "Requires-Python: >=3.11" in metadata.splitlines()


def test_wheel_installs_without_a_compiler_and_serves(wheel, tmp_path):
    require_default_address()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True,
                   timeout=120)
    # pip gets a PATH with nothing on it, and CC pointing at false: were pyfpm (or one of its
    # dependencies) to be compiled, it would fail, not quietly build from source.
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    pip_env = {**env, "PATH": str(empty), "CC": "/bin/false", "CXX": "/bin/false",
               "PIP_ROOT_USER_ACTION": "ignore"}
    started = time.monotonic()
    install = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q",
                              "--only-binary", ":all:", str(wheel)], env=pip_env,
                             capture_output=True, text=True, timeout=300)
    installed = time.monotonic()
    assert install.returncode == 0, install.stdout + install.stderr

    # The installed console script, its embedded configuration (no -y) and demo app; not
    # the checkout's fpm (no PYTHONPATH, and it runs in tmp).
    log = tmp_path / "pyfpm.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(venv / "bin/pyfpm")], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=tmp_path, env=env,
                                start_new_session=True)
    try:
        response, deadline = None, time.monotonic() + 30
        while response is None:
            assert proc.poll() is None, "pyfpm exited with %s:\n%s" % (proc.returncode,
                                                                       log.read_text())
            assert time.monotonic() < deadline, "no response after 30 s:\n" + log.read_text()
            try:
                response = client.request(DEMO, "/wheel", timeout=5)
            except OSError:
                time.sleep(0.01)
        answered = time.monotonic()
        assert response.status == 200, response
        body = response.body.decode()
        assert "<h1>pyfpm %s</h1>" % __version__ in body
        assert str(venv / "bin/python") in body, "answered by another pyfpm than the wheel's"
        proc.send_signal(signal.SIGQUIT)  # graceful stop, as PHP-FPM's
        assert proc.wait(10) == 0, log.read_text()
    finally:
        # Each worker leads a session of its own, outside the master's group.
        workers = harness.children_of(proc.pid) if proc.poll() is None else []
        harness.kill_group(proc)
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # The slowlog's stack reader, as stripped: built for this minor, and its layout checks out.
    reader = subprocess.run([str(venv / "bin/python"), "-c",
                             "import sys, fpm._pystack as p; "
                             "print(p.BUILT_FOR >> 16 == sys.hexversion >> 16, p.SUPPORTED, "
                             "p.UNSUPPORTED, p.__file__.startswith(sys.prefix))"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert reader.stdout.split() == ["True", "1", "None", "True"], reader.stdout + reader.stderr

    message = ("test_wheel: %s %d bytes; pip install %.2f s, install to first response %.2f s"
               % (wheel.name, wheel.stat().st_size, installed - started, answered - started))
    print(message)  # pytest -s shows it
