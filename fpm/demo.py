"""The embedded default's app, in the spirit of phpinfo(): what runs, with which settings,
and what the web server sent. Every value is HTML-escaped; nothing from the request is
trusted."""
from __future__ import annotations

import dataclasses
import html
import os
import platform
import sys

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 60em; color: #222; }
h1 { background: #36a; color: #fff; padding: .4em .6em; }
h2 { border-bottom: 2px solid #36a; margin-top: 1.6em; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #bbb; padding: .2em .5em; text-align: left; vertical-align: top; }
th { background: #dde4f0; width: 30%; font-weight: normal; }
td { background: #f4f4f4; font-family: monospace; word-break: break-all; }
"""


def _text(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (tuple, list)):
        return "\n".join(_text(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return repr(value)


def _table(title: str, rows) -> str:
    cells = "".join(
        "<tr><th>%s</th><td>%s</td></tr>\n"
        % (html.escape(str(name)), html.escape(_text(value)).replace("\n", "<br>"))
        for name, value in rows)
    return "<h2>%s</h2>\n<table>\n%s</table>\n" % (html.escape(title), cells)


def _pool_rows(pool):
    if not dataclasses.is_dataclass(pool):
        return [("fpm.pool", "not provided by the server")]
    rows = []
    for f in dataclasses.fields(pool):
        value = getattr(pool, f.name)
        if f.name == "listen_mode" and isinstance(value, int):
            value = "%04o" % value
        rows.append((f.name, value))
    return rows


def render(environ) -> str:
    """The whole page for one request."""
    from fpm import __version__
    interpreter = [
        ("pyfpm", __version__),
        ("Python", sys.version),
        ("Implementation", platform.python_implementation()),
        ("Executable", sys.executable),
        ("Platform", platform.platform()),
        ("Worker pid", os.getpid()),
        ("Working directory", os.getcwd()),
        ("sys.path", sys.path),
    ]
    request = sorted(environ.items())
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            "<title>pyfpm %s</title><style>%s</style></head><body>\n"
            "<h1>pyfpm %s</h1>\n%s%s%s</body></html>\n"
            % (html.escape(__version__), _STYLE, html.escape(__version__),
               _table("Interpreter", interpreter),
               _table("Pool", _pool_rows(environ.get("fpm.pool"))),
               _table("Request environ", request)))


def app(environ, start_response):
    """The WSGI entry point (``fpm.demo:app``)."""
    body = render(environ).encode("utf-8")
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]
