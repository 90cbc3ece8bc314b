"""fpm.status: every format short and full against PHP-FPM's bytes (written out here, from
fpm_status.c), pyfpm's additions after them, escaping of hostile values, format selection,
and OpenMetrics validity."""
import dataclasses
import json
import re
import xml.etree.ElementTree as ET

import pytest

from fpm import status
from fpm.status import NO_CACHE_HEADERS, PoolStatus, ProcStatus, choose, ping_response, render

OFFSET = 3600  # +0100

IDLE = ProcStatus(
    pid=31330, state="Idle", start_time=1700000100.0, start_since=500, requests=12808,
    request_duration=1250261, request_method="GET", request_uri="/test_mem?N=10000",
    content_length=0, user="", script="/srv/app.py", last_request_cpu=33.333,
    last_request_memory=2097152, rss=31457280)
# Running: PHP-FPM shows 0 for the last request's CPU and memory until the request ends.
BUSY = ProcStatus(
    pid=31331, state="Running", start_time=1700000200.75, start_since=399, requests=3,
    request_duration=2500, request_method="", request_uri="", content_length=1024,
    user="alice", script="", last_request_cpu=50.0, last_request_memory=4096, rss=33554432)
DYNAMIC = PoolStatus(
    pool="www", process_manager="dynamic", start_time=1700000000.5, start_since=600,
    accepted_conn=190460, listen_queue=0, max_listen_queue=1, listen_queue_len=511,
    idle_processes=1, active_processes=1, total_processes=2, max_active_processes=2,
    max_children_reached=0, slow_requests=4, max_children=5, start_servers=2,
    min_spare_servers=1, max_spare_servers=3, app_status="ok", app_error="", procs=(IDLE, BUSY),
    parked_connections=7, head_timeouts=1240, slow_bodies=3, parked_closed=12,
    accept_failures=5, protocol_errors=2)


def body(fmt, full, pool=DYNAMIC, offset=OFFSET):
    return render(pool, fmt, full, offset)[1].decode()


# --- text -------------------------------------------------------------------------------------

TEXT_PHP = """\
pool:                 www
process manager:      dynamic
start time:           14/Nov/2023:23:13:20 +0100
start since:          600
accepted conn:        190460
listen queue:         0
max listen queue:     1
listen queue len:     511
idle processes:       1
active processes:     1
total processes:      2
max active processes: 2
max children reached: 0
slow requests:        4
"""
TEXT_LIMITS = """\
max children:         5
start servers:        2
min spare servers:    1
max spare servers:    3
app status:           ok
app error:            -
parked connections:   7
head timeouts:        1240
slow bodies:          3
parked closed:        12
accept failures:      5
protocol errors:      2
"""
TEXT_IDLE_PHP = """
************************
pid:                  31330
state:                Idle
start time:           14/Nov/2023:23:15:00 +0100
start since:          500
requests:             12808
request duration:     1250261
request method:       GET
request URI:          /test_mem?N=10000
content length:       0
user:                 -
script:               /srv/app.py
last request cpu:     33.33
last request memory:  2097152
"""
TEXT_BUSY_PHP = """
************************
pid:                  31331
state:                Running
start time:           14/Nov/2023:23:16:40 +0100
start since:          399
requests:             3
request duration:     2500
request method:       -
request URI:          -
content length:       1024
user:                 alice
script:               -
last request cpu:     0.00
last request memory:  0
"""


def test_text_short():
    assert render(DYNAMIC, "text", False, OFFSET) == (
        "text/plain;charset=UTF-8", (TEXT_PHP + TEXT_LIMITS).encode())


def test_text_full():
    assert body("text", True) == (TEXT_PHP + TEXT_LIMITS
                                  + TEXT_IDLE_PHP + "rss:                  31457280\n"
                                  + TEXT_BUSY_PHP + "rss:                  33554432\n")


