"""Per-pool scoreboards: shared memory (a memfd) that each worker stamps at every stage change
and the master reads. The memfd survives the master's re-exec on reload, so the new master
still sees the old workers it inherits."""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

from fpm import _board
from fpm._board import FINISHING, IDLE, READING, RUNNING, STARTING  # noqa: F401 (the stages)

ORDER_TIMEOUT = _board.TIMEOUT_ORDER


def now_us() -> int:
    """The workers' clock (CLOCK_MONOTONIC) in microseconds."""
    return time.monotonic_ns() // 1000


class Slot(SimpleNamespace):
    """A consistent copy of one worker's row: the fields of the Slot struct in
    fpm/_board.pxd, by name; times are µs on CLOCK_MONOTONIC, ``cpu`` the µs of CPU the last
    request took (pools with a status page), ``rss`` bytes after it (with pm.max_memory)."""

    @property
    def idle(self) -> bool:
        """Idle to the process managers: waiting for work, or about to (still loading)."""
        return self.stage in (STARTING, IDLE)

    @property
    def stage_name(self) -> str:
        return _board.STAGE_NAMES[self.stage]

    @property
    def app_failed(self) -> bool:
        """It answers 503: its app could not be loaded."""
        return bool(self.flags & _board.APP_FAILED)


class Board:
    """One pool's scoreboard and which of its slots are taken."""

    def __init__(self, pool_name: str, nslots: int, fd: int | None = None):
        create = fd is None
        if create:
            fd = os.memfd_create("pyfpm-scoreboard-" + pool_name, os.MFD_CLOEXEC)
            os.ftruncate(fd, _board.board_size(nslots))
        self.pool_name = pool_name
        self.mem = _board.Board(fd, nslots, create)
        self.taken: set[int] = set()

    @property
    def fd(self) -> int:
        return self.mem.fd

    @property
    def nslots(self) -> int:
        return self.mem.nslots

    def claim(self) -> int | None:
        """A free slot, reset for a worker about to be forked; None when all are taken."""
        for index in range(self.nslots):
            if index not in self.taken:
                self.taken.add(index)
                self.mem.reset(index, now_us())
                return index
        return None

    def adopt(self, index: int) -> None:
        """Mark a slot taken by an inherited worker (after a re-exec)."""
        self.taken.add(index)

    def release(self, index: int) -> None:
        self.taken.discard(index)
        self.mem.free(index)

    def read(self, index: int) -> Slot:
        return Slot(**self.mem.read(index))

    def header(self) -> dict:
        """The pool-wide numbers, by name (the BoardHeader struct's fields)."""
        return self.mem.header()

    def close(self) -> None:
        os.close(self.fd)
