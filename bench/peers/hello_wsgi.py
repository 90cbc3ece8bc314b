"""The WSGI app every Python server runs in bench/compare.py (pyfpm, uWSGI, flup): hello world
for GET, the body's length for POST (read whole, as PHP-FPM's hello.php reads php://input)."""

HELLO = b"Hello world\n"


def app(environ, start_response):
    if environ["REQUEST_METHOD"] == "POST":
        body = b"%d" % len(environ["wsgi.input"].read())
    else:
        body = HELLO
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
