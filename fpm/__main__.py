"""``python -m fpm`` and the ``pyfpm`` command (its console script calls ``main``).

Before anything else is imported, the directory Python put first on sys.path goes: the
console script's own (a virtualenv's bin/) or, for ``-m``, the directory pyfpm was started
from. A ``json.py`` there would otherwise stand in for the standard library's, in the master
(as root) and in every worker it forks. (``python -P`` and ``-I`` add none.)
"""
import os
import sys


def _drop_implicit_path() -> None:
    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        # Started, or reloaded, in a directory since removed (a deploy pruned old
        # releases): "/" is the working directory there is.
        cwd = "/"
        os.chdir(cwd)
    if sys.flags.safe_path or not sys.path:
        return
    first = sys.path[0]
    implicit = {cwd, os.path.dirname(os.path.realpath(sys.argv[0] or "."))}
    if first == "" or os.path.realpath(first) in {os.path.realpath(p) for p in implicit}:
        del sys.path[0]


_drop_implicit_path()

from fpm.cli import main  # noqa: E402  (after the clean-up above, on purpose)

if __name__ == "__main__":
    sys.exit(main())
