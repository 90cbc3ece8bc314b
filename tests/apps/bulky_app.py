"""Test app that holds ~20 MB of Python objects built at import, as a large framework and its
app do (bench/test_preload_bench.py): 50,000 entries of a dict, each a key and a list of an
int, a str and a float, and 2,000 compiled functions. ``/`` answers how many there are.
"""

TABLE = {"key%06d" % i: [i, str(i) * 3, i / 7] for i in range(50_000)}

_namespace: dict = {}
exec("\n".join("def handler_%d(x):\n    return x + %d\n" % (i, i) for i in range(2000)),
     _namespace)
HANDLERS = [f for name, f in _namespace.items() if name.startswith("handler_")]


def app(environ, start_response):
    body = b"%d entries, %d handlers\n" % (len(TABLE), len(HANDLERS))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
