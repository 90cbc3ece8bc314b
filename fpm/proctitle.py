"""Process titles in PHP-FPM's shape: ``pyfpm: master process (PATH)``, ``pyfpm: pool www``."""
from __future__ import annotations

from setproctitle import setproctitle

from fpm.unix import libc

PR_SET_NAME = 15


def set_process_title(title: str) -> None:
    """What ``ps``, ``pgrep -f`` and /proc/PID/cmdline show, and the kernel's 15-byte task
    name (``top``, /proc/PID/comm)."""
    setproctitle(title)
    libc.prctl(PR_SET_NAME, title.encode()[:15], 0, 0, 0)
