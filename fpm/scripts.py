"""Script mode: a pool without ``app`` runs the ``.py`` file each request names in
SCRIPT_FILENAME, as PHP-FPM runs ``.php`` files.

A script is a WSGI module: it defines ``application(environ, start_response)``. Plain
CGI-style scripts that print to stdout are not served: they read the request from os.environ
and sys.stdin and write to sys.stdout, process-global state a persistent worker would have to
swap for every request (and CPython 3.13 removed the ``cgi`` module). A script without a
callable ``application`` is answered 500 and the error log says how to wrap it.

What happens to a request, in PHP-FPM's order and words (php-fpm.md §8.1):

- SCRIPT_FILENAME (else PATH_TRANSLATED) names the file. As with PHP's cgi.fix_pathinfo=1,
  when it is no file, '/' components are taken off its end until a regular file is found;
  they become PATH_INFO, and SCRIPT_NAME loses them too (`locate`, `url_paths`). A `..`
  component, or nothing found, or a directory: ``404 File not found.`` and "Primary script
  unknown" to the web server (nginx logs it as ``FastCGI sent in stderr``).
- A file whose name does not end with one of ``security.limit_extensions``: ``403 Access
  denied.`` and PHP-FPM's NOTICE (this is what stops ``/uploads/x.jpg/y.py`` from running an
  upload); so is a file whose real path (a symbolic link's target) does not end with one:
  only a script the pool may run ever has its lines shown in a traceback. One that cannot be read: ``403`` (EACCES) or ``404 No input file specified.``, and
  ``Unable to open primary script: PATH (reason)``.
- A script that does not compile or whose import raises gives 500, with the traceback in the
  error log (the worker's handler of application errors writes it).

Compiled scripts are cached per worker, like opcache: by real path, with the file's mtime,
size and inode. ``script.revalidate_freq`` (seconds, 0 = every request) is how often a cached
request path is looked up on disk again; ``script.validate_timestamps = no`` then never
recompiles a cached script, even a changed one (a reload does). A deleted script gives 404 at
the next look-up either way. Both caches keep at most `CACHE_SIZE` entries, least recently
used first out, so a docroot with many files cannot grow a worker without limit.

Each script runs as its own module object, named ``pyfpm-script:/real/path.py``: in
sys.modules (dataclasses and typing look there) under a name no import statement can reach,
so it never shadows a real module. The script's directory is on sys.path (last) only while
its top-level code runs, so its sibling modules import from there (import them at the top, not
inside ``application``); those siblings are ordinary modules, shared by every script the
worker runs. The working directory is the pool's ``chdir``, whatever the script.
"""
from __future__ import annotations

import os
import stat
import sys
import time
import types
from collections import OrderedDict
from typing import Callable, NamedTuple

from fpm import apps

CACHE_SIZE = 1000
MODULE_PREFIX = "pyfpm-script:"
HTML = [("Content-Type", "text/html; charset=UTF-8")]


# --- deciding: pure functions ------------------------------------------------------------------

def locate(filename: str, stat_fn: Callable[[str], os.stat_result]):
    """PHP's cgi.fix_pathinfo=1: ``(script, tail, stat)`` for the regular file ``filename``
    names, or for its longest prefix ending before a '/' that is one (``tail`` is the rest,
    '/' first); None if there is none, or ``filename`` is not absolute or has a '..'
    component. ``stat_fn`` raises OSError as os.stat does."""
    if not filename.startswith("/") or "\0" in filename or ".." in filename.split("/"):
        return None
    cut = len(filename)
    if not filename.endswith("/"):
        try:
            st = stat_fn(filename)
        except OSError as e:
            if not isinstance(e, NotADirectoryError):
                return None  # ENOENT: every existing component is a directory, so no file
        else:
            return (filename, "", st) if stat.S_ISREG(st.st_mode) else None
    while True:
        cut = filename.rfind("/", 0, cut)
        if cut <= 0:
            return None
        try:
            st = stat_fn(filename[:cut])
        except NotADirectoryError:
            continue  # a file further up stands where a directory should be
        except OSError:
            return None
        return (filename[:cut], filename[cut:], st) if stat.S_ISREG(st.st_mode) else None


