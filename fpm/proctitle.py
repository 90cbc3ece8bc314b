"""Process titles in PHP-FPM's shape: ``pyfpm: master process (PATH)``, ``pyfpm: pool www``."""
from __future__ import annotations

import ctypes
import ctypes.util

PR_SET_NAME = 15


def set_process_title(title: str) -> None:
    """``ps`` shows ``title`` when setproctitle is installed; the kernel's 15-byte task name
    (``ps -e``, ``top``, ``/proc/PID/comm``) is set either way."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        pass
    else:
        setproctitle(title)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_NAME, title.encode()[:15], 0, 0, 0)
