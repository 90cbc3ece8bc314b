"""Test WSGI app for faults: each route breaks something a real app may break (its worker,
its memory, its environ), so that the tests can check that nothing else goes with it.

Routes dispatch on PATH_INFO; every one answers with the serving worker's pid.
"""

import json
import os
import signal
import sys
import threading
import time
from urllib.parse import parse_qs

_HELD = []


def _query(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _reply(start_response, data):
    body = json.dumps({"pid": os.getpid(), **data}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def pid_route(environ, start_response):
    return _reply(start_response, {})


def slow_route(environ, start_response):
    time.sleep(float(_query(environ).get("s", "0.2")))
    return _reply(start_response, {})


def mangle_route(environ, start_response):
    """A middleware's bug: environ values that are no longer strings once the app returns."""
    environ.pop("REQUEST_URI", None)
    environ["PATH_INFO"] = None
    return _reply(start_response, {})


def segfault_route(environ, start_response):
    """Die the way a broken C extension does: SIGSEGV, no response."""
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(5)


def exit_route(environ, start_response):
    """A library that ends the process behind the app's back."""
    os._exit(3)


def leak_route(environ, start_response):
    """Keep ?mb= MiB alive in this worker, touched so that it counts in RSS."""
    block = bytearray(int(_query(environ).get("mb", "1")) << 20)
    block[::4096] = b"x" * len(block[::4096])
    _HELD.append(block)
    return _reply(start_response, {"held_mb": sum(map(len, _HELD)) >> 20})


def fds_route(environ, start_response):
    """Take every descriptor this worker has free for ?s= seconds, from a thread (a leaking
    library's burst of open files): meanwhile its accept() fails with EMFILE."""
    seconds = float(_query(environ).get("s", "1"))

    def hold():
        taken = []
        try:
            while True:
                taken.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            time.sleep(seconds)
        finally:
            for fd in taken:
                os.close(fd)

    threading.Thread(target=hold, daemon=True).start()
    return _reply(start_response, {})


def log_route(environ, start_response):
    """A line for each of the app's outputs: wsgi.errors, sys.stderr, sys.stdout."""
    environ["wsgi.errors"].write("a line on wsgi.errors\n")
    print("a line on stderr", file=sys.stderr, flush=True)
    print("a line on stdout", flush=True)
    return _reply(start_response, {})


ROUTES = {"/log": log_route, "/pid": pid_route, "/slow": slow_route, "/mangle": mangle_route,
          "/segfault": segfault_route, "/exit": exit_route, "/leak": leak_route,
          "/fds": fds_route}


def app(environ, start_response):
    route = ROUTES.get(environ.get("PATH_INFO", ""), pid_route)
    return route(environ, start_response)
