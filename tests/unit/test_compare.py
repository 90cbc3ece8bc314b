"""bench/compare.py's pure parts: reading wrk, strace and nginx's per-connection log, the
starvation verdict, summaries, issue 6's and 17's targets, the CI guard's floor, the params
nginx sends in the params scenario, the servers' configs and command lines, nginx's config in
front of them, and the length of a run. No server is started."""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
# Only for these imports: with bench/ first on sys.path for good, the integration tests'
# `from conftest import ...` would find bench/conftest.py.
_PATH = list(sys.path)
sys.path.insert(0, str(BENCH))
import compare  # noqa: E402
import compare_measure as measure  # noqa: E402
import compare_report as report  # noqa: E402
import compare_servers as servers  # noqa: E402
sys.path[:] = _PATH

WRK = """\
Running 2s test @ http://127.0.0.1:40000/pyfpm/unix/off/hello
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   612.34us  300.12us   8.01ms   90.00%
    Req/Sec    25.01k     1.20k   27.00k    70.00%
  Latency Distribution
     50%  540.00us
     75%  700.00us
     90%  900.00us
     99%    2.10ms
  49776 requests in 2.00s, 7.01MB read
  Socket errors: connect 0, read 1, write 0, timeout 3
  Non-2xx or 3xx responses: 2
Requests/sec:  24888.12
Transfer/sec:      3.50MB
"""

STRACE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 40.00    0.004000           1      3000           writev
 30.00    0.003000           1      3000      1000 recvfrom
 20.00    0.002000           1      3000           accept4
 10.00    0.001000           1      3000           close
  0.00    0.000000           0        12           epoll_wait
------ ----------- ----------- --------- --------- ----------------
100.00    0.010000           0     12012      1000 total
"""

# Debian 12's /etc/nginx/fastcgi_params, its comments left out.
DEBIAN_FASTCGI_PARAMS = """\
fastcgi_param  QUERY_STRING       $query_string;
fastcgi_param  REQUEST_METHOD     $request_method;
fastcgi_param  CONTENT_TYPE       $content_type;
fastcgi_param  CONTENT_LENGTH     $content_length;

fastcgi_param  SCRIPT_NAME        $fastcgi_script_name;
fastcgi_param  REQUEST_URI        $request_uri;
fastcgi_param  DOCUMENT_URI       $document_uri;
fastcgi_param  DOCUMENT_ROOT      $document_root;
fastcgi_param  SERVER_PROTOCOL    $server_protocol;
fastcgi_param  REQUEST_SCHEME     $scheme;
fastcgi_param  HTTPS              $https if_not_empty;

fastcgi_param  GATEWAY_INTERFACE  CGI/1.1;
fastcgi_param  SERVER_SOFTWARE    nginx/$nginx_version;

fastcgi_param  REMOTE_ADDR        $remote_addr;
fastcgi_param  REMOTE_PORT        $remote_port;
fastcgi_param  REMOTE_USER        $remote_user;
fastcgi_param  SERVER_ADDR        $server_addr;
fastcgi_param  SERVER_PORT        $server_port;
fastcgi_param  SERVER_NAME        $server_name;

