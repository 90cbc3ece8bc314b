"""fpm.sockdiag: listen queue numbers from the kernel, on real listening sockets.

Every test builds a real listener with backlog 16, queues connections nobody accepts, and
checks the kernel's count as it rises and falls with accept().
"""
import errno
import os
import socket
import time

import pytest

from fpm import sockdiag
from fpm.sockdiag import ListenQueues, listen_queue
from tests.conftest import require

BACKLOG = 16
N = 5


@pytest.fixture
def queues():
    with ListenQueues() as q:
        yield q


@pytest.fixture
def closing():
    """Collects sockets to close at teardown, clients before listeners."""
    socks = []
    yield socks
    for s in reversed(socks):
        s.close()


def unix_listener(tmp_path, closing, kind=socket.SOCK_STREAM, abstract=False, backlog=BACKLOG):
    s = socket.socket(socket.AF_UNIX, kind)
    closing.append(s)
    # An abstract name (leading NUL) has no file: the inode lookup must not depend on a path.
    s.bind(f"\0pyfpm-test-{os.getpid()}-{id(s)}" if abstract else str(tmp_path / "l.sock"))
    s.listen(backlog)
    return s


def tcp_listener(closing, host="127.0.0.1", backlog=BACKLOG):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    closing.append(s)
    s.bind((host, 0))
    s.listen(backlog)
    return s


def unix_connect(listener, closing, kind=socket.SOCK_STREAM):
    # Unix connects complete at once, straight into the listener's accept queue.
    c = socket.socket(socket.AF_UNIX, kind)
    closing.append(c)
    c.connect(listener.getsockname())
    return c


def tcp_connect(listener, closing):
    # Non-blocking: the connection reaches the accept queue when the handshake completes,
    # which on loopback is almost at once; the tests wait for the count rather than assume.
    c = socket.socket(listener.family, socket.SOCK_STREAM)
    closing.append(c)
    c.setblocking(False)
    assert c.connect_ex(listener.getsockname()[:2]) in (0, errno.EINPROGRESS)
    return c


def wait_for(queues, fd, expected, timeout=5.0):
    deadline = time.monotonic() + timeout
    while (got := queues.query(fd)) != expected and time.monotonic() < deadline:
        time.sleep(0.005)
    return got


def rise_and_fall(queues, listener, connect, closing):
    """Queue N connections, check (N, 16), then accept them one by one."""
    fd = listener.fileno()
    assert queues.query(fd) == (0, BACKLOG)
    for i in range(1, N + 1):
        connect(listener, closing)
        assert wait_for(queues, fd, (i, BACKLOG)) == (i, BACKLOG)
    for left in range(N - 1, -1, -1):
        conn, _ = listener.accept()
        closing.append(conn)
        assert queues.query(fd) == (left, BACKLOG)


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_unix_stream_queue_rises_and_falls(tmp_path, queues, closing, abstract):
    listener = unix_listener(tmp_path, closing, abstract=abstract)
    rise_and_fall(queues, listener, unix_connect, closing)


def test_unix_seqpacket_queue(tmp_path, queues, closing):
    listener = unix_listener(tmp_path, closing, kind=socket.SOCK_SEQPACKET)
    rise_and_fall(queues, listener,
                  lambda l, c: unix_connect(l, c, socket.SOCK_SEQPACKET), closing)


def test_tcp_ipv4_queue_rises_and_falls(queues, closing):
    rise_and_fall(queues, tcp_listener(closing), tcp_connect, closing)


def test_tcp_ipv6_queue_rises_and_falls(queues, closing):
    try:
        listener = tcp_listener(closing, "::1")
    except OSError as e:
        require("IPv6 loopback ::1", False, str(e))
    rise_and_fall(queues, listener, tcp_connect, closing)


def test_dual_stack_listener_counts_ipv4_clients(queues, closing):
    # A bare `listen = 9000` binds [::] and takes IPv4 clients as mapped addresses.
    try:
        listener = tcp_listener(closing, "::")
    except OSError as e:
        require("IPv6", False, str(e))
    port = listener.getsockname()[1]
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    closing.append(c)
    c.setblocking(False)
    c.connect_ex(("127.0.0.1", port))
    assert wait_for(queues, listener.fileno(), (1, BACKLOG)) == (1, BACKLOG)


