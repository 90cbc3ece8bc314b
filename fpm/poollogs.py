"""The log files the master opens for each pool before it forks: the access log, which the
workers write (opened by the master so that workers that drop privileges or chroot still
can), and the slowlog, which the master writes. ``pyfpm -t`` and a reload open them the same
way first, so a file that cannot be created is refused before the start, in the same words.
"""
from __future__ import annotations

import os

from fpm.log import open_log_file, strerror

# PoolConfig field, and the words an error names it with.
FILES = (("access_log", "the access log"), ("slowlog", "slowlog"))


class Unopenable(Exception):
    """A pool's log file could not be opened; ``str(e)`` is the complete log message."""


def open_files(pool) -> dict[str, int]:
    """{field: fd} for each log file ``pool`` sets, created if missing; Unopenable for the
    first that cannot be opened (the others are closed then)."""
    fds: dict[str, int] = {}
    for field, words in FILES:
        path = getattr(pool, field)
        if path is None:
            continue
        try:
            fds[field] = open_log_file(path)
        except OSError as e:
            close(fds)
            raise Unopenable("[pool %s] unable to open %s '%s': %s"
                             % (pool.name, words, path, strerror(e))) from None
    return fds


def check(pools) -> list[str]:
    """The error of each pool whose log files cannot be opened (they are created, as
    PHP-FPM's -t creates them; nothing stays open)."""
    errors = []
    for pool in pools:
        try:
            close(open_files(pool))
        except Unopenable as e:
            errors.append(str(e))
    return errors


def reopen(path: str, fd: int) -> None:
    """Point ``fd`` at a fresh open of ``path`` (USR1, after logrotate moved the file): the
    fd number the master and the workers hold stays the same. Raises OSError."""
    fresh = open_log_file(path)
    os.dup2(fresh, fd, inheritable=False)
    os.close(fresh)


def close(fds: dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)
