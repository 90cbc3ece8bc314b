"""What the fuzzers found in the request path, against the real master: each stays fixed.
(The inputs themselves are in tests/fuzz/corpus/request, replayed by test_corpus.py.)"""

import socket
import time

import harness


def test_http_from_a_client_that_hung_up_ends_no_worker(pyfpm):
    """HTTP sent to the FastCGI port by a client that closes at once (a port scanner, a
    misdirected health check): the worker's refusal meets a closed socket. The failed
    write escaped the loop and ended the worker, so each such client cost the pool one."""
    server = pyfpm(workers=1)
    [worker] = server.wait_idle(1)
    for _ in range(5):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(server.address)
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        time.sleep(0.05)
    server.wait_log(r"HTTP request sent to the FastCGI port", 5)
    assert server.request("/").status < 500  # the app answered: its 404 for /
    assert server.children() == [worker], server.log_text()
    assert "exited" not in server.log_text(), server.log_text()
    assert harness.alive(worker)
