"""setup.py's build of fpm._pystack, with the real setuptools and compiler: a build never packs
a stack reader compiled earlier (for what may have been another patch release), and never
compiles one against another minor version's headers."""
import importlib.util
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest
from setuptools import Distribution
from setuptools.errors import CompileError

import otherpython

ROOT = Path(__file__).resolve().parents[2]


def setup_module_():
    """setup.py as a module: importing it builds nothing."""
    spec = importlib.util.spec_from_file_location("pyfpm_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_pystack(tmp_path, include_dirs=()) -> Path:
    """setup.py's build_ext, for fpm._pystack alone, into tmp_path/lib; its file."""
    setup = setup_module_()
    dist = Distribution({"ext_modules": [setup.pystack_extension()],
                         "cmdclass": {"build_ext": setup.BuildExt}})
    command = dist.get_command_obj("build_ext")
    command.build_lib = str(tmp_path / "lib")
    command.build_temp = str(tmp_path / "temp")
    command.include_dirs = list(include_dirs)
    command.ensure_finalized()
    command.run()
    return Path(command.get_ext_fullpath(setup.PYSTACK))


def built_for(path: Path) -> int:
    """BUILT_FOR of the extension at path, loaded in a fresh interpreter."""
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('fpm._pystack', {str(path)!r})\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "print(module.BUILT_FOR)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=True)
    return int(done.stdout)


def test_an_earlier_build_of_the_reader_is_never_reused(tmp_path, monkeypatch):
    """setuptools skips an extension whose built file is newer than its sources, and the
    file's name is the same for every patch release: the reader is compiled anyway."""
    monkeypatch.chdir(ROOT)
    target = build_pystack(tmp_path)
    target.write_bytes(b"built for another interpreter")
    later = time.time() + 3600  # newer than every source, as the previous build's output is
    os.utime(target, (later, later))
    assert build_pystack(tmp_path) == target
    assert target.stat().st_mtime < later
    assert built_for(target) == sys.hexversion


def test_the_reader_compiles_against_another_patch_releases_headers(tmp_path, monkeypatch):
    """Any patch release of the minor lays its frames out alike (and the self-test checks
    it where the reader runs)."""
    other = otherpython.find()
    monkeypatch.chdir(ROOT)
    assert built_for(build_pystack(tmp_path, include_dirs=other.include_dirs)) == other.hexversion


def test_the_reader_does_not_compile_against_another_minors_headers(tmp_path, monkeypatch,
                                                                     capfd):
    """As if another minor version ran the build: these headers are not its layout."""
    monkeypatch.chdir(ROOT)
    this = platform.python_version()
    other_minor = sys.hexversion + (1 << 16)
    monkeypatch.setattr(sys, "hexversion", other_minor)
    monkeypatch.setattr(sys, "version", "3.%d.0 (elsewhere)" % (other_minor >> 16 & 0xFF))
    with pytest.raises(CompileError):
        build_pystack(tmp_path)
    assert (f"these are the headers of Python {this}, but Python "
            f"3.{other_minor >> 16 & 0xFF}.0 is building it") in capfd.readouterr().err
