"""Kept connections shared by a pool's workers: the table's claims (fpm._kept) and the
master's copies (fpm.sharing)."""
import errno
import os
import select
import socket

import pytest
from hypothesis import given, strategies as st

from fpm import _kept, _passing, sharing

OK, BUSY, STALE = 1, 0, -1


def table(size=4):
    fd = os.memfd_create("test-kept", os.MFD_CLOEXEC)
    os.ftruncate(fd, _kept.table_bytes(size))
    return _kept.Table(fd, size, True)


def test_a_connection_is_served_by_one_worker_at_a_time():
    t = table()
    index, gen = t.alloc(100)  # worker 100 shares it while it serves it
    assert t.entry(index) == (gen, _kept.BUSY, 100)
    assert t.claim(index, gen, 200) == BUSY
    assert t.release(index, gen, 100) == 1, "a request came meanwhile: 100 reads again"
    assert t.release(index, gen, 100) == 0
    assert t.entry(index) == (gen, _kept.IDLE, 0)
    assert t.claim(index, gen, 200) == OK
    assert t.claim(index, gen, 100) == BUSY


def test_a_dropped_entry_is_stale_to_every_copy_and_comes_back_with_a_new_generation():
    t = table(1)
    index, gen = t.alloc(100)
    assert t.drop(index, gen) and t.drops == 1
    assert t.claim(index, gen, 200) == STALE
    assert not t.drop(index, gen), "dropped once only"
    again = t.alloc(300)
    assert again == (index, gen + 1)
    assert t.claim(index, gen, 200) == STALE
    assert t.alloc(400) is None, "the table is full"


def test_busy_of_names_what_a_dead_worker_was_serving():
    t = table()
    a, ga = t.alloc(100)
    b, gb = t.alloc(100)
    t.release(b, gb, 100)
    assert t.busy_of(100) == [(a, ga)]
    assert t.live() == {a: ga, b: gb}


def watched():
    """A table whose watcher is worker 100 and whose deputy is worker 200."""
    t = table()
    assert (t.take_role(100), t.take_role(200)) == (_kept.WATCHER, _kept.DEPUTY)
    return t


def test_one_worker_watches_one_stands_by_the_others_rest():
    t = watched()
    assert t.take_role(200) == _kept.DEPUTY, "a deputy keeps its place from sleep to sleep"
    assert t.take_role(300) == _kept.REST
    assert t.roles() == {"watcher": 100, "deputy": 200, "rung": 0, "wakes": 0}


def test_the_watcher_that_goes_to_serve_rings_only_when_nobody_takes_over():
    t = watched()
    assert not t.leave_role(100, _kept.WATCHER, True), "the deputy takes over: no bell"
    assert t.roles()["wakes"] == 1
    # The deputy wakes to find the watcher gone: it takes its place, and leaves its own.
    assert t.take_role(200) == _kept.WATCHER
    assert t.roles()["deputy"] == 0
    assert t.leave_role(200, _kept.WATCHER, True), "nobody to take over: ring"
    assert t.take_role(200) == _kept.WATCHER
    assert not t.leave_role(200, _kept.WATCHER, True), "rung already, not answered yet"
    t.answer()
    assert t.take_role(300) == _kept.WATCHER
    assert not t.leave_role(300, _kept.WATCHER, False), "woken for nothing to serve"
    assert t.take_role(300) == _kept.WATCHER
    assert t.leave_role(300, _kept.WATCHER, True)


def test_a_deputy_that_goes_to_serve_rings_when_nobody_watches():
    t = watched()
    assert not t.leave_role(200, _kept.DEPUTY, True), "the watcher still sleeps on them"
    assert t.roles()["deputy"] == 0
    assert t.take_role(200) == _kept.DEPUTY
    t.leave_role(100, _kept.WATCHER, True)
    assert t.leave_role(200, _kept.DEPUTY, True), "the watcher is serving too: ring"
    assert not t.leave_role(300, _kept.REST, True), "a resting worker leaves nobody"


def test_a_deputy_may_decline_and_a_dead_worker_leaves_its_place():
    t = table()
    t.take_role(100)
    assert t.take_role(200, deputize=False) == _kept.REST, "it found no work: it rests"
    assert t.take_role(300) == _kept.DEPUTY
    assert t.vacate(300) and t.vacate(100) and not t.vacate(200)
    assert t.roles()["watcher"] == t.roles()["deputy"] == 0
    assert t.call() and not t.call(), "one ring until answered"
    assert t.call(anyway=True), "the master rings anyway: the dead may have been the one called"


def test_the_watcher_rings_when_the_deputy_would_look_only_later():
    t = table()
    assert t.take_role(100) == _kept.WATCHER
    assert t.deputize(200, 64) == _kept.DEPUTY
    assert t.leave_role(100, _kept.WATCHER, True), "the deputy looks in 64 ms: ring"
    t.answer()
    assert t.take_role(100) == _kept.WATCHER
    assert t.deputize(200, 1) == _kept.DEPUTY
    assert not t.leave_role(100, _kept.WATCHER, True), "it looks within 1 ms"


