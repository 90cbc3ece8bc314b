"""Connections that are not ready for a worker wait in the master, never in a worker.

A worker is given a connection only once it can make progress on a whole request. One that
accepts a connection without a whole request (nothing sent yet, a head or a body cut short:
a silent or dribbling peer) parks it here over its pool's park socket, with the bytes it
read, and goes back to work. The master watches parked connections in its event loop and
only peeks at them (MSG_PEEK): it never reads or writes a request. Once the bytes read plus
those waiting hold the whole request (fpm._codec.request_status: its head and the empty
STDIN record that ends its body), or PEEK_MAX of it, the connection goes over the pool's
hand-off socket to whichever idle worker takes it first (they watch that socket like a
listening one). One whose head has not come by its deadline (request_head_timeout from its
first read) is closed and counted; one whose body comes slower than request_body_min_rate
(after request_read_timeout) goes to a worker marked late, which answers 408; the oldest
silent one is closed and counted when the pool holds too many.

Both sockets are SOCK_SEQPACKET pairs made once per pool and kept across reloads, so old
and new workers share them as they share the listening sockets (fpm.reexec).

======================== ====================================================
what happens             to a parked connection
======================== ====================================================
the request is whole     handed over (the hand-off queue full: again shortly)
PEEK_MAX bytes wait      handed over: the peer is sending, a worker reads it
the peer hangs up        closed if it sent nothing, else handed over: the worker
                         reads it all and names what was wrong, as with any peer
its head is due          closed, counted as a head timeout
its body is late         handed over marked late: the worker answers 408 and counts it
the pool holds too many  the oldest silent one closed, counted (victims())
======================== ====================================================
"""
from __future__ import annotations

import base64
import contextlib
import errno
import os
import resource
import select
import socket
import time
from dataclasses import dataclass
from typing import Sequence

from fpm import _board, _codec, _passing, _worker

PEEK_MAX = 65536  # this much of a request and still not all of it: a peer this fast gets a worker
BYTES_EACH = 4096  # bytes parked connections may hold, per connection the pool may park
MIN_BYTES = 1 << 20
MIN_PARKED = 16  # however few descriptors the master has, it can park this many per pool
RESERVE_FDS = 64  # kept free for the master's own files (logs, reload, systemd...)
FDS_PER_WORKER = 8  # a worker's channel and output pipes, twice over during a reload
SOCKET_BUFFER = 4 << 20  # queued park and hand-off messages (each holds one connection)
RECHECK = 0.05  # level-triggered pollers: how soon a partial head is peeked at again
RETRY = 0.01  # the hand-off queue was full: how soon to try again
WATCHED = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
HUNG_UP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
# Board refusal counters (fpm._board.REFUSAL_CAUSES) the master adds to.
HEAD_TIMEOUTS = _board.REFUSAL_CAUSES.index("head_timeouts")
PARKED_CLOSED = _board.REFUSAL_CAUSES.index("parked_closed")


def now_us() -> int:
    """The clock of head deadlines (CLOCK_MONOTONIC, as the workers stamp them)."""
    return time.monotonic_ns() // 1000


@dataclass
class Parked:
    """One parked connection."""
    sock: socket.socket
    due: int  # µs, CLOCK_MONOTONIC: when its whole head is due
    arrived: int  # kernel receive time of its first bytes (request_queue_timeout), 0: unknown
    flags: int
    data: bytes  # what the worker read from it: it travels on with the connection
    since: float  # time.monotonic() it was parked: victims() closes the oldest first
    waiting: int = 0  # bytes seen waiting at the last peek: silent while data and this are empty
    ready: bool = False  # it goes to a worker; the hand-off queue was full
    body_since: int = 0  # µs, CLOCK_MONOTONIC: when its head was seen whole (0: not yet)
    body_bytes: int = 0  # of its body, seen so far
    late: bool = False  # handed over past its body's deadline (_passing.TICKET_LATE)

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    @property
    def silent(self) -> bool:
        return not self.data and not self.waiting

    @property
    def kept(self) -> bool:
        """A kept connection a stopping worker left between requests (_passing.TICKET_KEPT):
        no request is on its way until the web server sends one."""
        return bool(self.flags & _passing.TICKET_KEPT)

    @property
    def idle(self) -> bool:
        """Kept, and nothing sent on it since: it has no deadline."""
        return self.kept and self.silent and not self.due


# --- decisions ------------------------------------------------------------------------------

