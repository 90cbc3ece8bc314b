"""Load a pool's WSGI application from ``app = module:callable``."""
from __future__ import annotations

import glob
import importlib
import os
import site
import sys


class AppLoadError(Exception):
    """The application named by a pool cannot be loaded; the message says why."""


def load(spec: str, chdir: str | None = None, python_path: tuple[str, ...] = (),
         virtualenv: str | None = None):
    """Import ``module:callable`` (``module`` alone means ``module:application``).

    ``chdir`` becomes the working directory first; sys.path then starts with ``python_path``,
    then the working directory, then the ``virtualenv``'s site-packages, so an app is found
    the same way whether the master was started from its directory or not, and the venv's
    packages win over the interpreter's own.
    """
    if chdir:
        os.chdir(chdir)
    if virtualenv:
        add_virtualenv(virtualenv)
    for entry in reversed(python_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(len(python_path), os.getcwd())
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:
        raise AppLoadError("cannot import module '%s' for app '%s': %s: %s"
                           % (module_name, spec, type(e).__name__, e)) from e
    for part in (attr or "application").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError("module '%s' has no attribute '%s' (app '%s')"
                               % (module_name, attr or "application", spec)) from None
    if not callable(obj):
        raise AppLoadError("app '%s' is a %s, not a WSGI callable" % (spec, type(obj).__name__))
    return obj


def add_virtualenv(venv: str) -> None:
    """Put ``venv``'s site-packages, and what its .pth files add, in front of sys.path.

    Only a venv made for this interpreter's X.Y can work (compiled modules and bytecode are
    per version); another one is an AppLoadError naming both versions.
    """
    here = "%d.%d" % sys.version_info[:2]
    if not os.path.isdir(venv):
        raise AppLoadError("virtualenv '%s' is not a directory" % venv)
    packages = os.path.join(venv, "lib", "python" + here, "site-packages")
    if not os.path.isdir(packages):
        found = sorted(os.path.basename(os.path.dirname(p))[len("python"):]
                       for p in glob.glob(os.path.join(glob.escape(venv), "lib", "python*",
                                                       "site-packages")))
        if found:
            raise AppLoadError("virtualenv '%s' was made for Python %s, but pyfpm runs Python "
                               "%s (%s); recreate it with python%s -m venv, or run pyfpm with "
                               "Python %s" % (venv, " and ".join(found), here, sys.executable,
                                              here, found[0]))
        raise AppLoadError("virtualenv '%s' has no lib/python%s/site-packages directory; is it "
                           "a virtualenv?" % (venv, here))
    before = list(sys.path)
    site.addsitedir(packages)  # appends the directory and runs its .pth files
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + [p for p in sys.path if p not in added]