def test_capacity_is_the_effective_backlog(tmp_path, queues, closing):
    """listen() beyond net.core.somaxconn is capped; the kernel reports the capped value."""
    with open("/proc/sys/net/core/somaxconn") as f:
        somaxconn = int(f.read())
    unix = unix_listener(tmp_path, closing, backlog=somaxconn + 100)
    tcp = tcp_listener(closing, backlog=somaxconn + 100)
    assert queues.query(unix.fileno()) == (0, somaxconn)
    assert queues.query(tcp.fileno()) == (0, somaxconn)


def test_unix_waiting_reported_as_the_kernel_counts_past_the_backlog(tmp_path, queues, closing):
    """No clamping: the kernel admits connections until the queue is *over* the backlog."""
    listener = unix_listener(tmp_path, closing, backlog=2)
    admitted = 0
    while True:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        closing.append(c)
        c.setblocking(False)
        try:
            c.connect(listener.getsockname())
        except BlockingIOError:  # EAGAIN: the accept queue is full
            break
        admitted += 1
        assert admitted < 100, "the backlog never filled"
    assert admitted >= 2
    assert queues.query(listener.fileno()) == (admitted, 2)


def test_dump_fallback_when_the_exact_query_is_refused(tmp_path, queues, closing, monkeypatch):
    """A kernel refusing single-inode queries: same numbers from a dump, refusal remembered."""
    listener = unix_listener(tmp_path, closing)
    # A second listener with other numbers: the dump returns both, ours is picked by inode.
    other = socket.socket(socket.AF_UNIX)
    closing.append(other)
    other.bind(str(tmp_path / "other.sock"))
    other.listen(3)
    unix_connect(other, closing)
    calls = []

    def refused(nl, ino):
        calls.append(ino)
        raise sockdiag._Refused(errno.EINVAL)

    monkeypatch.setattr(queues, "_exact_query", refused)
    for i in range(1, 4):
        unix_connect(listener, closing)
        assert queues.query(listener.fileno()) == (i, BACKLOG)
    assert queues.query(other.fileno()) == (1, 3)
    assert len(calls) == 1, "after one refusal the exact query is not tried again"


def test_dump_and_exact_agree(tmp_path, queues, closing):
    listener = unix_listener(tmp_path, closing)
    for _ in range(N):
        unix_connect(listener, closing)
    ino = os.fstat(listener.fileno()).st_ino
    nl = queues._socket()
    assert queues._exact_query(nl, ino) == queues._dump_query(nl, ino) == (N, BACKLOG)


def test_not_listening_gives_none(tmp_path, queues, closing):
    tcp = tcp_listener(closing)
    client = tcp_connect(tcp, closing)
    wait_for(queues, tcp.fileno(), (1, BACKLOG))
    accepted, _ = tcp.accept()
    closing.append(accepted)
    unix = unix_listener(tmp_path, closing)
    uclient = unix_connect(unix, closing)
    fresh_unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fresh_tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    pair = socket.socketpair()
    closing.extend([fresh_unix, fresh_tcp, udp, dgram, *pair])
    for s in (client, accepted, uclient, fresh_unix, fresh_tcp, udp, dgram, pair[0]):
        assert queues.query(s.fileno()) is None, s


def test_other_families_give_none(queues, closing):
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    closing.append(nl)
    assert queues.query(nl.fileno()) is None


def test_closed_fd_or_non_socket_raises(tmp_path, queues):
    """A stale fd number is the caller's bug: it would otherwise read some other socket."""
    s = socket.socket()
    fd = s.fileno()
    s.close()
    with pytest.raises(OSError) as e:
        queues.query(fd)
    assert e.value.errno == errno.EBADF
    with open(tmp_path / "f", "w") as f:
        with pytest.raises(OSError) as e:
            queues.query(f.fileno())
    assert e.value.errno == errno.ENOTSOCK
    with pytest.raises(ValueError):
        queues.query(-1)