def limit(backlog: int, addresses: int, nofile: int, open_fds: int, reserve: int,
          pools: int) -> int:
    """How many connections a pool may park: as many as its listen queues hold (the
    operator's measure of connections that wait), within the pool's share of the master's
    free descriptors (RLIMIT_NOFILE), never below MIN_PARKED."""
    share = (nofile - open_fds - reserve) // max(1, pools)
    return max(MIN_PARKED, min(backlog * max(1, addresses), share))


def byte_limit(count: int) -> int:
    """The bytes a pool's parked connections may hold together (what their workers read)."""
    return max(MIN_BYTES, count * BYTES_EACH)


def victims(parked: Sequence[Parked], count: int, size: int) -> list[Parked]:
    """Which to close so that at most ``count`` stay, holding at most ``size`` bytes:
    silent ones (they have sent nothing at all) before the others, a web server's idle kept
    ones after the other silent ones, oldest first in each; one whose head came (waiting
    for the hand-off queue) last."""
    order = sorted(parked, key=lambda p: (p.ready, not p.silent, p.idle, p.since))
    held = sum(len(p.data) for p in parked)
    out = []
    for p in order:
        if len(parked) - len(out) <= count and held <= size:
            break
        out.append(p)
        held -= len(p.data)
    return out


def due(p: Parked, allowance: int, rate: int) -> int | None:
    """When ``p`` must have come further (µs): its head by its deadline; then its body at
    ``rate`` bytes/s after ``allowance`` µs (request_body_min_rate, request_read_timeout),
    each byte moving the deadline on. None: an idle kept one, which has no deadline."""
    if p.idle:
        return None
    if not p.body_since:
        return p.due
    if not rate:
        return p.body_since + allowance
    return _worker.body_due_us(p.body_since, allowance, p.body_bytes, rate)


def progress(data: bytes, waiting: bytes) -> tuple[int, int]:
    """(fpm._codec.request_status of what the worker read plus what waits, bytes of the body
    among them); status 2 (a worker can serve it) too once PEEK_MAX bytes are there."""
    whole = data + waiting
    status, head_end = _codec.request_status(whole)
    if len(whole) >= PEEK_MAX:
        status = 2
    return status, (len(whole) - head_end if status == 1 else 0)


def effective_backlog(listen_backlog: int) -> int:
    """listen.backlog as the kernel applies it (-1: net.core.somaxconn)."""
    try:
        with open("/proc/sys/net/core/somaxconn", "rb") as f:
            cap = int(f.read())
    except (OSError, ValueError):
        cap = socket.SOMAXCONN
    return cap if listen_backlog < 0 else min(listen_backlog, cap)


def free_fds() -> tuple[int, int]:
    """(RLIMIT_NOFILE soft limit, descriptors open now) of this process."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:  # /proc hidden: assume a master's usual few
        open_now = RESERVE_FDS
    return soft, open_now


# --- the sockets ----------------------------------------------------------------------------

def socket_pair() -> tuple[int, int]:
    """(one end, the other) of a SOCK_SEQPACKET pair, close-on-exec, with room for many
    queued connections (SO_SNDBUFFORCE as root, else as much as the kernel allows)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        try:
            s.setsockopt(socket.SOL_SOCKET, 32, SOCKET_BUFFER)  # SO_SNDBUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    return a.detach(), b.detach()


@dataclass(frozen=True)
class Ends:
    """A pool's two socket pairs: workers send parked connections on ``park_tx``, the
    master takes them on ``park_rx``; the master hands ready ones on ``hand_tx``, workers
    take them on ``hand_rx``."""
    park_rx: int
    park_tx: int
    hand_tx: int
    hand_rx: int

    @classmethod
    def make(cls) -> "Ends":
        park_rx, park_tx = socket_pair()
        hand_tx, hand_rx = socket_pair()
        return cls(park_rx, park_tx, hand_tx, hand_rx)

    @property
    def fds(self) -> tuple[int, int, int, int]:
        return self.park_rx, self.park_tx, self.hand_tx, self.hand_rx

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


# --- one pool's parked connections -----------------------------------------------------------

