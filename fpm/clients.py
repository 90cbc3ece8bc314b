"""listen.allowed_clients: which peers a pool's TCP sockets accept (PHP-FPM's fcgi_is_allowed),
with CIDR ranges as well as single addresses. Parsed once at configuration load; the worker
asks ``acceptor(pool, log, tcp)`` about each connection it accepts.
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Callable, Iterable

EXPECTED = ("IPv4 or IPv6 addresses or CIDR ranges separated by commas, "
            "e.g. 127.0.0.1, 10.0.0.0/8, ::1, fd00::/8")
# An IPv6 peer whose first 12 bytes are these is an IPv4 client on a dual-stack socket.
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"

Rules = tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]  # (v4, v6) (net, mask)


def network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """One entry, an address or a range; ValueError saying what is wrong with it. A scoped
    IPv6 address (fe80::1%eth0) is refused: peers are matched without their scope."""
    problem = "is not one"
    if "%" not in entry:
        try:
            return ipaddress.ip_network(entry, strict=True)
        except ValueError:
            pass
        try:  # valid once its host bits are cleared: the user meant the range, say which
            problem = "has host bits set (the range is %s)" % ipaddress.ip_network(entry,
                                                                                 strict=False)
        except ValueError:
            pass
    raise ValueError("%s; '%s' %s" % (EXPECTED, entry, problem))


def parse(raw) -> tuple[str, ...]:
    """``a, b/n, ...`` (or a list of entries, from TOML) → the entries, normalized: a single
    address without its /32 or /128. ValueError naming the first invalid entry."""
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, list) or not all(isinstance(e, str) for e in raw):
        raise ValueError(EXPECTED)
    entries: list[str] = []
    for entry in (e.strip() for e in raw):
        if not entry:
            continue
        net = network(entry)
        shown = str(net.network_address if net.prefixlen == net.max_prefixlen else net)
        if shown not in entries:
            entries.append(shown)
    return tuple(entries)


def rules(entries: Iterable[str]) -> Rules:
    """The entries as integer (network, mask) pairs per family, for a match without objects."""
    v4, v6 = [], []
    for entry in entries:
        net = network(entry)
        (v4 if net.version == 4 else v6).append((int(net.network_address), int(net.netmask)))
    return tuple(v4), tuple(v6)


def allows(rules: Rules, family: int, host: str) -> bool:
    """Whether a peer at ``host`` (as getpeername gives it) matches a rule. An IPv4-mapped
    IPv6 peer (``::ffff:10.1.2.3``) is the IPv4 client it stands for, as in PHP-FPM."""
    v4, v6 = rules
    if family == socket.AF_INET:
        return _matches(v4, int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big"))
    packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    if packed[:12] == _V4_MAPPED and _matches(v4, int.from_bytes(packed[12:], "big")):
        return True
    return _matches(v6, int.from_bytes(packed, "big"))


def _matches(pairs: tuple[tuple[int, int], ...], address: int) -> bool:
    return any(address & mask == net for net, mask in pairs)


def shown(family: int, host: str) -> str:
    """A peer as PHP-FPM names it: an IPv4-mapped IPv6 address as the IPv4 one."""
    if family == socket.AF_INET6:
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
        if packed[:12] == _V4_MAPPED:
            return socket.inet_ntop(socket.AF_INET, packed[12:])
    return host


def acceptor(pool, log: Callable[[str, str], None], tcp: bool) -> Callable[[int], bool] | None:
    """The worker's ``allow(fd)`` hook for ``pool``: None when any peer is allowed (the list
    is unset, or the worker has no TCP socket, ``tcp`` False). It never closes the fd: the
    loop does, on False. ``log(level, text)`` is the worker's, which names pool and pid."""
    if not pool.listen_allowed_clients or not tcp:
        return None
    table = rules(pool.listen_allowed_clients)

    def allow(fd: int) -> bool:
        sock = socket.socket(fileno=fd)
        try:
            family = sock.family
            if family not in (socket.AF_INET, socket.AF_INET6):
                return True  # a unix socket of a pool that has TCP ones too
            try:
                host = sock.getpeername()[0]
            except OSError:
                return False  # the peer is already gone: nothing to serve, nothing to say
        finally:
            sock.detach()
        if allows(table, family, host):
            return True
        log("warning", "Connection disallowed: IP address '%s' has been dropped."
            % shown(family, host))
        return False

    return allow
