"""Compile the compiled core (setup.py's CORE: fpm/_codec.pyx ... fpm/_worker.pyx) with
clang, AddressSanitizer, UBSan and libFuzzer's coverage hooks into a directory of its own
(never the tree's fpm/*.so); print that directory.

    python tests/fuzz/build.py [OUT_DIR]     # default: build/fuzz in the checkout

The modules need atheris's asan_with_fuzzer.so preloaded (tests/fuzz/run.py does that), and
are loaded in CORE order as fpm.<name> (fuzz.py). Each is rebuilt only when a .pyx or .pxd
of the core is newer than it.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from setup import CORE  # noqa: E402 - the repository root is on the path first

SOURCES = sorted((ROOT / "fpm").glob("_*.pyx")) + sorted((ROOT / "fpm").glob("_*.pxd"))
# -fno-sanitize-recover: undefined behaviour aborts like a memory error, so libFuzzer keeps
# the input; -O1 with frame pointers: reports with whole stacks at a tolerable speed.
# pointer-overflow is left out: Cython's argument parsing computes NULL + 0 on every call
# without arguments (args + nargs), which it reports; a pointer that overruns is
# AddressSanitizer's to catch where it is used.
FLAGS = ["-shared", "-fPIC", "-g", "-O1", "-fno-omit-frame-pointer",
         "-fsanitize=address,undefined,fuzzer-no-link", "-fno-sanitize=pointer-overflow",
         "-fno-sanitize-recover=all"]


def module_path(out: Path, name: str) -> Path:
    return out / (name + sysconfig.get_config_var("EXT_SUFFIX"))


def build(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    newest = max(s.stat().st_mtime for s in SOURCES)
    for name in CORE:
        target = module_path(out, name)
        if target.exists() and target.stat().st_mtime >= newest:
            continue
        clang = shutil.which("clang")
        if clang is None:
            sys.exit("build.py: clang not found (apt-get install clang; scripts/fuzz does)")
        c_file = out / (name + ".c")
        # Cython names the module fpm.<name> from the package around the .pyx, and finds
        # the .pxd files it cimports there.
        subprocess.run([sys.executable, "-m", "cython", "-3", "-I", str(ROOT),
                        str(ROOT / "fpm" / (name + ".pyx")), "-o", str(c_file)], check=True)
        include = sysconfig.get_paths()["include"]
        subprocess.run([clang, *FLAGS, "-I", include, str(c_file), "-o", str(target) + ".tmp"],
                       check=True)
        os.replace(str(target) + ".tmp", target)
    return out


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "fuzz"))
