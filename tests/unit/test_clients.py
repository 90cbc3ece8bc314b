"""fpm.clients: listen.allowed_clients parsed, matched, and asked about real accepted sockets."""
import os
import socket
from types import SimpleNamespace

import pytest

from fpm import clients

INET, INET6 = socket.AF_INET, socket.AF_INET6


@pytest.mark.parametrize("raw, entries", [
    ("127.0.0.1", ("127.0.0.1",)),
    (" 127.0.0.1 , 10.0.0.0/8,::1, fd00::/8 ", ("127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8")),
    ("10.1.2.3/32, 0:0::1/128", ("10.1.2.3", "::1")),  # a one-address range is that address
    ("127.0.0.1,,127.0.0.1, ", ("127.0.0.1",)),
    (["192.168.0.0/16", "2001:db8::/32"], ("192.168.0.0/16", "2001:db8::/32")),  # TOML list
    ("", ()),
])
def test_parse(raw, entries):
    assert clients.parse(raw) == entries


@pytest.mark.parametrize("raw, problem", [
    ("127.0.0.1, localhost", "'localhost' is not one"),
    ("10.0.0.300", "'10.0.0.300' is not one"),
    ("10.0.0.0/33", "'10.0.0.0/33' is not one"),
    ("fe80::1%eth0", "'fe80::1%eth0' is not one"),
    ("10.1.2.3/8", "'10.1.2.3/8' has host bits set (the range is 10.0.0.0/8)"),
    (["127.0.0.1", 5], "e.g. 127.0.0.1, 10.0.0.0/8, ::1, fd00::/8"),
])
def test_parse_names_the_invalid_entry(raw, problem):
    with pytest.raises(ValueError) as e:
        clients.parse(raw)
    assert str(e.value).startswith(clients.EXPECTED) and str(e.value).endswith(problem)


RULES = clients.rules(("127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"))


@pytest.mark.parametrize("family, host, allowed", [
    (INET, "127.0.0.1", True),
    (INET, "127.0.0.2", False),
    (INET, "10.255.0.1", True),
    (INET, "11.0.0.1", False),
    (INET6, "::1", True),
    (INET6, "::2", False),
    (INET6, "fd12:3456::1", True),
    (INET6, "fe80::1%lo", False),
    # an IPv4 client of a dual-stack socket matches the IPv4 rules
    (INET6, "::ffff:10.1.2.3", True),
    (INET6, "::ffff:127.0.0.1", True),
    (INET6, "::ffff:192.168.0.1", False),
])
def test_allows(family, host, allowed):
    assert clients.allows(RULES, family, host) is allowed


def test_only_ipv6_rules_match_ipv6_peers():
    assert not clients.allows(clients.rules(("0.0.0.0/0",)), INET6, "2001:db8::1")
    assert clients.allows(clients.rules(("::/0",)), INET6, "2001:db8::1")


def test_shown_as_php_fpm_names_the_peer():
    assert clients.shown(INET6, "::ffff:10.1.2.3") == "10.1.2.3"
    assert clients.shown(INET6, "fd00::1") == "fd00::1"
    assert clients.shown(INET, "10.1.2.3") == "10.1.2.3"


# --- acceptor(), on real sockets -----------------------------------------------------------

def pool(allowed):
    return SimpleNamespace(name="www", listen_allowed_clients=allowed)


class Said(list):
    """The worker's log(level, text), keeping what it was told."""

    def __call__(self, level, text):
        self.append((level, text))


@pytest.mark.parametrize("allowed, tcp", [
    ((), True),  # unset: anyone
    (("127.0.0.1",), False),  # unix only: the list does not apply
])
def test_no_acceptor_when_nothing_to_check(allowed, tcp):
    assert clients.acceptor(pool(allowed), Said(), tcp) is None


@pytest.fixture
def log():
    return Said()


def accepted_from(server: socket.socket, source: str) -> int:
    """The fd of a connection to ``server`` made from address ``source``."""
    client = socket.socket(server.family)
    client.bind((source, 0))
    client.connect(server.getsockname())
    conn, _ = server.accept()
    client.close()  # the peer's address stays readable on the accepted socket
    return conn.detach()


def test_acceptor_drops_a_disallowed_peer_and_logs_it(log):
    allow = clients.acceptor(pool(("127.0.0.1", "10.0.0.0/8")), log, True)
    with socket.create_server(("127.0.0.1", 0)) as server:
        good, bad = accepted_from(server, "127.0.0.1"), accepted_from(server, "127.0.0.2")
    try:
        assert allow(good) is True and allow(bad) is False
        os.fstat(bad)  # still open: closing it is the serve loop's job
    finally:
        os.close(good)
        os.close(bad)
    assert log == [("warning", "Connection disallowed: IP address '127.0.0.2' has been dropped.")]


def test_acceptor_on_a_dual_stack_socket_matches_ipv4_rules(log):
    if not socket.has_dualstack_ipv6():
        pytest.skip("no dual-stack IPv6 here")
    allow = clients.acceptor(pool(("127.0.0.1",)), log, True)
    with socket.create_server(("::", 0), family=INET6, dualstack_ipv6=True) as server:
        port = server.getsockname()[1]
        fds = []
        for source in ("127.0.0.1", "127.0.0.3"):
            with socket.socket() as client:
                client.bind((source, 0))
                client.connect(("127.0.0.1", port))
                conn, _ = server.accept()
                fds.append(conn.detach())
    try:
        assert [allow(fd) for fd in fds] == [True, False]
    finally:
        for fd in fds:
            os.close(fd)
    assert log == [("warning", "Connection disallowed: IP address '127.0.0.3' has been dropped.")]


def test_acceptor_lets_unix_peers_of_a_mixed_pool_in(tmp_path, log):
    allow = clients.acceptor(pool(("10.0.0.0/8",)), log, True)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "s"))
        server.listen()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(tmp_path / "s"))
            conn, _ = server.accept()
            fd = conn.detach()
    try:
        assert allow(fd) is True
    finally:
        os.close(fd)
    assert log == []
