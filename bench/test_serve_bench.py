"""One worker's serve() loop, measured end to end: a forked child runs fpm._worker.serve with a
hello-world app on a unix socket; the benchmark drives it with pre-encoded requests over a raw
socket and reports requests per second.

Both processes are pinned to one CPU: one request at a time is a ping-pong, and across two
vCPUs of a VM each hop costs a cross-CPU wake-up (~30 µs here) that would swamp the loop's
own cost (measured: ~16k req/s unpinned against 55-80k pinned)."""

import os
import signal
import socket

import pytest

from fpm import _worker, client, options, scoreboard
from fpm.config import PoolConfig

BATCH = 2000


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "12")])
    return [b"Hello world\n"]


@pytest.fixture(scope="module", params=["scoreboard", "private-slot"])
def worker(request, tmp_path_factory):
    """(path of a unix socket, pid) of one forked worker running serve(), stamping a shared
    scoreboard as pool workers do, or (to price the stamps) a slot in its own memory."""
    board = scoreboard.Board("bench", 2) if request.param == "scoreboard" else None
    path = str(tmp_path_factory.mktemp("serve") / "worker.sock")
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})  # inherited by the worker through fork
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    pid = os.fork()
    if pid == 0:  # the worker: serve until killed, never return into pytest
        code = 1
        try:
            _worker.serve([listener.fileno()], hello, options.for_pool(
                PoolConfig(name="bench", listen=(path,), app="hello"),
                {"SERVER_SOFTWARE": "pyfpm-bench"}, board=board and board.mem,
                slot=board.claim() if board else -1))
            code = 0
        finally:
            os._exit(code)
    listener.close()
    yield path, pid
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.sched_setaffinity(0, cpus)


def cpu_ns(pid):
    """Nanoseconds the process has run on a CPU (the scheduler's own count, not ticks)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


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
    path, pid = worker
    request = request_for(realistic_params, keep_conn=True)
    size = response_length(path, request)
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)

    def batch():
        for _ in range(BATCH):
            sock.sendall(request)
            recv_exactly(sock, size)

    before = cpu_ns(pid)
    benchmark.pedantic(batch, rounds=10, warmup_rounds=1)
    report_rate(benchmark, BATCH, (cpu_ns(pid) - before) / (11 * BATCH))
    sock.close()


@pytest.mark.benchmark(group="serve")
def test_serve_new_connection(benchmark, worker, realistic_params, report_rate):
    """BATCH requests, a new connection each (nginx without fastcgi_keep_conn)."""
    path, pid = worker
    request = request_for(realistic_params, keep_conn=False)
    size = response_length(path, request)

    def batch():
        for _ in range(BATCH):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                s.sendall(request)
                recv_exactly(s, size)

    before = cpu_ns(pid)
    benchmark.pedantic(batch, rounds=10, warmup_rounds=1)
    report_rate(benchmark, BATCH, (cpu_ns(pid) - before) / (11 * BATCH))
