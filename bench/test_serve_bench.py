"""One worker's serve() loop, measured end to end: a forked child runs fpm._proto.serve with a
hello-world app on a unix socket; the benchmark drives it with pre-encoded requests over a raw
socket and reports requests per second."""

import os
import signal
import socket

import pytest

from fpm import _proto, client

BATCH = 2000


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "12")])
    return [b"Hello world\n"]


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """Path of a unix socket served by one forked worker running serve()."""
    path = str(tmp_path_factory.mktemp("serve") / "worker.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    pid = os.fork()
    if pid == 0:  # the worker: serve until killed, never return into pytest
        code = 1
        try:
            _proto.serve([listener.fileno()], hello, {"SERVER_SOFTWARE": "pyfpm-bench"})
            code = 0
        finally:
            os._exit(code)
    listener.close()
    yield path
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def request_for(params, keep_conn):
    return client.encode_request(params, keep_conn=keep_conn)


def response_length(path, request):
    """Bytes of one whole response, read once with the client so the loop can count bytes."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(request)
        data = b""
        while not data.endswith(client.encode_record(client.END_REQUEST, 1, bytes(8))):
            chunk = s.recv(65536)
            assert chunk, f"worker closed after {len(data)} bytes"
            data += chunk
    response = client.Response.from_records(client.iter_records(data))
    assert (response.status, response.body) == (200, b"Hello world\n")
    return len(data)


def recv_exactly(sock, n):
    while n:
        got = len(sock.recv(n))
        if not got:
            raise ConnectionError("worker closed the connection")
        n -= got


@pytest.mark.benchmark(group="serve")
def test_serve_keep_conn(benchmark, worker, realistic_params, report_rate):
    """BATCH requests on one kept connection, one at a time (nginx with keepalive)."""
    request = request_for(realistic_params, keep_conn=True)
    size = response_length(worker, request)
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(worker)

    def batch():
        for _ in range(BATCH):
            sock.sendall(request)
            recv_exactly(sock, size)

    benchmark.pedantic(batch, rounds=10, warmup_rounds=1)
    sock.close()
    report_rate(benchmark, BATCH)


@pytest.mark.benchmark(group="serve")
def test_serve_new_connection(benchmark, worker, realistic_params, report_rate):
    """BATCH requests, a new connection each (nginx without fastcgi_keep_conn)."""
    request = request_for(realistic_params, keep_conn=False)
    size = response_length(worker, request)

    def batch():
        for _ in range(BATCH):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(worker)
                s.sendall(request)
                recv_exactly(s, size)

    benchmark.pedantic(batch, rounds=10, warmup_rounds=1)
    report_rate(benchmark, BATCH)