def test_a_table_of_another_layout_is_refused():
    t = table(4)
    with pytest.raises(ValueError, match="no kept-connection table of 8 entries"):
        _kept.Table(t.fd, 8)
    with pytest.raises(ValueError, match="0 to 1024 entries"):
        table(_kept.KEPT_MAX + 1)


@given(st.lists(st.tuples(st.sampled_from([1, 2, 3]), st.sampled_from(["claim", "release"])),
                max_size=60))
def test_claims_never_give_one_connection_to_two_workers(steps):
    t = table(1)
    index, gen = t.alloc(1)
    serving = {1}
    for pid, op in steps:
        if op == "claim":
            got = t.claim(index, gen, pid)
            if got == OK:
                assert not serving
                serving.add(pid)
            else:
                assert got == BUSY and serving
        elif pid in serving:
            if t.release(index, gen, pid) == 0:
                serving.discard(pid)
        else:
            assert t.release(index, gen, pid) == -1
        assert len(serving) <= 1


# --- the master's copies ---------------------------------------------------------------------

@pytest.fixture
def shared():
    s = sharing.Shared.create("test", 4)
    yield s
    s.close()


def pair():
    a, b = socket.socketpair()
    return a, b


def test_each_worker_gets_a_copy_and_the_master_keeps_one(shared):
    nginx, conn = pair()
    index, gen = shared.table.alloc(100)
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    shared.add(index, gen, os.dup(conn.fileno()), [tx.fileno()])
    fd, due, _, flags, _ = _passing.take_conn(rx.fileno())
    assert (due, flags) == (gen << 32 | index, _passing.TICKET_SHARE)
    assert shared.inherited() == ((index, gen, shared.fds()[0]),)
    os.close(fd)
    for s in (nginx, conn, tx, rx):
        s.close()


def test_a_worker_whose_channel_is_full_is_cut_off(shared):
    """It would miss that copy: it gets the copies queued, then the channel's end (and
    takes no place among the sleepers, _worker.Sharing._sleep_set)."""
    nginx, conn = pair()
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    queued = 0
    while _passing.pass_conn(tx.fileno(), conn.fileno(), 0, 0, b"", _passing.TICKET_SHARE):
        queued += 1
    index, gen = shared.table.alloc(100)
    shared.add(index, gen, os.dup(conn.fileno()), [tx.fileno()])
    for _ in range(queued):
        os.close(_passing.take_conn(rx.fileno())[0])
    with pytest.raises(OSError) as end:
        _passing.take_conn(rx.fileno())
    assert end.value.errno == errno.EPIPE
    for s in (nginx, conn, tx, rx):
        s.close()


def test_a_copy_of_a_connection_closed_meanwhile_is_not_kept(shared):
    nginx, conn = pair()
    index, gen = shared.table.alloc(100)
    shared.table.drop(index, gen)
    shared.add(index, gen, os.dup(conn.fileno()), [])
    assert shared.copies == {}
    nginx.close()
    conn.close()


def test_sweep_closes_the_copies_of_dropped_connections(shared):
    nginx, conn = pair()
    index, gen = shared.table.alloc(100)
    copy = os.dup(conn.fileno())
    shared.add(index, gen, copy, [])
    shared.sweep()
    assert shared.fds() == [copy]
    shared.table.drop(index, gen)

    class Poller:
        forgotten = []
        unregister = forgotten.append
    shared.poller, shared.index = Poller, {copy: "test"}  # the master watched it
    tx, rx = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    shared.sweep([tx.fileno()])
    assert shared.copies == {} and Poller.forgotten == [copy] and shared.index == {}
    assert rx.recv(8) == b"\0", "a worker asleep is woken to sweep its copies"
    tx.close()
    rx.close()
    nginx.close()
    conn.close()


def test_a_worker_that_dies_in_a_request_ends_its_connection(shared):
    nginx, conn = pair()
    index, gen = shared.table.alloc(100)
    shared.add(index, gen, os.dup(conn.fileno()), [])
    # Another copy stays open (the other workers'): only a shutdown tells the peer.
    shared.worker_gone(100)
    nginx.settimeout(5)
    assert nginx.recv(10) == b"", "the web server sees the connection end"
    assert shared.table.live() == {}
    shared.sweep()
    assert shared.copies == {}
    nginx.close()
    conn.close()


