"""Real nginx in front of the real pyfpm master: every kind of request nginx sends, over unix
sockets and TCP, with fastcgi_keep_conn on and off (peers.md §6.1)."""

import concurrent.futures
import hashlib
import http.client
import random
import time

import pytest

from wsgi_app import stream_bytes

MIB = 1024 * 1024
TRANSPORTS = ["unix", "tcp"]


def payload(size, seed=0):
    """Deterministic bytes that never repeat, so a lost, doubled or misplaced record changes
    the digest."""
    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize("listen", TRANSPORTS)
@pytest.mark.parametrize("keep_conn", [False, True], ids=["keep_conn_off", "keep_conn_on"])
def test_get_and_post(served, listen, keep_conn):
    front, _ = served(listen=listen, keep_conn=keep_conn)
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
    for i in range(5):  # several requests, so kept upstream connections get reused
        r = front.get(f"/environ?i={i}", conn=conn)
        assert r.status == 200, r.body
        env = r.json()
        assert env["REQUEST_METHOD"] == "GET"
        assert env["QUERY_STRING"] == f"i={i}"
        assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
        assert env["wsgi.url_scheme"] == "http"
        assert env["wsgi.version"] == [1, 0]
        assert env["wsgi.multiprocess"] is True and env["wsgi.multithread"] is False
        assert env["HTTP_HOST"].startswith("127.0.0.1")
        body = payload(1000 + i)
        r = front.request("POST", "/sha256", body=body, conn=conn)
        assert r.json() == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                            "content_length": str(len(body))}
    conn.close()


@pytest.mark.parametrize("mode", ["read", "readline", "readlines", "iter"])
def test_chunked_upload_unbuffered(served, mode):
    """fastcgi_request_buffering off + Transfer-Encoding: chunked → CONTENT_LENGTH is empty and
    the app must get the body up to the empty STDIN record, whichever way it reads."""
    front, _ = served(request_buffering=False)
    body = b"".join(b"line %d " % i + payload(i % 300) + b"\n" for i in range(2000))
    pieces = [body[i:i + 7777] for i in range(0, len(body), 7777)]
    r = front.request("POST", f"/echo?mode={mode}", body=iter(pieces), chunked=True)
    assert r.status == 200
    assert r.body == body