@pytest.mark.parametrize("pm", ["static", "ondemand"])
def test_spare_server_limits_only_for_dynamic(pm):
    pool = dataclasses.replace(DYNAMIC, process_manager=pm, procs=())
    expected = (TEXT_PHP.replace("dynamic", pm) + "max children:         5\n"
                + TEXT_LIMITS[TEXT_LIMITS.index("app status"):])
    assert body("text", False, pool) == expected
    assert "start servers" not in body("json", True, pool)
    assert "phpfpm_start_servers" not in body("openmetrics", False, pool)
    assert "phpfpm_max_children 5\n" in body("openmetrics", False, pool)


def test_times_use_the_offset_and_c_locale_month_names():
    pool = dataclasses.replace(DYNAMIC, start_time=0.0, procs=())
    assert "start time:           31/Dec/1969:19:30:00 -0430\n" in body("text", False, pool, -16200)
    pool = dataclasses.replace(DYNAMIC, start_time=1717225199.9, procs=())  # 2024-06-01 06:59:59Z
    assert "start time:           01/Jun/2024:12:29:59 +0530\n" in body("text", False, pool, 19800)
    assert "<td>01/Jun/2024:06:59:59 +0000</td>" in body("html", False, pool, 0)
    # JSON and XML give the epoch, whatever the offset.
    assert '"start time":1717225199,' in body("json", False, pool, 19800)
    assert "<start-time>1717225199</start-time>" in body("xml", False, pool, 19800)


def test_a_pool_whose_app_cannot_be_loaded_says_so_and_why():
    pool = dataclasses.replace(DYNAMIC, app_status="failing", procs=(),
                               app_error="cannot import module 'x' for app 'x:app': "
                                         "ModuleNotFoundError: No module named 'x'")
    assert (
        "app status:           failing\n"
        "app error:            cannot import module 'x' for app 'x:app': ModuleNotFoundError: "
        "No module named 'x'\nparked connections:") in body("text", False, pool)
    data = json.loads(body("json", False, pool))
    assert (data["app status"], data["app error"]) == ("failing", pool.app_error)
    assert 'phpfpm_app_status{status="failing"} 1\n' in body("openmetrics", False, pool)


# --- JSON -------------------------------------------------------------------------------------

JSON_PHP = ('{"pool":"www","process manager":"dynamic","start time":1700000000,"start since":600,'
            '"accepted conn":190460,"listen queue":0,"max listen queue":1,"listen queue len":511,'
            '"idle processes":1,"active processes":1,"total processes":2,'
            '"max active processes":2,"max children reached":0,"slow requests":4')
JSON_LIMITS = (',"max children":5,"start servers":2,"min spare servers":1,"max spare servers":3'
               ',"app status":"ok","app error":"-","parked connections":7,"head timeouts":1240'
               ',"slow bodies":3,"parked closed":12,"accept failures":5'
               ',"protocol errors":2')
JSON_IDLE_PHP = ('{"pid":31330,"state":"Idle","start time":1700000100,"start since":500,'
                 '"requests":12808,"request duration":1250261,"request method":"GET",'
                 '"request uri":"/test_mem?N=10000","content length":0,"user":"-",'
                 '"script":"/srv/app.py","last request cpu":33.33,"last request memory":2097152')
JSON_BUSY_PHP = ('{"pid":31331,"state":"Running","start time":1700000200,"start since":399,'
                 '"requests":3,"request duration":2500,"request method":"-",'
                 '"request uri":"-","content length":1024,"user":"alice",'
                 '"script":"-","last request cpu":0.00,"last request memory":0')


def test_json_short():
    ct, data = render(DYNAMIC, "json", False, OFFSET)
    assert ct == "application/json"
    assert data.decode() == JSON_PHP + JSON_LIMITS + "}"


def test_json_full():
    assert body("json", True) == (
        JSON_PHP + JSON_LIMITS + ', "processes":['
        + JSON_IDLE_PHP + ',"rss":31457280},' + JSON_BUSY_PHP + ',"rss":33554432}]}')
    parsed = json.loads(body("json", True))
    assert [p["pid"] for p in parsed["processes"]] == [31330, 31331]


# --- XML --------------------------------------------------------------------------------------

