"""Hostile peers on pyfpm's own socket (loopback, bounded in connections and seconds) while
nginx's clients keep being served: a probe through nginx answers within PROBE_BOUND during
each attack. Silent and dribbling connections wait in the master, not in a worker, and are
closed at their head's deadline; a trickled body is answered 408 at its; accept() out of
descriptors pauses a worker instead of killing it. Each refusal is counted on the status
page and logged once per episode, never once per connection."""

import json
import os
import re
import signal
import time


import harness
import hostile
from fpm import client as fc

PROBE_BOUND = 1.0  # seconds a request through nginx may take while an attack runs (a shared VM)
STATUS = "/fpm-status"
WORKERS = 2


def start(pyfpm, nginx, *, workers=WORKERS, app="wsgi_app:app", extra="", log_level="notice",
          listen="unix"):
    server = pyfpm(listen=listen, workers=workers, app=app, log_level=log_level,
                   extra="pm.status_path = %s\n%s" % (STATUS, extra))
    server.wait_idle(workers)
    return server, nginx(server.address)


def probe(front, times=5, path="/hello"):
    """``times`` requests through nginx, each within PROBE_BOUND; the slowest's seconds."""
    slowest = 0.0
    for _ in range(times):
        result = front.get(path, timeout=10)
        assert result.status == 200, result
        slowest = max(slowest, result.seconds)
    assert slowest < PROBE_BOUND, "a request through nginx took %.3f s" % slowest
    return slowest


def parse(data):
    return fc.Response.from_records(list(fc.iter_records(data)), 1)


def read_response(sock, timeout=5.0):
    """The response on ``sock``, read until the server closes it."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return parse(data)


def status(server):
    return json.loads(server.request(STATUS + "?json").body)


def worker_fds(server):
    return {pid: len(os.listdir("/proc/%d/fd" % pid)) for pid in server.children()}


def episode_lines(server, label):
    """The log's WARNING lines that began an episode of ``label``."""
    return re.findall(r"^.* WARNING: \[pool www\] .*\(%s: \d+\)$" % label, server.log_text(),
                      re.M)


def one_episode(server, label):
    """The master logs the episode within a tick; once, however many refusals."""
    server.wait_log(r"WARNING: \[pool www\] .*\(%s: \d+\)$" % label)
    assert len(episode_lines(server, label)) == 1, server.log_text()


def test_an_idle_flood_waits_in_the_master_and_times_out(pyfpm, nginx):
    server, front = start(pyfpm, nginx, extra="request_head_timeout = 2s")
    fds = worker_fds(server)
    with hostile.IdleFlood(server.address, 400) as flood:
        probe(front)  # while the flood comes in
        flood.wait_open(400)
        harness.wait_for("400 connections parked",
                         lambda: status(server)["parked connections"] == 400, 5, server)
        probe(front)
        # No worker holds a silent connection: their descriptors are what they were.
        assert all(n <= fds[pid] + 1 for pid, n in worker_fds(server).items())
        harness.wait_for("the flood closed at its deadline",
                         lambda: status(server)["head timeouts"] == 400, 5, server)
        assert status(server)["parked connections"] == 0
        for sock in flood.socks[:5]:  # closed by the server, whatever the client does
            sock.settimeout(1)
            assert sock.recv(10) == b""
        probe(front)
    assert server.children() == list(fds)
    server.wait_log(r"NOTICE: \[pool www\] head timeouts: 400 in \d+ s, none for 5 s now "
                    r"\(head timeouts: 400\)$", timeout=10)
    assert episode_lines(server, "head timeouts") == [re.search(
        r"^.*WARNING: \[pool www\] connections closed: no whole request head within "
        r"request_head_timeout \(2s\) \(head timeouts: \d+\)$", server.log_text(), re.M)[0]]


def test_slowloris_heads_never_hold_a_worker(pyfpm, nginx):
    """A byte of the head every 0.2 s does not move the head's deadline."""
    server, front = start(pyfpm, nginx, extra="request_head_timeout = 2s")
    with hostile.Slowloris(server.address, 40, every=0.2) as attack:
        attack.wait_open(40)
        began = time.monotonic()
        probe(front)
        harness.wait_for("every slowloris connection closed at its deadline",
                         lambda: status(server)["head timeouts"] == 40, 6, server)
        assert time.monotonic() - began < 4.0
        probe(front)
    one_episode(server, "head timeouts")


