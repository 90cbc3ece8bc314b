"""fpm.statuscli without a server: what `pyfpm status` makes of an answer, and how it shows a
pool (the summary, the --watch frame, hostile text, the rate); usage errors."""
import json

import pytest

from fpm import client, statuscli as s
from fpm.status import PoolStatus, ProcStatus, render

IDLE = ProcStatus(
    pid=31330, state="Idle", start_time=1700000100.0, start_since=500, requests=12808,
    request_duration=1250261, request_method="GET", request_uri="/test?N=1", content_length=0,
    user="", script="", last_request_cpu=33.333, last_request_memory=2097152, rss=31457280)
BUSY = ProcStatus(
    pid=4242, state="Running", start_time=1700000200.0, start_since=399, requests=3,
    request_duration=2500, request_method="POST", request_uri="/\x1b[2Jevil\x9b31m",
    content_length=0, user="", script="", last_request_cpu=0.0, last_request_memory=0, rss=1536)
POOL = PoolStatus(
    pool="www", process_manager="dynamic", start_time=1700000000.5, start_since=90061,
    accepted_conn=190460, listen_queue=1, max_listen_queue=7, listen_queue_len=511,
    idle_processes=1, active_processes=1, total_processes=2, max_active_processes=2,
    max_children_reached=3, slow_requests=4, max_children=5, start_servers=2,
    min_spare_servers=1, max_spare_servers=3, app_status="ok", app_error="", procs=(IDLE, BUSY))
# What the pool's worker sends for ?json&full: the real page, not a hand-written copy.
DATA = json.loads(render(POOL, "json", True, 0)[1])


def answer(status=200, reason="OK", ctype="application/json", body=b"{}"):
    headers = [("Content-Type", ctype)] if ctype else []
    return client.Response(status, reason, headers, body)


# --- reading an answer ------------------------------------------------------------------------

def test_status_uri_adds_the_json_query():
    assert s.status_uri("/status") == "/status?json&full"
    assert s.status_uri("/fpm?pool=a") == "/fpm?pool=a&json&full"


def test_a_status_answer_is_its_json():
    body = render(POOL, "json", True, 0)[1]
    assert s.parse(answer(body=body), "/status") == DATA


@pytest.mark.parametrize("response, said", [
    (answer(404, "Not Found", "text/html", b"<h1>Not Found</h1>"),
     "(the answer was 404 Not Found, text/html: <h1>Not Found</h1>)"),
    (answer(204, "No Content", "text/plain", b""), "(the answer was 204 No Content, text/plain)"),
    (answer(200, "OK", "text/plain", b"hello world"), "200 OK, text/plain: hello world"),
    (answer(body=b'{"pool": "www"}'), "200 OK, application/json: {\"pool\": \"www\"}"),
    (answer(body=b"[1, 2]"), "[1, 2]"),
    (answer(body=b"x" * 100), "x" * 60 + "..."),
    (answer(ctype=None, body=b"\x1b]0;title\x07"), "200 OK: \\x1b]0;title\\x07"),
])
def test_anything_else_is_not_a_status_page_and_says_what_came(response, said):
    with pytest.raises(s.StatusError) as e:
        s.parse(response, "/status")
    assert e.value.code == 1
    assert str(e.value).startswith("/status is not a status page")
    assert said in str(e.value)
    assert "pm.status_path = /status" in str(e.value)


# --- showing ----------------------------------------------------------------------------------

def test_safe_writes_controls_as_escapes():
    assert s.safe("/\x1b[2J\x9b\x7f\ud800\u00e9") == "/\\x1b[2J\\x9b\\x7f\\x00\u00e9"
    assert s.safe(12) == "12"


def test_pretty_json_is_the_same_data_indented_and_harmless():
    text = s.pretty_json(DATA)
    assert json.loads(text) == DATA
    assert '\n  "pool": "www",' in text
    assert "\x1b" not in text and "\x9b" not in text and "\\u009b" in text


@pytest.mark.parametrize("fn, value, shown", [
    (s.since, 59, "00:00:59"), (s.since, 90061, "1d 01:01:01"),
    (s.duration, 2500, "2.5 ms"), (s.duration, 1250261, "1.25 s"),
    (s.size, 512, "512B"), (s.size, 1536, "1.5K"), (s.size, 31457280, "30.0M"),
    (s.size, 3 << 30, "3.0G"), (s.size, 5 << 40, "5120.0G"),
])
def test_units(fn, value, shown):
    assert fn(value) == shown


def test_rate_is_accepted_conn_over_time_and_needs_an_earlier_sample_of_the_same_pool():
    before = dict(DATA)
    now = dict(DATA, **{"accepted conn": DATA["accepted conn"] + 30})
    assert s.rate(now, before, 2.0) == 15.0
    assert s.rate(now, None, 2.0) is None
    assert s.rate(now, before, 0.0) is None
    assert s.rate(before, now, 2.0) is None                       # the counter went back
    assert s.rate(dict(now, **{"start time": 1}), before, 2.0) is None  # restarted


