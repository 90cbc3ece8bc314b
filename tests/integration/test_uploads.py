"""Request bodies through nginx and straight over FastCGI: small ones in memory, large ones
spooled to an unlinked file with the worker's memory bounded, 413 over the limit, nginx's
REQUEST_BODY_FILE (PHP-FPM's accelerated upload), and a client that vanishes mid-upload."""
import hashlib
import json
import re
import socket
import time

import pytest

from tests.conftest import FASTCGI_PARAMS

MIB = 1 << 20
BLOCK = bytes(range(256)) * 256  # 64 KiB


def pattern(size):
    """`size` bytes of a repeating pattern, in 64 KiB pieces, and their sha256."""
    pieces = [BLOCK] * (size // len(BLOCK)) + [BLOCK[:size % len(BLOCK)]]
    h = hashlib.sha256()
    for piece in pieces:
        h.update(piece)
    return pieces, h.hexdigest()


BIG = """
        location /big/ {
            client_max_body_size 200m;
            fastcgi_split_path_info ^(/big)(/.*)$;
            include %s;
            fastcgi_param PATH_INFO $fastcgi_path_info;
            fastcgi_pass pyfpm;
        }
""" % FASTCGI_PARAMS


def test_a_100_mib_upload_is_spooled_and_the_worker_stays_small(served):
    """nginx buffers the upload and streams it over the socket; the worker writes it to an
    unlinked file as it arrives, so its peak RSS grows by a few MiB, not by 100."""
    front, server = served(app="body_app:app", workers=1, locations=BIG)
    before = front.get("/big/peak").json()["peak_rss_kib"]
    pieces, digest = pattern(100 * MIB)
    r = front.request("POST", "/big/digest", body=iter(pieces),
                      headers={"Content-Length": str(100 * MIB)}, timeout=60)
    assert r.status == 200, r.body
    seen = r.json()
    assert seen["sha256"] == digest and seen["bytes"] == 100 * MIB
    assert re.fullmatch(r"/tmp/#\d+ \(deleted\)", seen["input"]), seen["input"]
    grew = seen["peak_rss_kib"] - before
    print("worker peak RSS: %d KiB before, %d KiB after a 100 MiB upload (+%d KiB)"
          % (before, seen["peak_rss_kib"], grew))
    assert grew < 8 * 1024, "the worker's peak RSS grew by %d KiB" % grew


def test_bodies_up_to_the_buffer_size_stay_in_memory_larger_ones_go_to_temp_path(pyfpm, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    server = pyfpm(app="body_app:app", workers=1,
                   extra="request_body_buffer_size = 64K\nrequest_body_temp_path = %s" % spool)
    for size, held in ((64 * 1024, "memory"), (64 * 1024 + 1, str(spool))):
        pieces, digest = pattern(size)
        r = server.request("/digest", method="POST", body=b"".join(pieces))
        seen = json.loads(r.body)
        assert seen["sha256"] == digest and seen["bytes"] == size
        assert seen["input"].startswith(held), (size, seen["input"])
    assert list(spool.iterdir()) == []  # the spool file never had a name


def test_a_chunked_body_is_read_whole_and_counted(served):
    """fastcgi_request_buffering off: nginx streams a chunked body with no CONTENT_LENGTH;
    the app gets all of it, and CONTENT_LENGTH says how much."""
    front, _ = served(app="body_app:app", request_buffering=False, keep_conn=True)
    pieces, digest = pattern(3 * MIB + 123)
    r = front.request("POST", "/digest", body=iter(pieces), chunked=True)
    seen = r.json()
    assert (seen["sha256"], seen["bytes"]) == (digest, 3 * MIB + 123)
    assert seen["content_length"] == str(3 * MIB + 123)


def test_a_declared_body_over_the_limit_is_answered_413_at_once(served):
    front, server = served(app="body_app:app", workers=1, extra="request_body_max_size = 1M",
                           locations=BIG)
    pieces, _ = pattern(50 * MIB)
    r = front.request("POST", "/big/digest", body=iter(pieces),
                      headers={"Content-Length": str(50 * MIB)}, timeout=30)
    assert r.status == 413 and r.body == b"The request body is too large.\n"
    server.wait_log(r'WARNING: \[pool www\] child \d+: the body of "POST /big/digest" is '
                    r'52428800 bytes, more than request_body_max_size \(1048576 bytes\); '
                    r'answered 413')
    assert front.get("/big/peak").status == 200


@pytest.mark.parametrize("keep_conn", [False, True], ids=["keep_conn_off", "keep_conn_on"])
def test_a_streamed_body_over_the_limit_is_refused_midway(served, keep_conn):
    """A chunked body streamed by nginx (request buffering off) crosses the limit: the worker
    answers 413 without reading the rest, nginx stops sending once it has the response, and
    the worker ends the request without waiting for STDIN's end."""
    front, server = served(app="body_app:app", request_buffering=False, workers=1,
                           keep_conn=keep_conn, extra="request_body_max_size = 64K")
    pieces = [BLOCK[:8192]] * 100  # 800 KiB: more than the socket buffers hold
    r = front.request("POST", "/digest", body=iter(pieces), chunked=True, timeout=10)
    assert r.status == 413
    server.wait_log(r'the body of "POST /digest" is larger than request_body_max_size '
                    r'\(65536 bytes\); answered 413')
    assert front.get("/peak", timeout=10).status == 200


ACCEL = """
        location /accel/ {
            client_body_in_file_only clean;
            fastcgi_pass_request_body off;
            fastcgi_split_path_info ^(/accel)(/.*)$;
            include %s;
            fastcgi_param PATH_INFO $fastcgi_path_info;
            fastcgi_param REQUEST_BODY_FILE $request_body_file;
            fastcgi_pass pyfpm;
        }
""" % FASTCGI_PARAMS


def test_request_body_file_is_the_body(served, tmp_path_factory):
    """nginx writes the body to a file and sends only its name (REQUEST_BODY_FILE); the
    worker reads that file as wsgi.input, in a directory security.request_body_file_dirs
    allows."""
    base = tmp_path_factory.getbasetemp()  # nginx's client_body_temp_path is below it
    front, _ = served(app="body_app:app", locations=ACCEL,
                      extra="security.request_body_file_dirs = %s" % base)
    pieces, digest = pattern(2 * MIB + 5)
    r = front.request("POST", "/accel/digest", body=b"".join(pieces))
    seen = r.json()
    assert (seen["sha256"], seen["bytes"]) == (digest, 2 * MIB + 5)
    assert seen["input"].startswith(str(base)) and "/body/" in seen["input"]
    assert seen["content_length"] == str(2 * MIB + 5)


def test_request_body_file_outside_the_allowed_dirs_is_refused(served):
    front, server = served(app="body_app:app", locations=ACCEL,
                           extra="security.request_body_file_dirs = /var/lib/nginx/body")
    r = front.request("POST", "/accel/digest", body=b"secret" * 100)
    assert r.status == 403 and r.body == b"Access denied.\n"
    server.wait_log(r"WARNING: \[pool www\] child \d+: REQUEST_BODY_FILE '/.+/body/\d+' is "
                    r"outside security.request_body_file_dirs \(/var/lib/nginx/body\); "
                    r"request refused")


def test_a_client_that_vanishes_mid_upload_frees_the_worker(served):
    """With request buffering off nginx streams the body as the client sends it; the client
    hangs up halfway, nginx closes its upstream connection, and the only worker goes back to
    serving at once (not after request_read_timeout) without being restarted."""
    front, server = served(app="body_app:app", request_buffering=False, workers=1)
    worker = server.wait_idle(1)
    mark = server.mark()
    with socket.create_connection(("127.0.0.1", front.port)) as s:
        s.sendall(b"POST /digest HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (10 * MIB))
        for _ in range(16):
            s.sendall(BLOCK)
        time.sleep(0.3)  # the worker is inside the body now
    server.wait_log(r"NOTICE: \[pool www\] child %d: peer unix:.+: the peer hung up before the "
                    r"end of the body of request 1 \(its client went away\?\); connection closed"
                    % worker[0], since=mark)
    started = time.monotonic()
    assert front.get("/peak", timeout=5).status == 200
    assert time.monotonic() - started < 1.0
    assert server.wait_idle(1) == worker