def url_paths(script_name: str, path_info: str, tail: str, script: str = "",
              document_root: str = "") -> tuple[str, str]:
    """SCRIPT_NAME and PATH_INFO per PEP 3333 once ``tail`` was taken off SCRIPT_FILENAME:
    it goes in front of PATH_INFO and off the end of SCRIPT_NAME (or, if SCRIPT_NAME does
    not end with it, SCRIPT_NAME is the script's path under DOCUMENT_ROOT). A SCRIPT_NAME
    ending in '/' (a directory's index script) gives that '/' to an empty PATH_INFO."""
    if tail:
        if script_name.endswith(tail):
            script_name = script_name[:-len(tail)]
        else:
            root = document_root.rstrip("/")
            if root and script.startswith(root + "/"):
                script_name = script[len(root):]
        path_info = tail + path_info
    if script_name.endswith("/") and not path_info:
        script_name, path_info = script_name[:-1], "/"
    return script_name, path_info


def allowed(script: str, extensions: tuple[str, ...]) -> bool:
    """security.limit_extensions: a suffix match; no extensions allow any file."""
    return not extensions or script.endswith(tuple(extensions))


def fs_path(environ_str: str) -> str:
    """An environ string (bytes as latin-1, PEP 3333) as the file system's str for the same
    bytes."""
    return os.fsdecode(environ_str.encode("latin-1", "surrogateescape"))


# --- the app -----------------------------------------------------------------------------------

class Refusal(NamedTuple):
    """A request answered without running a script; the message goes to the web server
    (FastCGI stderr), and to the error log at ``level`` when there is one."""
    status: str
    body: bytes
    message: str
    level: str | None = None


class Compiled(NamedTuple):
    ident: tuple  # (mtime_ns, size, inode) of the file compiled
    application: object  # None: the script defines no callable `application`
    module: str  # its sys.modules key


class Route(NamedTuple):
    script: str  # SCRIPT_FILENAME after fix_pathinfo, an environ string
    tail: str  # what fix_pathinfo took off its end
    key: str  # the script's real path, the key of its compiled code
    checked: float  # when the file was last looked up on disk (time.monotonic)


class ScriptError(Exception):
    """A script's top-level code called sys.exit()."""


def _ident(st: os.stat_result) -> tuple:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


NOT_FOUND = Refusal("404 Not Found", b"File not found.\n", "Primary script unknown")