XML_PHP = """\
<?xml version="1.0" ?>
<status>
<pool>www</pool>
<process-manager>dynamic</process-manager>
<start-time>1700000000</start-time>
<start-since>600</start-since>
<accepted-conn>190460</accepted-conn>
<listen-queue>0</listen-queue>
<max-listen-queue>1</max-listen-queue>
<listen-queue-len>511</listen-queue-len>
<idle-processes>1</idle-processes>
<active-processes>1</active-processes>
<total-processes>2</total-processes>
<max-active-processes>2</max-active-processes>
<max-children-reached>0</max-children-reached>
<slow-requests>4</slow-requests>
"""
XML_LIMITS = """\
<max-children>5</max-children>
<start-servers>2</start-servers>
<min-spare-servers>1</min-spare-servers>
<max-spare-servers>3</max-spare-servers>
<app-status>ok</app-status>
<app-error>-</app-error>
<parked-connections>7</parked-connections>
<head-timeouts>1240</head-timeouts>
<slow-bodies>3</slow-bodies>
<parked-closed>12</parked-closed>
<accept-failures>5</accept-failures>
<protocol-errors>2</protocol-errors>
"""
XML_IDLE_PHP = (
    "<process><pid>31330</pid><state>Idle</state><start-time>1700000100</start-time>"
    "<start-since>500</start-since><requests>12808</requests>"
    "<request-duration>1250261</request-duration><request-method>GET</request-method>"
    "<request-uri>/test_mem?N=10000</request-uri><content-length>0</content-length>"
    "<user>-</user><script>/srv/app.py</script><last-request-cpu>33.33</last-request-cpu>"
    "<last-request-memory>2097152</last-request-memory>")
XML_BUSY_PHP = (
    "<process><pid>31331</pid><state>Running</state><start-time>1700000200</start-time>"
    "<start-since>399</start-since><requests>3</requests>"
    "<request-duration>2500</request-duration><request-method>-</request-method>"
    "<request-uri>-</request-uri><content-length>1024</content-length>"
    "<user>alice</user><script>-</script><last-request-cpu>0.00</last-request-cpu>"
    "<last-request-memory>0</last-request-memory>")


def test_xml_short():
    assert render(DYNAMIC, "xml", False, OFFSET) == (
        "text/xml;charset=UTF-8", (XML_PHP + XML_LIMITS + "</status>").encode())


def test_xml_full():
    assert body("xml", True) == (
        XML_PHP + XML_LIMITS + "<processes>\n"
        + XML_IDLE_PHP + "<rss>31457280</rss></process>\n"
        + XML_BUSY_PHP + "<rss>33554432</rss></process>\n"
        + "</processes>\n</status>")
    ET.fromstring(body("xml", True).encode())  # well-formed


# --- HTML -------------------------------------------------------------------------------------

HTML_PHP = """\
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">
<head><title>PHP-FPM Status Page</title></head>
<body>
<table>
<tr><th>pool</th><td>www</td></tr>
<tr><th>process manager</th><td>dynamic</td></tr>
<tr><th>start time</th><td>14/Nov/2023:23:13:20 +0100</td></tr>
<tr><th>start since</th><td>600</td></tr>
<tr><th>accepted conn</th><td>190460</td></tr>
<tr><th>listen queue</th><td>0</td></tr>
<tr><th>max listen queue</th><td>1</td></tr>
<tr><th>listen queue len</th><td>511</td></tr>
<tr><th>idle processes</th><td>1</td></tr>
<tr><th>active processes</th><td>1</td></tr>
<tr><th>total processes</th><td>2</td></tr>
<tr><th>max active processes</th><td>2</td></tr>
<tr><th>max children reached</th><td>0</td></tr>
<tr><th>slow requests</th><td>4</td></tr>
"""
HTML_LIMITS = """\
<tr><th>max children</th><td>5</td></tr>
<tr><th>start servers</th><td>2</td></tr>
<tr><th>min spare servers</th><td>1</td></tr>
<tr><th>max spare servers</th><td>3</td></tr>
<tr><th>app status</th><td>ok</td></tr>
<tr><th>app error</th><td>-</td></tr>
<tr><th>parked connections</th><td>7</td></tr>
<tr><th>head timeouts</th><td>1240</td></tr>
<tr><th>slow bodies</th><td>3</td></tr>
<tr><th>parked closed</th><td>12</td></tr>
<tr><th>accept failures</th><td>5</td></tr>
<tr><th>protocol errors</th><td>2</td></tr>
"""
HTML_PROCS_HEADER_PHP = (
    '<table border="1">\n<tr><th>pid</th><th>state</th><th>start time</th><th>start since</th>'
    "<th>requests</th><th>request duration</th><th>request method</th><th>request uri</th>"
    "<th>content length</th><th>user</th><th>script</th><th>last request cpu</th>"
    "<th>last request memory</th>")
