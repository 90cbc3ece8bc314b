"""Kept connections shared by a pool's workers: the master's side (the workers' is
fpm._worker.Sharing, the table fpm._kept).

A web server that keeps its connections (nginx ``fastcgi_keep_conn on`` with an upstream
``keepalive``) sends its next request on whichever of them it picks. Held by the worker that
accepted it, that request would wait whenever that worker is busy, while another one sits
idle. So once a kept connection has served two requests (a web server that closes each
connection after its request never gets that far), its worker shares it: it takes an entry
in the pool's table and sends the master a copy (TICKET_SHARE on the park socket). The
master keeps that copy, sends one to each of the pool's workers on its kept channel (a
worker forked later inherits it), then puts its own in the pool's queue: an epoll set,
edge-triggered, whose one ready list holds the connections with a request, in the order
the requests came. The worker that watches (fpm._kept) takes one event at a time from it
and claims the entry (compare-and-swap) before it reads: any free worker serves the oldest
request, whichever connection it came on.

Here the master also closes its copies of connections taken out of the table (sweep()), ends
those a worker was serving when it died (closing copies would not end them: shutdown() does),
and, while its pool has no worker to watch them (ondemand, between its last worker and the
next), watches them itself to fork for a request. The table and the copies cross a reload's
re-exec, so the old workers and the new ones share the same connections.
"""
from __future__ import annotations

import os
import select
import socket

from fpm import _kept, _passing, pm
from fpm.states import State

# Each shared connection costs one descriptor in the master and one in each worker of its
# pool: a pool's table holds at most this share of the connections it may park (its share
# of the master's descriptors), and of its workers' rlimit_files.
SHARE_OF_PARKED = 2
SHARE_OF_WORKER_FILES = 4