# PHP only, required if PHP was built with --enable-force-cgi-redirect
fastcgi_param  REDIRECT_STATUS    200;
fastcgi_param  HTTP_HOST        $host;
"""

SCENARIO = {sc.key: sc for sc in compare.SCENARIOS}


def cell(scenario, server, rate, rnd=1, **extra):
    base = {"scenario": scenario, "server": server, "round": rnd, "rate": rate, "p50": 0.5,
            "p99": 2.0, "backend_us": 20.0, "nginx_us": 25.0, "other_pct": 3.0, "non2xx": 0,
            "socket_errors": 0, "nginx_errors": 0, "midway": 0, "stalled_s": 0.0, "timeouts": 0}
    return {**base, **extra}


def test_wrk_output_read_into_rate_latency_and_errors():
    got = measure.parse_wrk(WRK)
    assert got["rate"] == 24888.12 and got["requests"] == 49776
    assert got["p50"] == pytest.approx(0.54) and got["p99"] == pytest.approx(2.1)
    assert got["max"] == pytest.approx(8.01)  # the Latency line's third column
    assert (got["non2xx"], got["socket_errors"], got["timeouts"]) == (2, 4, 3)


def test_wrk_latencies_in_seconds_are_read_too():
    # wrk pads a figure in seconds with a space: a request stuck behind a slow one
    out = WRK.replace("     99%    2.10ms", "     99%    1.28s ").replace("8.01ms", "1.32s")
    got = measure.parse_wrk(out)
    assert (got["p99"], got["max"]) == (1280.0, 1320.0)


def test_strace_table_read_by_its_columns_blank_errors_included():
    got = measure.parse_strace(STRACE)
    assert got == {"writev": 3000, "recvfrom": 3000, "accept4": 3000, "close": 3000,
                   "epoll_wait": 12, "total": 12012}
    assert measure.parse_strace("strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted") == {}


def test_syscalls_per_request_from_the_workers_count_and_the_requests_wrk_completed():
    f = report.syscall_figures({"requests": 3000, "workers": measure.parse_strace(STRACE),
                                "master": {"epoll_wait": 30, "total": 30}}, top=3)
    assert f["per_request"] == pytest.approx(12012 / 3000)
    assert f["master_per_request"] == pytest.approx(0.01)
    assert f["top"] == [("accept4", 1.0), ("close", 1.0), ("recvfrom", 1.0)]
    assert report.syscall_figures({"error": "strace did not attach"}) == {
        "error": "strace did not attach"}


def test_connection_counts_take_only_the_200s():
    lines = ["7 200", "7 200", "8 200", "9 499", "garbage", "8 200", "8 200"]
    assert measure.connection_counts(lines) == {"7": 2, "8": 3}


def test_every_connection_served_alike_is_no_starvation():
    v = report.starvation([480, 500, 520] * 21 + [490], 64)
    assert (v["served"], v["min"], v["median"], v["starved"]) == (64, 480, 500, False)


def test_a_connection_under_a_tenth_of_the_median_starves():
    v = report.starvation([500] * 63 + [49], 64)
    assert v["starved"] and v["low"] == 1 and v["min"] == 49
    assert not report.starvation([500] * 63 + [50], 64)["starved"]


def test_connections_never_served_starve_and_count_as_zero():
    v = report.starvation([2800, 2700, 3, 1], 64)  # PHP-FPM: two pinned workers
    assert (v["served"], v["min"], v["median"], v["max"], v["starved"]) == (4, 0, 0, 2800, True)


def test_timeouts_alone_mean_starvation():
    assert report.starvation([500] * 64, 64, timeouts=2)["starved"]
    assert report.starvation([500] * 64, 64, upstream_timeouts=1)["starved"]


def test_summary_takes_medians_sums_errors_and_keeps_the_worst_round_of_connections():
    ok = report.starvation([500] * 64, 64)
    bad = report.starvation([500] * 60, 64)
    cells = [cell("keep-c64", "pyfpm", r, i, conns=c, non2xx=1)
             for i, (r, c) in enumerate([(30000, ok), (10000, bad), (20000, ok)], 1)]
    cells.append({"scenario": "keep-c64", "server": "pyfpm", "round": 4, "error": "wrk died"})
    s = report.summarize(cells)["keep-c64", "pyfpm"]
    assert s["rate"] == 20000 and s["rounds"] == 3 and s["non2xx"] == 3
    assert s["failed"] == ["wrk died"]
    assert s["conns"]["served"] == 60 and s["conns"]["starved"]


def full_summary(**rates):
    """A summary where pyfpm meets every target, with ``rates`` overriding pyfpm's req/s."""
    peers = {"php-fpm": 10000, "uwsgi": 13000}
    ours = {"unix-c16": 20000, "unix-c64": 21000, "tcp-c16": 17000, "keep-c64": 30000,
            "post-c16": 900, "params-c16": 19000, **rates}
    cells = [cell(k, "pyfpm", r, backend_us=18.0, p99=1.5,
                  conns=report.starvation([400] * 64, 64) if k == "keep-c64" else None)
             for k, r in ours.items()]
    cells += [cell(k, p, r, p99=2.5) for k in ours for p, r in peers.items()]
    return report.summarize(cells)


def test_targets_all_met():
    rows = report.targets(full_summary(), {"pyfpm": {"uss": 1990, "fresh": {"uss": 1900}}},
                          {"pyfpm": report.start_figures([20.0, 22.0, 30.0])},
                          {"pyfpm": {"per_request": 4.0}})
    assert len(rows) == 14
    assert [met for _, _, met in rows] == [True] * 14, rows