HTML_IDLE_PHP = (
    "<tr><td>31330</td><td>Idle</td><td>14/Nov/2023:23:15:00 +0100</td><td>500</td>"
    "<td>12808</td><td>1250261</td><td>GET</td><td>/test_mem?N=10000</td><td>0</td>"
    "<td>-</td><td>/srv/app.py</td><td>33.33</td><td>2097152</td>")
HTML_BUSY_PHP = (
    "<tr><td>31331</td><td>Running</td><td>14/Nov/2023:23:16:40 +0100</td><td>399</td>"
    "<td>3</td><td>2500</td><td>-</td><td>-</td><td>1024</td>"
    "<td>alice</td><td>-</td><td>0.00</td><td>0</td>")


def test_html_short():
    assert render(DYNAMIC, "html", False, OFFSET) == (
        "text/html;charset=UTF-8",
        (HTML_PHP + HTML_LIMITS + "</table>\n</body></html>").encode())


def test_html_full():
    assert body("html", True) == (
        HTML_PHP + HTML_LIMITS + "</table>\n"
        + HTML_PROCS_HEADER_PHP + "<th>rss</th></tr>\n"
        + HTML_IDLE_PHP + "<td>31457280</td></tr>\n"
        + HTML_BUSY_PHP + "<td>33554432</td></tr>\n"
        + "</table></body></html>")
    ET.fromstring(body("html", True).encode())  # XHTML: well-formed XML


# --- OpenMetrics ------------------------------------------------------------------------------

