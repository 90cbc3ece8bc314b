"""TCP specifics: a response made of several writes on a kept connection is not held back by
Nagle's algorithm (flup stalls 40 ms per request there), and accepted sockets inherit
TCP_NODELAY from the listening socket."""

import time

from fpm import client as fc

REQUESTS = 40


def test_multi_write_responses_on_a_kept_tcp_connection_do_not_stall(pyfpm):
    server = pyfpm(workers=1, listen="tcp")
    server.wait_idle(1)
    with fc.Connection(server.address) as conn:
        assert conn.request("/write").body == b"written-1;written-2;returned-1;returned-2"
        started = time.monotonic()
        for _ in range(REQUESTS):
            assert conn.request("/write").status == 200
        elapsed = time.monotonic() - started
    # With Nagle on, each response's trailing END_REQUEST waits for a delayed ACK (~40 ms):
    # 40 requests would take 1.6 s or more.
    assert elapsed < REQUESTS * 0.040 / 2, "%.3f s for %d requests" % (elapsed, REQUESTS)
