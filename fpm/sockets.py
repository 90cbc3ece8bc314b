"""Listening sockets: parse a pool's ``listen`` addresses, bind each before forking, clean
up on exit. A pool has one socket per address; its workers get them all.

Address rule (PHP-FPM's): a value containing ``:`` or made only of digits is TCP, anything
else is a unix socket path. A bare port listens on ``::`` (dual stack) and falls back to
``0.0.0.0`` where IPv6 is unavailable.
"""
from __future__ import annotations

import ctypes
import errno
import grp
import os
import pwd
import socket
import stat
import struct
from dataclasses import dataclass

from fpm import acl
from fpm.log import Logger, strerror


class ListenError(Exception):
    """A listening socket could not be set up; ``str(e)`` is the complete log message."""


@dataclass(frozen=True)
class Address:
    """A parsed ``listen`` value. ``host`` is None for a bare port; ``path`` for unix."""
    text: str
    family: int
    host: str | None = None
    port: int = 0
    path: str | None = None


def parse_listen(text: str) -> Address:
    """Parse ``ip:port``, ``[ipv6]:port``, ``host:port``, ``port`` or a unix path."""
    value = text.strip()
    if not value:
        raise ListenError("empty listen address")
    if ":" not in value and not value.isdigit():
        return Address(value, socket.AF_UNIX, path=value)
    if value.isdigit():
        return Address(value, socket.AF_INET6, host=None, port=_port(value, text))
    host, _, port_text = value.rpartition(":")
    port = _port(port_text, text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ListenError("invalid listen address '%s': empty IPv6 address" % text)
        return Address(value, socket.AF_INET6, host=host, port=port)
    if not host:
        raise ListenError("invalid listen address '%s': no host before ':'" % text)
    if ":" in host:
        raise ListenError("invalid listen address '%s': an IPv6 address needs brackets, "
                          "as in '[::1]:9000'" % text)
    # A hostname may resolve to either family; getaddrinfo decides at bind time.
    return Address(value, socket.AF_INET if _is_ipv4(host) else socket.AF_UNSPEC,
                   host=host, port=port)


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return False
    return True


def _port(port_text: str, text: str) -> int:
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ListenError("invalid port value '%s' in listen address '%s' (must be 1..65535)"
                          % (port_text, text))
    return int(port_text)


def resolve_owner(pool_name: str, owner: str | None, group: str | None) -> tuple[int, int]:
    """uid and gid for ``listen.owner``/``listen.group``; -1 leaves that id unchanged.

    A group left unset with an owner set means the owner's primary group, as in PHP-FPM.
    """
    uid = gid = -1
    if owner:
        try:
            entry = pwd.getpwuid(int(owner)) if owner.isdigit() else pwd.getpwnam(owner)
        except KeyError:
            if not owner.isdigit():
                raise ListenError("[pool %s] cannot get uid for user '%s'" % (pool_name, owner))
            uid = int(owner)
        else:
            uid, gid = entry.pw_uid, entry.pw_gid
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise ListenError("[pool %s] cannot get gid for group '%s'" % (pool_name, group))
    return uid, gid


def resolve_acl(pool) -> tuple[list[int], list[int]]:
    """uids and gids of ``listen.acl_users`` and ``listen.acl_groups`` (names or ids; an id
    that names nobody is taken as given, as for ``listen.owner``)."""
    uids = [_resolve_id(pool.name, "listen.acl_users", "uid for user", name,
                        lambda n: pwd.getpwnam(n).pw_uid) for name in pool.listen_acl_users]
    gids = [_resolve_id(pool.name, "listen.acl_groups", "gid for group", name,
                        lambda n: grp.getgrnam(n).gr_gid) for name in pool.listen_acl_groups]
    return uids, gids


def _resolve_id(pool_name: str, directive: str, what: str, name: str, lookup) -> int:
    if name.isdigit():
        return int(name)
    try:
        return lookup(name)
    except KeyError:
        raise ListenError("[pool %s] %s: cannot get %s '%s'" % (pool_name, directive, what, name))


# A classic BPF socket filter that drops TCP segments with SYN set and keeps the others: on a
# listening socket the kernel runs it on what comes for the socket, from the TCP header on
# (its flags at byte 13). No new handshake begins; those under way complete.
_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
_DROP_SYN = (
    (0x30, 0, 0, 13),  # ldb [13]
    (0x45, 1, 0, 0x02),  # jset #SYN: to the drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret: keep it whole
    (0x06, 0, 0, 0))  # ret 0: drop it
_DROP_SYN_CODE = b"".join(struct.pack("=HBBI", *op) for op in _DROP_SYN)
_DROP_SYN_BUFFER = ctypes.create_string_buffer(_DROP_SYN_CODE, len(_DROP_SYN_CODE))


class Listener:
    """A bound, listening, non-blocking socket of one pool."""

    def __init__(self, pool_name: str, address: Address, sock: socket.socket, owned: bool = True):
        self.pool_name = pool_name
        self.address = address
        self.sock = sock
        # False for a socket systemd passed: its unix socket file is systemd's to remove.
        self.owned = owned
        self.holding = False  # SYNs held back (hold_syns)
        self.quiet_since = 0.0  # time.monotonic() of a finishing master's hold or last take

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    @property
    def key(self) -> str:
        """The name PHP-FPM exports a socket under on re-exec: ``ip:port`` or the path."""
        if self.address.family == socket.AF_UNIX:
            return self.address.path or ""
        host, port = self.sock.getsockname()[:2]
        return "%s:%d" % (host, port)

    def close(self) -> None:
        """Close; a unix socket's file is removed so the next start can bind it."""
        self.sock.close()
        self._unlink()

    @property
    def tcp(self) -> bool:
        return self.address.family != socket.AF_UNIX

    def refuse(self) -> None:
        """A unix socket's file goes: a connect() fails at once, what is queued stays for
        accept(). Raises OSError."""
        self._unlink(strict=True)

    def hold_syns(self) -> None:
        """From now on a TCP SYN is dropped (the client sends it again a second later), and
        the handshakes under way complete: the moment a finishing master looks whether
        anything is left before it stops the socket listening (shut()), at which point a
        handshake would be reset once the client had sent its request. Tried once (holding
        is set first); raises OSError."""
        self.holding = True
        program = struct.pack("@HP", len(_DROP_SYN), ctypes.addressof(_DROP_SYN_BUFFER))
        self.sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, program)

    def shut(self) -> None:
        """Stop listening, in every process that holds the socket: a connect() is refused
        from now on, and what is still queued is reset."""
        try:
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # not listening any more

    def _unlink(self, strict: bool = False) -> None:
        if self.owned and not self.tcp and self.address.path:
            try:
                os.unlink(self.address.path)
            except FileNotFoundError:
                if strict:
                    raise


