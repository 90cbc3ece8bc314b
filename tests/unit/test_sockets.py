"""fpm.sockets: the listen address rule, binding on unix paths and TCP ports, and the unix
socket's owner, mode and POSIX ACL."""
import dataclasses
import errno
import fcntl
import os
import select
import socket
import stat
import subprocess

import pytest

from fpm import acl
from fpm.log import Logger
from fpm.sockets import (Address, ListenError, close_all, open_all, open_listener,
                         parse_listen, resolve_acl, resolve_owner)
from tests.conftest import free_port


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9000", Address("127.0.0.1:9000", socket.AF_INET, "127.0.0.1", 9000)),
    ("[::1]:9000", Address("[::1]:9000", socket.AF_INET6, "::1", 9000)),
    ("[::]:1", Address("[::]:1", socket.AF_INET6, "::", 1)),
    ("9000", Address("9000", socket.AF_INET6, None, 9000)),
    ("localhost:65535", Address("localhost:65535", socket.AF_UNSPEC, "localhost", 65535)),
    ("/run/pyfpm/www.sock", Address("/run/pyfpm/www.sock", socket.AF_UNIX, path="/run/pyfpm/www.sock")),
    ("www.sock", Address("www.sock", socket.AF_UNIX, path="www.sock")),
    (" 127.0.0.1:80 ", Address("127.0.0.1:80", socket.AF_INET, "127.0.0.1", 80)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text, message", [
    ("127.0.0.1:0", "invalid port value '0' in listen address '127.0.0.1:0' (must be 1..65535)"),
    ("127.0.0.1:65536", "invalid port value '65536'"),
    ("0", "invalid port value '0'"),
    ("127.0.0.1:http", "invalid port value 'http'"),
    ("127.0.0.1:", "invalid port value ''"),
    (":9000", "no host before ':'"),
    ("[]:9000", "empty IPv6 address"),
    ("::1:9000", "an IPv6 address needs brackets"),
    ("", "empty listen address"),
])
def test_parse_listen_errors(text, message):
    with pytest.raises(ListenError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        parse_listen(text)


def test_resolve_owner():
    assert resolve_owner("www", None, None) == (-1, -1)
    assert resolve_owner("www", "0", None) == (0, 0)  # uid 0 exists: its primary group
    assert resolve_owner("www", "root", "0") == (0, 0)
    assert resolve_owner("www", None, "123") == (-1, 123)
    assert resolve_owner("www", "4242424", None) == (4242424, -1)  # unknown uid: as given


def test_resolve_owner_errors():
    with pytest.raises(ListenError, match=r"\[pool www\] cannot get uid for user 'no-such-user'"):
        resolve_owner("www", "no-such-user", None)
    with pytest.raises(ListenError, match=r"\[pool www\] cannot get gid for group 'no-such-group'"):
        resolve_owner("www", None, "no-such-group")


@dataclasses.dataclass
class Pool:
    listen: tuple[str, ...]
    name: str = "www"
    listen_backlog: int = -1
    listen_owner: str | None = None
    listen_group: str | None = None
    listen_mode: int = 0o660
    listen_acl_users: tuple[str, ...] = ()
    listen_acl_groups: tuple[str, ...] = ()


def open_one(log, address, **settings):
    """The listener of a pool whose one address is ``address``."""
    return open_listener(Pool((address,), **settings), address, log)


@pytest.fixture
def log(tmp_path):
    return Logger(str(tmp_path / "log"))


def test_unix_socket_mode_nonblocking_and_removed(tmp_path, log):
    path = tmp_path / "www.sock"
    listener = open_one(log, str(path), listen_mode=0o604)
    try:
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o604
        assert fcntl.fcntl(listener.fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert listener.key == str(path)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))
    finally:
        listener.close()
    assert not path.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_unix_socket_owner_and_group(tmp_path, log):
    path = tmp_path / "www.sock"
    listener = open_one(log, str(path), listen_owner="nobody", listen_group="0")
    try:
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (65534, 0)
    finally:
        listener.close()