def test_targets_missed_say_by_how_much():
    rows = dict((t, (m, met)) for t, m, met in report.targets(
        full_summary(**{"unix-c16": 16000, "tcp-c16": 12000, "keep-c64": 20000}),
        {"pyfpm": {"uss": 3096, "fresh": {"uss": 2200}}}, {"pyfpm": report.start_figures([256.5])},
        {"pyfpm": {"per_request": 6.0}}))
    assert rows["≥ 1.7× PHP-FPM's req/s (unix, c16)"] == ("1.60×", False)
    assert rows["TCP ≥ 80 % of unix (c16)"] == ("75%", False)
    assert rows["keep_conn on, c64: req/s above keep_conn off (unix, c64)"][1] is False
    assert rows["idle worker USS ≤ 2 MiB (preload = yes; at start, before any load)"] == (
        "2,200 KiB", False)
    assert rows["idle worker USS ≤ 2 MiB (preload = yes; after the warm-up)"] == ("3,096 KiB", False)
    assert rows["start to first response ≤ 25 ms (median)"] == ("256.5 ms", False)
    assert rows["≤ 5 syscalls per hello-world request (workers, strace -c)"][1] is False


def test_targets_at_the_line_are_met_and_unmeasured_ones_say_so():
    rows = report.targets(full_summary(**{"unix-c16": 17000}))  # 1.7× exactly
    assert rows[0] == ("≥ 1.7× PHP-FPM's req/s (unix, c16)", "1.70×", True)
    unmeasured = [t for t, m, met in rows if met is None]
    assert all(m == "not measured" for t, m, met in rows if met is None)
    assert len(unmeasured) == 4  # syscalls, USS twice, start: not given


def test_a_starved_keep_conn_cell_misses_its_target():
    s = full_summary()
    s["keep-c64", "pyfpm"]["conns"] = report.starvation([400] * 62, 64)
    row = next(r for r in report.targets(s) if r[0].endswith("no connection starves"))
    assert row[2] is False and row[1].startswith("62/64 served, min 0")


def test_p99_target_compares_every_keep_conn_off_hello_cell():
    s = full_summary()
    s["tcp-c16", "pyfpm"]["p99"] = 3.0  # PHP-FPM's is 2.5
    row = next(r for r in report.targets(s) if r[0].startswith("p99"))
    assert row[2] is False and "tcp-c16 3.00 / 2.50 ms" in row[1]


def test_floor_passes_above_it():
    assert report.floor_verdict({"hello": 1.4}, None, 1.15) == (0, ["pyfpm ÷ php-fpm, hello: 1.40×"])


def test_floor_below_once_then_above_passes():
    code, lines = report.floor_verdict({"hello": 1.1}, {"hello": 1.3}, 1.15)
    assert code == 0 and "measured again: 1.30×" in lines[0] and "passes" in lines[0]


def test_floor_below_twice_fails_and_prints_both():
    code, lines = report.floor_verdict({"hello": 1.1}, {"hello": 1.12}, 1.15)
    assert code == 1 and "1.10×" in lines[0] and "1.12×" in lines[0]


def test_floor_without_a_ratio_fails():
    assert report.floor_verdict({"hello": None}, None, 1.15)[0] == 1
    assert report.floor_verdict({"hello": 1.0}, {"hello": None}, 1.15)[0] == 1


@pytest.mark.parametrize("text", [DEBIAN_FASTCGI_PARAMS, "real"])
def test_params_scenario_sends_30_params_with_2_kib_of_headers(text):
    if text == "real":
        if not compare.FASTCGI_PARAMS.exists():
            pytest.skip("no nginx here")
        text = compare.FASTCGI_PARAMS.read_text()
    params = compare.forwarded_params(text, compare.BENCH_HEADERS)
    assert "HTTPS" not in params and params["HTTP_HOST"] == "127.0.0.1"
    assert len(params) == 30
    assert compare.header_bytes(params) == 2043
    title = SCENARIO["params-c16"].title  # the report states these numbers
    assert "30 params" in title and "9 headers" in title and "2,043 B" in title


