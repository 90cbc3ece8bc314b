"""The log files the master opens for each pool before it forks: the access log, which the
workers write (opened by the master so that workers that drop privileges or chroot still
can), and the slowlog, which the master writes. ``pyfpm -t`` and a reload open them the same
way first, so a file that cannot be created is refused before the start, in the same words.

A log on one of the process's own descriptors (``/dev/stderr``, ``/proc/self/fd/1``: the
container pattern) is a copy of that descriptor as it was at start, never reopened: the
master's fd 2 becomes the error log once it has launched (php-src GH-8885).
"""
from __future__ import annotations

import os

from fpm.log import open_log_file, stream_fd, strerror

# PoolConfig field, and the words an error names it with.
FILES = (("access_log", "the access log"), ("slowlog", "slowlog"))


class Unopenable(Exception):
    """A pool's log file could not be opened; ``str(e)`` is the complete log message."""


def open_files(pool, streams: dict[int, int]) -> dict[str, int]:
    """{field: fd} for each log file ``pool`` sets, created if missing; Unopenable for the
    first that cannot be opened (the others are closed then). ``streams`` holds the copies
    of the process's own descriptors (number -> copy), made here on first use."""
    fds: dict[str, int] = {}
    for field, words in FILES:
        path = getattr(pool, field)
        if path is None:
            continue
        try:
            fds[field] = _open(path, streams)
        except OSError as e:
            close(fds, streams)
            raise Unopenable("[pool %s] unable to open %s '%s': %s"
                             % (pool.name, words, path, strerror(e))) from None
    return fds


def _open(path: str, streams: dict[int, int]) -> int:
    number = stream_fd(path)
    if number is None:
        return open_log_file(path)
    if number not in streams:
        streams[number] = os.dup(number)
    return streams[number]


def check(pools) -> list[str]:
    """The error of each pool whose log files cannot be opened (they are created, as
    PHP-FPM's -t creates them; nothing stays open)."""
    errors = []
    for pool in pools:
        streams: dict[int, int] = {}
        try:
            close(open_files(pool, streams), streams)
        except Unopenable as e:
            errors.append(str(e))
        close(streams)
    return errors


def reopen(path: str, fd: int) -> None:
    """Point ``fd`` at a fresh open of ``path`` (USR1, after logrotate moved the file): the
    fd number the master and the workers hold stays the same. A stream stays what it was at
    start: there is nothing a logrotate moved. Raises OSError."""
    if stream_fd(path) is not None:
        return
    fresh = open_log_file(path)
    os.dup2(fresh, fd, inheritable=False)
    os.close(fresh)


def close(fds: dict, keep: dict[int, int] | None = None) -> None:
    """Close the descriptors of ``fds`` (once each), but the stream copies ``keep`` holds."""
    for fd in set(fds.values()) - set((keep or {}).values()):
        os.close(fd)
