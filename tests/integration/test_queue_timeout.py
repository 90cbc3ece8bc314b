"""request_queue_timeout: a request that waited too long for a worker is answered 503 at once
instead of running late, timed from the kernel's arrival time on TCP or from nginx's
request-start param."""
import threading
import time

from fpm import client
from tests.conftest import FASTCGI_PARAMS

HELD = 1.2  # seconds the only worker is kept busy


def hold_the_worker(address):
    """Start /slow?s=HELD on ``address`` in a thread; returns the thread and its result."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        r=client.request(address, "/slow?s=%s" % HELD, timeout=10)))
    thread.start()
    time.sleep(0.2)  # the worker has taken it
    return thread, result


def test_a_request_queued_too_long_on_tcp_gets_503_at_once(pyfpm):
    server = pyfpm(listen="tcp", workers=1, extra="request_queue_timeout = 300ms")
    server.wait_idle(1)
    thread, held = hold_the_worker(server.address)
    started = time.monotonic()
    late = client.request(server.address, "/hello", timeout=10)
    waited = time.monotonic() - started
    thread.join()
    assert held["r"].status == 200
    assert late.status == 503
    assert late.body == b"The server is too busy to answer in time; try again.\n"
    # Answered as soon as the worker was free, not after running /hello.
    assert waited < HELD
    line = server.wait_log(r'WARNING: \[pool www\] child \d+: "GET /hello" waited ([\d.]+) s for '
                           r'a worker, longer than request_queue_timeout \(0.3 s\); answered 503')
    assert 0.6 < float(line.group(1)) < HELD
    # Without a wait, the same request runs.
    assert client.request(server.address, "/hello").body == b"hello world"


QUEUED = """
        location /queued/ {
            fastcgi_split_path_info ^(/queued)(/.*)$;
            include %s;
            fastcgi_param PATH_INFO $fastcgi_path_info;
            fastcgi_param REQUEST_START $msec;
            fastcgi_pass pyfpm;
        }
""" % FASTCGI_PARAMS


def test_on_a_unix_socket_the_wait_starts_at_nginx_request_start_param(served):
    """Linux keeps no arrival time for unix-socket connections: nginx stamps the request
    (fastcgi_param REQUEST_START $msec) and request_start_param names that param."""
    front, server = served(workers=1, locations=QUEUED, extra=(
        "request_queue_timeout = 300ms\nrequest_start_param = REQUEST_START"))
    server.wait_idle(1)
    assert front.get("/queued/hello").body == b"hello world"
    thread, held = hold_the_worker(server.address)
    late = front.get("/queued/hello")
    thread.join()
    assert late.status == 503 and late.seconds < HELD
    server.wait_log(r'"GET /queued/hello" waited [\d.]+ s for a worker, longer than '
                    r'request_queue_timeout \(0.3 s\); answered 503')
    assert front.get("/queued/hello").body == b"hello world"