def test_every_scenario_of_issue_6_is_there_and_payloads_give_mib():
    assert {"unix-c16", "unix-c64", "tcp-c16", "keep-c16", "tcp-keep-c16", "keep-c64",
            "params-c16", "big-c16", "post-c16"} == set(compare.SCENARIO_SETS["issue6"])
    assert all(SCENARIO[k].variant == "hello" and not SCENARIO[k].slow
               for k in compare.SCENARIO_SETS["issue6"])
    assert SCENARIO["keep-c64"].counted and SCENARIO["keep-c64"].connections == 64
    assert report.mib_text(10240, SCENARIO["big-c16"].mib) == " (1,000 MiB/s)"
    assert report.mib_text(800, SCENARIO["post-c16"].mib) == ""  # req/s already is MiB/s


def test_markdown_has_one_row_per_scenario_and_the_new_sections():
    s = full_summary()
    s["keep-c64", "php-fpm"]["conns"] = report.starvation([2800, 2700], 64)
    scenarios = [SCENARIO[k] for k in ("unix-c16", "keep-c64", "post-c16")]
    text = report.markdown(scenarios, ["pyfpm", "php-fpm", "uwsgi"], s, {}, {},
                           {"title": "t", "description": "d"},
                           {"pyfpm": report.start_figures([21.0, 23.0, "exited with code 1"])},
                           {"pyfpm": report.syscall_figures(
                               {"requests": 3000, "workers": measure.parse_strace(STRACE)})})
    rows = [line for line in text.splitlines() if line.startswith("| hello, unix, c16 |")]
    assert rows[0].endswith("| 2.00× | 1.54× |")  # the main table: pyfpm ÷ each peer
    assert ("| hello, unix, keep_conn on, c64 | php-fpm | 2 / 64 | 0 / 0 / 2,800 | 0 / 0 | "
            "**starved** |") in text
    assert "**10,000** (starved)" in text
    assert "| pyfpm | 22.0 | 23.0 | 2; 1 failed: exited with code 1 |" in text
    assert "| pyfpm | **4.0** | 0.00 | accept4 1.00, close 1.00, recvfrom 1.00" in text
    assert "Issue 6's targets for pyfpm" in text


def test_default_run_stays_within_10_minutes_and_quick_within_one():
    full = compare.parse_args([])
    quick = compare.parse_args(["--quick", "--floor", "1.15"])
    plan = lambda a: compare.plan_seconds(a.scenarios, a.servers, a.rounds, a.duration,  # noqa: E731
                                          a.warmup, a.starts, a.strace)
    assert plan(full) <= 600
    assert (quick.servers, [sc.key for sc in quick.scenarios]) == (["pyfpm", "php-fpm"], ["unix-c16"])
    assert (quick.rounds, quick.duration, quick.starts, quick.strace) == (3, 2.0, 0, 0)
    assert 2 * plan(quick) <= 90  # measured again once: still well under CI's 2 minutes


def test_the_plan_matches_the_five_scenario_run_it_was_fitted_to():
    five = [SCENARIO[k] for k in ("unix-c16", "unix-c64", "tcp-c16", "keep-c16", "post-c16")]
    assert 360 <= compare.plan_seconds(five, compare.FASTCGI_SERVERS, 3, 5.0, 1.0, 0, 0) <= 420

# --- issue 17: the HTTP servers, the slow request, Django, recycling and reloads ------------

def test_issue_17_scenarios_pair_up_as_its_targets_read_them():
    issue17 = {k: SCENARIO[k] for k in compare.SCENARIO_SETS["issue17"]}
    assert set(issue17) == {report.SLOW, report.SLOW_BASE, report.DJANGO_KEEP,
                            report.DJANGO_OFF, report.RECYCLE}
    slow, base = issue17[report.SLOW], issue17[report.SLOW_BASE]
    assert slow.slow and not base.slow  # the same cell but for the slow request
    assert (slow.keep, slow.connections, slow.path) == (base.keep, base.connections, base.path) \
        == ("on", 8, "hello")
    assert (issue17[report.DJANGO_KEEP].keep, issue17[report.DJANGO_OFF].keep) == ("on", "off")
    assert {issue17[k].variant for k in (report.DJANGO_KEEP, report.DJANGO_OFF)} == {"django"}
    recycle = issue17[report.RECYCLE]
    assert recycle.recycle and recycle.post and recycle.keep == "on" and recycle.connections == 16


