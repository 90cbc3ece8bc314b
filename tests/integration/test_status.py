"""The status and ping pages on the real master, read the way monitoring reads them, checked
against activity the test caused."""
import json
import re
import signal
import socket
import threading
import time
import xml.etree.ElementTree as ET

import pytest

from fpm import client, pages

STATUS = "pm.status_path = /status\nping.path = /ping\nping.response = all good"


@pytest.fixture
def fpm(pyfpm):
    def start(children=2):
        server = pyfpm(workers=children, extra="listen.backlog = 64\n" + STATUS)
        server.wait_idle(children)
        return server
    return start


def text_status(body: bytes) -> dict:
    """PHP-FPM's text format: 'name:<spaces>value' lines."""
    return {k: v for k, v in re.findall(r"^([a-z ]+):\s+(.*)$", body.decode(), re.M)}


def slow_request(server, seconds, extra=""):
    """A request that keeps one worker busy; returns the thread and where its result lands."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        r=client.request(server.address, "/slow?s=%g%s" % (seconds, extra), timeout=30)))
    thread.start()
    return thread, result


def wait_busy(server, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        page = json.loads(client.request(server.address, "/status?json").body)
        if page["active processes"] >= n + 1:  # + the status request itself
            return page
        assert time.monotonic() < deadline, page
        time.sleep(0.02)


def test_text_status_counts_what_happened(fpm):
    server = fpm(children=2)
    for _ in range(5):
        assert server.request("/hello").body == b"hello world"
    response = server.request("/status")
    assert response.status == 200
    assert response.header("Content-Type") == "text/plain;charset=UTF-8"
    assert response.header("Cache-Control") == "no-cache, no-store, must-revalidate, max-age=0"
    page = text_status(response.body)
    assert page["pool"] == "www" and page["process manager"] == "static"
    assert page["accepted conn"] == "6"  # five, and this request
    assert (page["idle processes"], page["active processes"], page["total processes"]) == \
        ("1", "1", "2")
    assert page["max children"] == "2"
    assert re.fullmatch(r"\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}", page["start time"])
    assert int(page["start since"]) < 60


def test_json_full_shows_the_busy_worker_and_its_request(fpm):
    server = fpm(children=2)
    thread, result = slow_request(server, 1.5, "&from=café")
    page = wait_busy(server, 1)
    full = json.loads(server.request("/status?json&full").body)
    thread.join(10)
    assert result["r"].status == 200
    assert page["active processes"] == 2 and page["idle processes"] == 0
    running = {p["request uri"]: p for p in full["processes"]}
    slow = running["/slow?s=1.5&from=café"]  # the URI's UTF-8 bytes, shown as sent
    assert slow["state"] == "Running" and slow["request method"] == "GET"
    assert slow["request duration"] > 0 and slow["rss"] > 1_000_000
    assert set(server.children()) == {p["pid"] for p in full["processes"]}


def test_xml_html_and_openmetrics_agree(fpm):
    server = fpm(children=2)
    for _ in range(3):
        server.request("/hello")
    xml = ET.fromstring(server.request("/status?xml&full").body)
    assert xml.findtext("pool") == "www" and xml.findtext("accepted-conn") == "4"
    assert len(xml.findall("processes/process")) == 2
    html = server.request("/status?html").body.decode()
    assert "<th>accepted conn</th><td>5</td>" in html.replace("\n", "")
    metrics = server.request("/status?openmetrics")
    assert metrics.header("Content-Type").startswith("application/openmetrics-text")
    text = metrics.body.decode()
    assert re.search(r"^phpfpm_accepted_connections 6$", text, re.M)
    assert re.search(r"^phpfpm_total_processes 2$", text, re.M)
    assert text.endswith("# EOF\n")


def test_ping_answers_and_head_has_no_body(fpm):
    server = fpm(children=1)
    response = server.request("/ping")
    assert (response.status, response.body) == (200, b"all good")
    assert response.header("Expires") == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert server.request("/ping", method="HEAD").body == b""
    # Any other path still goes to the app.
    assert server.request("/hello").body == b"hello world"


def test_ping_is_not_ready_once_the_host_stops(fpm):
    """A health check polling the ping takes a stopping host out: once the master finishes
    (QUIT), the ping answers 503, here on a connection the web server kept, which it says
    it lets go after that response (an empty STDERR record after END_REQUEST)."""
    server = fpm(children=1)
    with client.Connection(server.address) as conn:
        assert conn.request("/ping").status == 200
        server.signal(signal.SIGQUIT)
        server.wait_log(r"Finishing")
        time.sleep(0.05)  # the master tells the boards as it logs that
        response = conn.request("/ping")
        assert conn.let_go
    assert (response.status, response.body) == (503, pages.STOPPING)
    assert response.header("Expires") == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert server.wait_exit() == 0


def test_unix_socket_listen_queue_is_seen(fpm):
    """PHP-FPM shows 0 for unix sockets; pyfpm asks the kernel (sock_diag)."""
    server = fpm(children=1)
    thread, result = slow_request(server, 2.0)
    time.sleep(0.3)  # the only worker is busy now
    waiting = []
    for _ in range(3):
        s = socket.socket(socket.AF_UNIX)
        s.connect(server.address)
        waiting.append(s)
    time.sleep(1.3)  # a maintenance tick samples the queue
    thread.join(10)
    for s in waiting:
        s.close()
    page = text_status(server.request("/status").body)
    assert int(page["max listen queue"]) >= 3, page
    assert page["listen queue len"] == "64"


def test_status_through_nginx(served):
    front, server = served(extra="pm.status_path = /status")
    server.wait_idle(2)
    response = front.get("/status?json")
    assert response.status == 200 and response.header("Content-Type") == "application/json"
    assert json.loads(response.body)["pool"] == "www"




def test_status_listen_answers_while_every_worker_is_busy(pyfpm, tmp_path):
    """pm.status_listen: the pool's only worker is stuck in a request, yet its status (and
    ping) still answer on the separate address, from the pool's own scoreboard."""
    status_sock = tmp_path / "status.sock"
    server = pyfpm(workers=1, extra="listen.backlog = 64\n%s\npm.status_listen = %s"
                   % (STATUS, status_sock))
    server.wait_idle(1)
    thread, result = slow_request(server, 3)
    try:
        deadline = time.monotonic() + 5
        while True:
            started = time.monotonic()
            page = json.loads(client.request(str(status_sock), "/status?json&full", timeout=2).body)
            took = time.monotonic() - started
            if page["active processes"] == 1 or time.monotonic() > deadline:
                break
        assert page["pool"] == "www" and page["total processes"] == 1
        assert page["active processes"] == 1 and took < 1.0
        assert [p["request uri"] for p in page["processes"]] == ["/slow?s=3"]
        assert client.request(str(status_sock), "/ping").body == b"all good"
        other = client.request(str(status_sock), "/hello")
        assert other.status == 404
        # The hidden pool is not counted in the pool's own numbers.
        assert page["accepted conn"] == 1
    finally:
        thread.join()
    assert result["r"].status == 200
    assert "[pool www_status] server reached" not in server.log_text()
