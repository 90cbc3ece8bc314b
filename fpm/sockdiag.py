"""Listen queue numbers for TCP and unix listening sockets (status page "listen queue").

``query(fd)`` answers ``(waiting, capacity)``: connections the kernel has completed and queued
for ``accept()``, and the effective backlog (``listen()``'s argument capped by
``net.core.somaxconn``). ``None`` means the kernel does not tell; the status page then shows 0.
Waiting can be capacity + 1: Linux calls a queue full only once it is *over* the backlog.

* TCP (IPv4 and IPv6): ``getsockopt(TCP_INFO)``, as PHP-FPM. For a listener the kernel aliases
  ``tcpi_unacked`` to the accept queue length and ``tcpi_sacked`` to the backlog. One syscall,
  no netlink, no ``inet_diag``/``tcp_diag`` module, and it works where sandboxes refuse
  NETLINK_SOCK_DIAG. ``inet_diag`` reports the same two numbers (``idiag_rqueue/wqueue``) but
  needs a request keyed by address, port and inode, and a module; nothing to gain.
* Unix (stream or seqpacket): TCP_INFO does not exist for them, which is why PHP-FPM always
  shows 0. The kernel's unix socket diagnostics (NETLINK_SOCK_DIAG, ``unix_diag``) report for
  a listener ``UNIX_DIAG_RQLEN = (accept queue length, backlog)``. We ask for the one inode
  (``os.fstat(fd).st_ino``), and fall back to a dump of listeners filtered by inode when that
  exact query is refused.

Kernel requirements: Linux; unix needs ``CONFIG_UNIX_DIAG`` (3.3+; module ``unix_diag``, loaded
on first use where module loading is allowed; built in or loaded on common distributions).
Containers or sandboxes (gVisor, seccomp profiles) may refuse AF_NETLINK or
NETLINK_SOCK_DIAG: unix queries then answer None, TCP still works. The netlink query runs in
the caller's network namespace: a unix socket created in another one is not found -> None.
No privilege is needed for either query.
"""
from __future__ import annotations

import errno
import os
import socket
import struct

__all__ = ["ListenQueues", "listen_queue"]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20  # nlmsg_type of sock_diag requests and their replies
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10  # the kernel uses TCP's state numbers for unix listeners too
UDIAG_SHOW_RQLEN = 0x10
UNIX_DIAG_RQLEN = 4
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER
NO_COOKIE = 0xFFFFFFFF  # {~0, ~0}: "any socket with this inode" (sock_diag_check_cookie)

_NLMSGHDR = struct.Struct("=IHHII")       # len, type, flags, seq, pid
_UNIX_DIAG_REQ = struct.Struct("=BBHIIIII")  # family, protocol, pad, states, ino, show, cookie[2]
_UNIX_DIAG_MSG = struct.Struct("=BBBBIII")   # family, type, state, pad, ino, cookie[2]
_RTATTR = struct.Struct("=HH")            # len, type
_RQLEN = struct.Struct("=II")             # rqueue, wqueue
_NLMSGERR = struct.Struct("=i")           # -errno, followed by the offending request
# struct tcp_info up to tcpi_sacked: state, 7 more u8 fields, rto, ato, snd_mss, rcv_mss,
# unacked, sacked. Only the head is asked for: the kernel copies min(optlen, sizeof).
_TCP_INFO_HEAD = struct.Struct("=B7xIIIIII")

# Errors from an exact query that mean "this kernel does not do exact unix queries";
# ENOENT is not among them: it also means "no such inode here" (another netns), so a
# refusal is only remembered for these.
_EXACT_REFUSED = {errno.EINVAL, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.EPERM,
                  errno.EACCES}


class _Refused(Exception):
    """The kernel answered a netlink request with an error (errno in ``args[0]``)."""


