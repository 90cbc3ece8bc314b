"""The request path's fuzz check: any bytes sent to a worker's real serve() loop.

One fpm._worker.serve() runs for the whole process in a thread of its own, on a unix
socket, with a WSGI app that checks what it gets. ``check(data)`` connects, sends ``data``,
half-closes, and reads until the worker closes; it raises AssertionError when:
- the worker did not close the connection within TIMEOUT, or its loop died;
- what came back is not whole FastCGI records, or a response does not parse (one the web
  server aborted may be END_REQUEST alone);
- the app raised (its checks failed): environ keys and values must be str (latin-1),
  SCRIPT_NAME + PATH_INFO the path split at the mount, wsgi.input at most CONTENT_LENGTH;
- for the stream's first request, as the independent client (fpm.client) reads it,
  the app's environ differs from the params sent or wsgi.input from the body sent.
"""

import atexit
import os
import shutil
import socket
import tempfile
import threading
import time

from fpm import _worker, options
from fpm import client as c
from fpm.config import PoolConfig

import codec_check

TIMEOUT = 10.0
MOUNT = "/app"
BODY_BUFFER = 4096  # larger bodies are spooled to a file
BODY_MAX = 32768  # larger ones are answered 413
REFUSAL = b"HTTP/1.0 400 Bad Request\r\n"
BASE = {"wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.multithread": False,
        "wsgi.multiprocess": True, "wsgi.run_once": False, "fpm.pool": "fuzz"}
# Params the worker sets or moves itself: not compared one by one with what was sent.
DERIVED = {"SCRIPT_NAME", "PATH_INFO", "CONTENT_LENGTH", "CONTENT_TYPE", "HTTP_CONTENT_LENGTH",
           "HTTP_CONTENT_TYPE", "HTTP_PROXY"}


class _Loop:
    """The worker thread, the requests its app saw, and its log lines."""

    def __init__(self):
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A path, as pyfpm's unix listeners have (the worker names an abstract one's peer
        # with a str + bytes that raises).
        self.tmp = tempfile.mkdtemp(prefix="pyfpm-fuzz-sock-")
        atexit.register(shutil.rmtree, self.tmp, True)
        self.listener.bind(os.path.join(self.tmp, "fuzz.sock"))
        self.listener.listen(64)
        self.listener.setblocking(False)  # as the master leaves them: serve() never blocks in accept
        self.address = self.listener.getsockname()
        self.seen = []
        self.lines = []
        self.died = None
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        try:
            pool = PoolConfig(name="fuzz", listen=(self.tmp,), app="check", mount=MOUNT,
                              request_read_timeout=TIMEOUT, request_body_buffer_size=BODY_BUFFER,
                              request_body_max_size=BODY_MAX)
            _worker.serve([self.listener.fileno()], self.app, options.for_pool(
                pool, BASE, log=lambda level, text: self.lines.append((level, text))))
            self.died = "serve() returned"
        except BaseException as e:  # noqa: BLE001 - reported by the next check()
            self.died = "serve() raised %r" % (e,)

    def app(self, environ, start_response):
        body = environ["wsgi.input"].read()
        self.seen.append((dict(environ), body))
        for key, value in environ.items():
            if key.startswith(("wsgi.", "fpm.")):
                continue
            assert type(key) is str and type(value) is str, (key, value)
            key.encode("latin-1"), value.encode("latin-1")
        length = environ.get("CONTENT_LENGTH", "")
        if length:
            assert length.isdigit() and len(body) <= int(length), (length, len(body))
        script, info = environ.get("SCRIPT_NAME", ""), environ.get("PATH_INFO", "")
        if script == MOUNT:
            assert info == "" or info.startswith("/"), info
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d" % len(body)]


_loop = None


def _exchange(data):
    """Send ``data`` on a new connection, half-close, read until the worker closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        s.connect(_loop.address)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker dropped the connection before reading it all
        s.settimeout(0.05)  # short waits: a loop that died is seen at once
        out, deadline = bytearray(), time.monotonic() + TIMEOUT
        while _loop.died is None:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return bytes(out)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise AssertionError("the worker kept the connection open for %g s"
                                         % TIMEOUT) from None
                continue
            if not chunk:
                return bytes(out)
            out += chunk
        return bytes(out)


def check(data):
    """Raise on any defect the request path shows with ``data`` (see the module's docstring)."""
    global _loop
    if _loop is None:
        _loop = _Loop()
    del _loop.seen[:], _loop.lines[:]
    out = _exchange(data)
    if _loop.died is not None:
        died, _loop = _loop.died, None  # the next input gets a new loop
        raise AssertionError(died)
    failed = [text for level, text in _loop.lines if "application raised" in text]
    assert not failed, failed[0]
    # HTTP where a record should start is refused in HTTP (even after records: the codec
    # does not tell the connection's first bytes from later ones), and the connection ends.
    refused = out.find(REFUSAL)
    if refused >= 0:
        assert out.endswith(b"pyfpm.\n"), out[refused:]
        out = out[:refused]
    aborted = {rid for rtype, rid, _ in codec_check.client_records(data)[0]
               if rtype == c.ABORT_REQUEST}
    # Each response ends at its END_REQUEST: a request id is used again after an abort.
    pending: dict[int, list] = {}
    for record in c.iter_records(out):  # whole records, version 1
        rtype, rid, content = record
        pending.setdefault(rid, []).append(record)
        if rtype != c.END_REQUEST:
            continue
        mine = pending.pop(rid)
        if content[4] != c.REQUEST_COMPLETE:
            continue
        if rid in aborted and not any(chunk for kind, _, chunk in mine if kind == c.STDOUT):
            continue  # the web server aborted it: END_REQUEST alone is the answer
        c.Response.from_records(mine, rid)
    events, full = codec_check.reference(data)
    params = next((e[2] for e in events if e[0] == "params"), None)
    if params is None or not _loop.seen:
        return
    environ, body = _loop.seen[0]
    for name, value in params.items():
        name = name.decode("latin-1")
        if name not in DERIVED and not name.startswith(("wsgi.", "fpm.")):  # the worker's keys
            assert environ.get(name) == value.decode("latin-1"), (name, environ.get(name), value)
    if full:
        sent = b"".join(e[2] for e in events if e[0] == "stdin")
        length = environ.get("CONTENT_LENGTH", "")
        if length and int(length) < len(sent):
            sent = sent[:int(length)]
        if len(sent) <= BODY_MAX:
            assert body == sent, ("wsgi.input is not the body sent", len(body), len(sent))
