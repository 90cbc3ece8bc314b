"""Build the compiled core (CORE) and fpm._pystack; all other metadata lives in pyproject.toml."""
import json
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PYSTACK = "fpm._pystack"
# The compiled core, one module per concern, in the order they cimport each other
# (fpm/_sys.pxd only declares system calls: nothing is built from it).
CORE = ("_codec", "_board", "_passing", "_kept", "_worker")


def pystack_extension():
    """The slowlog's stack reader: plain C against the running interpreter's internal headers
    (it defines Py_BUILD_CORE_MODULE itself), which give the layout of 3.11 and 3.12 (from
    3.13 on it reads the interpreter's own _Py_DebugOffsets). It is told which Python builds
    it, and fails to compile against another minor version's headers."""
    return Extension(
        PYSTACK,
        ["fpm/_pystack.c"],
        extra_compile_args=["-O2"],
        define_macros=[("FPM_BUILD_HEXVERSION", "0x%08x" % sys.hexversion),
                       ("FPM_BUILD_VERSION", json.dumps(sys.version.split()[0]))],
    )


class BuildExt(build_ext):
    """Always compiles and links fpm._pystack. setuptools skips an extension whose file in
    build/ is newer than its sources (and the linker an output newer than its objects), and
    that file's name (cpython-311-...) is the same for every patch release: after a Python
    upgrade, `pip install .` would pack the old interpreter's offsets. It is one small file."""

    def build_extension(self, ext):
        if ext.name != PYSTACK:
            return super().build_extension(ext)
        saved = self.force, self.compiler.force
        self.force = self.compiler.force = True
        try:
            return super().build_extension(ext)
        finally:
            self.force, self.compiler.force = saved


def main():
    from Cython.Build import cythonize  # a build requirement only (pyproject.toml)

    core = [Extension("fpm." + name, ["fpm/%s.pyx" % name], extra_compile_args=["-O2"])
            for name in CORE]
    setup(
        cmdclass={"build_ext": BuildExt},
        ext_modules=cythonize(core, compiler_directives={"language_level": "3"})
        + [pystack_extension()],
    )


# setuptools runs this file as __main__; tests import it to build fpm._pystack alone.
if __name__ == "__main__":
    main()
