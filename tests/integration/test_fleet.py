"""Three pyfpm hosts in network namespaces behind one nginx (conf/nginx/fleet.conf as shipped):
what one member of a fleet must do when it dies, reloads, or joins (issue 18). Skipped where
the machine allows no network namespaces (not root, no iproute2)."""
import collections
import json
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import fleet
import harness
import load
from fpm import client
from tests.conftest import find_program, http_request

WHY_NOT = fleet.unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

# nginx logs each failed try at a host; these are the ones a dead or reloading host causes.
FAILED_TRY = r"(connect\(\) failed|upstream prematurely closed|Connection reset by peer)"


@pytest.fixture
def hosts(tmp_path):
    fleet.sweep()
    built = fleet.Fleet(tmp_path)
    try:
        for _ in range(3):
            built.add()
        built.nginx()
        yield built
    finally:
        built.close()


def who(port, n):
    """The host that answered each of ``n`` GETs through the front (None: not 200)."""
    out = []
    for _ in range(n):
        r = http_request(port, "GET", "/host", timeout=10)
        out.append(json.loads(r.body)["host"] if r.status == 200 else None)
    return out


def whole_again(port, name, timeout):
    """Seconds until ``name`` answers through the front again."""
    start = time.monotonic()
    harness.wait_for("%s to serve through nginx again" % name,
                     lambda: name in who(port, 6), timeout)
    return time.monotonic() - start


def test_each_host_serves_its_share(hosts):
    answered = collections.Counter(who(hosts.port, 60))
    assert set(answered) == {"h1", "h2", "h3"}, answered
    # The pools' own status and ping pages are not the internet's.
    for page in ("/status", "/status?full", "/ping"):
        assert http_request(hosts.port, "GET", page).status == 404, page
    assert hosts.upstream_errors() == []


def test_a_host_killed_under_load_costs_no_get(hosts):
    """wrk -c8 through the front for 8 s; at 2 s one host dies (SIGKILL to its master and
    workers), at 4 s it starts again. nginx sends the requests it had on that host, and the
    connections it could not open, to the others: no request fails. The host serves again
    within fail_timeout (2 s) of its start."""
    proc = load.start_wrk(find_program("wrk"), hosts.port, "/hello", 8, 8)
    time.sleep(2)
    victim = hosts.hosts[1]
    victim.kill()
    time.sleep(2)
    victim.start()
    back = whole_again(hosts.port, victim.name, 10)
    result = load.finish(proc)
    print("fleet, one host killed under wrk -c8: %d requests, %d failed, p99 %.1f ms; back "
          "%.2f s after its start" % (result.requests, result.failures, result.p99_ms, back))
    assert result.requests > 1000, result.text
    assert result.failures == 0, result.text
    assert all(re.search(FAILED_TRY, line) for line in hosts.upstream_errors())


def test_a_host_cut_off_under_load_costs_no_get(hosts):
    """wrk -c8 through the front for 8 s; at 2 s one host's link goes down (`ip link set
    down`), at 4 s up again. What nginx had sent that host waits for the link (TCP sends it
    again) and is answered late; the connections nginx tries to open there fail and go to
    the others: no request fails. The host serves again within fail_timeout (2 s) of its
    link coming back."""
    proc = load.start_wrk(find_program("wrk"), hosts.port, "/hello", 8, 8)
    time.sleep(2)
    victim = hosts.hosts[1]
    hosts.set_link(victim, False)
    time.sleep(2)
    hosts.set_link(victim, True)
    back = whole_again(hosts.port, victim.name, 10)
    result = load.finish(proc)
    print("fleet, one host's link down for 2 s under wrk -c8: %d requests, %d failed, p99 "
          "%.1f ms; back %.2f s after its link" % (
              result.requests, result.failures, result.p99_ms, back))
    assert result.requests > 1000, result.text
    assert result.failures == 0, result.text
    assert all("while connecting to upstream" in line for line in hosts.upstream_errors())


