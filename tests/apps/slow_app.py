"""WSGI app for the slowlog tests: requests that stay busy for `s` seconds in a known stack.

- /sleep?s=N  app -> sleep_a -> sleep_b -> time.sleep(N)
- /loop?s=N   app -> spin: a pure-Python loop for N seconds
- /cbusy?s=N  app -> cbusy: one C call (sum over itertools.repeat) that holds the GIL ~N s

Each line a slowlog should show ends with a `# slowlog: NAME` comment; `marker_line(NAME)`
finds its number, so the tests never hard-code one. The body says what the request did.
"""

import itertools
import time
from pathlib import Path
from urllib.parse import parse_qs


def marker_line(name):
    """The line number of the line marked `# slowlog: name` in this file."""
    for number, line in enumerate(Path(__file__).read_text().splitlines(), 1):
        if line.rstrip().endswith(f"# slowlog: {name}"):
            return number
    raise LookupError(name)


def sleep_a(seconds):
    return sleep_b(seconds)  # slowlog: sleep_a


def sleep_b(seconds):
    time.sleep(seconds)  # slowlog: sleep_b
    return f"slept {seconds}"


def spin(seconds):
    end, n = time.monotonic() + seconds, 0
    while time.monotonic() < end: n += 1  # slowlog: spin
    return f"looped {n} times"


def _items_per_second(n):
    start = time.process_time()  # CPU time: a preempted measure is not made slower
    sum(itertools.repeat(1, n))
    return n / max(time.process_time() - start, 1e-6)


# Items of sum(itertools.repeat(1, n)) per CPU second, measured as the app loads (never
# inside a request a test traces): the fastest of five, as a slow measure would make
# /cbusy's call short of its seconds.
_RATE = max(_items_per_second(1_000_000) for _ in range(5))


def cbusy(seconds):
    n = int(_RATE * seconds)
    total = sum(itertools.repeat(1, n))  # slowlog: cbusy
    return f"summed {total}"


ROUTES = {"/sleep": sleep_a, "/loop": spin, "/cbusy": cbusy}


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    seconds = float(query.get("s", ["1"])[-1])
    route = ROUTES.get(environ.get("PATH_INFO", ""))
    if route is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"routes: /sleep, /loop, /cbusy\n"]
    body = (route(seconds) + "\n").encode()  # slowlog: app
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
