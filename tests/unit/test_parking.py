"""Parking connections that are not ready for a worker: the codec's head check, connections
passed over SOCK_SEQPACKET with their bytes, and the master's decisions (fpm.parking)."""
import os
import socket
import time

import pytest
from hypothesis import given, strategies as st

from fpm import _codec, _passing, _worker, parking
from fpm import client as fc


def request(**params):
    return fc.encode_request(fc.build_params("/hello", params=params or None))




def head_length(data):
    """Bytes up to and including the empty PARAMS record."""
    marker = fc.encode_record(fc.PARAMS, 1, b"")
    return data.index(marker) + len(marker)


# --- request_status: how much of a request is there? --------------------------------------

PARTIAL, BODY, READY = 0, 1, 2


def stdin_end_length(data):
    return data.index(fc.encode_record(fc.STDIN, 1, b""), head_length(data)) + 8


def test_a_whole_request_is_ready_and_its_head_alone_is_not():
    body = b"x" * 100
    data = fc.encode_request(fc.build_params("/up", method="POST", body=body), body)
    end = head_length(data)
    assert _codec.request_status(data) == (READY, end)
    assert _codec.request_status(data[:end]) == (BODY, end)
    assert _codec.request_status(data[:-8]) == (BODY, end)  # all but the empty STDIN


@pytest.mark.parametrize("cut", [1, 7, 8, 15, 16, 17, 30])
def test_a_head_cut_anywhere_is_partial(cut):
    data = request()
    assert _codec.request_status(data[:head_length(data) - cut])[0] == PARTIAL


def test_nothing_is_partial():
    assert _codec.request_status(b"") == (PARTIAL, 0)


@given(st.dictionaries(st.from_regex(r"HTTP_[A-Z]{1,12}", fullmatch=True),
                       st.text(max_size=300).map(lambda s: s.encode()[:300].decode("latin-1")),
                       max_size=40),
       st.binary(max_size=3000), st.integers(1, 4000))
def test_each_stage_begins_exactly_where_its_record_ends(params, body, chunk):
    """Cut anywhere, the bytes are partial up to the empty PARAMS record, then hold the head
    up to the empty STDIN record, then the whole request."""
    data = fc.encode_request(fc.build_params("/x", method="POST", body=body,
                                             params=params or None), body, stdin_chunk=700)
    head, whole = head_length(data), stdin_end_length(data)
    for at in list(range(0, len(data) + 1, chunk)) + [head - 1, head, whole - 1, whole]:
        expected = PARTIAL if at < head else BODY if at < whole else READY
        assert _codec.request_status(data[:at])[0] == expected, at


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n",  # not FastCGI: a worker says so at once
    b"G",
    b"\x16\x03\x01",  # TLS
    fc.encode_record(fc.GET_VALUES, 0, b""),  # management: answered at once
    fc.encode_begin(1, role=fc.AUTHORIZER),  # refused at once (UNKNOWN_ROLE)
    fc.encode_begin(1) + fc.encode_record(fc.ABORT_REQUEST, 1, b""),
    fc.encode_record(fc.STDOUT, 1, b"x"),  # flows the other way: refused at once
    fc.encode_record(fc.BEGIN_REQUEST, 1, b"\0\1\0\0\0\0\0\0\0\0"),  # a BEGIN of 10 bytes
    request()[:-8] + fc.encode_begin(2),  # another request on the connection: CANT_MPX_CONN
    request()[:-8] + fc.encode_record(fc.GET_VALUES, 0, b""),  # answered mid-body
])
def test_what_a_worker_answers_at_once_is_ready(data):
    assert _codec.request_status(data)[0] == READY


def test_records_the_decoder_skips_are_skipped():
    """STDIN of a request never begun is ignored by the decoder: it holds no head."""
    data = fc.encode_record(fc.STDIN, 3, b"zz") + request()
    assert _codec.request_status(data[:-20])[0] == PARTIAL
    assert _codec.request_status(data)[0] == READY


def test_the_params_end_of_another_request_is_not_this_ones():
    data = fc.encode_begin(1) + fc.encode_record(fc.PARAMS, 2, b"")
    assert _codec.request_status(data)[0] == PARTIAL


# --- connections passed with their bytes --------------------------------------------------