def table_size(parked_limit: int, worker_files: int | None = None) -> int:
    """Entries of a pool's table, within the master's and its workers' descriptors."""
    size = min(_kept.KEPT_MAX, parked_limit // SHARE_OF_PARKED)
    if worker_files is not None:
        size = min(size, worker_files // SHARE_OF_WORKER_FILES)
    return max(0, size)


class Shared:
    """One pool's shared kept connections, in the master: the table and a copy of each."""

    def __init__(self, name: str, table: _kept.Table):
        self.name = name
        self.table = table
        self.copies: dict[int, tuple[int, int]] = {}  # entry -> (generation, the master's copy)
        self.drops = table.drops  # the table's drops at the last sweep
        self.poller = None  # the master's, and its index of watched copies (watch())
        self.index: dict[int, str] = {}
        # The previous masters' queues, which their workers watch until they go: each of
        # them holds every shared connection too, new ones included.
        self.old_queues: list[int] = []

    @classmethod
    def create(cls, name: str, size: int) -> "Shared":
        fd = os.memfd_create("pyfpm-kept-" + name, os.MFD_CLOEXEC)
        os.ftruncate(fd, _kept.table_bytes(size))
        return cls(name, _kept.Table(fd, size, True, *_wakes(_eventfd())))

    def add(self, index: int, gen: int, fd: int, targets) -> None:
        """A worker shared connection ``gen`` of entry ``index`` (``fd``: the master's copy):
        a copy goes to each kept channel in ``targets``, the pool's serving workers'."""
        if not 0 <= index < self.table.size or self.table.entry(index)[0] != gen \
                or self.table.entry(index)[1] == _kept.FREE:
            os.close(fd)  # closed already by the worker that shared it
            return
        self._close_copy(index)
        self.copies[index] = (gen, fd)
        for tx in targets:
            try:
                sent = _passing.pass_conn(tx, fd, gen << 32 | index, 0, b"", _passing.TICKET_SHARE)
            except OSError:
                continue  # that worker is gone; its channel is closed once it is reaped
            if not sent:
                # Its channel is full (it has been busy a long time): it would miss this
                # copy, so it gets no more. It reads what came, then the channel's end, and
                # takes no place among the pool's sleepers (fpm._kept): one that watched
                # without this connection would leave a request on it to nobody.
                _shutdown(tx, socket.SHUT_WR)
        # Queued once every worker has its copy: whoever takes it from the queue can serve it.
        self._enqueue(index, gen, fd)

    def _enqueue(self, index: int, gen: int, fd: int, queues=None) -> None:
        try:
            for queue in self.queues() if queues is None else queues:
                _kept.enqueue(queue, fd, index, gen)
        except OSError:
            # Out of epoll watches (fs.epoll.max_user_watches) or memory: nobody would serve
            # it, so it ends (nginx opens another); every copy is closed at the next sweep.
            if self.table.drop(index, gen):
                _shutdown(fd)

    def sweep(self, targets=()) -> None:
        """Close the copies of connections taken out of the table since the last sweep, and
        wake the workers on ``targets`` (their kept channels) to close theirs: one asleep in
        epoll_wait() would hold its copies until something else woke it."""
        drops = self.table.drops
        if drops == self.drops:
            return
        self.drops = drops
        live = self.table.live()
        for index in [i for i, (gen, _) in self.copies.items() if live.get(i) != gen]:
            self._close_copy(index)
        for tx in targets:
            channel = socket.socket(fileno=tx)
            try:
                channel.send(b"\0", socket.MSG_DONTWAIT)  # no connection in it: it only sweeps
            except OSError:
                pass  # its channel is full (it sweeps when it takes them) or it is gone
            finally:
                channel.detach()

    def worker_gone(self, pid: int) -> None:
        """Worker ``pid`` is gone: those it was serving (it died in a request) are shut
        down, as its death closes a connection it holds alone; every copy of them is closed
        at the next sweep."""
        for index, gen in self.table.busy_of(pid):
            if self.table.drop(index, gen) and self.copies.get(index, (None,))[0] == gen:
                _shutdown(self.copies[index][1])
        # It may have been the watcher or the deputy, or the worker the bell called (dead
        # before it answered, or between its answer and its mark): call another, anyway.
        self.table.vacate(pid)
        self.table.call(anyway=True)
        os.eventfd_write(self.table.bell, 1)

    def watch(self, on: bool) -> None:
        """Watch the copies in the master's poller (index: copy -> pool), or stop: only
        while the pool has no worker to watch them, or the master would wake for every
        request."""
        for fd in self.fds():
            if on and fd not in self.index:
                self.index[fd] = self.name
                self.poller.register(fd, select.EPOLLIN | select.EPOLLET)
            elif not on and self.index.pop(fd, None) is not None:
                self.poller.unregister(fd)

    def ready(self) -> list[tuple[int, int, int]]:
        """(entry, generation, descriptor) of the connections nobody serves that have bytes
        waiting: after a worker died, one the queue had just given it waits for nobody (the
        queue gives each request to one worker, and no new byte queues it again)."""
        live = self.table.live()
        idle = {fd: (index, gen) for index, (gen, fd) in self.copies.items()
                if live.get(index) == gen and self.table.entry(index)[1] == _kept.IDLE}
        waiting = select.poll()
        for fd in idle:
            waiting.register(fd, select.POLLIN)
        return [(*idle[fd], fd) for fd, _ in waiting.poll(0)]

    def _close_copy(self, index: int) -> None:
        gen, fd = self.copies.pop(index, (0, -1))
        if fd >= 0:
            if self.index.pop(fd, None) is not None:
                self.poller.unregister(fd)
            for queue in self.queues():
                _kept.dequeue(queue, fd)
            os.close(fd)

    def inherited(self) -> tuple[tuple[int, int, int], ...]:
        """(entry, generation, descriptor) of each copy: what a worker forked now inherits."""
        return tuple((index, gen, fd) for index, (gen, fd) in self.copies.items())

    def fds(self) -> list[int]:
        return [fd for _, fd in self.copies.values()]

    def queues(self) -> list[int]:
        """This master's queue, then the previous masters' still watched."""
        return [self.table.queue, *self.old_queues]

    def retire_old_queues(self) -> None:
        """The previous masters' workers are all gone: so is the use of their queues."""
        for queue in self.old_queues:
            os.close(queue)
        self.old_queues = []

    def close(self) -> None:
        """The pool is gone from the configuration: its copies and table go too."""
        for index in list(self.copies):
            self._close_copy(index)
        for fd in (self.table.fd, *self.table.fds, *self.old_queues):
            os.close(fd)

    # --- reload ---------------------------------------------------------------------------

    def export(self) -> list:
        """For the next master: [table fd, size, [[entry, generation, fd], ...], bell,
        queues]; the descriptors (descriptors()) must cross the exec."""
        return [self.table.fd, self.table.size, [list(c) for c in self.inherited()],
                self.table.bell, self.queues()]

    def descriptors(self) -> list[int]:
        return [self.table.fd, self.table.bell, *self.fds(), *self.queues()]

    @classmethod
    def adopt(cls, name: str, entry: list) -> "Shared":
        """The previous master's (export()); ValueError if malformed."""
        fd, size, copies, bell = int(entry[0]), int(entry[1]), entry[2], int(entry[3])
        # A master from before the queues crossed the exec passed none.
        queues = [int(q) for q in entry[4]] if len(entry) > 4 else []
        for own in (fd, bell, *queues):
            os.set_inheritable(own, False)
        shared = cls(name, _kept.Table(fd, size, False, *_wakes(bell)))
        shared.old_queues = queues
        for index, gen, copy in copies:
            os.set_inheritable(int(copy), False)
            shared.copies[int(index)] = (int(gen), int(copy))
        shared.sweep()
        for index, (gen, copy) in list(shared.copies.items()):
            shared._enqueue(index, gen, copy, [shared.table.queue])  # in the old ones already
        return shared


def _eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def _wakes(bell: int) -> tuple[int, int, int]:
    """The pool's bell (kept across a reload), a new queue and its stop eventfd. Each master
    has a queue of its own, filled with its copies and its workers' sources: one inherited
    could hold a source of the previous configuration (a listener closed, or moved to
    another pool), ready for ever to a watcher that cannot take from it. The old workers
    keep the old queue until they go (Shared.old_queues)."""
    stop = _eventfd()
    return bell, _kept.new_queue(stop), stop


def _shutdown(fd: int, how: int = socket.SHUT_RDWR) -> None:
    """End the connection (or one way of it), whatever other copies of it are open."""
    s = socket.socket(fileno=fd)
    try:
        s.shutdown(how)
    except OSError:
        pass  # it was reset already
    finally:
        s.detach()


class KeptConnections:
    """The master's part in sharing kept connections (a part of fpm.master.Master's class,
    as fpm.startup is): the copies' channels, watching an ondemand pool's copies while it
    has no worker, and what a worker's exit leaves."""

    def _kept_targets(self, name: str) -> list[int]:
        """The kept channels of the pool's serving workers, the previous configuration's
        included (they watch the previous master's queue until the hand-over)."""
        return [c.kept_tx for c in self.children.serving(name) + self._old_serving(name)
                if c.kept_tx >= 0]

    def _watch_kept(self, pool) -> None:
        """An ondemand pool's shared connections are watched here while it has no worker,
        so that a request on one forks a worker."""
        shared = self.lots[pool.name].shared
        if shared is not None and pm.of(pool).watches_queue:
            shared.watch(self.state is State.NORMAL and not self.children.serving(pool.name))

    def _kept_after_exits(self, exits) -> None:
        """Shut down what the workers were serving when they died; hand a request nobody
        serves to a worker (fpm.parking.Lot.nudge: the queue may have given it to the worker
        that left, alone); watch an ondemand pool's copies if it has no worker left; close
        the previous masters' queues once their workers are all gone."""
        for gone in exits:
            name = gone.child.pool.name
            lot = self.lots.get(name)
            if lot is None or lot.shared is None:
                continue
            lot.shared.worker_gone(gone.child.pid)
            lot.nudge()
            if name in self.pools:
                self._watch_kept(self.pools[name])
            self._retire_old_queues(name)

    def _retire_old_queues(self, name: str) -> None:
        """Close the previous masters' queues of the pool once their workers are all gone
        (or there were none: an ondemand pool at rest)."""
        lot = self.lots.get(name)
        if lot is not None and lot.shared is not None and lot.shared.old_queues and not any(
                c.pool.name == name and c.stopping == "reload"
                for c in self.children.by_pid.values()):
            lot.shared.retire_old_queues()
