"""Another patch release of the CPython running the tests, with its headers: what an
fpm._pystack built elsewhere (a cached wheel, a Python upgraded under an install) was built
for. Debian's /usr/bin/python3.11 next to a pyenv 3.11.x, for one."""
import glob
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "fpm" / "_pystack.c"
_PROBE = ("import json, platform, sys, sysconfig; p = sysconfig.get_paths(); "
          "print(json.dumps([sys.hexversion, platform.python_version(), p['include'], "
          "p['platinclude']]))")


@dataclass(frozen=True)
class Python:
    executable: str
    hexversion: int
    version: str  # "3.11.2"
    include_dirs: tuple[str, ...]


def find() -> Python:
    """One, or skip: no package manager installs a second patch release of one minor, so
    this is not a peer install-test-deps could provide."""
    pattern = "python%d.%d" % sys.version_info[:2]
    candidates = {*glob.glob("/usr/bin/" + pattern), *glob.glob("/usr/local/bin/" + pattern),
                  *glob.glob(os.path.expanduser("~/.pyenv/versions/*/bin/") + pattern)}
    for executable in sorted(candidates):
        try:
            done = subprocess.run([executable, "-c", _PROBE], capture_output=True, text=True,
                                  timeout=10)
        except OSError:
            continue
        if done.returncode != 0:
            continue
        hexversion, version, include, platinclude = json.loads(done.stdout)
        if hexversion != sys.hexversion and os.path.exists(os.path.join(include, "Python.h")):
            return Python(executable, hexversion, version,
                          tuple(dict.fromkeys((include, platinclude))))
    pytest.skip(f"no other patch release of {pattern} with its headers on this machine")


def compile_pystack(python: Python, target: Path) -> None:
    """fpm/_pystack.c compiled with `python`'s headers into the extension file `target`."""
    includes = [f"-I{d}" for d in python.include_dirs]
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", *includes, str(SOURCE), "-o", str(target)],
                   check=True, capture_output=True, timeout=120)
