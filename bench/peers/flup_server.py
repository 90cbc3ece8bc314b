"""flup's prefork FastCGI server (fcgi_fork) with exactly 2 children, serving hello_wsgi.app.
Usage: python flup_server.py ADDRESS  (a unix socket path or HOST:PORT)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from flup.server.fcgi_fork import WSGIServer  # noqa: E402

from hello_wsgi import app  # noqa: E402


def bind_address(text):
    if text.startswith("/"):
        return text
    host, _, port = text.rpartition(":")
    return host, int(port)


if __name__ == "__main__":
    WSGIServer(app, bindAddress=bind_address(sys.argv[1]), umask=0,
               minSpare=2, maxSpare=2, maxChildren=2, maxRequests=0).run()