@pytest.fixture
def pair():
    a, b = parking.socket_pair()
    yield a, b
    os.close(a)
    os.close(b)


def test_a_connection_travels_with_its_bytes_and_ticket(pair):
    a, b = pair
    left, right = socket.socketpair()
    with left, right:
        assert _passing.pass_conn(a, left.fileno(), 123, 456, b"partial head", 1)
        fd, due, arrived, flags, data = _passing.take_conn(b)
        try:
            assert (due, arrived, flags, data) == (123, 456, 1, b"partial head")
            assert fd != left.fileno() and not os.get_inheritable(fd)
            os.write(fd, b"through it")  # the same connection
            assert right.recv(100) == b"through it"
        finally:
            os.close(fd)
        assert _passing.take_conn(b) is None


def test_the_largest_data_travels_and_more_is_refused(pair):
    a, b = pair
    left, right = socket.socketpair()
    with left, right:
        big = bytes(range(256)) * 256 + b"12345678"
        assert _passing.pass_conn(a, left.fileno(), 0, 0, big)
        fd, *_, data = _passing.take_conn(b)
        os.close(fd)
        assert data == big
        with pytest.raises(ValueError, match="at most"):
            _passing.pass_conn(a, left.fileno(), 0, 0, big + b"x")


def test_a_full_queue_says_so_instead_of_blocking():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, socket.socket() as conn:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sent = 0
        while _passing.pass_conn(a.fileno(), conn.fileno(), 0, 0, b"x" * 1000):
            sent += 1
            assert sent < 10000
        assert sent > 0
        fd = _passing.take_conn(b.fileno())[0]
        os.close(fd)


def test_a_message_without_a_descriptor_is_refused(pair):
    a, b = pair
    os.write(a, b"\0" * 24)
    with pytest.raises(OSError) as e:
        _passing.take_conn(b)
    assert e.value.errno == 74  # EBADMSG


# --- the master's decisions -------------------------------------------------------------

def parked(since, data=b"", waiting=0, ready=False, kept=False):
    flags = _passing.TICKET_KEPT if kept else 0
    return parking.Parked(None, 0 if kept else 1, 0, flags, data, since, waiting, ready)


def test_victims_are_silent_ones_oldest_first():
    old_talker, silent_old, silent_new, new_talker = (
        parked(1, b"head"), parked(2), parked(3), parked(4, waiting=10))
    everyone = [new_talker, silent_new, old_talker, silent_old]
    assert parking.victims(everyone, 4, 1 << 20) == []
    assert parking.victims(everyone, 3, 1 << 20) == [silent_old]
    assert parking.victims(everyone, 1, 1 << 20) == [silent_old, silent_new, old_talker]


def test_a_web_servers_idle_kept_ones_go_after_the_other_silent_ones():
    kept_old, silent_new, talker = parked(1, kept=True), parked(2), parked(3, b"head")
    assert parking.victims([kept_old, silent_new, talker], 2, 1 << 20) == [silent_new]
    assert parking.victims([kept_old, silent_new, talker], 1, 1 << 20) == [silent_new, kept_old]


def test_an_idle_kept_one_has_no_deadline_until_a_byte_comes():
    idle = parked(1, kept=True)
    assert idle.idle and parking.due(idle, 0, 0) is None
    assert not parked(1, waiting=5, kept=True).idle
    assert not parked(1).idle  # not kept: its head is due


def test_ready_ones_go_last():
    waiting_for_a_worker, dribbler = parked(1, b"whole head", ready=True), parked(2, b"x")
    assert parking.victims([waiting_for_a_worker, dribbler], 1, 1 << 20) == [dribbler]


def test_victims_keep_the_bytes_within_the_limit():
    big_old, small_new = parked(1, b"x" * 3000), parked(2, b"y" * 100)
    assert parking.victims([big_old, small_new], 10, 2000) == [big_old]
    assert parking.victims([big_old, small_new], 10, 3100) == []


def test_limit_is_the_listen_queue_within_the_descriptors_left():
    assert parking.limit(4096, 1, nofile=1 << 20, open_fds=30, reserve=100, pools=2) == 4096
    assert parking.limit(511, 2, nofile=1 << 20, open_fds=30, reserve=100, pools=2) == 1022
    assert parking.limit(4096, 1, nofile=1024, open_fds=24, reserve=200, pools=2) == 400
    assert parking.limit(4096, 1, nofile=256, open_fds=200, reserve=200, pools=1) == \
        parking.MIN_PARKED


