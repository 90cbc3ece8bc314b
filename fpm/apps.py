"""Load a pool's WSGI application from ``app = module:callable``."""
from __future__ import annotations

import importlib
import os
import sys


class AppLoadError(Exception):
    """The application named by a pool cannot be loaded; the message says why."""


def load(spec: str, chdir: str | None = None, python_path: tuple[str, ...] = ()):
    """Import ``module:callable`` (``module`` alone means ``module:application``).

    ``chdir`` becomes the working directory first and ``python_path`` goes in front of
    sys.path, so an app is found the same way whether the master was started from its
    directory or not.
    """
    if chdir:
        os.chdir(chdir)
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