def test_summary_shows_the_pool_then_each_worker_by_pid():
    lines = s.summary(DATA).splitlines()
    assert lines[0].startswith("pool www (dynamic), up 1d 01:01:01 since 2023-11-1")
    assert lines[1] == ("processes  1 active, 1 idle, 2 total "
                        "(max 5, max active 2, max children reached 3)")
    assert lines[2] == "requests   190460 accepted, 4 slow"
    assert lines[3] == "queue      1 waiting, max 7, backlog 511"
    assert lines[5].split() == ["PID", "STATE", "REQS", "DURATION", "CPU", "RSS", "METHOD", "URI"]
    assert lines[6].split() == ["4242", "Running", "3", "2.5", "ms", "0.0%", "1.5K", "POST",
                                "/\\x1b[2Jevil\\x9b31m"]
    assert lines[7].split() == ["31330", "Idle", "12808", "1.25", "s", "33.3%", "30.0M", "GET",
                                "/test?N=1"]
    assert len(lines) == 8
    # Columns line up under their headings (right-aligned numbers end with them).
    assert lines[6].index("POST") == lines[5].index("METHOD")
    assert lines[7].index("12808") + 5 == lines[5].index("REQS") + 4


def test_summary_says_what_the_pool_refused_once_it_has():
    data = dict(DATA, **{"head timeouts": 2000, "slow bodies": 0, "protocol errors": 3})
    lines = s.summary(data).splitlines()
    assert lines[4] == "refused    2000 head timeouts, 3 protocol errors"
    assert lines[6].split()[0] == "PID"
    quiet = dict(DATA, **{"head timeouts": 0, "protocol errors": 0})
    assert not any(line.startswith("refused") for line in s.summary(quiet).splitlines())


def test_summary_of_a_php_fpm_pool_without_pyfpm_fields():
    php = {k: v for k, v in DATA.items() if k not in ("max children", "start servers",
                                                      "min spare servers", "max spare servers")}
    php["processes"] = [{k: v for k, v in p.items() if k != "rss"} for p in DATA["processes"]]
    lines = s.summary(php).splitlines()
    assert lines[1].endswith("(max active 2, max children reached 3)")
    assert lines[6].split()[6] == "-"  # no rss


def test_lines_are_cut_to_the_width_when_given():
    lines = s.summary(DATA, width=40).splitlines()
    assert max(map(len, lines[5:])) == 40
    assert lines[0].startswith("pool www")  # the pool lines are whole outside --watch


def test_watch_frame_has_the_rate_and_fits_the_terminal():
    procs = [dict(DATA["processes"][0], pid=pid) for pid in range(100, 130)]
    data = dict(DATA, processes=procs)
    text = s.frame(data, 12.345, "pyfpm status 127.0.0.1:9000 /status", width=50, height=15)
    lines = text.splitlines()
    assert lines[0] == "pyfpm status 127.0.0.1:9000 /status"
    assert lines[1] == "rate       12.3 req/s"
    assert len(lines) <= 15 - 1 and max(map(len, lines)) <= 50
    assert lines[-1] == "... %d more" % (30 - (len(lines) - 9))  # 8 lines above the rows
    assert s.frame(DATA, None, "h").splitlines()[1] == "rate       -"


# --- usage ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: address"),
    (["127.0.0.1:9000", "--json", "--watch"], "--json and --watch do not go together"),
    (["127.0.0.1:9000", "--count", "2"], "--interval and --count go with --watch"),
    (["127.0.0.1:9000", "--watch", "--interval", "0"], "'0' is not above zero"),
    (["127.0.0.1:9000", "--watch", "--interval", "nan"], "'nan' is not above zero"),
    (["127.0.0.1:9000", "--watch", "--count", "0"], "'0' is not a count of 1 or more"),
])
def test_usage_errors_exit_64(argv, message, capsys):
    assert s.main(argv) == 64
    assert message in capsys.readouterr().err


def test_a_bad_address_is_a_usage_error(capsys):
    assert s.main(["127.0.0.1:99999"]) == 64
    assert "invalid FastCGI address '127.0.0.1:99999'" in capsys.readouterr().err


def test_pyfpm_dispatches_the_status_subcommand(capsys):
    from fpm import cli
    assert cli.main(["status", "-h"]) == 0
    assert capsys.readouterr().out.startswith("usage: pyfpm status [-h] [--path PATH]")


def test_a_status_listen_404_names_where_the_status_page_is():
    response = client.Response(404, "Not Found", [("Content-Type", "text/plain"),
                                                  ("X-Fpm-Status-Path", "/fpm-status")], b"")
    with pytest.raises(s.StatusError) as e:
        s.parse(response, "/status")
    assert str(e.value) == ("/status is not a status page (the answer was 404 Not Found, "
                            "text/plain); this pm.status_listen address serves the status page "
                            "at /fpm-status (--path /fpm-status)")