class ListenQueues:
    """Answers listen queue queries, keeping one netlink socket open between them.

    The netlink socket is opened at the first unix query (TCP never needs it) and reopened in
    a forked child, whose inherited copy shares the parent's netlink port and would race it
    for replies. Not thread-safe: one instance per thread.
    """

    def __init__(self) -> None:
        self._nl: socket.socket | None = None
        self._nl_pid = 0
        self._nl_unavailable = False  # AF_NETLINK / NETLINK_SOCK_DIAG / unix_diag refused
        self._exact = True  # single-inode queries accepted so far
        self._seq = 0
        self._buf = bytearray(65536)  # dump batches are up to 32 KiB; one reused buffer

    def query(self, fd: int) -> tuple[int, int] | None:
        """``(waiting, capacity)`` for listening socket ``fd``; None if the kernel won't say.

        A non-listening socket or an unsupported family gives None. A closed fd or one that
        is not a socket raises OSError (EBADF / ENOTSOCK): the caller holds a stale number.
        """
        # Explicit family/type skip the three probing syscalls of socket(fileno=fd);
        # SOCK_NONBLOCK keeps socket.setdefaulttimeout() from making the caller's
        # listening socket (shared with the workers) non-blocking.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, 0, fd)
        try:
            family = sock.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
            if family in (socket.AF_INET, socket.AF_INET6):
                return _tcp(sock)
            if family == socket.AF_UNIX:
                return self._unix(os.fstat(fd).st_ino)
            return None
        finally:
            sock.detach()  # the fd is the caller's: never close it

    def close(self) -> None:
        """Close the netlink socket; a later query opens a new one."""
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    def __enter__(self) -> ListenQueues:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- unix ------------------------------------------------------------------------------

    def _unix(self, ino: int) -> tuple[int, int] | None:
        if self._nl_unavailable or not 0 < ino <= 0xFFFFFFFF:  # udiag_ino is a __u32
            return None
        nl = self._socket()
        if nl is None:
            return None
        try:
            return self._ask(nl, ino)
        except OSError:
            # sendto refused (seccomp, ENOBUFS) or the receive queue overran: the socket's
            # state is unknown, so start over with a fresh one at the next query.
            self.close()
            return None

    def _ask(self, nl: socket.socket, ino: int) -> tuple[int, int] | None:
        if self._exact:
            try:
                return self._exact_query(nl, ino)
            except _Refused as e:
                if e.args[0] in _EXACT_REFUSED:
                    self._exact = False
                # then try the dump, which also tells ENOENT-as-"no unix_diag" apart
        try:
            return self._dump_query(nl, ino)
        except _Refused as e:
            if e.args[0] in _EXACT_REFUSED or e.args[0] == errno.ENOENT:
                # A dump is refused only when unix_diag is missing or forbidden: stop asking.
                self._nl_unavailable = True
                self.close()
            return None

    def _socket(self) -> socket.socket | None:
        pid = os.getpid()
        if self._nl is not None and self._nl_pid != pid:
            self.close()
        if self._nl is None:
            try:
                self._nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
            except OSError:  # EAFNOSUPPORT, EPROTONOSUPPORT, EACCES in sandboxes
                self._nl_unavailable = True  # remembered: a sandbox does not change at runtime
                return None
            self._nl_pid = pid
        return self._nl

    def _request(self, nl: socket.socket, flags: int, states: int, ino: int,
                 cookie: int) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        size = _NLMSGHDR.size + _UNIX_DIAG_REQ.size
        msg = _NLMSGHDR.pack(size, SOCK_DIAG_BY_FAMILY, flags, self._seq, 0) + \
            _UNIX_DIAG_REQ.pack(socket.AF_UNIX, 0, 0, states, ino, UDIAG_SHOW_RQLEN,
                                cookie, cookie)
        nl.sendto(msg, (0, 0))  # port 0: the kernel
        return self._seq

    def _replies(self, nl: socket.socket, seq: int):
        """Yield (type, payload) of the replies to request ``seq``, until none is queued.

        sock_diag answers inside sendto(), and each next dump batch is queued inside the
        recv() that took the previous one, so MSG_DONTWAIT never misses a reply: EAGAIN
        means there is nothing more (or the kernel dropped it), never "not yet".
        """
        while True:
            try:
                n = nl.recv_into(self._buf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            view = memoryview(self._buf)[:n]
            offset = 0
            while offset + _NLMSGHDR.size <= n:
                length, kind, _flags, mseq, _pid = _NLMSGHDR.unpack_from(view, offset)
                if length < _NLMSGHDR.size or offset + length > n:
                    break  # truncated: cannot happen with a 64 KiB buffer; stop parsing
                if mseq == seq:  # others are late replies to an abandoned request
                    yield kind, view[offset + _NLMSGHDR.size:offset + length]
                offset += (length + 3) & ~3

    def _exact_query(self, nl: socket.socket, ino: int) -> tuple[int, int] | None:
        # No NLM_F_ACK: success is the one reply message, failure one NLMSG_ERROR.
        seq = self._request(nl, NLM_F_REQUEST, 1 << TCP_LISTEN, ino, NO_COOKIE)
        for kind, payload in self._replies(nl, seq):
            if kind == NLMSG_ERROR:
                code = -_NLMSGERR.unpack_from(payload)[0]
                if code:
                    raise _Refused(code)
            elif kind == SOCK_DIAG_BY_FAMILY:
                # The exact query ignores udiag_states: a non-listener is answered too.
                return _parse_unix(payload, ino)
        return None

    def _dump_query(self, nl: socket.socket, ino: int) -> tuple[int, int] | None:
        # The kernel filters by state, not by inode: every listener in the netns comes back.
        seq = self._request(nl, NLM_F_REQUEST | NLM_F_DUMP, 1 << TCP_LISTEN, 0, 0)
        found = None
        for kind, payload in self._replies(nl, seq):
            if kind == NLMSG_DONE:
                return found
            if kind == NLMSG_ERROR:
                code = -_NLMSGERR.unpack_from(payload)[0]
                if code:
                    raise _Refused(code)
            elif kind == SOCK_DIAG_BY_FAMILY and found is None:
                found = _parse_unix(payload, ino)
            # keep reading to NLMSG_DONE so no batch is left queued for the next query
        return found


def _parse_unix(payload: memoryview, ino: int) -> tuple[int, int] | None:
    """RQLEN of a unix_diag_msg for inode ``ino`` in state LISTEN, else None."""
    if len(payload) < _UNIX_DIAG_MSG.size:
        return None
    _family, _type, state, _pad, msg_ino, _c0, _c1 = _UNIX_DIAG_MSG.unpack_from(payload)
    if msg_ino != ino or state != TCP_LISTEN:
        return None
    offset = _UNIX_DIAG_MSG.size
    while offset + _RTATTR.size <= len(payload):
        length, kind = _RTATTR.unpack_from(payload, offset)
        if length < _RTATTR.size:
            break
        if kind & NLA_TYPE_MASK == UNIX_DIAG_RQLEN and length >= _RTATTR.size + _RQLEN.size:
            # For a listener: rqueue = connections queued for accept(), wqueue = backlog.
            return _RQLEN.unpack_from(payload, offset + _RTATTR.size)
        offset += (length + 3) & ~3
    return None


def _tcp(sock: socket.socket) -> tuple[int, int] | None:
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_HEAD.size)
    except OSError:  # not TCP (UDP, SCTP, ...): ENOPROTOOPT / EOPNOTSUPP
        return None
    if len(info) < _TCP_INFO_HEAD.size:
        return None
    state, _rto, _ato, _snd_mss, _rcv_mss, unacked, sacked = _TCP_INFO_HEAD.unpack(info)
    if state != TCP_LISTEN:  # for other states the two fields mean packets in flight
        return None
    return unacked, sacked


def listen_queue(fd: int) -> tuple[int, int] | None:
    """One-off ``ListenQueues().query(fd)``; repeated callers should keep a ListenQueues."""
    with ListenQueues() as queues:
        return queues.query(fd)
