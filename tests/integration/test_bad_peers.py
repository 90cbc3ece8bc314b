"""Bad peers against the real master: each is logged (pool, pid, peer, what was wrong), its
connection is closed, and the same worker serves the next request. No fd or memory leaks."""

import re
import socket
import time

import pytest

from fpm import client as fc

PARAMS_MAX = 4096


@pytest.fixture
def server(pyfpm):
    """One worker, so the request after a bad peer is served by the worker that met it."""
    return pyfpm(workers=1, extra="fastcgi.params_max = %d" % PARAMS_MAX)


def raw_exchange(address, data, *, hang_up=True, timeout=5.0):
    """Send bytes, optionally half-close, and return all the server sends before it closes."""
    with fc.connect(address, timeout) as sock:
        sock.sendall(data)
        if hang_up:
            sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def hello_request(**params):
    return fc.encode_request(fc.build_params("/hello", params=params or None))


def worker_of(server):
    (pid,) = server.wait_idle(1)
    return pid


def open_fds(pid):
    import os
    return len(os.listdir("/proc/%d/fd" % pid))


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read())[1])


def assert_logged_and_next_served(server, pid, since, message, level="WARNING"):
    """``message`` is a regex of what was wrong."""
    line = server.wait_log(r"%s: \[pool www\] child %d: peer (unix:\S+|[\d.]+:\d+): %s; "
                           r"connection closed" % (level, pid, message), since=since)
    response = server.request("/hello")
    assert (response.status, response.body) == (200, b"hello world")
    assert server.children() == [pid], "the worker must survive a bad peer"
    return line