def test_byte_limit_grows_with_the_count():
    assert parking.byte_limit(10) == parking.MIN_BYTES
    assert parking.byte_limit(4096) == 4096 * parking.BYTES_EACH


def test_progress_is_the_request_status_and_the_body_seen():
    body = b"b" * 500
    data = fc.encode_request(fc.build_params("/up", method="POST", body=body), body)
    head = head_length(data)
    assert parking.progress(data[:20], data[20:40]) == (PARTIAL, 0)
    assert parking.progress(data[:20], data[20:head + 100]) == (BODY, 100)
    assert parking.progress(data[:20], data[20:]) == (READY, 0)
    assert parking.progress(b"", b"\1\1\0\1" + b"\0" * parking.PEEK_MAX) == (READY, 0)


def test_a_head_is_due_at_its_deadline_then_the_body_at_its_rate():
    p = parked(0)
    p.due = 5_000_000
    assert parking.due(p, 60_000_000, 1024) == 5_000_000
    p.body_since, p.body_bytes = 1_000_000, 2048
    assert parking.due(p, 60_000_000, 1024) == 63_000_000
    assert parking.due(p, 60_000_000, 0) == 61_000_000


# --- the worker's back-off and body deadline --------------------------------------------

def test_accept_pause_doubles_up_to_a_second():
    assert [_worker.accept_pause_ms(n) for n in range(9)] == [
        10, 20, 40, 80, 160, 320, 640, 1000, 1000]
    assert _worker.accept_pause_ms(10 ** 6) == 1000


def test_a_worker_stops_waiting_for_requests_that_do_not_come_during_a_flood():
    assert _worker.first_bytes_ms(0, 10) == _worker.first_bytes_ms(7, 10) == 10
    assert _worker.first_bytes_ms(8, 10) == _worker.first_bytes_ms(10 ** 6, 999_999) == 0
    # The flood over (a second without a wait in vain), it waits again.
    assert _worker.first_bytes_ms(8, 1_000_000) == 10


def test_a_body_deadline_moves_with_each_byte():
    start, allowance = 1_000_000, 60_000_000
    assert _worker.body_due_us(start, allowance, 0, 1024) == start + allowance
    assert _worker.body_due_us(start, allowance, 1024, 1024) == start + allowance + 1_000_000
    assert _worker.body_due_us(start, allowance, 512, 1024) == start + allowance + 500_000


# --- a lot, with real sockets and a real epoll --------------------------------------------

class FakeBoard:
    class Mem:
        def __init__(self):
            self.refused = [0, 0, 0, 0]
            self.parked = 0
            self.handoff_pending = 0

        def count_refusal(self, cause, n=1):
            self.refused[cause] += n

        def set_parked(self, n):
            self.parked = n

        def add_handoffs(self, n):
            self.handoff_pending += n

        def settle_handoffs(self, seen):
            if self.handoff_pending == seen:
                self.handoff_pending = 0

    def __init__(self):
        self.mem = self.Mem()


@pytest.fixture
def lot():
    import select
    ends = parking.Ends.make()
    poller = select.epoll()
    made = parking.Lot("www", ends, FakeBoard(), poller, True, 3, {})
    yield made
    made.close_all()
    ends.close()
    poller.close()


def park(lot, data=b"", due=None, flags=0):
    """A connection parked as a worker would: returns the peer's end."""
    ours, peer = socket.socketpair()
    if due is None:
        due = 0 if flags & _passing.TICKET_KEPT else parking.now_us() + 10_000_000
    assert _passing.pass_conn(lot.ends.park_tx, ours.fileno(), due, 0, data, flags)
    ours.close()
    return peer


def look_all(lot):
    events = lot.poller.poll(0)
    for fd, mask in events:
        lot.look(fd, mask)