def test_servers_all_and_scenario_sets_expand_and_the_default_stays_issue_6():
    args = compare.parse_args(["--servers", "all", "--scenarios", "issue17,unix-c16"])
    assert args.servers == list(compare.SERVERS) and len(args.servers) == 7
    assert [sc.key for sc in args.scenarios] == [*compare.SCENARIO_SETS["issue17"], "unix-c16"]
    default = compare.parse_args([])
    assert default.servers == list(compare.FASTCGI_SERVERS)
    assert [sc.key for sc in default.scenarios] == list(compare.SCENARIO_SETS["issue6"])
    with pytest.raises(SystemExit):
        compare.parse_args(["--scenarios", "issue18"])


def test_recycle_and_slow_cells_take_longer_in_the_plan():
    one = [SCENARIO["slow-base-c8"]]
    base = compare.plan_seconds(one, ["pyfpm"], 1, 3.0, 0, 0, 0)
    assert compare.plan_seconds([SCENARIO["slow-c8"]], ["pyfpm"], 1, 3.0, 0, 0, 0) == \
        pytest.approx(base + compare.SLOW_START + compare.SLOW_S)
    recycle = compare.cell_seconds(SCENARIO["recycle-c16"], 3.0)
    assert recycle == compare.RELOADS * (3.0 + compare.SHRINK_WAIT)
    # not warmed up: the warm-up adds nothing to a recycle cell's plan
    assert compare.plan_seconds([SCENARIO["recycle-c16"]], ["pyfpm"], 1, 3.0, 1.0, 0, 0) == \
        compare.plan_seconds([SCENARIO["recycle-c16"]], ["pyfpm"], 1, 3.0, 0, 0, 0)


def test_the_issue_17_run_of_bench_readme_stays_within_10_minutes():
    a = compare.parse_args(["--servers", "all", "--scenarios", "issue17", "--rounds", "2",
                            "--duration", "2s", "--starts", "0", "--strace", "0"])
    assert compare.plan_seconds(a.scenarios, a.servers, a.rounds, a.duration, a.warmup,
                                a.starts, a.strace) <= 600


def test_wrk_runs_of_a_recycle_cell_combine_into_one():
    runs = [{"requests": 900, "seconds": 3.0, "p50": 2.0, "p99": 30.0, "max": 80.0, "non2xx": 1,
             "socket_errors": 0, "timeouts": 0},
            {"requests": 600, "seconds": 3.0, "p50": 5.0, "p99": 90.0, "max": 400.0, "non2xx": 0,
             "socket_errors": 2, "timeouts": 1},
            {"requests": 300, "seconds": 3.0, "p50": 3.0, "p99": 20.0, "max": 60.0, "non2xx": 2,
             "socket_errors": 0, "timeouts": 0}]
    got = measure.combine_runs(runs)
    assert got["rate"] == pytest.approx(1800 / 9) and got["requests"] == 1800
    assert (got["p50"], got["p99"], got["max"]) == (3.0, 90.0, 400.0)
    assert (got["non2xx"], got["socket_errors"], got["timeouts"]) == (3, 2, 1)


def test_answers_checked_per_path_and_the_django_page_by_its_items():
    assert servers.answer_ok("hello", 200, b"Hello world\n")
    assert servers.answer_ok("slow", 200, b"Hello world\n")
    assert not servers.answer_ok("hello", 502, b"Hello world\n")
    assert servers.answer_ok("post", 200, b"1048576") and not servers.answer_ok("post", 200, b"0")
    assert servers.answer_ok("big", 200, b"a" * servers.BIG)
    from djangobench import page
    rows = "".join(f"<li>{i}</li>\n" for i in range(len(page.ITEMS))).encode()
    good = b"<html><title>" + page.TITLE.encode() + b"</title><ul>" + rows + b"</ul></html>\n"
    assert servers.answer_ok("django", 200, good)
    assert not servers.answer_ok("django", 200, good.replace(b"<li>", b"<p>", 1))  # one short
    assert not servers.answer_ok("django", 200, b"<html>Bad Request (400)</html>")


def backend(server, variant="hello", transport="unix", tmp=Path("/tmp/x")):
    b = servers.Backend(server, transport, tmp / f"{server}-{variant}", variant)
    b.address = str(b.tmp / "fcgi.sock") if transport == "unix" else "127.0.0.1:9001"
    return b


def location(config, prefix):
    return next(line.strip() for line in config.splitlines() if f"location {prefix} " in line)


