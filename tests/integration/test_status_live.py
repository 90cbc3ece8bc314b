"""The live status page (``?live``) in a real browser: headless Chromium loads it through nginx
from pyfpm, its script polls the JSON and draws; the DOM it leaves must show what the test
did to the pool."""
import html.parser
import json
import re
import subprocess
import threading
import time

from tests.conftest import find_program, http_request

REQUESTS = 25
SLOW = "/slow?s=6"
# Markup in a URI must reach the page as text: as elements it would run or at least show.
HOSTILE = "/slow?s=6&x=<script>document.title='owned'</script><img/src=x>"

# The page lives at /admin/pool here, not at the pool's status path: a page that fetched
# "/status" itself instead of a URL relative to its own would find only the 404 below.
# pyfpm routes on REQUEST_URI, so this location sends its own.
LOCATIONS = """\
        location = /status { return 404; }
        location = /admin/pool {
            fastcgi_param REQUEST_METHOD $request_method;
            fastcgi_param QUERY_STRING $query_string;
            fastcgi_param REQUEST_URI /status?$query_string;
            fastcgi_param SCRIPT_NAME /status;
            fastcgi_param SERVER_PROTOCOL $server_protocol;
            fastcgi_param SERVER_NAME $server_name;
            fastcgi_param SERVER_PORT $server_port;
            fastcgi_param REMOTE_ADDR $remote_addr;
            fastcgi_pass pyfpm;
        }
"""


class DOM(html.parser.HTMLParser):
    """What a user sees of the dumped DOM: worker rows (cell texts), the chart's line, the
    title, and every element name (to tell text from markup)."""

    def __init__(self, text):
        super().__init__()
        self.rows, self.tags, self.ids = [], [], {}
        self._row = self._cell = self._id = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids[attrs["id"]] = attrs
            self._id = attrs["id"]
        if tag == "tr" and "data-pid" in attrs:
            self._row = []
            self.rows.append(self._row)
        elif tag == "td" and self._row is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr":
            self._row = None
        self._id = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        elif self._id:
            self.ids[self._id]["text"] = self.ids[self._id].get("text", "") + data


def in_flight(port, uri):
    """A request through nginx left running in a thread; join it before the end."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=http_request(port, "GET", uri)))
    thread.start()
    return thread, result


def busy(server, n, timeout=5.0):
    """Wait until ``n`` workers besides the asking one are busy."""
    deadline = time.monotonic() + timeout
    while json.loads(server.request("/status?json").body)["active processes"] < n + 1:
        assert time.monotonic() < deadline, "%d requests not running after %g s" % (n, timeout)
        time.sleep(0.02)


def browse(chromium, url, tmp_path, budget_ms):
    """The DOM headless Chromium has built after ``budget_ms`` of virtual time on ``url``."""
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--user-data-dir=%s" % tmp_path, "--virtual-time-budget=%d" % budget_ms,
         "--dump-dom", url],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_live_page_in_chromium_shows_workers_requests_and_rate(served, tmp_path):
    chromium = find_program("chromium")
    front, server = served(workers=3, extra="pm.status_path = /status", locations=LOCATIONS)
    pids = set(server.wait_idle(3))
    assert front.get("/status").status == 404  # only the mounted path reaches the page
    for _ in range(REQUESTS):
        assert front.get("/hello").body == b"hello world"
    slow = [in_flight(front.port, SLOW), in_flight(front.port, HOSTILE)]
    busy(server, 2)
    # Six seconds of the page's time, polling every second; Chromium's virtual time runs them
    # in about one and a half, while the slow requests are still running.
    dom_text = browse(chromium, "http://127.0.0.1:%d/admin/pool?live&refresh=1" % front.port,
                      tmp_path / "profile", 6000)
    assert all(thread.is_alive() for thread, _ in slow), "the slow requests ended too soon"
    for thread, result in slow:
        thread.join(15)
        assert result["r"].status == 200

    dom = DOM(dom_text)
    assert not dom.ids["error"].get("text"), dom.ids["error"]
    rows = {int(r[0]): r for r in dom.rows}
    assert set(rows) == pids
    by_uri = {r[5]: r for r in rows.values()}
    assert by_uri[SLOW][1] == "Running" and by_uri[SLOW][4] == "GET"
    assert by_uri[HOSTILE][1] == "Running"  # the URI is the cell's text, character for character
    assert "img" not in dom.tags and dom.tags.count("script") == 1
    assert "<title>pyfpm status: www</title>" in dom_text
    accepted = int(re.search(r"accepted (\d+)", dom.ids["summary"]["text"])[1])
    assert accepted >= REQUESTS + 2
    # A line of two points at least (three polls), every one above the zero line: each poll
    # is an accepted request itself.
    points = re.findall(r"[ML]([\d.]+) ([\d.]+)", dom.ids["rate-line"]["d"])
    assert len(points) >= 2 and all(float(y) < 120 for _, y in points), dom.ids["rate-line"]
