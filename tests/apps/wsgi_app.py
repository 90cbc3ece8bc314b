"""Test WSGI app: one route per server behaviour the integration tests check.

`app` is wrapped in wsgiref.validate so that every response also checks the server's side of
PEP 3333; `raw_app` is the same app unwrapped (the validator hides wsgi.file_wrapper objects).
Routes dispatch on PATH_INFO, so they work under any mount prefix.
"""

import hashlib
import json
import os
import signal
import tempfile
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator

BLOCK = 65536


def stream_block(i):
    """Block i of /stream and /file: distinct per index, so lost or repeated blocks show."""
    return (i.to_bytes(4, "big") + bytes(range(256)) * (BLOCK // 256))[:BLOCK]


def stream_bytes(size):
    """The first `size` bytes of the stream /stream and /file send."""
    blocks = b"".join(stream_block(i) for i in range(-(-size // BLOCK)))
    return blocks[:size]


def _query(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _reply(start_response, body, ctype="application/json", status="200 OK", headers=()):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body))), *headers])
    return [body]


def _read_body(stream, mode, size):
    """Read all of wsgi.input the way `mode` says (the validator allows read(n) only)."""
    if mode == "readline":
        parts = []
        while line := stream.readline(size) if size else stream.readline():
            parts.append(line)
        return b"".join(parts)
    if mode == "readlines":
        return b"".join(stream.readlines())
    if mode == "iter":
        return b"".join(stream)
    parts = []
    while chunk := stream.read(size or BLOCK):
        parts.append(chunk)
    return b"".join(parts)


def environ_route(environ, start_response):
    """The request environ: every str value, plus the wsgi.* flags."""
    out = {k: v for k, v in environ.items() if isinstance(v, str)}
    for key in ("wsgi.version", "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once",
                "wsgi.input_terminated"):
        if key in environ:
            out[key] = environ[key]
    out["has_file_wrapper"] = "wsgi.file_wrapper" in environ
    return _reply(start_response, out)


def echo_route(environ, start_response):
    q = _query(environ)
    body = _read_body(environ["wsgi.input"], q.get("mode", "read"), int(q.get("size", 0)))
    return _reply(start_response, body, "application/octet-stream")


def sha256_route(environ, start_response):
    """Digest of the body read in 64 KiB pieces to the end, whatever CONTENT_LENGTH says."""
    digest, length = hashlib.sha256(), 0
    while chunk := environ["wsgi.input"].read(BLOCK):
        digest.update(chunk)
        length += len(chunk)
    return _reply(start_response, {"length": length, "sha256": digest.hexdigest(),
                                   "content_length": environ.get("CONTENT_LENGTH", "")})


def stream_route(environ, start_response):
    """N MiB in 64 KiB blocks from a generator, optionally pausing after each block: the
    server must send each block as it is produced."""
    q = _query(environ)
    size, pause = int(float(q.get("mib", "1")) * 1024 * 1024), float(q.get("pause", "0"))
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def blocks():
        for i in range(-(-size // BLOCK)):
            yield stream_block(i)[:size - i * BLOCK]
            if pause:
                time.sleep(pause)
    return blocks()


def write_route(environ, start_response):
    """The legacy write() callable, followed by a returned iterable."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written-1;")
    write(b"written-2;")
    return [b"returned-1;", b"returned-2"]


def file_route(environ, start_response):
    """A file sent through wsgi.file_wrapper."""
    size = int(_query(environ).get("size", str(BLOCK)))
    f = tempfile.TemporaryFile()
    f.write(stream_bytes(size))
    f.seek(0)
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(size))])
    return environ["wsgi.file_wrapper"](f, BLOCK)


def raise_before_route(environ, start_response):
    raise RuntimeError("boom before headers")


def raise_after_route(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])

    def body():
        yield b"partial;"
        raise RuntimeError("boom after headers")
    return body()


def cookies_route(environ, start_response):
    """Two Set-Cookie headers out; the Cookie header that came in, back."""
    return _reply(start_response, {"cookie": environ.get("HTTP_COOKIE", "")},
                  headers=[("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; HttpOnly")])


def stderr_route(environ, start_response):
    environ["wsgi.errors"].write("app message on wsgi.errors\n")
    environ["wsgi.errors"].flush()
    return _reply(start_response, b"logged", "text/plain")


def slow_route(environ, start_response):
    began = time.time()
    time.sleep(float(_query(environ).get("s", "0.2")))
    return _reply(start_response, {"pid": os.getpid(), "began": began})


def crash_route(environ, start_response):
    """Die the way a broken C extension does: SIGSEGV, no response."""
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(5)


_HELD = []


def grow_route(environ, start_response):
    """Keep ?mb= MiB alive in this worker, touched so that it counts in RSS."""
    _HELD.append(bytearray(int(_query(environ).get("mb", "1")) << 20))
    for block in _HELD[-1:]:
        block[::4096] = b"x" * len(block[::4096])
    return _reply(start_response, {"pid": os.getpid(), "held_mb": sum(map(len, _HELD)) >> 20})


def host_route(environ, start_response):
    """Which host of a fleet answered (its pool's env[FLEET_HOST]), and which worker."""
    return _reply(start_response, {"host": os.environ.get("FLEET_HOST"), "pid": os.getpid()})


class ListResponse:
    """As Django's HttpResponse: iterable over a list of chunks, closed once sent."""

    def __init__(self, chunks, close_seconds):
        self.chunks = chunks
        self.close_seconds = close_seconds

    def __iter__(self):
        return iter(self.chunks)

    def close(self):
        time.sleep(self.close_seconds)


def list_response_route(environ, start_response):
    """Two chunks over a list; close() takes ?close= s (0)."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ListResponse([b"one ", b"two"], float(_query(environ).get("close", "0")))


def hello_route(environ, start_response):
    return _reply(start_response, b"hello world", "text/plain")


def status_route(environ, start_response):
    """An arbitrary status line, e.g. /status?code=404%20Not%20Found."""
    return _reply(start_response, b"", "text/plain", status=_query(environ).get("code", "204 No Content"))


ROUTES = {
    "/environ": environ_route, "/echo": echo_route, "/sha256": sha256_route,
    "/stream": stream_route, "/write": write_route, "/file": file_route,
    "/raise-before": raise_before_route, "/raise-after": raise_after_route,
    "/cookies": cookies_route, "/stderr": stderr_route, "/slow": slow_route,
    "/hello": hello_route, "/host": host_route, "/status": status_route, "/crash": crash_route,
    "/grow": grow_route, "/list-response": list_response_route,
}


def raw_app(environ, start_response):
    route = ROUTES.get(environ.get("PATH_INFO", ""))
    if route is None:
        # Unrouted paths still show how the server split the URL.
        return _reply(start_response, {k: environ.get(k) for k in
                                       ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING")},
                      status="404 Not Found")
    return route(environ, start_response)


app = validator(raw_app)