class ScriptApp:
    """The WSGI app of a pool without ``app``: resolves, compiles (cached) and calls the
    script each request names."""

    def __init__(self, pool, log, clock=time.monotonic):
        """``log(level, text)`` is the worker's: it names the pool and the pid."""
        apps.prepare(pool.chdir, pool.python_path, pool.virtualenv)
        self.log = log
        self.clock = clock
        self.extensions = tuple(pool.security_limit_extensions)
        self.validate = pool.script_validate_timestamps
        self.freq = pool.script_revalidate_freq
        self.routes: OrderedDict[str, Route] = OrderedDict()  # by SCRIPT_FILENAME as sent
        self.code: OrderedDict[str, Compiled] = OrderedDict()  # by real path

    def __call__(self, environ, start_response):
        filename = environ.get("SCRIPT_FILENAME") or environ.get("PATH_TRANSLATED") or ""
        now = self.clock()
        route = self.routes.get(filename)
        compiled = None
        if route is not None and now - route.checked < self.freq:
            compiled = self.code.get(route.key)
        if compiled is None:
            found = self._resolve(filename, route, now)
            if isinstance(found, Refusal):
                return self._refuse(found, environ, start_response)
            route, compiled = found
        self.routes.move_to_end(filename)
        self.code.move_to_end(route.key)
        if compiled.application is None:
            self.log("error", "script '%s' defines no callable 'application': pyfpm serves WSGI "
                      "scripts, not CGI-style scripts that print to stdout; wrap the code in "
                      "def application(environ, start_response): ..." % route.key)
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"Internal Server Error\n"]
        # As sent: the worker does not fill them in for script mode (nginx without a split
        # sends SCRIPT_NAME = $fastcgi_script_name, the whole path, and no PATH_INFO).
        environ["SCRIPT_NAME"], environ["PATH_INFO"] = url_paths(
            environ.get("SCRIPT_NAME", ""), environ.get("PATH_INFO", ""), route.tail, route.script, environ.get("DOCUMENT_ROOT", ""))
        environ["SCRIPT_FILENAME"] = route.script
        return compiled.application(environ, start_response)

    # --- looking up and compiling ------------------------------------------------------------

    def _resolve(self, filename: str, old: Route | None, now: float):
        """(Route, Compiled) for ``filename``, looked up on disk now, or a Refusal."""
        found = locate(filename, lambda p: os.stat(fs_path(p)))
        if found is None:
            self.routes.pop(filename, None)
            return NOT_FOUND
        script, tail, st = found
        if not allowed(script, self.extensions):
            self.routes.pop(filename, None)
            return Refusal("403 Forbidden", b"Access denied.\n",
                           "Access to the script '%s' has been denied (see "
                           "security.limit_extensions)" % fs_path(script), "notice")
        compiled = None
        if old is not None and old.script == script:  # skip realpath()'s lstat per component
            compiled = self.code.get(old.key)
            key = old.key
        if compiled is None or (self.validate and compiled.ident != _ident(st)):
            key = os.path.realpath(fs_path(script))
            if not allowed(key, self.extensions):
                # A link named .py to any other file: running it would echo its lines into
                # the error log (a SyntaxError's, a traceback's), whatever the file holds.
                self.routes.pop(filename, None)
                return Refusal("403 Forbidden", b"Access denied.\n",
                               "Access to the script '%s' has been denied: it is a link to "
                               "'%s' (see security.limit_extensions)" % (fs_path(script), key),
                               "notice")
            compiled = self.code.get(key)
            if compiled is None or (self.validate and compiled.ident != _ident(st)):
                compiled = self._compile(key, fs_path(script))
                if isinstance(compiled, Refusal):
                    return compiled
                self._keep(self.code, key, compiled)
        route = Route(script, tail, key, now)
        self._keep(self.routes, filename, route)
        return route, compiled

    def _compile(self, path: str, shown: str):
        """Compile and run the script at real path ``path``; a Refusal if it cannot be
        opened. Syntax errors and exceptions of its top-level code propagate (500)."""
        try:
            f = open(path, "rb")
        except OSError as e:
            denied = isinstance(e, PermissionError)
            return Refusal("403 Forbidden" if denied else "404 Not Found",
                           b"Access denied.\n" if denied else b"No input file specified.\n",
                           "Unable to open primary script: %s (%s)" % (shown, e.strerror),
                           "error")
        with f:
            st = os.fstat(f.fileno())  # what was read, even if the file changed since stat()
            source = f.read()
        code = compile(source, path, "exec", dont_inherit=True)
        name = MODULE_PREFIX + path
        module = types.ModuleType(name)
        module.__file__ = path
        previous = sys.modules.get(name)  # the cached version's, put back if this one fails
        sys.modules[name] = module
        here = os.path.dirname(path)
        # For sibling imports, only while the top-level code runs, and last: a sibling never
        # stands in for a standard or installed module (apps.search_path).
        added = here not in sys.path
        if added:
            sys.path.append(here)
        try:
            exec(code, module.__dict__)
        except BaseException as e:
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
            if isinstance(e, SystemExit):  # not the worker's exit: a 500 for this request
                raise ScriptError("script '%s' called sys.exit(%r) while loading"
                                  % (path, e.code)) from e
            raise
        finally:
            if added and here in sys.path:
                sys.path.remove(here)
        application = getattr(module, "application", None)
        return Compiled(_ident(st), application if callable(application) else None, name)

    def _keep(self, cache: OrderedDict, key: str, value) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > CACHE_SIZE:
            _, gone = cache.popitem(last=False)
            if isinstance(gone, Compiled):
                sys.modules.pop(gone.module, None)

    # --- answering without a script -------------------------------------------------------------

    def _refuse(self, refusal: Refusal, environ, start_response):
        environ["wsgi.errors"].write(refusal.message + "\n")
        if refusal.level is not None:
            self.log(refusal.level, refusal.message)
        start_response(refusal.status, list(HTML))
        return [refusal.body]
