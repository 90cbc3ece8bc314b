"""Test WSGI app for request bodies and fpm.finish_request().

/digest   reads wsgi.input in 64 KiB blocks; answers its sha256, size, where it was held
          ("memory" or the spool file's /proc/self/fd link), CONTENT_LENGTH and the worker's
          peak RSS (VmHWM) after reading it
/peak     the worker's peak RSS only
/finish?s=S&mark=PATH&how=environ|import
          answers "done early", calls finish_request, then works S seconds and writes PATH
/finish-too-early   calls finish_request before start_response
"""

import hashlib
import json
import os
import time
from urllib.parse import parse_qs

import fpm


def _peak_rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _json(start_response, data):
    body = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def _digest(environ):
    stream = environ["wsgi.input"]
    h = hashlib.sha256()
    size = 0
    while True:
        block = stream.read(65536)
        if not block:
            break
        h.update(block)
        size += len(block)
    fileno = getattr(stream, "fileno", None)
    held = os.readlink("/proc/self/fd/%d" % fileno()) if fileno else "memory"
    return {"sha256": h.hexdigest(), "bytes": size, "input": held,
            "content_length": environ.get("CONTENT_LENGTH", ""),
            "peak_rss_kib": _peak_rss_kib()}


def _finish(environ, start_response):
    q = {k: v[-1] for k, v in parse_qs(environ["QUERY_STRING"]).items()}
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"done early\n")
    finish = environ["fpm.finish_request"] if q.get("how") == "environ" else fpm.finish_request
    first, second = finish(), finish()
    time.sleep(float(q.get("s", "1")))
    with open(q["mark"], "w") as f:
        f.write("finished=%s again=%s\n" % (first, second))
    return [b"this is never delivered\n"]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/digest":
        return _json(start_response, _digest(environ))
    if path == "/peak":
        return _json(start_response, {"peak_rss_kib": _peak_rss_kib()})
    if path == "/finish":
        return _finish(environ, start_response)
    if path == "/finish-too-early":
        fpm.finish_request()
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such route\n"]
