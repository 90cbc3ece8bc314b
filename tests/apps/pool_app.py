"""Test app for several pools in one master (tests/integration/test_pools.py). Each pool gets
its own copy, under the same module name, so an answer says which copy the worker imported.

``/`` answers ``repr()`` of a dict (read it with ast.literal_eval): this module's file, sys.path,
the environ's ``fpm.pool`` name and ``wsgi.version``, and what the worker process is: ids,
groups, cwd, the (st_dev, st_ino) of ``/`` (the chroot's when chrooted), environment, rlimits,
nice value, dumpable flag. ``/sleep`` with seconds as query string sleeps first; ``/crash``
ends the worker at once, as a crashing C extension would.

It imports only modules a pyfpm worker already holds, so it loads where the pool's user cannot
read this interpreter's standard library, and in a chroot that lacks it.
"""
import ctypes
import os
import resource
import sys
import time

PR_GET_DUMPABLE = 3
_libc = ctypes.CDLL(None, use_errno=True)


def state(environ):
    pool = environ.get("fpm.pool")
    root = os.stat("/")
    return {
        "file": __file__,
        "path": list(sys.path),
        # A param must not replace the pool: then this shows what took its place.
        "pool": getattr(pool, "name", repr(pool)),
        "wsgi.version": environ.get("wsgi.version"),
        "pid": os.getpid(),
        "uid": os.getuid(), "gid": os.getgid(),
        "groups": sorted(os.getgroups()),
        "cwd": os.getcwd(),
        "root": [root.st_dev, root.st_ino],
        "environ": dict(os.environ),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "core": list(resource.getrlimit(resource.RLIMIT_CORE)),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "dumpable": _libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
    }


def app(environ, start_response):
    path = environ.get("PATH_INFO")
    if path == "/crash":
        os._exit(3)
    if path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or 0))
    body = repr(state(environ)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