def test_a_request_that_completes_is_handed_over_with_every_byte(lot):
    data = request()
    peer = park(lot, data[:10])
    lot.receive()
    assert lot.board.mem.parked == 1
    look_all(lot)
    assert lot.board.mem.parked == 1  # silent: stays
    peer.sendall(data[10:30])
    look_all(lot)
    assert lot.parked and lot.board.mem.handoff_pending == 0
    peer.sendall(data[30:-8])  # the head, not the end of the body
    look_all(lot)
    assert lot.parked and lot.parked[next(iter(lot.parked))].body_since
    peer.sendall(data[-8:])
    look_all(lot)
    assert not lot.parked and lot.board.mem.parked == 0
    assert lot.board.mem.handoff_pending == 1
    fd, due, arrived, flags, consumed = _passing.take_conn(lot.ends.hand_rx)
    with socket.socket(fileno=fd) as conn, peer:
        # Nothing was read in the master: the rest is still in the socket.
        assert consumed + conn.recv(65536) == data


def test_heads_not_there_in_time_are_closed_and_counted(lot):
    late = park(lot, due=parking.now_us() - 1)
    on_time = park(lot)
    lot.receive()
    assert lot.next_due() < parking.now_us()
    lot.expire(parking.now_us())
    assert len(lot.parked) == 1 and lot.board.mem.refused[parking.HEAD_TIMEOUTS] == 1
    late.settimeout(1)
    assert late.recv(10) == b""
    late.close()
    on_time.close()


def test_the_board_never_counts_as_parked_what_is_closed_or_handed_over(lot, monkeypatch):
    """The status page must not show a connection parked once its fate is counted (a head
    timeout) or once a worker can take it: that worker may be serving this very status
    request, parked a moment by a worker that accepted it before its bytes came."""
    seen = []
    count_refusal = lot.board.mem.count_refusal
    pass_conn = _passing.pass_conn

    def counting(cause, n=1):
        seen.append(("refused", lot.board.mem.parked, len(lot.parked)))
        count_refusal(cause, n)

    def passing(fd, *args):
        seen.append(("passed", lot.board.mem.parked, len(lot.parked) - 1))
        return pass_conn(fd, *args)

    late = [park(lot, due=parking.now_us() - 1) for _ in range(2)]
    whole = park(lot)
    monkeypatch.setattr(lot.board.mem, "count_refusal", counting)
    monkeypatch.setattr(_passing, "pass_conn", passing)
    lot.receive()
    whole.sendall(request())
    look_all(lot)
    lot.expire(parking.now_us())
    assert [s[0] for s in seen] == ["passed", "refused", "refused"], seen
    assert all(shown == parked for _, shown, parked in seen), seen
    fd, *_ = _passing.take_conn(lot.ends.hand_rx)
    os.close(fd)
    for peer in late + [whole]:
        peer.close()


def test_a_late_body_goes_to_a_worker_marked_late(lot):
    lot.allowance, lot.rate = 100_000, 1024
    data = fc.encode_request(fc.build_params("/up", method="POST", body=b"x" * 5000),
                             b"x" * 5000)
    peer = park(lot, data[:head_length(data) + 20])
    lot.receive()
    look_all(lot)  # nothing new: the master has not peeked at a body yet
    peer.sendall(b"x" * 30)
    look_all(lot)
    p = next(iter(lot.parked.values()))
    assert p.body_since and p.body_bytes == 50  # what came after the head, records and all
    lot.expire(p.body_since + 100_000 + 45_000)
    assert lot.parked, "50 bytes at 1 KiB/s buy 48 ms more"
    lot.expire(p.body_since + 200_000)
    assert not lot.parked and lot.board.mem.refused == [0, 0, 0, 0]  # the worker counts it
    fd, due, arrived, flags, consumed = _passing.take_conn(lot.ends.hand_rx)
    os.close(fd)
    assert flags & _passing.TICKET_LATE
    peer.close()


def test_over_the_limit_the_oldest_silent_one_goes(lot):
    peers = [park(lot) for _ in range(3)]
    talker = park(lot, b"\1")
    lot.receive()
    assert len(lot.parked) == 3 and lot.board.mem.refused[parking.PARKED_CLOSED] == 1
    peers[0].settimeout(1)
    assert peers[0].recv(10) == b""  # the first one parked
    for p in peers + [talker]:
        p.close()


