"""One fuzz target under atheris (libFuzzer), over the sanitized build of the compiled core.

    python tests/fuzz/fuzz.py TARGET MODULES [libFuzzer arguments]

TARGET is ``codec`` (codec_check) or ``request`` (request_check); MODULES the directory of
.so files that build.py made. tests/fuzz/run.py starts this with atheris's ASan runtime
preloaded.
"""

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]


def load_core(directory):
    """Make the modules in ``directory`` the fpm.<name> of the core every later import (and
    cimport, which imports) gets; in CORE order, as each cimports those before it."""
    import build
    import fpm
    loaded = []
    for name in build.CORE:
        spec = importlib.util.spec_from_file_location("fpm." + name,
                                                      build.module_path(Path(directory), name))
        module = importlib.util.module_from_spec(spec)
        sys.modules["fpm." + name] = module
        spec.loader.exec_module(module)
        setattr(fpm, name, module)
        loaded.append(module)
    return loaded


def main():
    target, module = sys.argv[1], sys.argv[2]
    core = load_core(module)
    import atheris
    check = __import__(target + "_check").check
    assert all(sys.modules[m.__name__] is m for m in core)
    # libFuzzer reads its own flags from argv, and runs argv[0] through the shell to start
    # its helper processes (-merge=1, -fork): the whole command that runs this target.
    command = " ".join([sys.executable, str(Path(__file__).resolve()), target, module])
    atheris.Setup([command] + sys.argv[3:], check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