def upstream(config, name):
    return next(line.strip() for line in config.splitlines() if f"upstream {name} " in line)


def test_nginx_passes_fastcgi_servers_by_keep_conn_and_proxies_the_http_ones():
    conf = servers.Nginx(Path("/tmp/n"), [backend("pyfpm"), backend("gunicorn"),
                                          backend("granian-1t", "django")]).config()
    assert "fastcgi_keep_conn on; fastcgi_pass pyfpm_unix_on;" in location(conf, "/pyfpm/unix/on/")
    assert "keepalive 16;" in upstream(conf, "pyfpm_unix_on")
    assert "keepalive" not in upstream(conf, "pyfpm_unix_off")
    # gunicorn's sync workers: proxy_pass, no upstream keepalive, whatever keep_conn says
    for keep in ("off", "on"):
        loc = location(conf, f"/gunicorn/unix/{keep}/")
        assert "proxy_pass http://gunicorn_unix_" + keep in loc and "fastcgi" not in loc
        assert "proxy_http_version" not in loc
        assert "keepalive" not in upstream(conf, f"gunicorn_unix_{keep}")
    # Granian: upstream keepalive, HTTP/1.1 without Connection: close; the Django instance
    # under its own prefix; the client's Host for Django's ALLOWED_HOSTS
    loc = location(conf, "/granian-1t-django/unix/off/")
    assert 'proxy_http_version 1.1; proxy_set_header Connection "";' in loc
    assert "proxy_set_header Host $host;" in loc
    assert "keepalive 16;" in upstream(conf, "granian_1t_django_unix_off")
    assert "server unix:/tmp/x/granian-1t-django/fcgi.sock;" in upstream(
        conf, "granian_1t_django_unix_off")


def test_process_managers_recycle_on_demand_and_uwsgi_finds_django():
    tmp = Path("/tmp/x")
    for server in ("pyfpm", "php-fpm"):
        text = servers.config_text(server, "recycle", "/s.sock", tmp)
        assert "pm = ondemand" in text and "pm.max_requests = 50" in text
        assert "pm.process_idle_timeout = 1s" in text and "pm = static" not in text
        assert "pm = static\npm.max_children = 2" in servers.config_text(server, "hello", "/s", tmp)
    pyfpm = servers.config_text("pyfpm", "django", "/s.sock", tmp)
    assert "app = djangobench.wsgi:application" in pyfpm
    assert f"python_path = {servers.BENCH}" in pyfpm
    assert "app = hello_wsgi:app" in servers.config_text("pyfpm", "hello", "/s", tmp)
    uwsgi = servers.config_text("uwsgi", "django", "/s.sock", tmp)
    assert "module = djangobench.wsgi:application" in uwsgi and "\npythonpath = /" in uwsgi
    assert "max-requests = 50" in servers.config_text("uwsgi", "recycle", "/s", tmp)
    assert "max-requests" not in servers.config_text("uwsgi", "hello", "/s", tmp)
    assert not servers.serves("php-fpm", "django") and servers.serves("php-fpm", "recycle")


def test_http_servers_command_lines():
    conf = Path("/tmp/none")
    gunicorn = servers.command("gunicorn", conf, "/tmp/g.sock", "recycle")
    if isinstance(gunicorn, str):
        pytest.skip(gunicorn)  # not installed for this Python
    text = " ".join(gunicorn)
    assert "--workers 2 --worker-class sync --preload" in text and "--bind unix:/tmp/g.sock" in text
    assert "--max-requests 50" in text and gunicorn[-1] == "hello_wsgi:app"
    assert "--max-requests" not in servers.command("gunicorn", conf, "127.0.0.1:9", "hello")
    granian = servers.command("granian", conf, "/tmp/g.sock", "django")
    if isinstance(granian, str):
        pytest.skip(granian)
    assert "--interface wsgi --workers 2" in " ".join(granian)
    assert "--blocking-threads" not in granian and granian[-1] == "djangobench.wsgi:application"
    matched = servers.command("granian-1t", conf, "127.0.0.1:9001", "hello")
    assert "--blocking-threads 1" in " ".join(matched) and "--host 127.0.0.1 --port 9001" in \
        " ".join(matched)
    assert set(servers.RELOAD_SIGNAL) == set(servers.RECYCLING) == set(servers.SERVERS)