def test_stale_unix_socket_is_replaced(tmp_path, log):
    path = tmp_path / "www.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody answers: a previous instance died
    listener = open_one(log, str(path))
    listener.close()


def test_live_unix_socket_is_refused(tmp_path, log):
    path = tmp_path / "www.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen()
        with pytest.raises(ListenError) as e:
            open_one(log, str(path))
    assert str(e.value) == "Another FPM instance seems to already listen on %s" % path
    assert path.exists()  # the other instance's socket is left alone


def test_non_socket_path_is_refused(tmp_path, log):
    path = tmp_path / "data.txt"
    path.write_text("keep me")
    with pytest.raises(ListenError, match="the path exists and is not a socket"):
        open_one(log, str(path))
    assert path.read_text() == "keep me"


def test_tcp_listener(log):
    listener = open_one(log, "127.0.0.1:%d" % free_port())
    try:
        assert fcntl.fcntl(listener.fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        host, port = listener.sock.getsockname()
        assert listener.key == "127.0.0.1:%d" % port
        socket.create_connection((host, port), 1).close()
    finally:
        listener.close()


def test_bare_port_is_dual_stack(log):
    if not socket.has_dualstack_ipv6():
        pytest.skip("no IPv6 here")
    port = free_port()
    listener = open_one(log, str(port))
    try:
        assert listener.sock.family == socket.AF_INET6
        socket.create_connection(("127.0.0.1", port), 1).close()
        socket.create_connection(("::1", port), 1).close()
    finally:
        listener.close()


def test_backlog(log):
    listener = open_one(log, "127.0.0.1:%d" % free_port(), listen_backlog=3)
    listener.close()


def test_address_in_use(log):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(ListenError) as e:
            open_one(log, "127.0.0.1:%d" % port)
    assert str(e.value) == ("unable to bind listening socket for address '127.0.0.1:%d': "
                            "Address already in use (%d)" % (port, errno.EADDRINUSE))


def test_open_all_closes_what_it_opened_on_failure(tmp_path, log):
    good = tmp_path / "a.sock"
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        pools = [Pool((str(good),), name="a"),
                 Pool(("127.0.0.1:%d" % other.getsockname()[1],), name="b")]
        with pytest.raises(ListenError):
            open_all(pools, log)
    assert not good.exists()


def test_open_all_in_pool_then_address_order(tmp_path, log):
    port = free_port()
    listeners = open_all([Pool((str(tmp_path / "a.sock"), "127.0.0.1:%d" % port), name="a"),
                          Pool((str(tmp_path / "b.sock"),), name="b")], log)
    assert [(l.pool_name, l.key) for l in listeners] == [
        ("a", str(tmp_path / "a.sock")), ("a", "127.0.0.1:%d" % port),
        ("b", str(tmp_path / "b.sock"))]
    socket.create_connection(("127.0.0.1", port), 1).close()  # each address is served
    close_all(listeners)
    assert list(tmp_path.glob("*.sock")) == []


def test_open_all_takes_adopted_sockets_by_address(tmp_path, log):
    kept = open_one(log, str(tmp_path / "kept.sock"))
    listeners = open_all([Pool((str(tmp_path / "new.sock"), str(tmp_path / "kept.sock")))],
                         log, {str(tmp_path / "kept.sock"): kept})
    try:
        assert listeners[1] is kept and listeners[0].key == str(tmp_path / "new.sock")
    finally:
        close_all(listeners)


# --- listen.acl_users / listen.acl_groups --------------------------------------------------

def test_acl_on_the_unix_socket_instead_of_the_owner(tmp_path, log):
    path = tmp_path / "www.sock"
    listener = open_one(log, str(path), listen_mode=0o600, listen_owner="nobody",
                        listen_acl_users=("nobody", "4242"), listen_acl_groups=("0",))
    try:
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())  # owner ignored
        entries = acl.read(str(path))
        assert [(tag, id_) for tag, perm, id_ in entries if perm == acl.READ | acl.WRITE
                and tag in (acl.USER, acl.GROUP, acl.MASK)] == [
            (acl.USER, 4242), (acl.USER, 65534), (acl.GROUP, 0), (acl.MASK, acl.UNDEFINED_ID)]
        assert stat.S_IMODE(st.st_mode) == 0o660  # the group bits show the mask
    finally:
        listener.close()


