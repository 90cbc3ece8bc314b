"""Test app for the isolation of pools: what a pool's own code can reach from a request.

``/whoami``           JSON: pid, session, uid
``/kill?pid=N&sig=S`` try os.kill(N, S): ``sent``, or the errno's name
``/forge?dev=D&ino=I`` look through every descriptor 0..1023 for the file (D, I), and write
                      a forged master line into each one found, then truncate it: JSON, the
                      descriptors found and what happened
``/say?text=T``       write T into every log a worker may: its own lines (an exception),
                      wsgi.errors, sys.stderr, print(); then answer
``/applog?text=T``    write T to the file opened at import (``ISOLATION_APP_LOG``, as a
                      logging handler made at import would): what a preloaded app keeps

It imports only modules a pyfpm worker already holds, so it loads where the pool's user cannot
read this interpreter's standard library.
"""
import errno
import json
import os
import sys

FORGED = b"[21-Nov-2026 10:00:00] NOTICE: fpm is running, pid 1\n"

_APP_LOG = (open(os.environ["ISOLATION_APP_LOG"], "a", buffering=1)
            if os.environ.get("ISOLATION_APP_LOG") else None)


def _query(environ):
    pairs = (kv.split("=", 1) for kv in environ.get("QUERY_STRING", "").split("&") if "=" in kv)
    return {k: _unquote(v) for k, v in pairs}


def _unquote(text):
    """%XX and + of a query string (urllib.parse may not be loaded in the worker)."""
    out, i = bytearray(), 0
    raw = text.replace("+", " ").encode("latin-1")
    while i < len(raw):
        if raw[i] == 0x25 and i + 2 < len(raw):
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8")


def _forge(dev, ino):
    found, done = [], []
    for fd in range(1024):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) != (dev, ino):
            continue
        found.append(fd)
        for what, act in (("write", lambda: os.write(fd, FORGED)),
                          ("truncate", lambda: os.ftruncate(fd, 0))):
            try:
                act()
                done.append("%s %d" % (what, fd))
            except OSError as e:
                done.append("%s %d: %s" % (what, fd, errno.errorcode[e.errno]))
    return {"found": found, "done": done}


def app(environ, start_response):
    path, q = environ["PATH_INFO"], _query(environ)
    if path == "/whoami":
        body = json.dumps({"pid": os.getpid(), "sid": os.getsid(0), "uid": os.getuid()})
    elif path == "/kill":
        try:
            os.kill(int(q["pid"]), int(q["sig"]))
            body = "sent"
        except OSError as e:
            body = errno.errorcode[e.errno]
    elif path == "/forge":
        body = json.dumps(_forge(int(q["dev"]), int(q["ino"])))
    elif path == "/say":
        text = q["text"]
        environ["wsgi.errors"].write(text + "\n")
        print(text, file=sys.stderr)
        print(text)
        raise ValueError(text)
    elif path == "/applog":
        _APP_LOG.write(q["text"] + "\n")
        body = "written"
    else:
        body = "isolation_app"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