# PHP-FPM 8.1+'s output for DYNAMIC, verbatim from fpm_status.c.
OPENMETRICS_PHP = """\
# HELP phpfpm_up Could pool www using a dynamic PM on PHP-FPM be reached?
# TYPE phpfpm_up gauge
phpfpm_up 1
# HELP phpfpm_start_since The number of seconds since FPM has started.
# TYPE phpfpm_start_since counter
phpfpm_start_since 600
# HELP phpfpm_accepted_connections The number of requests accepted by the pool.
# TYPE phpfpm_accepted_connections counter
phpfpm_accepted_connections 190460
# HELP phpfpm_listen_queue The number of requests in the queue of pending connections.
# TYPE phpfpm_listen_queue gauge
phpfpm_listen_queue 0
# HELP phpfpm_max_listen_queue The maximum number of requests in the queue of pending connections since FPM has started.
# TYPE phpfpm_max_listen_queue counter
phpfpm_max_listen_queue 1
# TYPE phpfpm_listen_queue_length gauge
# HELP phpfpm_listen_queue_length The size of the socket queue of pending connections.
phpfpm_listen_queue_length 511
# HELP phpfpm_idle_processes The number of idle processes.
# TYPE phpfpm_idle_processes gauge
phpfpm_idle_processes 1
# HELP phpfpm_active_processes The number of active processes.
# TYPE phpfpm_active_processes gauge
phpfpm_active_processes 1
# HELP phpfpm_total_processes The number of idle + active processes.
# TYPE phpfpm_total_processes gauge
phpfpm_total_processes 2
# HELP phpfpm_max_active_processes The maximum number of active processes since FPM has started.
# TYPE phpfpm_max_active_processes counter
phpfpm_max_active_processes 2
# HELP phpfpm_max_children_reached The number of times, the process limit has been reached, when pm tries to start more children (works only for pm 'dynamic' and 'ondemand').
# TYPE phpfpm_max_children_reached counter
phpfpm_max_children_reached 0
# HELP phpfpm_slow_requests The number of requests that exceeded your 'request_slowlog_timeout' value.
# TYPE phpfpm_slow_requests counter
phpfpm_slow_requests 4
"""
# The one change to PHP-FPM's lines: a counter sample must be named <family>_total in
# OpenMetrics, so PHP-FPM's six "counters" are declared "unknown", keeping their sample names.
OPENMETRICS_PHP_VALID = OPENMETRICS_PHP.replace(" counter\n", " unknown\n")
OPENMETRICS_LIMITS = """\
# HELP phpfpm_max_children The maximum number of processes of the pool (pm.max_children).
# TYPE phpfpm_max_children gauge
phpfpm_max_children 5
# HELP phpfpm_start_servers The number of processes created on startup (pm.start_servers).
# TYPE phpfpm_start_servers gauge
phpfpm_start_servers 2
# HELP phpfpm_min_spare_servers The desired minimum number of idle processes (pm.min_spare_servers).
# TYPE phpfpm_min_spare_servers gauge
phpfpm_min_spare_servers 1
# HELP phpfpm_max_spare_servers The desired maximum number of idle processes (pm.max_spare_servers).
# TYPE phpfpm_max_spare_servers gauge
phpfpm_max_spare_servers 3
# HELP phpfpm_app_status Whether the workers could load the pool's app: 1 for the status it is in (ok, or failing: they answer 503).
# TYPE phpfpm_app_status gauge
phpfpm_app_status{status="ok"} 1
# HELP phpfpm_parked_connections The number of connections waiting in the master for their request head, or kept for the web server's next request by a worker that stopped.
# TYPE phpfpm_parked_connections gauge
phpfpm_parked_connections 7
# HELP phpfpm_head_timeouts The number of connections closed because their request head did not come within request_head_timeout.
# TYPE phpfpm_head_timeouts counter
phpfpm_head_timeouts_total 1240
# HELP phpfpm_slow_bodies The number of requests answered 408 because their body came slower than request_body_min_rate, or stalled for request_read_timeout.
# TYPE phpfpm_slow_bodies counter
phpfpm_slow_bodies_total 3
# HELP phpfpm_parked_closed The number of connections closed while waiting for their request head because the pool held as many as it may.
# TYPE phpfpm_parked_closed counter
phpfpm_parked_closed_total 12
# HELP phpfpm_accept_failures The number of times a worker's accept() failed for want of file descriptors.
# TYPE phpfpm_accept_failures counter
phpfpm_accept_failures_total 5
# HELP phpfpm_protocol_errors The number of connections closed because what their peer sent broke the FastCGI protocol.
# TYPE phpfpm_protocol_errors counter
phpfpm_protocol_errors_total 2
"""
OPENMETRICS_PROCS = """\
# HELP phpfpm_process_state The state of the process: 1 for the state it is in.
# TYPE phpfpm_process_state gauge
phpfpm_process_state{pid="31330",state="Idle"} 1
phpfpm_process_state{pid="31331",state="Running"} 1
# HELP phpfpm_process_requests The number of requests the process has served.
# TYPE phpfpm_process_requests counter
phpfpm_process_requests_total{pid="31330"} 12808
phpfpm_process_requests_total{pid="31331"} 3
# HELP phpfpm_process_request_duration_microseconds The duration of the current request, or of the last one if the process is idle, in microseconds.
# TYPE phpfpm_process_request_duration_microseconds gauge
phpfpm_process_request_duration_microseconds{pid="31330"} 1250261
phpfpm_process_request_duration_microseconds{pid="31331"} 2500
# HELP phpfpm_process_last_request_cpu The CPU percentage the last request used; 0 while the process is not idle.
# TYPE phpfpm_process_last_request_cpu gauge
phpfpm_process_last_request_cpu{pid="31330"} 33.33
phpfpm_process_last_request_cpu{pid="31331"} 0.00
# HELP phpfpm_process_last_request_memory_bytes The memory the last request used, in bytes; 0 while the process is not idle.
# TYPE phpfpm_process_last_request_memory_bytes gauge
phpfpm_process_last_request_memory_bytes{pid="31330"} 2097152
phpfpm_process_last_request_memory_bytes{pid="31331"} 0
# HELP phpfpm_process_rss_bytes The resident set size of the process, in bytes.
# TYPE phpfpm_process_rss_bytes gauge
phpfpm_process_rss_bytes{pid="31330"} 31457280
phpfpm_process_rss_bytes{pid="31331"} 33554432
"""


