"""Load a pool's WSGI application from ``app = module:callable``."""
from __future__ import annotations

import glob
import importlib
import os
import site
import sys
import sysconfig
from dataclasses import dataclass


class AppLoadError(Exception):
    """The application named by a pool cannot be loaded; the message says why."""


# Modules from here are the same whichever pool imports them; any other module may differ
# from pool to pool (python_path, virtualenv, chdir) under the same name.
_STDLIB = tuple({os.path.join(sysconfig.get_path(k), "") for k in ("stdlib", "platstdlib")})
_SITE = tuple({os.path.join(sysconfig.get_path(k), "") for k in ("purelib", "platlib")})


@dataclass(frozen=True)
class Preloaded:
    """A pool's app imported by the master (``preload``), with the sys.path and the modules
    (all but the standard library's) that import gave: the pool's own, set aside for its
    workers, so that no other pool's import finds them."""
    app: object
    path: tuple[str, ...]
    modules: dict

    def install(self):
        """In a worker of the pool: its sys.path and modules back in place; the app."""
        sys.path[:] = self.path
        sys.modules.update(self.modules)
        return self.app


def preload(spec: str, chdir: str | None = None, python_path: tuple[str, ...] = (),
            virtualenv: str | None = None) -> Preloaded:
    """load() in the master, which keeps its sys.path, working directory and modules (but
    the standard library's it imported) as they were, for the next pool and its workers."""
    path, known = list(sys.path), set(sys.modules)
    try:
        cwd = os.getcwd()
    except FileNotFoundError:
        cwd = None  # started in a directory since removed: there is nowhere to go back to
    try:
        app = load(spec, chdir, python_path, virtualenv)
        own = {name: module for name, module in sys.modules.items()
               if name not in known and not _standard(module)}
        return Preloaded(app, tuple(sys.path), own)
    finally:
        sys.path[:] = path
        for name in [n for n, m in sys.modules.items() if n not in known and not _standard(m)]:
            del sys.modules[name]
        if cwd is not None:
            os.chdir(cwd)


def _standard(module) -> bool:
    """Built in, or from the standard library (not its site-packages)."""
    files = [getattr(module, "__file__", None), *(getattr(module, "__path__", None) or ())]
    return all(f.startswith(_STDLIB) and not f.startswith(_SITE) for f in files if f)


def load(spec: str, chdir: str | None = None, python_path: tuple[str, ...] = (),
         virtualenv: str | None = None):
    """Import ``module:callable`` (``module`` alone means ``module:application``) with the
    pool's search path (``prepare``)."""
    prepare(chdir, python_path, virtualenv)
    module_name, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except (Exception, SystemExit) as e:  # sys.exit("DATABASE_URL is not set") too
        hint = ""
        if isinstance(e, ModuleNotFoundError) and e.name == module_name.partition(".")[0]:
            hint = ("; it is looked for in the standard library, site-packages, python_path "
                    "and chdir, never in the directory pyfpm was started from")
        raise AppLoadError("cannot import module '%s' for app '%s': %s: %s%s"
                           % (module_name, spec, type(e).__name__, one_line(e), hint)) from e
    for part in (attr or "application").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppLoadError("module '%s' has no attribute '%s' (app '%s')"
                               % (module_name, attr or "application", spec)) from None
    if not callable(obj):
        raise AppLoadError("app '%s' is a %s, not a WSGI callable" % (spec, type(obj).__name__))
    return obj


def one_line(error: BaseException) -> str:
    """An exception's message on one line: -t's warning and the status page's app error
    are one line each (the worker's log has the traceback)."""
    return " | ".join(filter(None, (line.strip() for line in str(error).splitlines())))


def prepare(chdir: str | None, python_path: tuple[str, ...], virtualenv: str | None) -> None:
    """Where a pool's code is found: ``chdir`` becomes the working directory, and sys.path
    becomes ``search_path``'s."""
    if chdir:
        try:
            os.chdir(chdir)
        except OSError as e:
            raise AppLoadError("cannot enter chdir '%s': %s" % (chdir, e.strerror)) from e
    venv = virtualenv_entries(virtualenv) if virtualenv else []
    sys.path[:] = search_path(sys.path, venv, python_path, chdir)


def search_path(base: list[str], venv: list[str], python_path: tuple[str, ...],
                chdir: str | None) -> list[str]:
    """A pool's sys.path: ``base`` (the master's, which holds no script or start directory)
    with the standard library first, the ``venv``'s entries right after it (ahead of the
    interpreter's site-packages, as an activated virtualenv), then ``python_path``, then
    ``chdir``. So no module of an app's directory can stand in for a standard or installed
    one, and the directory pyfpm was started from is searched only when a pool names it.
    """
    base = [p for p in base if p]  # "" is the working directory, whatever it is then
    last_stdlib = max((i for i, p in enumerate(base) if _is_stdlib_entry(p)), default=-1)
    path = base[:last_stdlib + 1] + venv + base[last_stdlib + 1:]
    for entry in (*python_path, *((chdir,) if chdir else ())):
        if entry not in path:
            path.append(entry)
    return path


def _is_stdlib_entry(entry: str) -> bool:
    """The standard library's directories and zip (python311.zip), not its site-packages."""
    full = os.path.join(entry, "")
    return (full.startswith(_STDLIB) and not full.startswith(_SITE)) or entry == _STDLIB_ZIP


_STDLIB_ZIP = os.path.join(sys.base_prefix, sys.platlibdir,
                           "python%d%d.zip" % sys.version_info[:2])


def virtualenv_entries(venv: str) -> list[str]:
    """``venv``'s site-packages and what its .pth files add, for sys.path.

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
    try:
        site.addsitedir(packages)  # appends the directory and runs its .pth files
        return [p for p in sys.path if p not in before]
    finally:
        sys.path[:] = before
