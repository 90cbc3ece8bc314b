"""The load benchmark's app: the hello world every peer in reference/baseline.md served."""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "12")])
    return [b"Hello world\n"]