def test_openmetrics_short():
    assert render(DYNAMIC, "openmetrics", False, OFFSET) == (
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        (OPENMETRICS_PHP_VALID + OPENMETRICS_LIMITS + "# EOF\n").encode())


def test_openmetrics_full_adds_per_process_families():
    assert body("openmetrics", True) == (
        OPENMETRICS_PHP_VALID + OPENMETRICS_LIMITS + OPENMETRICS_PROCS + "# EOF\n")


def test_openmetrics_changes_only_the_type_of_php_fpm_counters():
    ours = body("openmetrics", False).splitlines()
    php = OPENMETRICS_PHP.splitlines()
    changed = [(a, b) for a, b in zip(ours, php) if a != b]
    assert len(changed) == 6
    assert all(a.startswith("# TYPE ") and a == b.replace(" counter", " unknown")
               for a, b in changed)


METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABELS = re.compile(r'\{([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
                    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*)?\}\Z')
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "unknown": ("",)}


def check_openmetrics(text):
    """Structural OpenMetrics checks: '# EOF' last; each family's TYPE (one) and HELP (at most
    one) before its samples; families contiguous; valid names, labels and values; counter
    samples named <family>_total."""
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1
    seen, family, types, sampled = set(), None, {}, False
    for line in text[:-len("# EOF\n")].split("\n")[:-1]:
        if line.startswith("# "):
            kind, name, rest = line[2:].split(" ", 2)
            assert kind in ("HELP", "TYPE"), line
            assert METRIC_NAME.match(name), line
            if name != family:
                assert name not in seen, "family %s is not contiguous" % name
                seen.add(name)
                family, sampled, meta = name, False, set()
            assert not sampled, "metadata after samples: " + line
            assert kind not in meta, "second %s for %s" % (kind, name)
            meta.add(kind)
            if kind == "TYPE":
                assert rest in SUFFIXES, line
                types[name] = rest
            else:
                assert not re.search(r'\\[^\\"n]|(?<!\\)"', rest), "bad escape: " + line
            continue
        m = re.match(r"([^{ ]+)(\{.*\})? (\S+)\Z", line)
        assert m, line
        name, labels, value = m.groups()
        assert family in types, "sample before TYPE: " + line
        assert name in [family + s for s in SUFFIXES[types[family]]], line
        assert labels is None or LABELS.match(labels), line
        float(value)
        sampled = True
    return types


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("pm", ["static", "dynamic", "ondemand"])
def test_openmetrics_is_valid(full, pm):
    types = check_openmetrics(body("openmetrics", full, dataclasses.replace(DYNAMIC,
                                                                           process_manager=pm)))
    assert types["phpfpm_max_children"] == "gauge"
    assert ("phpfpm_process_rss_bytes" in types) == full


def test_openmetrics_validator_rejects_php_fpm_counters_and_bad_orders():
    """The validator above is not a rubber stamp."""
    with pytest.raises(AssertionError):
        check_openmetrics(OPENMETRICS_PHP + "# EOF\n")
    with pytest.raises(AssertionError):
        check_openmetrics(OPENMETRICS_PHP_VALID)  # no '# EOF'
    with pytest.raises(AssertionError):  # a family resumed after another
        check_openmetrics("# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\na 2\n# EOF\n")
    with pytest.raises(AssertionError):
        check_openmetrics('# TYPE a gauge\na{pid="1} 1\n# EOF\n')


