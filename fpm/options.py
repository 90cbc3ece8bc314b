"""What a worker's loop (fpm._worker.serve) is told: its pool's settings as the loop uses
them, and the handles the worker gives it, in one object built once per worker. The
compiled core reads it by attribute and imports nothing of pyfpm's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from fpm._worker import MAX_HELD


@dataclass(frozen=True)
class WorkerOptions:
    # --- the pool's settings (for_pool() maps the directives) ---
    base_environ: dict  # the environ keys every request of the pool has
    mount: str  # mount: SCRIPT_NAME of the app
    fill_paths: bool  # set SCRIPT_NAME and PATH_INFO from the path (script mode splits them itself)
    params_max: int  # fastcgi.params_max: bytes of params a request may send
    max_conns: int  # FCGI_MAX_CONNS, and the connections a worker holds at once
    max_reqs: int  # FCGI_MAX_REQS
    read_timeout: float  # request_read_timeout: seconds a request may be silent; the body rate's allowance
    head_timeout: float  # request_head_timeout: seconds from a connection's first read to its whole head
    body_rate: int  # request_body_min_rate: bytes/s a body must come at after read_timeout (0: any)
    max_requests: int  # pm.max_requests: served, then the worker recycles (0: never)
    max_memory: int  # pm.max_memory: RSS in bytes after a request that recycles (0: never)
    body_buffer: int  # request_body_buffer_size: a body over it is spooled to spool_dir
    body_max: int  # request_body_max_size: a body over it is answered 413 (0: any)
    spool_dir: str | None  # request_body_temp_path (None: the system's)
    body_file_dirs: tuple[str, ...]  # security.request_body_file_dirs: where REQUEST_BODY_FILE may point
    queue_timeout: float  # request_queue_timeout: seconds a request may wait before it is 503
    start_param: str | None  # request_start_param: the param a request's queue wait starts at
    stamp_reads: bool  # without start_param, the kernel's receive time of the first bytes (TCP)
    wsgi_errors: str  # wsgi_errors: "both", "log" or "server"
    # --- handles: what the worker has at hand, and the loop calls ---
    log: Callable[[str, str], None] | None = None  # log(level, text): peers, app errors, refusals
    board: Any = None  # the pool's scoreboard (fpm._board.Board), and this worker's slot in it
    slot: int = -1
    special: dict | None = None  # request path -> the WSGI app that answers it (status, ping)
    access: Any = None  # fpm.accesslog.Writer: write() after each response, begin() before
    on_reopen: Callable[[], None] | None = None  # called when the master bumped the log generation (USR1)
    allow: Callable[[int], bool] | None = None  # listen.allowed_clients: asked of each accepted fd
    errors_log: Any = None  # where wsgi.errors lines go in the error log (fpm.workerlog.ErrorsLog)
    on_output: Callable[[], None] | None = None  # after a request that wrote to stdout/stderr
    statm_fd: int | None = None  # open_statm()'s fd, taken before a chroot (None: opened when needed)
    park_fd: int = -1  # the socket to park connections with the master on (-1: none)
    handoff_fd: int = -1  # the pool's socket the master hands ready connections back on
    kept: Any = None  # the pool's table of shared kept connections (fpm._kept.Table; None: none)
    kept_rx: int = -1  # where the master sends this worker copies of newly shared connections
    kept_conns: tuple = ()  # (entry, generation, fd) of those shared when it was forked
    left_queued: frozenset = frozenset()  # listeners systemd holds: a finishing master leaves their queue


def for_pool(pool, base_environ: dict, *, tcp: bool = False, **given) -> WorkerOptions:
    """``pool``'s options, with the handles (and any setting that differs for this worker)
    in ``given``; ``tcp``: whether any listener is TCP (the only kind that stamps receive
    times)."""
    settings = dict(
        base_environ=base_environ, mount=pool.mount, fill_paths=pool.app is not None,
        params_max=pool.fastcgi_params_max, max_conns=pool.pm_max_children * MAX_HELD,
        max_reqs=pool.pm_max_children, read_timeout=pool.request_read_timeout,
        head_timeout=pool.request_head_timeout, body_rate=pool.request_body_min_rate,
        max_requests=pool.pm_max_requests, max_memory=pool.pm_max_memory,
        body_buffer=pool.request_body_buffer_size, body_max=pool.request_body_max_size,
        spool_dir=pool.request_body_temp_path,
        body_file_dirs=pool.security_request_body_file_dirs,
        queue_timeout=pool.request_queue_timeout, start_param=pool.request_start_param,
        stamp_reads=tcp and stamps_receive_times(pool), wsgi_errors=pool.wsgi_errors)
    return WorkerOptions(**{**settings, **given})


def stamps_receive_times(pool) -> bool:
    """Without a start param, a request's queue wait starts at the kernel's receive time of
    its first bytes, which only TCP sockets record (SO_TIMESTAMPNS)."""
    return pool.request_queue_timeout > 0 and not pool.request_start_param
