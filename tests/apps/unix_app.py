"""Test app for fpm.unix: reports, from inside a request, what the worker process is.

``/`` answers ``repr()`` of a dict (read it with ast.literal_eval): ids, groups, cwd,
environment, rlimits, nice value, dumpable flag, the (st_dev, st_ino) of ``/`` (the chroot's
when chrooted). ``/import`` with a module name as query string imports it now, in the worker.

It imports only modules a pyfpm worker already holds, so it loads where the pool's user cannot
read this interpreter's standard library, and in a chroot that lacks it.
"""
import ctypes
import importlib
import os
import resource

PR_GET_DUMPABLE = 3
_libc = ctypes.CDLL(None, use_errno=True)


def state():
    root = os.stat("/")
    return {
        "pid": os.getpid(),
        "uid": os.getuid(), "euid": os.geteuid(),
        "gid": os.getgid(), "egid": os.getegid(),
        "groups": sorted(os.getgroups()),
        "cwd": os.getcwd(),
        "environ": dict(os.environ),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "core": list(resource.getrlimit(resource.RLIMIT_CORE)),
        "nice": os.nice(0),
        "dumpable": _libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
        "root": [root.st_dev, root.st_ino],
    }


def import_now(name):
    try:
        module = importlib.import_module(name)
    except Exception as e:
        return {"module": name, "error": "%s: %s" % (type(e).__name__, e)}
    return {"module": name, "file": getattr(module, "__file__", None)}


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/import":
        result = import_now(environ.get("QUERY_STRING", ""))
    else:
        result = state()
    body = repr(result).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
