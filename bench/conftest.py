"""Realistic inputs for the benchmarks: what nginx sends with its stock fastcgi_params."""

from pathlib import Path

import pytest

from fpm import client

FASTCGI_PARAMS = Path("/etc/nginx/fastcgi_params")

# About fifteen headers a browser or a load balancer in front of nginx forwards.
BROWSER_HEADERS = {
    "Host": "www.example.com",
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    "Accept-Language": "en-GB,en;q=0.7,fr;q=0.3",
    "Accept-Encoding": "gzip, deflate, br, zstd",
    "Referer": "https://www.example.com/articles/2026/11/fastcgi-process-managers?page=2",
    "Cookie": "sessionid=8c1f3b9e5d2a4f7081b6c9d0e3f4a5b6; csrftoken=Zx9Qe7Lr2Tp5Wm8Yk3Nv6Bh1Jc4Fd0Gs; "
              "_ga=GA1.2.1234567890.1763700000; theme=dark",
    "Connection": "keep-alive",
    "Upgrade-Insecure-Requests": "1",
    "Sec-Fetch-Dest": "document",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Site": "same-origin",
    "Sec-Fetch-User": "?1",
    "Priority": "u=0, i",
    "X-Forwarded-For": "203.0.113.195, 70.41.3.18",
    "X-Forwarded-Proto": "https",
    "X-Request-Id": "f3b2c1d0-9e8f-4a7b-8c6d-5e4f3a2b1c0d",
}


def stock_params():
    """The names in nginx's stock fastcgi_params with the values nginx would give them."""
    values = {
        "QUERY_STRING": "page=2&sort=recent", "REQUEST_METHOD": "GET", "CONTENT_TYPE": "",
        "CONTENT_LENGTH": "", "SCRIPT_NAME": "/articles/2026/11/fastcgi-process-managers",
        "REQUEST_URI": "/articles/2026/11/fastcgi-process-managers?page=2&sort=recent",
        "DOCUMENT_URI": "/articles/2026/11/fastcgi-process-managers", "DOCUMENT_ROOT": "/usr/share/nginx/html",
        "SERVER_PROTOCOL": "HTTP/1.1", "REQUEST_SCHEME": "https", "HTTPS": "on",
        "GATEWAY_INTERFACE": "CGI/1.1", "SERVER_SOFTWARE": "nginx/1.22.1", "REMOTE_ADDR": "203.0.113.195",
        "REMOTE_PORT": "52814", "REMOTE_USER": "", "SERVER_ADDR": "10.0.0.5", "SERVER_PORT": "443",
        "SERVER_NAME": "www.example.com", "REDIRECT_STATUS": "200",
    }
    if FASTCGI_PARAMS.exists():  # keep to the names the installed file really has
        names = [line.split()[1] for line in FASTCGI_PARAMS.read_text().splitlines()
                 if line.startswith("fastcgi_param")]
        values = {n: values.get(n, "") for n in names}
    return values


@pytest.fixture(scope="session")
def realistic_params():
    """Stock params plus forwarded headers as nginx orders them: params first, then HTTP_*."""
    params = stock_params()
    for name, value in BROWSER_HEADERS.items():
        params["HTTP_" + name.upper().replace("-", "_")] = value
    return params


@pytest.fixture(scope="session")
def params_block(realistic_params):
    """The encoded PARAMS pairs, as one record's content."""
    return client.encode_pairs(realistic_params)



SUMMARY = {}


@pytest.fixture
def report(request):
    """report(section, text): a line printed under `section` after the benchmark tables."""
    def add(section, text):
        SUMMARY.setdefault(section, []).append(f"{request.node.name}: {text}")
    return add


@pytest.fixture
def report_rate(report):
    """report_rate(benchmark, n, worker_ns): n requests per round → req/s of the median and
    best round, and the worker's own CPU time per request."""
    def add(benchmark, n, worker_ns):
        stats = benchmark.stats.stats
        report("one worker's serve loop", f"{n / stats.median:,.0f} req/s median round, "
                                          f"{n / stats.min:,.0f} best; worker CPU "
                                          f"{worker_ns / 1000:.1f} µs/request")
    return add


def pytest_terminal_summary(terminalreporter):
    for section, lines in SUMMARY.items():
        terminalreporter.section(section)
        for line in lines:
            terminalreporter.write_line(line)