def test_half_sent_records_wait_in_the_master(pyfpm, nginx):
    server, front = start(pyfpm, nginx, extra="request_head_timeout = 3s")
    with hostile.HalfRecords(server.address, 100) as attack:
        attack.wait_open(100)
        harness.wait_for("100 parked", lambda: status(server)["parked connections"] == 100,
                         5, server)
        assert all(pid in server.children() for pid in server.children())
        probe(front)
        harness.wait_for("closed at their deadline",
                         lambda: status(server)["head timeouts"] == 100, 6, server)
    one_episode(server, "head timeouts")


def test_a_parked_head_that_completes_is_served_with_every_byte(pyfpm, nginx):
    server, front = start(pyfpm, nginx)
    body = b"0123456789" * 1000
    request = fc.encode_request(fc.build_params("/sha256", method="POST", body=body), body)
    socks = []
    for cut in (0, 1, 9, 30, 100):  # nothing yet, inside a header, inside the params
        sock = fc.connect(server.address)
        sock.sendall(request[:cut])
        socks.append(sock)
    harness.wait_for("5 parked", lambda: status(server)["parked connections"] == 5, 5, server)
    probe(front)
    for sock, cut in zip(socks, (0, 1, 9, 30, 100)):
        with sock:
            sock.sendall(request[cut:])
            response = read_response(sock)
            assert response.status == 200
            assert json.loads(response.body)["length"] == len(body)
    assert status(server)["parked connections"] == 0
    assert status(server)["head timeouts"] == 0


def test_trickled_bodies_wait_in_the_master_and_are_answered_408(pyfpm, nginx):
    """Eight bodies at 100 bytes/s against request_body_min_rate = 1K after an allowance of
    request_read_timeout (1 s): they wait in the master, not in the two workers, each
    byte does not restart the wait, and each is answered 408 at its deadline."""
    server, front = start(pyfpm, nginx, extra="request_read_timeout = 1s\n"
                                               "request_body_min_rate = 1K")
    with hostile.SlowBody(server.address, 8, size=100_000, chunk=10, every=0.1) as attack:
        attack.wait_open(8)
        probe(front)
        harness.wait_for("the answers", lambda: len(attack.answers) == 8, 6, server)
        probe(front)
    for seconds, answer in attack.answers:
        assert 1.0 <= seconds < 2.5
        assert parse(answer).status == 408
    assert status(server)["slow bodies"] == 8
    server.wait_log(r"WARNING: \[pool www\] requests answered 408: their body came slower than "
                    r"request_body_min_rate \(1K bytes/s\) after request_read_timeout \(1s\), or "
                    r"stalled that long \(slow bodies: \d\)$")
    one_episode(server, "slow bodies")
    assert "peer" not in server.log_text(), "no line per connection"


def test_a_large_body_trickled_after_its_first_64k_is_answered_408(pyfpm):
    """A worker takes a request once 64 KiB of it are there; the rest must come at the
    minimum rate, the bytes so far counted: 66 KB at once then 100 bytes/s, against 64K/s
    after 1 s, is due about 2 s after its head."""
    server = pyfpm(workers=1, extra="request_read_timeout = 1s\nrequest_body_min_rate = 64K")
    body = b"x" * 70_000
    request = fc.encode_request(fc.build_params("/sha256", method="POST", body=body), body)
    with fc.connect(server.address) as sock:
        sock.sendall(request[:66_000])
        began = time.monotonic()
        sock.setblocking(False)
        answer, at = b"", 66_000
        while time.monotonic() - began < 8 and b"Status: " not in answer:
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            try:
                sock.send(request[at:at + 10])
                at += 10
            except OSError:
                pass
            time.sleep(0.1)
        seconds = time.monotonic() - began
    assert b"Status: 408" in answer
    assert 1.5 < seconds < 4.0


def test_a_fast_enough_body_is_read_however_long_it_takes(pyfpm):
    """2 KB/s against a 1K minimum: the body arrives after 2.5 s > request_read_timeout."""
    server = pyfpm(workers=1, extra="request_read_timeout = 1s\nrequest_body_min_rate = 1K")
    with hostile.SlowBody(server.address, 1, size=5000, chunk=200, every=0.1) as attack:
        harness.wait_for("the answer", lambda: attack.answers, 8, server)
    seconds, answer = attack.answers[0]
    response = parse(answer)
    assert response.status == 200 and json.loads(response.body)["length"] == 5000
    assert seconds > 2.0


def test_oversize_values_are_refused_and_the_pool_stays_reachable(pyfpm, nginx):
    server, front = start(pyfpm, nginx, extra="fastcgi.params_max = 4096")
    pids = server.children()
    with hostile.OversizeParams(server.address, 400, params_max=4096) as attack:
        probe(front, times=10)
        harness.wait_for("400 refused", lambda: attack.done >= 400, 20, server)
    probe(front)
    assert server.children() == pids
    assert status(server)["parked connections"] == 0