def test_http_on_the_fastcgi_port_is_named_and_answered(server):
    pid, mark = worker_of(server), server.mark()
    answer = raw_exchange(server.address, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n")
    assert b"FastCGI, not HTTP" in answer
    assert_logged_and_next_served(server, pid, mark, re.escape(
        "HTTP request sent to the FastCGI port (b'GET / HTTP/1.1')"))


def test_garbage_is_refused_with_its_header_bytes(server):
    pid, mark = worker_of(server), server.mark()
    assert raw_exchange(server.address, b"\x07garbage!") == b""
    assert_logged_and_next_served(server, pid, mark, "unsupported FastCGI version 7 in record "
                                                     "header 07 67 61 72 62 61 67 65")


def test_truncated_record(server):
    pid, mark = worker_of(server), server.mark()
    assert raw_exchange(server.address, hello_request()[:13]) == b""
    assert_logged_and_next_served(server, pid, mark, "truncated record: the peer hung up after "
                                                     "13 of 16 bytes of a BEGIN_REQUEST record")


def test_hang_up_in_the_middle_of_a_body(server):
    pid, mark = worker_of(server), server.mark()
    body = b"x" * 100
    request = fc.encode_request(fc.build_params("/sha256", method="POST", body=body), body,
                                stdin_chunk=40)
    # Whole records up to 80 of the 100 bytes: the last 20-byte record (32 with padding)
    # and the empty one (8) never come. Whole records: what nginx does when its client goes
    # away mid-upload, so a notice, not a warning about the web server.
    assert raw_exchange(server.address, request[:-40]) == b""
    assert_logged_and_next_served(server, pid, mark,
                                  r"the peer hung up before the end of the body of request 1 "
                                  r"\(its client went away\?\)", level="NOTICE")


def test_oversize_params_name_size_and_limit(server):
    pid, mark = worker_of(server), server.mark()
    big = hello_request(HTTP_X_BIG="x" * PARAMS_MAX)
    assert raw_exchange(server.address, big) == b""
    assert_logged_and_next_served(server, pid, mark,
                                  r"FastCGI params too large \(\d+ bytes, limit %d\)" % PARAMS_MAX)


def test_hang_up_while_the_response_is_sent(server):
    pid, mark = worker_of(server), server.mark()
    with fc.connect(server.address) as sock:
        sock.sendall(fc.encode_request(fc.build_params("/stream", params={"QUERY_STRING": "mib=64"})))
        assert sock.recv(4096)
    server.wait_log(r"NOTICE: \[pool www\] child %d: peer \S+: the peer hung up while the response "
                    r"was being sent; connection closed" % pid, since=mark)
    assert server.request("/hello").body == b"hello world"
    assert server.children() == [pid]


def test_tcp_peer_is_named_by_address(pyfpm):
    server = pyfpm(workers=1, listen="tcp")
    pid, mark = worker_of(server), server.mark()
    with fc.connect(server.address) as sock:
        port = sock.getsockname()[1]
        sock.sendall(b"\x02\x01")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""
    server.wait_log(r"child %d: peer 127\.0\.0\.1:%d: unsupported FastCGI version 2" % (pid, port),
                    since=mark)
    assert server.request("/hello").status == 200


def test_bad_peers_leak_no_fd_and_no_memory(server):
    pid = worker_of(server)
    bad = [b"GET / HTTP/1.1\r\n\r\n", b"\x07junkjunk", hello_request()[:30],
           hello_request(HTTP_X_BIG="y" * PARAMS_MAX), hello_request()[:-8]]
    for data in bad * 20:  # warm-up: allocator pools and log buffers reach their size
        raw_exchange(server.address, data)
    # A served request after them: the one worker is done with every earlier connection
    # once it sleeps again (it closes the request's own a moment after the response).
    assert server.request("/hello").status == 200
    server.wait_idle(1)
    fds, rss = open_fds(pid), rss_kib(pid)
    for data in bad * 100:
        raw_exchange(server.address, data)
    assert server.request("/hello").status == 200
    server.wait_idle(1)
    assert open_fds(pid) == fds
    assert rss_kib(pid) - rss < 1024, "500 bad connections must not grow the worker by 1 MiB"


def test_management_records_and_refusals_keep_the_connection(server):
    with fc.Connection(server.address) as conn:
        assert conn.get_values() == {"FCGI_MAX_CONNS": str(1 * 1024), "FCGI_MAX_REQS": "1",
                                     "FCGI_MPXS_CONNS": "0"}
        # AUTHORIZER is not served: END_REQUEST(UNKNOWN_ROLE) and the connection stays usable.
        conn.send(fc.encode_begin(7, role=fc.AUTHORIZER, keep_conn=True))
        assert conn.read_record() == (fc.END_REQUEST, 7, bytes([0, 0, 0, 0, fc.UNKNOWN_ROLE, 0, 0, 0]))
        # An unknown management type gets UNKNOWN_TYPE naming it.
        conn.send(fc.encode_record(42, 0, b""))
        assert conn.read_record() == (fc.UNKNOWN_TYPE, 0, bytes([42, 0, 0, 0, 0, 0, 0, 0]))
        assert conn.request("/hello", keep_conn=True).body == b"hello world"


def test_second_request_id_on_a_busy_connection_is_refused_at_once(server):
    """The refusal goes out while the first request still waits for its body."""
    params = fc.build_params("/echo", method="POST", body=b"hello")
    with fc.Connection(server.address) as conn:
        conn.send(fc.encode_begin(1, keep_conn=True)
                  + fc.encode_record(fc.PARAMS, 1, fc.encode_pairs(params.items()))
                  + fc.encode_record(fc.PARAMS, 1, b"")
                  + fc.encode_begin(2, keep_conn=True))
        assert conn.read_record() == (fc.END_REQUEST, 2, bytes([0, 0, 0, 0, fc.CANT_MPX_CONN, 0, 0, 0]))
        conn.send(fc.encode_record(fc.STDIN, 1, b"hello") + fc.encode_record(fc.STDIN, 1, b""))
        response = conn.read_response(1)
        assert (response.status, response.body) == (200, b"hello")


def test_abort_in_the_middle_of_the_body_ends_the_request(server):
    """The app is not handed a cut-short body as if it were whole; the request still ends
    with END_REQUEST and the kept connection carries the next one."""
    params = fc.build_params("/echo", method="POST", body=b"0123456789")
    with fc.Connection(server.address) as conn:
        conn.send(fc.encode_begin(1, keep_conn=True)
                  + fc.encode_record(fc.PARAMS, 1, fc.encode_pairs(params.items()))
                  + fc.encode_record(fc.PARAMS, 1, b"")
                  + fc.encode_record(fc.STDIN, 1, b"012")
                  + fc.encode_record(fc.ABORT_REQUEST, 1, b""))
        assert conn.read_record() == (fc.STDOUT, 1, b"")
        assert conn.read_record() == (fc.END_REQUEST, 1, bytes([0, 0, 0, 1, 0, 0, 0, 0]))
        assert conn.request("/hello", keep_conn=True).body == b"hello world"


def test_abort_before_the_app_runs_ends_the_request(server):
    with fc.Connection(server.address) as conn:
        conn.send(fc.encode_begin(1, keep_conn=True) + fc.encode_record(fc.ABORT_REQUEST, 1, b""))
        assert conn.read_record() == (fc.STDOUT, 1, b"")
        assert conn.read_record() == (fc.END_REQUEST, 1, bytes(8))
        assert conn.request("/hello", keep_conn=True).body == b"hello world"


def test_silent_connections_do_not_pin_the_worker(server):
    """A peer that connects and says nothing is watched, not waited on."""
    silent = [fc.connect(server.address) for _ in range(5)]
    try:
        started = time.monotonic()
        assert server.request("/hello", timeout=3).body == b"hello world"
        assert time.monotonic() - started < 1.0
    finally:
        for sock in silent:
            sock.close()
