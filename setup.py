"""Build the fpm._proto and fpm._pystack extensions; all other metadata lives in pyproject.toml."""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "fpm._proto",
        ["fpm/_proto.pyx"],
        extra_compile_args=["-O2"],
    ),
    # The slowlog's stack reader: plain C against the running interpreter's internal headers
    # (it defines Py_BUILD_CORE_MODULE itself), so its struct offsets are this build's own.
    Extension(
        "fpm._pystack",
        ["fpm/_pystack.c"],
        extra_compile_args=["-O2"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3"},
    ),
)
