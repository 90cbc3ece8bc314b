"""A worker told to finish (a reload's hand-over, a graceful stop) serves every connection it
has accepted, also one whose request has not arrived yet: a web server writes right after
connecting, and hanging up on it there was nginx's "upstream prematurely closed" (a 502).
Such a connection waits in the master (fpm.parking): a reload's new workers take it, and a
master that stops gracefully hands it back to its workers as they finish."""

import json
import re
import signal
import time


from fpm import client as fc
from harness import wait_for

# Long enough for the worker to accept the connection and give up its wait for the first
# bytes (it then parks the connection with the master).
ACCEPTED = 0.3


def pid_request():
    return fc.encode_request(fc.build_params("/pid"))


def accepted_connection(server):
    conn = fc.Connection(server.address)
    time.sleep(ACCEPTED)
    return conn


def test_a_connection_accepted_before_the_hand_over_is_served(pyfpm):
    server = pyfpm(app="fault_app:app", workers=1)
    (old,) = server.wait_idle(1)
    with accepted_connection(server) as conn:
        mark = server.mark()
        server.signal(signal.SIGUSR2)
        server.wait_log(r"\[pool www\] 1 child\(ren\) of the previous configuration finish their "
                        r"requests and exit", 10, since=mark)
        time.sleep(ACCEPTED)  # the QUIT has reached the old worker
        conn.send(pid_request())
        response = conn.read_response()
    assert response.status == 200
    # Parked in the master, it went to a new worker once its request came.
    assert json.loads(response.body)["pid"] != old
    wait_for("the old worker to exit", lambda: old not in server.children(), 5, server)
    assert server.request("/pid").status == 200


def test_a_graceful_stop_serves_a_connection_whose_request_comes_late(pyfpm):
    server = pyfpm(app="fault_app:app", workers=1)
    (worker,) = server.wait_idle(1)
    with accepted_connection(server) as conn:
        server.signal(signal.SIGQUIT)
        time.sleep(ACCEPTED)
        conn.send(pid_request())
        response = conn.read_response()
    assert response.status == 200 and json.loads(response.body)["pid"] == worker
    assert server.wait_exit(5) == 0


def test_a_silent_connection_holds_a_stopping_worker_five_seconds_at_most(pyfpm):
    """PHP-FPM's bound on the first bytes after accept(): then the connection is closed."""
    server = pyfpm(app="fault_app:app", workers=1)
    server.wait_idle(1)
    with accepted_connection(server) as conn:
        started = time.monotonic()
        server.signal(signal.SIGQUIT)
        assert server.wait_exit(8) == 0
        assert 4.5 < time.monotonic() - started < 7
        assert conn.read_record() is None  # closed, nothing sent
    assert not re.search(r"exited on signal|WARNING", server.log_text())