class Lot:
    """A pool's parked connections, watched in the master's ``poller``.

    ``edge``: the poller is edge-triggered (epoll); with poll(), a connection whose head is
    partial is left out of it and peeked at again every RECHECK seconds."""

    def __init__(self, name: str, ends: Ends, board, poller, edge: bool, count: int,
                 index: dict, allowance: int = 60_000_000, rate: int = 0,
                 head_timeout: int = 10_000_000):
        self.name = name
        self.head_timeout = head_timeout  # µs: request_head_timeout, from a kept one's first byte
        self.allowance = allowance  # µs: request_read_timeout, before the body's rate applies
        self.rate = rate  # request_body_min_rate, bytes/s (0: any)
        self.index = index  # the master's: which lot each parked descriptor is in
        self.ends = ends
        self.board = board
        self.poller = poller
        self.edge = edge
        self.count = count
        self.size = byte_limit(count)
        self.parked: dict[int, Parked] = {}
        self.resting: set[int] = set()  # left out of a level-triggered poller until RECHECK
        self.retry = False  # some ready one waits for room in the hand-off queue
        self.stopping = False  # the master stops gracefully: each one goes to a worker as it is
        self.shared = None  # the pool's shared kept connections (fpm.sharing.Shared), if any
        self.targets = lambda: ()  # the kept channels of the pool's serving workers

    # --- arrivals -------------------------------------------------------------------------

    def receive(self) -> None:
        """Take every connection the workers parked, within the pool's limits."""
        while True:
            try:
                got = _passing.take_conn(self.ends.park_rx)
            except OSError as e:
                if e.errno == errno.EPIPE:  # no worker end left: nothing more will come
                    break
                # Lost for want of a descriptor in the master (or a malformed message).
                self.board.mem.count_refusal(PARKED_CLOSED)
                continue
            if got is None:
                break
            fd, due, arrived, flags, data = got
            if flags & _passing.TICKET_SHARE:
                if self.shared is not None and flags & _passing.TICKET_KEPT:
                    self._nudge(due & 0xffffffff, due >> 32, fd)  # from a worker that stops
                if self.shared is not None and not flags & _passing.TICKET_KEPT:
                    self.shared.add(due & 0xffffffff, due >> 32, fd, self.targets())
                else:
                    os.close(fd)
                continue
            self._add(Parked(socket.socket(fileno=fd), due, arrived, flags, data,
                             time.monotonic()))
        for p in victims(list(self.parked.values()), self.count, self.size):
            self._close(p, PARKED_CLOSED)
        if self.stopping:
            self._hand_over_all()

    def adopt(self, fd: int, due: int, arrived: int, flags: int, data: bytes, age: float) -> None:
        """A connection the previous master held (a reload)."""
        os.set_inheritable(fd, False)
        self._add(Parked(socket.socket(fileno=fd), due, arrived, flags, data,
                         time.monotonic() - age))

    def _add(self, p: Parked) -> None:
        self.parked[p.fd] = p
        self.index[p.fd] = self
        self._publish()
        # Registering reports what is waiting already: its first look comes at once.
        self.poller.register(p.fd, WATCHED)

    # --- events ---------------------------------------------------------------------------

    def look(self, fd: int, events: int) -> None:
        """``fd`` became readable (or hung up): hand it over if a worker can serve it."""
        p = self.parked.get(fd)
        if p is None:
            return
        try:
            waiting = p.sock.recv(PEEK_MAX, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:  # reset by the peer
            self._close(p)
            return
        p.waiting = len(waiting)
        if p.waiting and not p.due:  # a kept one: the web server sends its next request
            p.due = now_us() + self.head_timeout
        status, p.body_bytes = progress(p.data, waiting)
        if not waiting and not p.data:  # it hung up without a word
            self._close(p)
        elif status == 2 or not waiting or events & HUNG_UP:
            # The whole request, or all the peer will ever send: a worker reads it and, for
            # a request cut short, says what was wrong with it as with any peer.
            p.ready = True
            self._hand_over(p)
        else:
            if status == 1 and not p.body_since:
                p.body_since = now_us()
            if not self.edge:
                self.poller.unregister(fd)
                self.resting.add(fd)

    def recheck(self) -> None:
        """Level-triggered pollers: watch the resting ones again (what waits is reported)."""
        for fd in self.resting:
            if fd in self.parked:
                self.poller.register(fd, WATCHED)
        self.resting.clear()

    def hand_over_ready(self) -> None:
        """Try again those whose head came while the hand-off queue was full."""
        self.retry = False
        for p in [p for p in self.parked.values() if p.ready]:
            self._hand_over(p)

    def hand_over_all(self) -> None:
        """The master stops gracefully: its workers finish and no one will be there to take
        a connection later. Each parked one goes to a worker now, as it is (a stopping worker
        gives it FIRST_BYTES_ON_STOP_MS for its request, as one it accepted itself), and so
        does each one parked from now on."""
        self.stopping = True
        self._hand_over_all()

    def _hand_over_all(self) -> None:
        for p in list(self.parked.values()):
            if p.idle:  # no worker will be left to take its next request: the master stops
                self._close(p)
                continue
            p.ready = True
            self._hand_over(p)

    def expire(self, now: int) -> None:
        """Close those whose head is due and has not come; hand those whose body is late
        to a worker, to answer 408."""
        for p in [p for p in self.parked.values()
                  if not p.ready and not p.idle and due(p, self.allowance, self.rate) <= now]:
            if p.body_since:
                p.ready = p.late = True
                self._hand_over(p)
            else:
                self._close(p, HEAD_TIMEOUTS)

    def next_due(self) -> int | None:
        """When the next deadline is (µs), None with nothing parked."""
        return min((due(p, self.allowance, self.rate) for p in self.parked.values()
                    if not p.ready and not p.idle), default=None)

    # --- the edges ------------------------------------------------------------------------

    def _hand_over(self, p: Parked) -> None:
        # Counted as handed over, and no longer as parked, first: a worker may take it
        # before pass_conn() returns, and it may be the status request that reads both.
        self.board.mem.add_handoffs(1)
        self.board.mem.set_parked(len(self.parked) - 1)
        try:
            sent = _passing.pass_conn(self.ends.hand_tx, p.fd, p.due, p.arrived, p.data,
                                    p.flags | (_passing.TICKET_LATE if p.late else 0))
        except OSError:
            sent = None
        if not sent:
            self.board.mem.add_handoffs(-1)
            if sent is None:
                self._close(p, PARKED_CLOSED)
            else:
                self.retry = True  # the queue is full: every worker is busy
                self._publish()
            return
        self._forget(p)
        p.sock.close()

    def nudge(self) -> None:
        """A worker is gone: each shared connection with a request that nobody serves goes
        to a worker over the hand-off socket, as a copy (fpm.sharing.Shared.ready())."""
        for index, gen, fd in self.shared.ready() if self.shared is not None else ():
            self._nudge(index, gen, fd)

    def _nudge(self, index: int, gen: int, fd: int) -> None:
        """A copy of shared connection ``gen`` of entry ``index`` to whichever worker takes
        it first: it serves the request waiting there."""
        self.board.mem.add_handoffs(1)
        try:
            sent = _passing.pass_conn(self.ends.hand_tx, fd, gen << 32 | index, 0, b"",
                                      _passing.TICKET_SHARE)
        except OSError:
            sent = False
        if not sent:
            self.board.mem.add_handoffs(-1)

    def _close(self, p: Parked, cause: int | None = None) -> None:
        self._forget(p)
        if p.flags & _passing.TICKET_DUPS:
            # Once shared, workers may hold copies until they sweep them: closing this one
            # would leave the peer waiting.
            with contextlib.suppress(OSError):
                p.sock.shutdown(socket.SHUT_RDWR)
        p.sock.close()
        if cause is not None:
            self.board.mem.count_refusal(cause)

    def _forget(self, p: Parked) -> None:
        fd = p.fd
        del self.parked[fd]
        del self.index[fd]
        if fd in self.resting:
            self.resting.discard(fd)
        else:
            self.poller.unregister(fd)
        self._publish()  # before its fate is counted, which a status request may read

    def _publish(self) -> None:
        self.board.mem.set_parked(len(self.parked))

    def kept_channel(self) -> tuple[int, int]:
        """(the master's end, the worker's) of a new worker's kept channel, over which the
        master sends it copies of newly shared connections; (-1, -1) if none are shared."""
        return socket_pair() if self.shared is not None else (-1, -1)

    def settle(self) -> None:
        """Once a tick: when the hand-off socket is empty, the board's count of connections
        waiting there must say 0 (a worker that died as it took one never counted it); the
        copies of shared connections closed since are closed too."""
        if self.shared is not None:
            self.shared.sweep(self.targets())
        seen = self.board.mem.handoff_pending
        if seen:
            queue = select.poll()
            queue.register(self.ends.hand_rx, select.POLLIN)
            if not queue.poll(0):
                self.board.mem.settle_handoffs(seen)

    # --- reload ---------------------------------------------------------------------------

    def export(self) -> list[list]:
        """The parked connections, for the next master: [fd, due, arrived, flags, data as
        base64, age in seconds]; their descriptors must cross the exec."""
        now = time.monotonic()
        return [[p.fd, p.due, p.arrived, p.flags, base64.b64encode(p.data).decode(),
                 now - p.since] for p in self.parked.values()]

    def close_all(self) -> None:
        for p in list(self.parked.values()):
            self._close(p)


def decode_entry(entry: list) -> tuple[int, int, int, int, bytes, float]:
    """An export() entry as adopt()'s arguments; ValueError if malformed."""
    fd, due, arrived, flags, data, age = entry
    return int(fd), int(due), int(arrived), int(flags), base64.b64decode(data), float(age)