def test_query_leaves_the_fd_open_and_blocking(tmp_path, queues, closing):
    """The fd is the pool's listener: a query neither closes it nor flips O_NONBLOCK, even
    with socket.setdefaulttimeout() set (which makes wrapped sockets non-blocking)."""
    unix = unix_listener(tmp_path, closing)
    tcp = tcp_listener(closing)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(5.0)
    try:
        for s in (unix, tcp):
            for _ in range(3):
                assert queues.query(s.fileno()) == (0, BACKLOG)
            assert os.get_blocking(s.fileno())
            os.fstat(s.fileno())  # still open
    finally:
        socket.setdefaulttimeout(old)


def test_netlink_refused_gives_none_for_unix_only(tmp_path, closing, monkeypatch):
    """As in a sandbox refusing NETLINK_SOCK_DIAG: protocol 31 is registered by no kernel."""
    monkeypatch.setattr(sockdiag, "NETLINK_SOCK_DIAG", 31)
    with pytest.raises(OSError):
        socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 31).close()
    unix = unix_listener(tmp_path, closing)
    tcp = tcp_listener(closing)
    with ListenQueues() as q:
        assert q.query(unix.fileno()) is None
        assert q.query(tcp.fileno()) == (0, BACKLOG)  # TCP_INFO needs no netlink
        assert q.query(unix.fileno()) is None


def test_tcp_never_opens_netlink(closing):
    tcp = tcp_listener(closing)
    q = ListenQueues()
    assert q.query(tcp.fileno()) == (0, BACKLOG)
    assert q._nl is None
    q.close()


def test_one_netlink_socket_is_reused_and_close_is_repeatable(tmp_path, closing):
    unix = unix_listener(tmp_path, closing)
    q = ListenQueues()
    q.query(unix.fileno())
    nl = q._nl
    for _ in range(10):
        q.query(unix.fileno())
    assert q._nl is nl
    q.close()
    q.close()
    assert q.query(unix.fileno()) == (0, BACKLOG)  # reopens
    q.close()


def test_forked_child_uses_its_own_netlink_socket(tmp_path, queues, closing):
    """A worker forked after the master's first query must not read the master's replies."""
    unix = unix_listener(tmp_path, closing)
    unix_connect(unix, closing)
    assert queues.query(unix.fileno()) == (1, BACKLOG)
    parent_nl = queues._nl
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ok = (queues.query(unix.fileno()) == (1, BACKLOG)
                  and queues._nl is not parent_nl)
            os.write(w, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        assert f.read() == b"ok"
    assert os.waitpid(pid, 0)[1] == 0
    assert queues._nl is parent_nl
    assert queues.query(unix.fileno()) == (1, BACKLOG)


def test_listen_queue_one_off(tmp_path, closing):
    unix = unix_listener(tmp_path, closing)
    tcp = tcp_listener(closing)
    unix_connect(unix, closing)
    unix_connect(unix, closing)
    assert listen_queue(unix.fileno()) == (2, BACKLOG)
    assert listen_queue(tcp.fileno()) == (0, BACKLOG)


def test_many_listeners_each_answered_for_itself(tmp_path, queues, closing):
    """The master asks for every pool each second: answers must not leak between inodes."""
    listeners = []
    for i in range(8):
        s = socket.socket(socket.AF_UNIX)
        closing.append(s)
        s.bind(str(tmp_path / f"{i}.sock"))
        s.listen(BACKLOG)
        for _ in range(i):
            unix_connect(s, closing)
        listeners.append(s)
    for _ in range(3):
        assert [queues.query(s.fileno()) for s in listeners] == \
            [(i, BACKLOG) for i in range(8)]


def test_failing_netlink_socket_gives_none_then_is_replaced(tmp_path, queues, closing):
    """A netlink send/recv error answers None once; the next query uses a fresh socket."""
    unix = unix_listener(tmp_path, closing)
    assert queues.query(unix.fileno()) == (0, BACKLOG)
    broken = queues._nl
    broken.close()  # sendto on it now fails with EBADF, as any netlink I/O error would
    assert queues.query(unix.fileno()) is None
    assert queues.query(unix.fileno()) == (0, BACKLOG)
    assert queues._nl is not broken