def test_protocol_errors_are_counted_and_one_is_told_per_episode(pyfpm, nginx):
    """A flood of requests that break the protocol: each is counted on the status page, the
    first is logged with what was wrong, the rest at debug level, and the master says when
    the episode began and when it ended, however many it held."""
    server, front = start(pyfpm, nginx, extra="fastcgi.params_max = 4096")
    with hostile.OversizeParams(server.address, 200, params_max=4096) as attack:
        probe(front, times=10)
        harness.wait_for("200 refused", lambda: attack.done >= 200, 20, server)
    harness.wait_for("200 counted", lambda: status(server)["protocol errors"] == 200, 5, server)
    one_episode(server, "protocol errors")
    told = re.findall(r"^.* WARNING: \[pool www\] child \d+: peer \S+: .*; connection closed$",
                      server.log_text(), re.M)
    assert len(told) == 1, server.log_text()
    server.wait_log(r"NOTICE: \[pool www\] protocol errors: 200 in \d+ s, none for 5 s now "
                    r"\(protocol errors: 200\)$", timeout=10)
    probe(front)


def test_a_connection_storm_leaves_nothing_behind(pyfpm, nginx):
    server, front = start(pyfpm, nginx)
    pids, fds = server.children(), worker_fds(server)
    with hostile.Storm(server.address, 3000) as storm:
        probe(front, times=10)
        harness.wait_for("the storm", lambda: getattr(storm, "done", 0) >= 3000, 30, server)
    probe(front)
    harness.wait_for("nothing parked",
                     lambda: status(server)["parked connections"] == 0, 5, server)
    server.wait_idle(WORKERS)
    assert server.children() == pids
    assert all(n <= fds[pid] + 1 for pid, n in worker_fds(server).items())


def test_accept_out_of_descriptors_pauses_the_worker_and_is_logged_once(pyfpm, nginx):
    """An app that leaks every descriptor: its worker's accept() fails with EMFILE. The
    worker pauses accepting instead of dying with a traceback, the connection that woke
    it goes to the other worker (through the master: none waits for the next one to wake
    a worker), and the master logs the episode."""
    server, front = start(pyfpm, nginx, app="hog_app:app", extra="rlimit_files = 64")
    pids = server.children()
    server.request("/hog")
    time.sleep(0.1)  # its thread takes back the descriptor that request's connection freed
    for _ in range(40):
        result = front.get("/pid", timeout=10)
        assert result.status == 200 and result.seconds < PROBE_BOUND
    harness.wait_for("accept failures counted", lambda: status(server)["accept failures"] > 0,
                     5, server)
    line = server.wait_log(r"WARNING: \[pool www\] workers could not accept connections: Too "
                           r"many open files \(EMFILE\); they pause accepting and try again, "
                           r"the connections wait in the listen queue \(accept failures: \d+\)$")
    assert server.children() == pids, "the worker lives on"
    assert "worker failed" not in server.log_text() and "Traceback" not in server.log_text()
    time.sleep(1.5)  # more failures, the same episode
    assert len(episode_lines(server, "accept failures")) == 1, line


def test_parked_connections_cross_a_reload(pyfpm, nginx):
    server, front = start(pyfpm, nginx)
    request = fc.encode_request(fc.build_params("/hello"))
    socks = []
    for cut in (0, 12, 40):
        sock = fc.connect(server.address)
        sock.sendall(request[:cut])
        socks.append(sock)
    harness.wait_for("3 parked", lambda: status(server)["parked connections"] == 3, 5, server)
    mark = server.mark()
    server.signal(signal.SIGUSR2)
    server.wait_log(re.escape(harness.READY), since=mark, timeout=10)
    harness.wait_for("3 parked in the new master",
                     lambda: status(server)["parked connections"] == 3, 5, server)
    for sock, cut in zip(socks, (0, 12, 40)):
        with sock:
            sock.sendall(request[cut:])
            assert read_response(sock).body == b"hello world"
    probe(front)


def test_an_ondemand_pool_forks_for_a_head_that_came_while_parked(pyfpm):
    server = pyfpm(pm="ondemand", extra="pm.process_idle_timeout = 1s")
    request = fc.encode_request(fc.build_params("/hello"))
    with fc.connect(server.address) as sock:
        sock.sendall(request[:20])
        harness.wait_for("its worker forked, parked it and went idle",
                         lambda: len(server.children()) == 1, 5, server)
        harness.wait_for("no worker left", lambda: not server.children(), 5, server)
        sock.sendall(request[20:])
        assert read_response(sock).body == b"hello world"


