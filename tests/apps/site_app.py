"""Test app behind the shipped nginx configuration (tests/integration/test_shipped.py).

Any path is answered, so that a request through any location shows it reached the pool:
``site: METHOD URI, body N bytes`` (the body read from wsgi.input, whichever way nginx
passed it). A path ending in ``/stream`` answers ``?n=`` lines, ``line 0`` ..., one every
``?pause=`` seconds, with ``X-Accel-Buffering: no`` when ``?accel=no``.
"""
import time
from urllib.parse import parse_qs


def stream(query, start_response):
    n, pause = int(query.get("n", "3")), float(query.get("pause", "0.5"))
    headers = [("Content-Type", "text/plain")]
    if query.get("accel"):
        headers.append(("X-Accel-Buffering", query["accel"]))
    start_response("200 OK", headers)
    for i in range(n):
        if i:
            time.sleep(pause)
        yield b"line %d\n" % i


def app(environ, start_response):
    query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if environ.get("PATH_INFO", "").endswith("/stream"):
        return stream(query, start_response)
    size = len(environ["wsgi.input"].read())
    body = b"site: %s %s, body %d bytes" % (environ["REQUEST_METHOD"].encode(),
                                          environ.get("REQUEST_URI", "").encode("latin-1"), size)
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
