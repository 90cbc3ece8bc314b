"""Compile fpm/_proto.pyx with clang, AddressSanitizer, UBSan and libFuzzer's coverage
hooks into a directory of its own (never the tree's fpm/*.so); print the module's path.

    python tests/fuzz/build.py [OUT_DIR]     # default: build/fuzz in the checkout

The module needs atheris's asan_with_fuzzer.so preloaded (tests/fuzz/run.py does that).
It is rebuilt only when _proto.pyx or _proto.pxd is newer than it.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "fpm" / "_proto.pyx", ROOT / "fpm" / "_proto.pxd"]
# -fno-sanitize-recover: undefined behaviour aborts like a memory error, so libFuzzer keeps
# the input; -O1 with frame pointers: reports with whole stacks at a tolerable speed.
# pointer-overflow is left out: Cython's argument parsing computes NULL + 0 on every call
# without arguments (args + nargs), which it reports; a pointer that overruns is
# AddressSanitizer's to catch where it is used.
FLAGS = ["-shared", "-fPIC", "-g", "-O1", "-fno-omit-frame-pointer",
         "-fsanitize=address,undefined,fuzzer-no-link", "-fno-sanitize=pointer-overflow",
         "-fno-sanitize-recover=all"]


def module_path(out: Path) -> Path:
    return out / ("_proto" + sysconfig.get_config_var("EXT_SUFFIX"))


def build(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    target = module_path(out)
    if target.exists() and all(target.stat().st_mtime >= s.stat().st_mtime for s in SOURCES):
        return target
    clang = shutil.which("clang")
    if clang is None:
        sys.exit("build.py: clang not found (apt-get install clang; scripts/fuzz does)")
    c_file = out / "_proto.c"
    # Cython names the module fpm._proto from the package around the .pyx.
    subprocess.run([sys.executable, "-m", "cython", "-3", str(SOURCES[0]), "-o", str(c_file)],
                   check=True)
    include = sysconfig.get_paths()["include"]
    subprocess.run([clang, *FLAGS, "-I", include, str(c_file), "-o", str(target) + ".tmp"],
                   check=True)
    os.replace(str(target) + ".tmp", target)
    return target


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "build" / "fuzz"))