def test_a_rolling_reload_over_the_fleet_fails_no_post(hosts):
    """POSTs through the front for 10 s while each host in turn reloads (USR2) and its
    previous workers finish: none fails, nginx logs no error (nothing was refused or cut)."""
    proc = load.start_wrk(find_program("wrk"), hosts.port, "/echo", 10, 8, body=b"a=1&b=2")
    time.sleep(1)
    for host in hosts.hosts:
        mark = host.server.mark()
        host.server.signal(signal.SIGUSR2)
        host.server.wait_log(r"NOTICE: ready to handle connections$", 10, since=mark)
        time.sleep(1.5)
    result = load.finish(proc)
    print("fleet, rolling USR2 under POSTs at c8: %d requests, %d failed, p99 %.1f ms"
          % (result.requests, result.failures, result.p99_ms))
    assert result.requests > 500, result.text
    assert result.failures == 0, result.text
    assert hosts.upstream_errors() == []


def test_a_fourth_host_joins_with_a_reload_of_nginx(hosts):
    """A host added to the upstream and nginx reloaded (HUP) under load: it takes its share
    at once, and nothing fails meanwhile."""
    proc = load.start_wrk(find_program("wrk"), hosts.port, "/hello", 5, 8)
    time.sleep(1.5)
    hosts.add()
    hosts.nginx()
    joined = whole_again(hosts.port, "h4", 5)
    result = load.finish(proc)
    print("fleet, a fourth host joined under wrk -c8: %d requests, %d failed; serving %.2f s "
          "after nginx's reload" % (result.requests, result.failures, joined))
    # nginx's reload ends its old worker, which closes the client connections it kept idle:
    # wrk, sending on one of them then, counts a read error. Nothing reached a host.
    assert result.non_2xx == 0, result.text
    assert hosts.upstream_errors() == []



@pytest.mark.parametrize("keep_conn", [True, False], ids=["keep_conn", "no-keep_conn"])
def test_a_host_stopped_with_quit_under_load_fails_no_post(hosts, keep_conn):
    """POSTs through the front for 6 s; at 2 s one host is told to finish (QUIT). It stops
    being offered connections before it stops reading those it has: what nginx sent it is
    answered, what it could not send there goes to the others (a connect refused, or a
    SYN held back as it stops listening), and no POST fails; nginx logs no reset and no
    premature close."""
    if not keep_conn:
        hosts.keep_conn(False)
    proc = load.start_wrk(find_program("wrk"), hosts.port, "/echo", 6, 8, body=b"a=1&b=2")
    time.sleep(2)
    victim = hosts.hosts[1]
    victim.server.signal(signal.SIGQUIT)
    victim.server.wait_exit(10)
    result = load.finish(proc)
    print("fleet, one host QUIT under POSTs at c8 (keep_conn %s): %d requests, %d failed, "
          "p99 %.1f ms" % ("on" if keep_conn else "off", result.requests, result.failures,
                           result.p99_ms))
    assert result.requests > 500, result.text
    assert result.failures == 0, result.text
    # Refused, or no SYN answered: nothing was sent to that host.
    cut = [line for line in hosts.upstream_errors() if "while connecting to upstream" not in line]
    assert cut == []


def dashboard_queries() -> list[str]:
    return re.findall(r"^```promql\n(.*?)\n```$", fleet.DASHBOARD.read_text(), re.M | re.S)


