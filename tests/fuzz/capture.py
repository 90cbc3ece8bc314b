"""Record what real web servers send to a FastCGI backend: the fuzzers' seed corpus.

    .venv/bin/python tests/fuzz/capture.py [OUT_DIR]    # default tests/fuzz/corpus/seeds

nginx (the tests' config: stock fastcgi_params), Apache (mod_proxy_fcgi), lighttpd, Caddy
and h2o each run in front of a recording peer on 127.0.0.1 (tests/webservers.py) and get
the same few HTTP requests; each connection's bytes, up to the end of its request's body,
become one file ``<server>-<request>.bin``. The peer answers every request with a small
200 so that the server is satisfied. Run by hand when a server's version changes; the
files are committed.
"""

import contextlib
import socket
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]

import webservers  # noqa: E402  (tests/ on the path first)
from fpm import client as c  # noqa: E402
from tests import conftest  # noqa: E402

ROUTES = {
    "apache": 'ProxyPass "/app" "fcgi://{backend}"',
    "lighttpd": """\
fastcgi.server = ( "/app" => (( "host" => "{backend_host}", "port" => {backend_port},
                                "check-local" => "disable" )) )""",
    "caddy": """\
	reverse_proxy /app* {backend} {
		transport fastcgi
	}""",
    "h2o": """\
      "/app":
        fastcgi.connect:
          host: {backend_host}
          port: {backend_port}
          type: tcp""",
}

# name: (method, path, body, headers)
REQUESTS = {
    "get": ("GET", "/app/a%20b/c?x=1&y=%C3%A9", None,
            {"Cookie": "a=1; b=2", "Accept-Language": "fr, en;q=0.5", "X-Forwarded-For": "10.0.0.1"}),
    "post": ("POST", "/app/form", b"name=caf%C3%A9&n=" + b"1" * 300,
             {"Content-Type": "application/x-www-form-urlencoded"}),
    "upload": ("PUT", "/app/upload", bytes(range(256)) * 160,  # 40 KiB: several STDIN records
               {"Content-Type": "application/octet-stream"}),
}

RESPONSE = b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nok\n"


class Recorder:
    """A FastCGI peer that keeps each connection's bytes up to its request's empty STDIN."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.captures = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._record, args=(conn,), daemon=True).start()

    def _record(self, conn):
        data, parser, rid = bytearray(), c.RecordParser(), None
        with conn:
            conn.settimeout(10)
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
                for rtype, request_id, content in parser.feed(chunk):
                    if rtype == c.BEGIN_REQUEST:
                        rid = request_id
                    elif rtype == c.STDIN and request_id == rid and not content:
                        self.captures.append(bytes(data))
                        conn.sendall(c.encode_stream(c.STDOUT, rid, RESPONSE)
                                     + c.encode_record(c.END_REQUEST, rid, bytes(8)))
                        return

    def take(self):
        out, self.captures = self.captures, []
        return out


@contextlib.contextmanager
def front(name, tmp, backend):
    if name != "nginx":
        with webservers.start(name, tmp, backend, ROUTES[name]) as server:
            yield server.port
        return
    binary = conftest.find_program("nginx")
    port = conftest.free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(conftest.nginx_config(tmp, port, backend))
    import harness
    import subprocess
    proc = subprocess.Popen([binary, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        conftest.wait_port(port, proc, 10, "nginx")
        yield port
    finally:
        harness.kill_group(proc)


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "corpus" / "seeds"
    out.mkdir(parents=True, exist_ok=True)
    recorder = Recorder()
    for name in ["nginx", *ROUTES]:
        with tempfile.TemporaryDirectory(prefix="pyfpm-capture-") as tmp, \
                front(name, Path(tmp), recorder.address) as port:
            for what, (method, path, body, headers) in REQUESTS.items():
                r = conftest.http_request(port, method, path, body=body, headers=headers, timeout=10)
                captured = recorder.take()
                if r.status != 200 or len(captured) != 1:
                    sys.exit("capture.py: %s %s: status %d, %d captures"
                             % (name, what, r.status, len(captured)))
                (out / ("%s-%s.bin" % (name, what))).write_bytes(captured[0])
                print("%s-%s.bin: %d bytes" % (name, what, len(captured[0])))
    recorder.sock.close()


if __name__ == "__main__":
    main()
