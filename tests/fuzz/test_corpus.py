"""The fuzz corpus replayed with the tree's own compiled core on every test run: the captures
of real web servers and each input a fuzzer found worth keeping, regressions included,
go through the same checks as under the fuzzer (codec_check, request_check)."""

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import codec_check  # noqa: E402

CORPUS = HERE / "corpus"


def _inputs(*dirs):
    return sorted(p for d in dirs for p in (CORPUS / d).glob("*") if p.is_file())


@pytest.mark.parametrize("path", _inputs("seeds", "codec"), ids=lambda p: p.parent.name + "/" + p.name)
def test_codec_corpus(path):
    codec_check.check(path.read_bytes())


def test_seeds_are_the_five_servers():
    names = {p.name.split("-")[0] for p in _inputs("seeds")}
    assert names == {"nginx", "apache", "lighttpd", "caddy", "h2o"}


def test_request_corpus():
    """In a child process: request_check runs a worker loop, whose signal handlers and
    thread must not stay in the test process."""
    r = subprocess.run([sys.executable, str(HERE / "replay.py"), "request",
                        str(CORPUS / "seeds"), str(CORPUS / "request")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-8000:]