def open_listener(pool, text: str, log: Logger) -> Listener:
    """Bind and listen on ``text``, one of ``pool``'s (a PoolConfig) listen addresses. Raises
    ListenError with the log line."""
    address = parse_listen(text)
    backlog = socket.SOMAXCONN if pool.listen_backlog < 0 else pool.listen_backlog
    if address.family == socket.AF_UNIX:
        sock = _bind_unix(pool, address)
    elif address.host is None:
        try:
            sock = _bind_inet(address, "::", socket.AF_INET6)
        except OSError:
            log.notice("Failed implicitly binding to ::, retrying with 0.0.0.0")
            sock = _bind_inet_or_raise(address, "0.0.0.0", socket.AF_INET)
    else:
        sock = _bind_inet_or_raise(address, address.host, address.family)
    try:
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise ListenError("failed to listen to address '%s': %s" % (address.text, strerror(e)))
    # Workers try accept4 first and poll only on EAGAIN, so the socket must never block.
    sock.setblocking(False)
    return Listener(pool.name, address, sock)


def _bind_inet_or_raise(address: Address, host: str, family: int) -> socket.socket:
    try:
        return _bind_inet(address, host, family)
    except socket.gaierror as e:
        raise ListenError("unable to resolve host '%s' of listen address '%s': %s"
                          % (host, address.text, e.strerror))
    except OSError as e:
        raise ListenError("unable to bind listening socket for address '%s': %s"
                          % (address.text, strerror(e)))


