"""flup's prefork FastCGI server (fcgi_fork) with exactly 2 children, serving a WSGI app.
Usage: python flup_server.py ADDRESS [MODULE:CALLABLE [DIRECTORY [MAX_REQUESTS]]]
(ADDRESS a unix socket path or HOST:PORT; default hello_wsgi:app from this directory, no
request limit). SIGHUP makes flup's run() stop and return True: as flup's documentation has
it, the server is then run again (its reload; the socket is closed and bound anew)."""

import importlib
import os
import sys

from flup.server.fcgi_fork import WSGIServer


def bind_address(text):
    if text.startswith("/"):
        return text
    host, _, port = text.rpartition(":")
    return host, int(port)


if __name__ == "__main__":
    address, target, directory, max_requests = (sys.argv[1:] + [None] * 3)[:4]
    sys.path.insert(0, directory or os.path.dirname(os.path.abspath(__file__)))
    module, _, name = (target or "hello_wsgi:app").partition(":")
    app = getattr(importlib.import_module(module), name)
    while WSGIServer(app, bindAddress=bind_address(address), umask=0, minSpare=2, maxSpare=2,
                     maxChildren=2, maxRequests=int(max_requests or 0)).run():
        pass
