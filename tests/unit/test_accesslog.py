"""fpm.accesslog: every % code against an exact line, PHP-FPM's format errors (at config load
too), JSON lines, access.suppress_path, and the worker-side Writer over real files and sockets."""
import json
import os
import resource
import socket
import time

import pytest

from fpm import accesslog, config
from fpm.accesslog import FormatError, Request, Writer, compile

@pytest.fixture(autouse=True)
def paris(monkeypatch):
    """Local time is Europe/Paris, so %t's zone and clock are known."""
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def accepted_us():
    """21 Nov 2026 10:00:00.25 in Paris (CET, +0100)."""
    return int(time.mktime((2026, 11, 21, 10, 0, 0, 0, 0, -1))) * 1_000_000 + 250_000


ENVIRON = {
    "REQUEST_METHOD": "POST",
    "REQUEST_URI": "/shop/cart?item=7&n=2",
    "SCRIPT_NAME": "/shop",
    "PATH_INFO": "/cart",
    "QUERY_STRING": "item=7&n=2",
    "SCRIPT_FILENAME": "/srv/app/shop.py",
    "CONTENT_LENGTH": "42",
    "REMOTE_USER": "alice",
    "HTTP_HOST": "example.org",
    "HTTP_USER_AGENT": "curl/8.5.0",
    "wsgi.version": (1, 0),
}
HEADERS = [("Content-Type", "text/html; charset=utf-8"), ("X-Cache", "HIT"),
           ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]


def request(**changes):
    values = dict(environ=ENVIRON, status="201 Created", headers=HEADERS,
                  accepted_epoch_us=accepted_us(), duration_us=1_234_567, cpu=(0.5, 0.25),
                  memory=25 * 1024 * 1024 + 1536, peer="10.0.0.5", pid=4321, ppid=1000,
                  pool="www", now=accepted_us() / 1e6 + 1.5)
    values.update(changes)
    return Request(**values)


def line(fmt, **changes):
    return compile(fmt).render(request(**changes)).decode("latin-1")


# --- every code, text lines -----------------------------------------------------------------

@pytest.mark.parametrize("fmt, expected", [
    ("100%%", "100%"),
    ("%C", "60.75"),                   # (0.5 + 0.25) s of CPU over 1.234567 s
    ("%{total}C", "60.75"),
    ("%{user}C", "40.50"),
    ("%{system}C", "20.25"),
    ("%{SYSTEM}C", "20.25"),           # modifiers are case-insensitive
    ("%d", "1.235"),
    ("%{seconds}d", "1.235"),
    ("%{milli}d", "1234.567"),
    ("%{milliseconds}d", "1234.567"),
    ("%{mili}d", "1234.567"),          # PHP-FPM's legacy spellings
    ("%{miliseconds}d", "1234.567"),
    ("%{micro}d", "1234567"),
    ("%{microseconds}d", "1234567"),
    ("%{HTTP_HOST}e", "example.org"),
    ("%{HTTP_X_MISSING}e", "-"),
    ("%{wsgi.version}e", "-"),         # not a FastCGI param
    ("%f", "/srv/app/shop.py"),
    ("%l", "42"),
    ("%m", "POST"),
    ("%M", "26215936"),
    ("%{bytes}M", "26215936"),
    ("%{kilo}M", "25601"),
    ("%{kilobytes}M", "25601"),
    ("%{mega}M", "25"),
    ("%{megabytes}M", "25"),
    ("%n", "www"),
    ("%{X-Cache}o", "HIT"),
    ("%{content-type}o", "text/html; charset=utf-8"),  # header names: any case
    ("%{Set-Cookie}o", "a=1"),         # the first one, as PHP-FPM
    ("%{Location}o", "-"),
    ("%p", "4321"),
    ("%P", "1000"),
    ("%q", "item=7&n=2"),
    ("%Q", "?"),
    ("%r", "/shop/cart"),
    ("%r%Q%q", "/shop/cart?item=7&n=2"),
    ("%R", "10.0.0.5"),
    ("%s", "201"),
    ("%t", "21/Nov/2026:10:00:00 +0100"),
    ("%{%Y-%m-%d %H:%M:%S}t", "2026-11-21 10:00:00"),
    ("%T", "21/Nov/2026:10:00:01 +0100"),
    ("%{%H:%M:%S}T", "10:00:01"),
    ("%u", "alice"),
])
def test_code(fmt, expected):
    assert line(fmt) == expected + "\n"


def test_default_format():
    assert line(accesslog.DEFAULT_FORMAT) == \
        '10.0.0.5 - alice 21/Nov/2026:10:00:00 +0100 "POST /shop/cart" 201\n'