def test_a_level_triggered_master_watches_parked_connections_too(pyfpm):
    """events.mechanism = poll: a partial head is peeked at again every RECHECK."""
    server = pyfpm(workers=1, global_="events.mechanism = poll")
    request = fc.encode_request(fc.build_params("/hello"))
    with fc.connect(server.address) as sock:
        sock.sendall(request[:20])
        time.sleep(0.3)
        sock.sendall(request[20:30])
        time.sleep(0.3)
        started = time.monotonic()
        sock.sendall(request[30:])
        assert read_response(sock).body == b"hello world"
        assert time.monotonic() - started < 0.5
    assert server.request("/hello").body == b"hello world"


def test_each_head_on_a_kept_connection_has_a_deadline_of_its_own(pyfpm):
    """A kept connection idle longer than request_head_timeout between requests, whose
    next head then comes in pieces (so it is parked), is still served."""
    server = pyfpm(workers=1, extra="request_head_timeout = 1s\npm.status_path = %s" % STATUS)
    with fc.Connection(server.address) as conn:
        first = fc.encode_request(fc.build_params("/hello"), keep_conn=True)
        conn.send(first[:20])
        time.sleep(0.3)
        conn.send(first[20:])
        assert conn.read_response(1).body == b"hello world"
        time.sleep(1.5)
        conn.send(first[:20])
        time.sleep(0.5)
        conn.send(first[20:])
        assert conn.read_response(1).body == b"hello world"
    assert status(server)["head timeouts"] == 0


def settled(fields, flood=40, limit=20):
    """Every connection of the flood is parked or was closed, and no more than ``limit``
    are parked."""
    parked, closed = fields["parked connections"], fields["parked closed"]
    return closed >= flood - limit and parked + closed >= flood and parked <= limit


def test_beyond_the_limit_the_oldest_silent_connections_are_closed(pyfpm, nginx):
    """A pool parks as many connections as its listen queue holds (listen.backlog)."""
    server, front = start(pyfpm, nginx, extra="listen.backlog = 20")
    with hostile.IdleFlood(server.address, 40) as flood:
        flood.wait_open(40)
        # A request of the test's own may be parked a moment too, and push one more out:
        # then 19 stay parked and 21 were closed. Wait until all 40 are accounted for.
        harness.wait_for("20 parked, the others closed", lambda: settled(status(server)), 5,
                         server)
        probe(front)
        closed = []
        for sock in flood.socks:
            sock.setblocking(False)
            try:
                closed.append(sock.recv(10) == b"")
            except BlockingIOError:
                closed.append(False)
        # The oldest went first (two workers park them: the order is nearly the client's).
        assert 20 <= sum(closed) <= 21 and sum(closed[:20]) >= 15, closed
    server.wait_log(r"WARNING: \[pool www\] connections closed: more waited for their request "
                    r"head than the pool may hold \(20\) \(parked closed: \d+\)$")
    one_episode(server, "parked closed")


def test_a_long_head_goes_to_a_worker_and_is_held_to_its_deadline(pyfpm, nginx):
    """64 KiB of params without their end: the peer is sending, so a worker reads it, but
    the head must still be whole by request_head_timeout."""
    server, front = start(pyfpm, nginx, extra="request_head_timeout = 2s")
    data = hostile.head(params={"HTTP_X_BIG": "b" * 100_000})
    with fc.connect(server.address) as sock:
        sock.sendall(data[:70_000])
        began = time.monotonic()
        probe(front)
        sock.settimeout(5)
        assert sock.recv(10) == b""
        assert 1.5 < time.monotonic() - began < 3.5
    assert status(server)["head timeouts"] == 1


def test_a_request_that_passes_64k_while_the_worker_waits_is_read_by_it(pyfpm):
    """60 KB, then 10 KB a moment later, then the rest: the worker has 64 KiB of it, which
    is progress, and reads the rest itself (parking more than one message holds lost it)."""
    server = pyfpm(workers=1, extra="pm.status_path = %s" % STATUS)
    body = b"z" * 100_000
    request = fc.encode_request(fc.build_params("/sha256", method="POST", body=body), body)
    for _ in range(3):
        with fc.connect(server.address) as sock:
            sock.sendall(request[:60_000])
            time.sleep(0.003)
            sock.sendall(request[60_000:70_000])
            time.sleep(0.05)
            sock.sendall(request[70_000:])
            response = read_response(sock)
        assert response.status == 200 and json.loads(response.body)["length"] == len(body)
    assert status(server)["parked closed"] == 0