@pytest.mark.parametrize("request_buffering", [True, False], ids=["buffered", "unbuffered"])
def test_chunked_upload_sha256(served, request_buffering):
    front, _ = served(request_buffering=request_buffering, keep_conn=True)
    body = payload(3 * MIB + 12345)
    pieces = (body[i:i + 100_000] for i in range(0, len(body), 100_000))
    r = front.request("POST", "/sha256", body=pieces, chunked=True)
    assert r.status == 200
    got = r.json()
    assert (got["length"], got["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())


@pytest.mark.parametrize("listen", TRANSPORTS)
@pytest.mark.parametrize("request_buffering", [True, False], ids=["buffered", "unbuffered"])
def test_upload_10mib(served, listen, request_buffering):
    front, _ = served(listen=listen, request_buffering=request_buffering)
    body = payload(10 * MIB)
    r = front.request("POST", "/sha256", body=body)
    assert r.status == 200
    assert r.json() == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
                        "content_length": str(len(body))}


@pytest.mark.parametrize("listen", TRANSPORTS)
@pytest.mark.parametrize("buffering", [True, False], ids=["buffered", "unbuffered"])
def test_stream_10mib(served, listen, buffering):
    front, _ = served(listen=listen, buffering=buffering, keep_conn=True)
    r = front.get("/stream?mib=10")
    assert r.status == 200
    assert len(r.body) == 10 * MIB
    assert hashlib.sha256(r.body).digest() == hashlib.sha256(stream_bytes(10 * MIB)).digest()


def test_stream_arrives_as_produced(served):
    """No whole-response buffering: with nginx's buffering off, a generator's first block
    reaches the client while the app is still sleeping before the second."""
    front, _ = served(buffering=False)
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
    start = time.monotonic()
    conn.request("GET", "/stream?mib=0.125&pause=1.5")
    resp = conn.getresponse()
    first = resp.read(65536)
    first_at = time.monotonic() - start
    rest = resp.read()
    conn.close()
    assert first + rest == stream_bytes(131072)
    assert first_at < 1.0, f"first block took {first_at:.2f} s: the response was buffered"


def test_headers_32k(served):
    front, _ = served()
    headers = {f"X-Big-{i}": chr(ord("a") + i) * 4096 for i in range(8)}
    r = front.get("/environ", headers=headers)
    assert r.status == 200, r.body
    env = r.json()
    for i in range(8):
        assert env[f"HTTP_X_BIG_{i}"] == chr(ord("a") + i) * 4096


@pytest.mark.parametrize("uri,script_name,path_info,query", [
    ("/app/environ", "/app", "/environ", ""),
    ("/app/environ?x=1&y=%20", "/app", "/environ", "x=1&y=%20"),
    ("/app/environ/", "/app", "/environ/", ""),
    ("/app/sub/%7Etilde%20space", "/app", "/sub/~tilde space", ""),
    # PEP 3333: the UTF-8 bytes of the path, each as one latin-1 character
    ("/app/caf%C3%A9", "/app", "/caf\u00c3\u00a9", ""),
    ("/elsewhere", "", "/elsewhere", ""),
    ("/application", "", "/application", ""),
])
def test_path_info_from_mount(served, uri, script_name, path_info, query):
    """Stock fastcgi_params send no PATH_INFO: pyfpm derives it from REQUEST_URI and `mount`."""
    front, _ = served(mount="/app")
    env = front.get(uri).json()  # unrouted paths answer 404 with the same three keys
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == (script_name, path_info, query)


def test_path_info_without_mount(served):
    front, _ = served()
    env = front.get("/environ?q=1").json()
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", "/environ")


def test_path_info_split_by_nginx(served):
    """fastcgi_split_path_info + PATH_INFO param: pyfpm uses what nginx sent, mount or not."""
    front, _ = served(mount="/app")
    env = front.get("/split/environ").json()
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/split", "/environ")


def test_https_param_sets_url_scheme(served):
    front, _ = served(mount="/tls")
    env = front.get("/tls/environ").json()
    assert env["HTTPS"] == "on"
    assert env["wsgi.url_scheme"] == "https"


@pytest.mark.parametrize("keep_conn", [False, True], ids=["keep_conn_off", "keep_conn_on"])
def test_raise_before_headers(served, keep_conn):
    front, server = served(keep_conn=keep_conn, workers=1)
    r = front.get("/raise-before")
    assert r.status == 500
    server.wait_log("boom before headers")
    log = server.log_text()
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: boom before headers" in log
    assert front.get("/hello").body == b"hello world"


@pytest.mark.parametrize("keep_conn", [False, True], ids=["keep_conn_off", "keep_conn_on"])
def test_raise_after_headers(served, keep_conn):
    front, server = served(keep_conn=keep_conn, workers=1)
    r = front.get("/raise-after")
    assert r.status == 200
    assert r.body.startswith(b"partial;")
    server.wait_log("boom after headers")
    for _ in range(3):
        assert front.get("/hello").body == b"hello world"


def test_write_callable(served):
    front, _ = served()
    r = front.get("/write")
    assert (r.status, r.body) == (200, b"written-1;written-2;returned-1;returned-2")


@pytest.mark.parametrize("app", ["wsgi_app:app", "wsgi_app:raw_app"], ids=["validated", "raw"])
def test_file_wrapper(served, app):
    front, _ = served(app=app)
    size = 3 * 65536 + 100
    r = front.get(f"/file?size={size}")
    assert r.status == 200
    assert r.header("Content-Length") == str(size)
    assert r.body == stream_bytes(size)


def test_cookies(served):
    front, _ = served()
    r = front.get("/cookies", headers={"Cookie": "x=1; y=2"})
    assert r.json() == {"cookie": "x=1; y=2"}
    assert r.header_all("Set-Cookie") == ["a=1; Path=/", "b=2; HttpOnly"]


def test_head_request(served):
    front, _ = served()
    r = front.request("HEAD", "/hello")
    assert (r.status, r.header("Content-Length"), r.body) == (200, "11", b"")
    assert front.get("/hello").body == b"hello world"


def test_status_line(served):
    front, _ = served()
    r = front.get("/status?code=404%20Not%20Found")
    assert (r.status, r.body) == (404, b"")
    assert front.get("/no-such-route").status == 404


def test_wsgi_errors_reach_nginx(served):
    front, _ = served()
    front.expected_errors.append("FastCGI sent in stderr")
    assert front.get("/stderr").body == b"logged"
    deadline = time.monotonic() + 5
    while "app message on wsgi.errors" not in front.error_log():
        assert time.monotonic() < deadline, front.error_log()
        time.sleep(0.05)
    assert "FastCGI sent in stderr" in front.error_log()


@pytest.mark.parametrize("listen", TRANSPORTS)
def test_keep_conn_many_clients_two_workers(served, listen):
    """keepalive 16 upstream connections, 64 clients, 2 workers: PHP-FPM and flup pin a worker
    to a connection and starve the rest; every request here must be answered promptly."""
    front, _ = served(listen=listen, keep_conn=True, workers=2)
    clients, per_client, limit = 64, 10, 2.0

    def client(n):
        conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
        try:
            return [front.get(f"/hello?c={n}&i={i}", conn=conn) for i in range(per_client)]
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    assert len(results) == clients * per_client
    assert [r.status for r in results] == [200] * len(results)
    slowest = max(r.seconds for r in results)
    assert slowest <= limit, f"slowest request took {slowest:.2f} s (limit {limit} s)"
    assert "upstream timed out" not in front.error_log()


def test_client_abort_then_next_request(served):
    """A client that hangs up mid-response makes nginx close the upstream connection; the
    worker must notice and serve the next request."""
    front, _ = served(workers=1, buffering=False)
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=30)
    conn.request("GET", "/stream?mib=20")
    resp = conn.getresponse()
    resp.read(65536)
    conn.sock.close()
    conn.close()
    deadline = time.monotonic() + 10
    while True:
        r = front.get("/hello", timeout=10)
        if r.status == 200 or time.monotonic() > deadline:
            break
    assert r.body == b"hello world"


def test_slow_requests_spread_over_workers(served):
    """Two slow requests on two workers run in parallel, not one after the other."""
    front, server = served(workers=2, keep_conn=True)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        start = time.monotonic()
        results = list(pool.map(lambda _: front.get("/slow?s=1"), range(2)))
        elapsed = time.monotonic() - start
    assert [r.status for r in results] == [200, 200]
    times = [(r.json(), round(r.seconds, 3)) for r in results]
    assert len({r.json()["pid"] for r in results}) == 2, (times, elapsed, server.log_text())
    assert elapsed < 1.8, f"took {elapsed:.2f} s: the requests ran one after the other"

