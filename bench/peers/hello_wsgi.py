"""The WSGI app every Python server runs in bench/compare.py (pyfpm, uWSGI, flup, gunicorn,
Granian): hello world for GET, 100 KiB for a path ending in /big, hello world after 1.5 s for
a path ending in /slow, the body's length for POST (read whole, as PHP-FPM's hello.php reads
php://input). The path is REQUEST_URI, which nginx sends to every FastCGI server; the HTTP
servers (gunicorn, Granian) have none and give the path in PATH_INFO."""

import time

HELLO = b"Hello world\n"
BIG = b"a" * 102400
SLOW_S = 1.5  # the slow request of the slow-in-flight scenarios (hello.php sleeps as long)


def app(environ, start_response):
    path = environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
    if environ["REQUEST_METHOD"] == "POST":
        body = b"%d" % len(environ["wsgi.input"].read())
    elif path.endswith("/big"):
        body = BIG
    else:
        if path.endswith("/slow"):
            time.sleep(SLOW_S)
        body = HELLO
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