def _bind_inet(address: Address, host: str, family: int) -> socket.socket:
    # A hostname resolves to its first address, as in PHP-FPM.
    infos = socket.getaddrinfo(host, address.port, family, socket.SOCK_STREAM, 0,
                               socket.AI_PASSIVE | socket.AI_NUMERICSERV)
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and address.host is None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_unix(pool, address: Address) -> socket.socket:
    path = address.path
    assert path is not None
    acl_uids, acl_gids = resolve_acl(pool)
    use_acl = bool(acl_uids or acl_gids)  # then listen.owner and listen.group are ignored
    uid, gid = (-1, -1) if use_acl else resolve_owner(pool.name, pool.listen_owner,
                                                      pool.listen_group)
    try:
        existing = os.stat(path).st_mode
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISSOCK(existing):
        raise ListenError("unable to bind listening socket for address '%s': "
                          "the path exists and is not a socket" % address.text)
    if existing is not None and _someone_listens(path):
        raise ListenError("Another FPM instance seems to already listen on %s" % path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        # The umask closes the window between bind() and chmod() where the socket file
        # would otherwise exist with wider permissions than listen.mode.
        old_umask = os.umask(0o777 ^ pool.listen_mode)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
    except OSError as e:
        sock.close()
        raise ListenError("unable to bind listening socket for address '%s': %s"
                          % (address.text, strerror(e)))
    try:
        os.chmod(path, pool.listen_mode)
        if use_acl:
            acl.apply(path, acl_uids, acl_gids)
        elif uid != -1 or gid != -1:
            os.chown(path, uid, gid)
    except OSError as e:
        sock.close()
        os.unlink(path)
        if use_acl:
            raise ListenError(_acl_failure(pool, path, e))
        raise ListenError("[pool %s] failed to chown() the socket '%s': %s"
                          % (pool.name, path, strerror(e)))
    return sock


def _acl_failure(pool, path: str, e: OSError) -> str:
    """The error for an ACL the kernel refused, naming the directives that asked for it."""
    asked = (("listen.acl_users", pool.listen_acl_users),
             ("listen.acl_groups", pool.listen_acl_groups))
    directives = " and ".join(name for name, value in asked if value)
    hint = ""
    if e.errno == errno.EOPNOTSUPP:
        hint = ("; the file system holding it does not support POSIX ACLs: put the socket on "
                "one that does, or use listen.owner and listen.group instead")
    return ("[pool %s] %s: unable to set the POSIX ACL of the socket '%s': %s%s"
            % (pool.name, directives, path, strerror(e), hint))


def _someone_listens(path: str) -> bool:
    """True when a live server answers on the unix socket ``path``.

    A full backlog makes connect() wait, so a timeout also means someone is there.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (socket.timeout, BlockingIOError):
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return True


def open_all(pools, log: Logger, adopted: dict[str, Listener] | None = None) -> list[Listener]:
    """One listener per listen address, in pool then address order: the one ``adopted`` holds
    for the address (passed by systemd, or kept across a reload), else a new one. On failure,
    close those this call opened."""
    adopted = adopted or {}
    listeners: list[Listener] = []
    try:
        for pool in pools:
            for text in pool.listen:
                listeners.append(adopted.get(text.strip()) or open_listener(pool, text, log))
    except BaseException:
        close_all(l for l in listeners if l not in adopted.values())
        raise
    return listeners


def close_all(listeners) -> None:
    for listener in listeners:
        listener.close()
