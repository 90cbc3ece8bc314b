"""One fuzz target under atheris (libFuzzer), over the sanitized build of fpm._proto.

    python tests/fuzz/fuzz.py TARGET MODULE [libFuzzer arguments]

TARGET is ``codec`` (codec_check) or ``request`` (request_check); MODULE the .so that
build.py made. tests/fuzz/run.py starts this with atheris's ASan runtime preloaded.
"""

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]


def load_proto(path):
    """Make ``path`` the fpm._proto every later import gets."""
    import fpm
    spec = importlib.util.spec_from_file_location("fpm._proto", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fpm._proto"] = module
    spec.loader.exec_module(module)
    fpm._proto = module
    return module


def main():
    target, module = sys.argv[1], sys.argv[2]
    proto = load_proto(module)
    import atheris
    check = __import__(target + "_check").check
    assert sys.modules["fpm._proto"] is proto
    # libFuzzer reads its own flags from argv, and runs argv[0] through the shell to start
    # its helper processes (-merge=1, -fork): the whole command that runs this target.
    command = " ".join([sys.executable, str(Path(__file__).resolve()), target, module])
    atheris.Setup([command] + sys.argv[3:], check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