def test_prometheus_sees_every_pool_of_every_host_and_counts_every_request(hosts):
    """Prometheus (Debian's), scraping each host through conf/prometheus/nginx-metrics.conf
    with the shipped scrape config and rules, each host with two pools (a location pair and
    a scrape group each, as those files say to add them): each host's pools have their
    `host` and `pool` labels, the recording rule's sum of accepted connections grows by
    exactly the requests sent to each pool (the scrapes go to pm.status_listen, counted
    apart), every query of the shipped dashboard runs, and each host's ping page answers
    beside its metrics."""
    pools = ("www", "api")
    prometheus = hosts.watch(pools)
    addresses = {h.ip for h in hosts.hosts}

    def wait(what, predicate, timeout):
        return harness.wait_for(what, predicate, timeout, every=0.2)

    def up():
        return {(s["metric"]["host"], s["metric"]["pool"])
                for s in prometheus.query("phpfpm_up == 1")}

    def total(pool, over=""):
        """The rule's value now; with ``over`` ("[5s]"), its highest in that time."""
        rule = 'pool:phpfpm_accepted_connections:sum{job="pyfpm",pool="%s"}' % pool
        found = prometheus.query("max_over_time(%s%s)" % (rule, over) if over else rule)
        return found[0]["value"] if found else None

    wait("every pool of every host scraped",
         lambda: up() == {(a, p) for a in addresses for p in pools}, 20)
    wait("the rule's first values", lambda: None not in map(total, pools), 10)
    before = {pool: total(pool) for pool in pools}
    sent = {"www": 4 * 150, "api": 5 * len(hosts.hosts)}
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: http_request(hosts.port, "GET", "/hello").status,
                                 range(sent["www"])))
    assert statuses == [200] * sent["www"]
    for host in hosts.hosts:  # api is not behind the front: straight to each host
        for _ in range(5):
            assert client.request(host.pool_address(1), "/hello").status == 200
    start = time.monotonic()
    for p in pools:
        wait("the rule to count %d requests more for %s" % (sent[p], p),
             lambda: total(p) == before[p] + sent[p], 15)
    seen = time.monotonic() - start
    time.sleep(3)  # more scrapes and evaluations: never more than was sent
    assert {p: total(p, "[3s]") - before[p] for p in pools} == sent
    shares = {s["metric"]["host"]: s["value"] for s in prometheus.query(
        'sum by (host) (phpfpm_accepted_connections{pool="www"})')}
    assert set(shares) == addresses and all(shares.values()), shares
    # Each panel's query runs (a RuntimeError with Prometheus's words if not) and shows
    # something, but the table of failing pools, empty while all is well.
    for expr in dashboard_queries():
        assert prometheus.query(expr) or "== 1" in expr, expr
    wait("every host counted up, per pool", lambda: {
        s["metric"]["pool"]: s["value"] for s in prometheus.query("pool:up:sum")}
        == {p: 3 for p in pools}, 10)
    # The health check's page beside the metrics, as a load balancer polls it.
    for address in sorted(addresses):
        for p in pools:
            with fleet.DIRECT.open("http://%s:%d/ping/%s" % (address, fleet.METRICS_PORT, p),
                                   timeout=5) as page:
                assert (page.status, page.read()) == (200, b"pong")
    print("fleet, Prometheus: %s requests sent, the rule's sums %s more, seen %.1f s after; "
          "www per host %s" % (sent, {p: total(p) - before[p] for p in pools}, seen, shares))


def test_a_host_restarted_by_systemd_under_load_fails_no_post(hosts):
    """systemctl restart of a socket-activated host under POSTs through the front: its
    stop (QUIT, the unit's KillSignal) and the next start, on the listening socket systemd
    holds for it (conf/pyfpm.socket). What comes while no master runs waits in that
    socket's queue for the next one: no POST fails and nginx logs no error at all, nothing
    was refused or cut."""
    victim = hosts.hosts[1]
    victim.kill()
    victim.activate()
    victim.start()
    proc = load.start_wrk(find_program("wrk"), hosts.port, "/echo", 6, 8, body=b"a=1&b=2")
    time.sleep(2)
    start = time.monotonic()
    victim.server.signal(signal.SIGQUIT)
    victim.server.wait_exit(10)
    stopped = time.monotonic() - start
    victim.start()
    ready = time.monotonic() - start
    result = load.finish(proc)
    assert 'using inherited socket fd=3, "%s" from systemd' % victim.address \
        in victim.server.log_text()
    back = whole_again(hosts.port, victim.name, 5)
    print("fleet, one host restarted through socket activation under POSTs at c8: %d "
          "requests, %d failed, p99 %.1f ms; stopped %.2f s and ready %.2f s after the QUIT"
          % (result.requests, result.failures, result.p99_ms, stopped, ready))
    assert result.requests > 500, result.text
    assert result.failures == 0, result.text
    assert hosts.upstream_errors() == []
    assert back < 1