def issue17_summary(slow_p99=3.0, base_p99=2.0, non2xx=0, upstream=0, pools=((2, 0),),
                    django=((1200, 9.0), (1000, 10.0))):
    (on_rate, on_p99), (off_rate, off_p99) = django
    cells = [cell(report.SLOW_BASE, "pyfpm", 20000, p99=base_p99, max=5.0),
             cell(report.SLOW, "pyfpm", 18000, p99=slow_p99, max=9.0, slow_done=2, slow_failed=0),
             cell(report.DJANGO_KEEP, "pyfpm", on_rate, p99=on_p99),
             cell(report.DJANGO_OFF, "pyfpm", off_rate, p99=off_p99),
             cell(report.RECYCLE, "pyfpm", 700, non2xx=non2xx, upstream_errors=upstream,
                  nginx_errors=upstream, requests=6000, reloads=3, pools=[list(p) for p in pools])]
    return report.summarize(cells)


def test_issue_17_targets_met():
    rows = report.issue17_targets(issue17_summary())
    assert [met for _, _, met in rows] == [True] * 4, rows
    assert rows[0][1] == "3.00 / 2.00 ms = 1.50×"
    assert "0 non-2xx, 0 upstream error lines (6,000 POSTs, 3 reloads; pool shrank when idle: " \
        "yes)" == rows[1][1]


def test_issue_17_targets_missed_and_unmeasured():
    rows = report.issue17_targets(issue17_summary(slow_p99=4.1, non2xx=9, upstream=9,
                                                  django=((900, 12.0), (1000, 10.0))))
    assert [met for _, _, met in rows] == [False] * 4
    assert report.issue17_targets(issue17_summary(), server="uwsgi") == [
        (t, "not measured", None) for t, _, _ in rows]
    assert report.issue17_targets(issue17_summary(upstream=1))[1][2] is False
    assert report.issue17_targets(issue17_summary(slow_p99=4.0))[0][2] is True  # 2× exactly


def test_pool_shrinks_only_when_fewer_workers_after_the_wait():
    assert report.shrank([[[2, 0], [2, 2]]]) and not report.shrank([[[2, 2]], [[3, 3]]])
    assert not report.shrank([])


def test_summary_keeps_the_worst_max_and_sums_the_new_counts():
    cells = [cell(report.SLOW, "pyfpm", 1000, 1, max=9.0, slow_done=2, slow_failed=1),
             cell(report.SLOW, "pyfpm", 1000, 2, max=30.0, slow_done=3, slow_failed=0)]
    s = report.summarize(cells)[report.SLOW, "pyfpm"]
    assert (s["max"], s["slow_done"], s["slow_failed"]) == (30.0, 5, 1)
    assert report.summarize([cell("unix-c16", "pyfpm", 1)])["unix-c16", "pyfpm"]["max"] is None


def test_markdown_has_the_slow_and_recycle_tables_and_issue_17_targets():
    s = issue17_summary(non2xx=9, upstream=9)
    scenarios = [SCENARIO[k] for k in compare.SCENARIO_SETS["issue17"]]
    text = report.markdown(scenarios, ["pyfpm"], s, {}, {}, {"title": "t", "description": "d"},
                           recycling=servers.RECYCLING)
    assert "| pyfpm | 0.50 / 2.00 / 5.00 | 0.50 / 3.00 / 9.00 | **1.50×** | 20,000 / 18,000 | " \
           "2 / 0 |" in text
    recycling = servers.RECYCLING["pyfpm"]
    assert f"| pyfpm | {recycling} | 6,000 | **9** | 0 | 9 (9) | 3 | 2→0 |" in text
    assert "Issue 17's targets for pyfpm" in text
    assert "Issue 6's targets" not in text  # none of its scenarios ran


def test_issue_17_measures_pyfpm_with_keep_conn_and_the_others_behind_their_usual_front():
    for key in (report.SLOW, report.SLOW_BASE, report.DJANGO_KEEP, report.RECYCLE):
        sc = SCENARIO[key]
        assert sc.keep_for("pyfpm") == "on"
        assert {sc.keep_for(s) for s in ("php-fpm", "uwsgi", "flup")} == {"off"}
    assert SCENARIO["keep-c16"].keep_for("php-fpm") == "on"  # issue 6's: the same for all
    assert SCENARIO[report.DJANGO_OFF].keep_for("pyfpm") == "off"