def test_default_format_without_user_has_two_spaces_and_unix_peer_is_a_dash():
    environ = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/"}
    assert line(accesslog.DEFAULT_FORMAT, environ=environ, peer=None, status="200 OK") == \
        '- -  21/Nov/2026:10:00:00 +0100 "GET /" 200\n'


def test_missing_values():
    r = dict(environ={}, status="", headers=[], peer=None)
    assert line("%m|%f|%r|%q|%Q|%u|%l|%s|%R|%{A}e|%{B}o", **r) == "-|-|||||0|-|-|-|-\n"


def test_every_code_in_one_format():
    fmt = ("%% %C %{user}C %{system}C %d %{milli}d %{micro}d %{HTTP_HOST}e %f %l %m %M "
           "%{kilo}M %{mega}M %n %{X-Cache}o %p %P %q %Q %r %R %s %t %{%s}t %T %u")
    expected = ("%% 60.75 40.50 20.25 1.235 1234.567 1234567 example.org /srv/app/shop.py 42 "
                "POST 26215936 25601 25 www HIT 4321 1000 item=7&n=2 ? /shop/cart 10.0.0.5 201 "
                "21/Nov/2026:10:00:00 +0100 %d 21/Nov/2026:10:00:01 +0100 alice\n"
                % (accepted_us() // 1_000_000))
    assert line(fmt) == expected


def test_r_without_request_uri_is_script_name_and_path_info():
    assert line("%r", environ={"SCRIPT_NAME": "/app", "PATH_INFO": "/x"}) == "/app/x\n"


def test_u_from_a_basic_authorization_header():
    environ = {"HTTP_AUTHORIZATION": "Basic Ym9iOnNlY3JldA=="}  # bob:secret
    assert line("%u", environ=environ) == "bob\n"
    assert line("%u", environ={"HTTP_AUTHORIZATION": "Bearer xyz"}) == "\n"
    assert line("%u", environ={"HTTP_AUTHORIZATION": "Basic !!!"}) == "\n"


def test_cpu_of_a_zero_duration_is_zero():
    assert line("%C", duration_us=0) == "0.00\n"


def test_status_that_is_not_a_code():
    assert line("%s", status="oops") == "-\n"


def test_control_characters_from_the_request_cannot_forge_lines():
    environ = {"REQUEST_URI": "/a\nfake 200", "HTTP_USER_AGENT": "x\r\ny\x1b[31m"}
    assert line("%r %{HTTP_USER_AGENT}e", environ=environ) == \
        "/a\\x0afake 200 x\\x0d\\x0ay\\x1b[31m\n"


def test_bytes_are_written_as_received():
    # WSGI strings are latin-1 stand-ins for the bytes; the line carries the UTF-8 as sent.
    environ = {"REQUEST_URI": "/caf\xc3\xa9"}
    assert compile("%r").render(request(environ=environ)) == "/café\n".encode()


def test_long_lines_are_not_truncated():
    query = "q=" + "x" * 10000
    out = line("%q", environ={"QUERY_STRING": query})
    assert out == query + "\n"


def test_a_braced_empty_modifier_is_the_default():
    assert line("%{}d") == "1.235\n"


def test_a_lone_percent_at_the_end_is_dropped_as_php_fpm_does():
    assert line("done %") == "done \n"


# --- format errors: PHP-FPM's messages --------------------------------------------------------

@pytest.mark.parametrize("fmt, message", [
    ("%{cpu}C", "only 'total', 'user' or 'system' are allowed as a modifier for %C ('cpu')"),
    ("%{hours}d", "only 'seconds', 'milli', 'milliseconds', 'micro' or 'microseconds' are "
                  "allowed as a modifier for %d ('hours')"),
    ("%e", "the name of the environment variable must be set between embraces for %e"),
    ("%{}e", "the name of the environment variable must be set between embraces for %e"),
    ("%{giga}M", "only 'bytes', 'kilo', 'kilobytes', 'mega' or 'megabytes' are allowed as a "
                 "modifier for %M ('giga')"),
    ("%o", "the name of the header must be set between embraces for %o"),
    ("%{HTTP_HOST", "missing closing embrace in the access.format"),
    ("%{HTTP_HOST}", "missing closing embrace in the access.format"),
    ("%x", "Invalid token in the access.format (%x)"),
    ("%{x}m", "embrace is not allowed for modifier %m"),
    ("%{x}%", "embrace is not allowed for modifier %%"),
])
def test_format_errors(fmt, message):
    with pytest.raises(FormatError) as e:
        compile(fmt)
    assert str(e.value) == message


POOL = """\
[www]
listen = 127.0.0.1:9000
pm = static
pm.max_children = 1
access.format = "%R %{bogus}d"
"""


def test_a_bad_format_is_a_configuration_error_naming_file_line_pool_and_value():
    with pytest.raises(config.ConfigError) as e:
        config.loads(POOL, "/etc/pyfpm/pyfpm.conf")
    assert e.value.errors == [
        "[/etc/pyfpm/pyfpm.conf:5] [pool www] access.format: invalid value '%R %{bogus}d' "
        "(expected a format of PHP-FPM's % codes; only 'seconds', 'milli', 'milliseconds', "
        "'micro' or 'microseconds' are allowed as a modifier for %d ('bogus'))"]


def test_access_json_directive():
    text = POOL.replace("%R %{bogus}d", "%R") + "access.json = yes\n"
    assert config.loads(text).pools[0].access_json is True
    assert config.loads(POOL.replace("%R %{bogus}d", "%R")).pools[0].access_json is False


# --- JSON lines ----------------------------------------------------------------------------

def json_line(fmt, **changes):
    data = compile(fmt, json=True).render(request(**changes))
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    return json.loads(data)


def test_json_default_format():
    assert json_line(accesslog.DEFAULT_FORMAT) == {
        "remote_addr": "10.0.0.5", "user": "alice", "time": "2026-11-21T10:00:00.250000+01:00",
        "method": "POST", "uri": "/shop/cart", "status": 201}


def test_json_keys_of_every_code():
    fmt = ("%% %C %{user}C %{system}C %d %{milli}d %{micro}d %{HTTP_HOST}e %{HTTP_X}e %f %l "
           "%m %M %{kilo}M %{mega}M %n %{X-Cache}o %{Location}o %p %P %q %Q %r %R %s %t %T %u")
    assert json_line(fmt) == {
        "cpu": 60.75, "cpu_user": 40.5, "cpu_system": 20.25,
        "duration": 1.234567, "duration_ms": 1234.567, "duration_us": 1234567,
        "env": {"HTTP_HOST": "example.org", "HTTP_X": None},
        "script": "/srv/app/shop.py", "content_length": 42, "method": "POST",
        "memory": 26215936, "memory_kb": 25601, "memory_mb": 25, "pool": "www",
        "headers": {"X-Cache": "HIT", "Location": None}, "pid": 4321, "ppid": 1000,
        "query": "item=7&n=2", "uri": "/shop/cart", "remote_addr": "10.0.0.5", "status": 201,
        "time": "2026-11-21T10:00:00.250000+01:00", "log_time": "2026-11-21T10:00:01.750000+01:00",
        "user": "alice"}


def test_json_keys_follow_the_format_order_and_strftime_is_kept():
    data = compile("%s %{%H:%M}t %m", json=True).render(request())
    assert data == b'{"status":201,"time":"10:00","method":"POST"}\n'


def test_json_missing_values_are_null():
    assert json_line("%m %f %u %R %s", environ={}, peer=None, status="") == {
        "method": None, "script": None, "user": None, "remote_addr": None, "status": None}


def test_json_reads_values_as_utf8_and_escapes_what_is_not():
    environ = {"REQUEST_URI": "/caf\xc3\xa9\nx", "HTTP_X": "\xff"}
    assert json_line("%r %{HTTP_X}e", environ=environ) == {
        "uri": "/café\nx", "env": {"HTTP_X": "\\xff"}}


def test_json_pool_name_is_unicode():
    assert json_line("%n", pool="café") == {"pool": "café"}


# --- access.suppress_path (PHP-FPM 8.2's rule) --------------------------------------------------

PING = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/ping", "QUERY_STRING": ""}


@pytest.mark.parametrize("environ, status, left_out", [
    (PING, "200 OK", True),
    ({**PING, "REQUEST_METHOD": "HEAD"}, "204 No Content", True),
    ({**PING, "CONTENT_LENGTH": "0"}, "200 OK", True),
    ({**PING, "REQUEST_METHOD": "POST"}, "200 OK", False),
    ({**PING, "QUERY_STRING": "full", "REQUEST_URI": "/ping?full"}, "200 OK", False),
    ({**PING, "CONTENT_LENGTH": "5"}, "200 OK", False),
    (PING, "301 Moved Permanently", False),
    (PING, "500 Internal Server Error", False),
    ({**PING, "REQUEST_URI": "/ping/"}, "200 OK", False),   # exact paths only
    ({**PING, "REQUEST_URI": "/health"}, "200 OK", True),
])
def test_suppress_path(environ, status, left_out):
    assert accesslog.suppressed(frozenset({"/ping", "/health"}), environ, status) is left_out


# --- the Writer, over real files and sockets ---------------------------------------------------

@pytest.fixture
def log_file(tmp_path):
    path = tmp_path / "access.log"
    fd = accesslog.open_log_file(str(path))
    yield path, fd
    os.close(fd)


def test_writer_writes_one_line_per_request_with_the_tcp_peer(log_file):
    path, fd = log_file
    writer = Writer(fd, compile('%R "%m %r%Q%q" %s %n %p %P'), (), "www")
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        with client, conn:
            environ = {"REQUEST_METHOD": "GET", "REQUEST_URI": "/a?b=1", "QUERY_STRING": "b=1"}
            writer.write(environ, "200 OK", [], accepted_us(), 1000, conn.fileno())
            writer.write(environ, "404 Not Found", [], accepted_us(), 1000, conn.fileno())
            conn.getpeername()  # the writer left the connection's fd alone
    assert path.read_text() == (
        '127.0.0.1 "GET /a?b=1" 200 www %d %d\n127.0.0.1 "GET /a?b=1" 404 www %d %d\n'
        % ((os.getpid(), os.getppid()) * 2))


def test_writer_peer_of_a_unix_socket_is_a_dash(log_file):
    path, fd = log_file
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        Writer(fd, "%R %s", (), "www").write({}, "200 OK", [], accepted_us(), 1, a.fileno())
    assert path.read_text() == "- 200\n"


def test_writer_ipv6_peer(log_file):
    path, fd = log_file
    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server:
        client = socket.create_connection(server.getsockname()[:2])
        conn, _ = server.accept()
        with client, conn:
            Writer(fd, "%R", (), "www").write({}, "200 OK", [], 0, 1, conn.fileno())
    assert path.read_text() == "::1\n"


def test_writer_leaves_out_suppressed_paths(log_file):
    path, fd = log_file
    writer = Writer(fd, "%r %s", ["/ping"], "www")
    writer.write(PING, "200 OK", [], 0, 1, -1)
    writer.write({**PING, "REQUEST_URI": "/other"}, "200 OK", [], 0, 1, -1)
    writer.write(PING, "503 Service Unavailable", [], 0, 1, -1)
    assert path.read_text() == "/other 200\n/ping 503\n"


def test_writer_json_lines(log_file):
    path, fd = log_file
    Writer(fd, compile("%m %r %s %n", json=True), (), "www").write(
        {"REQUEST_METHOD": "GET", "REQUEST_URI": "/"}, "200 OK", [], 0, 1, -1)
    assert json.loads(path.read_text()) == {"method": "GET", "uri": "/", "status": 200,
                                            "pool": "www"}


def test_writer_utf8_pool_name_in_text_lines(log_file):
    path, fd = log_file
    Writer(fd, "%n", (), "café").write({}, "200 OK", [], 0, 1, -1)
    assert path.read_text(encoding="utf-8") == "café\n"


def test_writer_cpu_is_the_time_spent_from_begin_to_the_line(log_file):
    """%C counts the CPU from the loop's begin() to the line: waiting before a request, or
    in it, is no CPU; a busy request is close to 100 %."""
    path, fd = log_file
    writer = Writer(fd, "%C", (), "www")
    time.sleep(0.1)  # between requests
    writer.begin()
    time.sleep(0.1)  # a request that waits
    writer.write({}, "200 OK", [], 0, 100_000, -1)
    writer.begin()
    start = time.process_time()
    while time.process_time() - start < 0.1:  # 0.1 s of CPU in a 0.1 s request
        pass
    writer.write({}, "200 OK", [], 0, 100_000, -1)
    first, second = (float(x) for x in path.read_text().split())
    assert first < 5 and 90 < second < 115


def test_writer_needs_no_begin_without_cpu_codes(log_file):
    _, fd = log_file
    assert Writer(fd, "%s %r", (), "www").begin is None


def test_writer_memory_is_the_peak_rss(log_file):
    path, fd = log_file
    Writer(fd, "%{kilo}M", (), "www").write({}, "200 OK", [], 0, 1, -1)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert abs(int(path.read_text()) - peak_kb) < 1024


def test_writer_one_write_per_line_and_lines_of_several_processes_do_not_mix(log_file):
    path, fd = log_file
    writer = Writer(fd, "%{HTTP_X}e", (), "www")
    pids = []
    for n in range(4):
        pid = os.fork()
        if pid == 0:
            try:
                for _ in range(200):
                    writer.write({"HTTP_X": str(n) * 5000}, "200 OK", [], 0, 1, -1)
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        assert os.waitpid(pid, 0)[1] == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 800 and all(x == x[0] * 5000 for x in lines)


def test_writer_ignores_a_failing_file():
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    Writer(w, "%s", (), "www").write({}, "200 OK", [], 0, 1, -1)  # EBADF: no exception