def test_openmetrics_with_the_reference_parser():
    from prometheus_client.openmetrics import parser  # the reference parser, a test dependency
    families = {f.name: f for f in parser.text_string_to_metric_families(
        body("openmetrics", True, HOSTILE_POOL))}
    assert families["phpfpm_up"].documentation == \
        "Could pool %s using a dynamic PM on PHP-FPM be reached?" % HOSTILE_POOL.pool
    assert [s.labels for s in families["phpfpm_process_state"].samples] == [
        {"pid": "31330", "state": HOSTILE.state}]


# --- escaping ---------------------------------------------------------------------------------

HOSTILE = dataclasses.replace(
    IDLE,
    state='Id"le\\\n',
    request_method="G<E>T",
    request_uri='/x?a=<script>alert("1")</script>&b=\'c\'&d=\\u0022',
    user='"},{"pid":1,"x":"</td></tr><tr><td>\nslow requests:        999',
    script="/srv/\x01app\x7f.py")
HOSTILE_POOL = dataclasses.replace(DYNAMIC, pool='w"w\\w', procs=(HOSTILE,))
HOSTILE_STRINGS = {"state": HOSTILE.state, "request method": HOSTILE.request_method,
                   "request uri": HOSTILE.request_uri, "user": HOSTILE.user}


def test_json_escapes_every_string():
    parsed = json.loads(body("json", True, HOSTILE_POOL))
    assert parsed["pool"] == HOSTILE_POOL.pool
    (proc,) = parsed["processes"]
    for key, value in HOSTILE_STRINGS.items():
        assert proc[key] == value
    assert proc["script"] == HOSTILE.script


def test_xml_escapes_every_string():
    root = ET.fromstring(render(HOSTILE_POOL, "xml", True, OFFSET)[1])
    assert root.findtext("pool") == HOSTILE_POOL.pool
    proc = root.find("processes/process")
    for key, value in HOSTILE_STRINGS.items():
        assert proc.findtext(key.replace(" ", "-")) == value
    # Control characters cannot appear in XML 1.0 at all, even as references.
    assert proc.findtext("script") == "/srv/\ufffdapp\x7f.py"


def test_html_escapes_every_string():
    ns = {"h": "http://www.w3.org/1999/xhtml"}
    root = ET.fromstring(render(HOSTILE_POOL, "html", True, OFFSET)[1])
    first, procs = root.findall("h:body/h:table", ns)
    assert first.find("h:tr/h:td", ns).text == HOSTILE_POOL.pool
    header, row = procs.findall("h:tr", ns)
    cells = dict(zip([th.text for th in header], [td.text for td in row]))
    for key, value in HOSTILE_STRINGS.items():
        assert cells[key] == value
    assert "<script>" not in body("html", True, HOSTILE_POOL)


def test_text_cannot_forge_lines():
    text = body("text", True, HOSTILE_POOL)
    assert text.count("\n") == body("text", True, dataclasses.replace(
        DYNAMIC, procs=(IDLE,))).count("\n")
    assert "slow requests:        999" not in text.splitlines()
    assert "script:               /srv/\\x01app\\x7f.py\n" in text
    assert "state:                Id\"le\\\\x0a\n" in text


def test_undecodable_bytes_give_valid_utf8():
    proc = dataclasses.replace(IDLE, request_uri="/caf\udce9", user="\ud800")
    pool = dataclasses.replace(DYNAMIC, procs=(proc,))
    for fmt in ("text", "json", "xml", "html", "openmetrics"):
        render(pool, fmt, True, OFFSET)[1].decode("utf-8")
    assert json.loads(body("json", True, pool))["processes"][0]["request uri"] == "/caf\ufffd"


