"""The WSGI app every Python server runs in bench/compare.py (pyfpm, uWSGI, flup): hello world
for GET, 100 KiB for a path ending in /big, the body's length for POST (read whole, as PHP-FPM's
hello.php reads php://input). The path is REQUEST_URI, which nginx sends to every server."""

HELLO = b"Hello world\n"
BIG = b"a" * 102400


def app(environ, start_response):
    if environ["REQUEST_METHOD"] == "POST":
        body = b"%d" % len(environ["wsgi.input"].read())
    elif environ.get("REQUEST_URI", "").endswith("/big"):
        body = BIG
    else:
        body = HELLO
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