def test_a_silent_peer_that_hangs_up_is_let_go_uncounted(lot):
    peer = park(lot)
    lot.receive()
    peer.shutdown(socket.SHUT_WR)
    time.sleep(0.01)
    look_all(lot)
    assert not lot.parked and lot.board.mem.refused == [0, 0, 0, 0]
    assert _passing.take_conn(lot.ends.hand_rx) is None
    peer.close()


@pytest.mark.parametrize("more", [b"", b"\0\1"])
def test_a_head_cut_short_by_a_hang_up_goes_to_a_worker_to_say_so(lot, more):
    """The worker reads it all (nothing is reset) and logs the truncated record."""
    peer = park(lot, b"\1\1\0\1")
    lot.receive()
    peer.sendall(more)
    peer.shutdown(socket.SHUT_WR)
    time.sleep(0.01)
    look_all(lot)
    assert not lot.parked and lot.board.mem.refused == [0, 0, 0, 0]
    fd, *_, data = _passing.take_conn(lot.ends.hand_rx)
    with socket.socket(fileno=fd) as conn, peer:
        assert data + conn.recv(100) == b"\1\1\0\1" + more


def test_a_master_that_stops_gracefully_hands_every_connection_to_its_workers(lot):
    """Silent or partial, each goes over as it is, and so does one parked afterwards (by a
    worker that was waiting for its first bytes): none is left to the master's exit."""
    silent = park(lot)
    partial = park(lot, request()[:10])
    lot.receive()
    assert len(lot.parked) == 2
    lot.hand_over_all()
    assert not lot.parked and lot.board.mem.parked == 0 and lot.board.mem.handoff_pending == 2
    late = park(lot)
    lot.receive()
    assert not lot.parked and lot.board.mem.handoff_pending == 3
    taken = [_passing.take_conn(lot.ends.hand_rx) for _ in range(3)]
    assert [t[4] for t in taken] == [b"", request()[:10], b""]
    for t, peer in zip(taken, (silent, partial, late)):
        os.close(t[0])
        peer.close()


def test_a_kept_connection_waits_without_a_deadline_for_its_next_request(lot):
    """A stopping worker's kept connection: no deadline while nginx sends nothing on it (it
    may keep it for minutes); the next request, once whole, goes to a worker with every byte;
    its head gets request_head_timeout from its first byte."""
    kept = park(lot, flags=_passing.TICKET_KEPT)
    lot.receive()
    look_all(lot)
    assert len(lot.parked) == 1 and lot.next_due() is None
    lot.expire(parking.now_us() + 3600_000_000)
    assert len(lot.parked) == 1  # an hour on: still there
    data = request()
    kept.sendall(data[:10])
    before = parking.now_us()
    look_all(lot)
    assert before + lot.head_timeout <= lot.next_due() <= parking.now_us() + lot.head_timeout
    kept.sendall(data[10:])
    look_all(lot)
    assert not lot.parked and lot.board.mem.handoff_pending == 1
    fd, _, _, flags, consumed = _passing.take_conn(lot.ends.hand_rx)
    assert flags & _passing.TICKET_KEPT
    with socket.socket(fileno=fd) as conn, kept:
        assert consumed + conn.recv(65536) == data


def test_a_kept_connection_nginx_closes_is_let_go_uncounted(lot):
    kept = park(lot, flags=_passing.TICKET_KEPT)
    lot.receive()
    kept.close()
    look_all(lot)
    assert not lot.parked and lot.board.mem.refused == [0] * len(lot.board.mem.refused)


def test_a_master_that_stops_closes_the_idle_kept_ones(lot):
    """No worker will be left to take their next request: they are closed, and an idle kept
    one parked afterwards too, while one with a request on its way goes to a worker."""
    idle = park(lot, flags=_passing.TICKET_KEPT)
    busy = park(lot, flags=_passing.TICKET_KEPT)
    lot.receive()
    busy.sendall(request()[:10])
    look_all(lot)
    lot.hand_over_all()
    assert not lot.parked and lot.board.mem.handoff_pending == 1
    late = park(lot, flags=_passing.TICKET_KEPT)
    lot.receive()
    assert not lot.parked and lot.board.mem.handoff_pending == 1
    for peer in (idle, late):
        peer.settimeout(1)
        assert peer.recv(10) == b""
        peer.close()
    os.close(_passing.take_conn(lot.ends.hand_rx)[0])
    busy.close()