# --- format selection, ping, interface -----------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    ("", ("text", False)),
    ("full", ("text", True)),
    ("json", ("json", False)),
    ("json&full", ("json", True)),
    ("full&json", ("json", True)),
    ("json=1", ("json", False)),
    ("json=1&full=0", ("json", True)),     # a key counts whatever its value, as in PHP
    ("xml", ("xml", False)),
    ("html&full", ("html", True)),
    ("openmetrics", ("openmetrics", False)),
    ("openmetrics&full", ("openmetrics", True)),
    ("json&xml&html&openmetrics", ("html", False)),  # html > xml > json > openmetrics
    ("openmetrics&json", ("json", False)),
    ("json&xml", ("xml", False)),
    ("%6Ason", ("json", False)),           # keys are URL-decoded
    ("unknown", ("text", False)),
    ("JSON", ("text", False)),             # case-sensitive, as $_GET keys
    ("j", ("text", False)),                # no prefix matching (PHP-FPM < 8.3 took it as json)
    ("h=1700000000&x", ("text", False)),
    ("jsonp", ("text", False)),
    ("fulljson", ("text", False)),
])
def test_choose(query, expected):
    assert choose(query) == expected


def test_unknown_format_is_an_error():
    with pytest.raises(ValueError):
        render(DYNAMIC, "yaml", False, OFFSET)


def test_ping():
    assert ping_response("pong") == ("text/plain;charset=UTF-8", b"pong")
    assert ping_response("h\u00e9") == ("text/plain;charset=UTF-8", "h\u00e9".encode())
    assert NO_CACHE_HEADERS == [
        ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ("Cache-Control", "no-cache, no-store, must-revalidate, max-age=0")]


def test_dataclasses_are_the_agreed_interface():
    assert [f.name for f in dataclasses.fields(ProcStatus)] == [
        "pid", "state", "start_time", "start_since", "requests", "request_duration",
        "request_method", "request_uri", "content_length", "user", "script",
        "last_request_cpu", "last_request_memory", "rss"]
    assert [f.name for f in dataclasses.fields(PoolStatus)] == [
        "pool", "process_manager", "start_time", "start_since", "accepted_conn",
        "listen_queue", "max_listen_queue", "listen_queue_len", "idle_processes",
        "active_processes", "total_processes", "max_active_processes",
        "max_children_reached", "slow_requests", "max_children", "start_servers",
        "min_spare_servers", "max_spare_servers", "app_status", "app_error",
        "parked_connections", "head_timeouts", "slow_bodies", "parked_closed",
        "accept_failures", "protocol_errors", "procs"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        DYNAMIC.pool = "x"
    # Every field of the snapshots is on the page (procs as the per-process rows).
    assert {f.attr for f in status.POOL_FIELDS} == {
        f.name for f in dataclasses.fields(PoolStatus)} - {"procs"}
    assert {f.attr for f in status.PROC_FIELDS} == {f.name for f in dataclasses.fields(ProcStatus)}


# --- the live page (?live) --------------------------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    ("live", ("live", False)),
    ("live&refresh=5", ("live", False)),
    ("html&live&full", ("live", True)),    # live wins over every format
    ("json&live=0", ("live", False)),
    ("lively", ("text", False)),
])
def test_choose_live(query, expected):
    assert choose(query) == expected


def test_live_page_is_static_and_self_contained():
    """No value of the pool is in it (the script fetches them), so nothing can be injected;
    nothing is loaded from elsewhere."""
    hostile = dataclasses.replace(DYNAMIC, pool="</script><script>alert(1)</script>")
    content_type, page = render(hostile, "live", True, OFFSET)
    assert content_type == "text/html;charset=UTF-8"
    assert page == render(DYNAMIC, "live", False, 0)[1] == status.LIVE_PAGE
    text = page.decode()
    assert "alert(1)" not in text and "innerHTML" not in text
    assert not re.search(r"https?://|\bsrc=|<link|@import", text)
    assert text.count("<script>") == 1 and text.startswith("<!DOCTYPE html>")


def test_live_page_policy_admits_its_own_script_and_style_only():
    """A browser runs the inline script and style only if their hashes are in the policy."""
    import base64
    import hashlib
    text = status.LIVE_PAGE.decode()
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text)[1]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        inline = re.search(r"<%s>(.*?)</%s>" % (tag, tag), text, re.S)[1]
        digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
        assert directives[directive] == "'sha256-%s'" % digest
    assert directives["default-src"] == "'none'" and directives["connect-src"] == "'self'"