def test_resolve_acl():
    pool = Pool(("x.sock",), listen_acl_users=("root", "4242424"), listen_acl_groups=("0",))
    assert resolve_acl(pool) == ([0, 4242424], [0])


@pytest.mark.parametrize("settings, message", [
    ({"listen_acl_users": ("root", "no-such-user")},
     "[pool www] listen.acl_users: cannot get uid for user 'no-such-user'"),
    ({"listen_acl_groups": ("no-such-group",)},
     "[pool www] listen.acl_groups: cannot get gid for group 'no-such-group'"),
])
def test_unknown_acl_user_or_group(tmp_path, log, settings, message):
    with pytest.raises(ListenError) as e:
        open_one(log, str(tmp_path / "www.sock"), **settings)
    assert str(e.value) == message
    assert not (tmp_path / "www.sock").exists()


@pytest.fixture
def no_acl_dir(tmp_path):
    """A directory on ramfs, a file system without extended attributes, hence ACLs."""
    where = tmp_path / "ramfs"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a ramfs here (needs root): %s" % done.stderr.decode().strip())
    yield where
    subprocess.run(["umount", str(where)], capture_output=True)


def test_acl_on_a_file_system_without_acls_fails_clearly(no_acl_dir, log):
    path = no_acl_dir / "www.sock"
    with pytest.raises(ListenError) as e:
        open_one(log, str(path), listen_acl_users=("nobody",), listen_acl_groups=("0",))
    assert str(e.value) == (
        "[pool www] listen.acl_users and listen.acl_groups: unable to set the POSIX ACL of the "
        "socket '%s': Operation not supported (%d); the file system holding it does not support "
        "POSIX ACLs: put the socket on one that does, or use listen.owner and listen.group "
        "instead" % (path, errno.EOPNOTSUPP))
    assert not path.exists()


def test_a_tcp_listener_holding_syns_keeps_its_queue_and_refuses_once_shut(log):
    """A finishing master's listener (fpm.stopping): while it holds SYNs back, a new
    connect() gets no answer and what is queued stays for accept(); once shut, a connect()
    is refused at once."""
    listener = open_one(log, "127.0.0.1:%d" % free_port())
    address = listener.sock.getsockname()
    try:
        queued = socket.create_connection(address, 1)
        queued.sendall(b"x")  # a TCP listener may defer accept() until data comes
        listener.hold_syns()
        with socket.socket() as held:
            held.setblocking(False)
            assert held.connect_ex(address) == errno.EINPROGRESS
            assert select.select([], [held], [], 0.3)[1] == []  # no SYN-ACK came
        listener.sock.setblocking(True)
        listener.sock.settimeout(1)
        conn, _ = listener.sock.accept()
        assert conn.recv(1) == b"x"
        conn.close()
        queued.close()
        listener.shut()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, 1)
    finally:
        listener.close()


def test_a_unix_listener_refusing_keeps_its_queue(tmp_path, log):
    path = tmp_path / "www.sock"
    listener = open_one(log, str(path))
    try:
        with socket.socket(socket.AF_UNIX) as queued:
            queued.connect(str(path))
            listener.refuse()
            assert not path.exists()  # a connect() now fails at once
            listener.sock.setblocking(True)
            listener.sock.settimeout(1)
            listener.sock.accept()[0].close()
    finally:
        listener.close()