def test_ready_names_the_idle_connections_with_a_request_waiting(shared):
    waiting, quiet, busy = pair(), pair(), pair()
    entries = []
    for nginx, conn in (waiting, quiet, busy):
        index, gen = shared.table.alloc(100)
        shared.add(index, gen, os.dup(conn.fileno()), [])
        entries.append((index, gen))
    for index, gen in entries[:2]:
        shared.table.release(index, gen, 100)
    waiting[0].send(b"request")
    busy[0].send(b"request")
    (index, gen), _, _ = entries
    assert shared.ready() == [(index, gen, shared.copies[index][1])]
    for ends in (waiting, quiet, busy):
        for s in ends:
            s.close()


def test_the_table_and_copies_cross_a_reload(shared):
    nginx, conn = pair()
    index, gen = shared.table.alloc(100)
    shared.add(index, gen, os.dup(conn.fileno()), [])
    adopted = sharing.Shared.adopt("test", shared.export())
    assert adopted.inherited() == shared.inherited()
    assert adopted.table.entry(index) == (gen, _kept.BUSY, 100)
    nginx.close()
    conn.close()


def test_after_a_reload_the_previous_queue_holds_what_the_new_master_shares(shared):
    """The previous master's workers watch its queue until the hand-over: a connection
    shared under the new master is queued there too (before, a request on it waited for
    the hand-over while a previous worker watched), leaves it with its copy, and the
    queue is closed once those workers are gone."""
    entry = shared.export()
    entry[4] = [os.dup(q) for q in entry[4]]  # the exec's copies: the test closes both
    adopted = sharing.Shared.adopt("test", entry)
    nginx, conn = pair()
    index, gen = adopted.table.alloc(200)
    adopted.add(index, gen, os.dup(conn.fileno()), [])
    adopted.table.release(index, gen, 200)
    new, old = [select.epoll.fromfd(os.dup(q)) for q in adopted.queues()]
    take = lambda queue: [fd & 0xffffffff for fd, _ in queue.poll(0, 1)]
    try:
        nginx.send(b"a request")
        assert (take(new), take(old)) == ([index], [index])
        assert adopted.table.drop(index, gen)
        adopted.sweep()
        nginx.send(b"another on the connection, now parked")
        assert (take(new), take(old)) == ([], [])
        adopted.retire_old_queues()
        assert adopted.queues() == [adopted.table.queue]
        with pytest.raises(OSError):
            os.fstat(entry[4][0])
    finally:
        for fd in (new, old, nginx, conn):
            fd.close()
        for fd in (adopted.table.queue, adopted.table.stop):
            os.close(fd)


def test_table_size_is_a_share_of_the_pools_parking_limit():
    assert sharing.table_size(100) == 50
    assert sharing.table_size(1 << 20) == _kept.KEPT_MAX
    assert sharing.table_size(1) == 0
    assert sharing.table_size(100, worker_files=64) == 16, "rlimit_files = 64"


def test_the_queue_gives_one_event_per_request_in_the_order_they_came(shared):
    """fpm._kept.new_queue: a connection with a request is queued once, behind those that
    came before it, and leaves the queue when a worker takes its event; what comes on it
    after that queues it again, at the end."""
    peers = {}
    for index in range(3):
        gen = shared.table.alloc(100)[1]
        ours, theirs = socket.socketpair()
        peers[index] = theirs
        shared.add(index, gen, ours.detach(), [])
        shared.table.release(index, gen, 100)
    queue = select.epoll.fromfd(os.dup(shared.table.queue))
    take = lambda: [fd & 0xffffffff for fd, _ in queue.poll(0, 1)]  # data: generation, entry
    try:
        for index in (2, 0, 1):
            peers[index].send(b"a request")
        peers[2].send(b"more of it")  # queued already: not again
        assert [take(), take(), take(), take()] == [[2], [0], [1], []]
        peers[0].send(b"the next request")
        peers[2].send(b"the next request")
        assert [take(), take(), take()] == [[0], [2], []]
        # A worker told to stop writes the pool's stop eventfd: the watcher wakes (the
        # event's low word, all that select.epoll shows, is 0).
        os.eventfd_write(shared.table.stop, 1)
        assert [take(), take()] == [[0], []]
    finally:
        queue.close()
        for peer in peers.values():
            peer.close()


def test_a_copy_the_master_closes_leaves_the_queue(shared):
    """A connection taken out of the table lives on (parked, or held by a worker, or shared
    again under another entry): the copy the master closes at its sweep must not go on
    queueing its requests under a generation gone."""
    ours, theirs = socket.socketpair()
    index, gen = shared.table.alloc(100)
    shared.add(index, gen, os.dup(ours.fileno()), [])
    shared.table.release(index, gen, 100)
    assert shared.table.drop(index, gen)  # a worker parked it, say
    shared.sweep()
    assert shared.copies == {}
    theirs.send(b"a request")
    queue = select.epoll.fromfd(os.dup(shared.table.queue))
    try:
        assert queue.poll(0, 1) == []
    finally:
        queue.close()
        ours.close()
        theirs.close()
