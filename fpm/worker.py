"""The child side after fork: signals, parent-death watch, app loading, then the serve loop."""
from __future__ import annotations

import fcntl
import os
import signal
import socket
import sys
import time
import traceback
from typing import NoReturn

# Imported here, in the master: a worker that dropped privileges may not be able to read
# pyfpm's own files (a package in a 0700 directory).
from fpm import (__version__, _worker, accesslog, apps, channel, clients, options, pages, probe,
                 scripts, slowlog, stdio, unix, workerlog)
from fpm.proctitle import set_process_title

PR_SET_PDEATHSIG = 1
SO_TIMESTAMPNS = 35  # Linux; the socket module does not name it


def run(pool, listen_fds: list[int], log, seat, allow_root: bool = False,
        master: int | None = None) -> NoReturn:
    """Serve ``pool`` on the inherited ``listen_fds`` until told to stop; never returns.
    ``log`` is the worker's fpm.workerlog.WorkerLog; ``master`` the pid of the master."""
    try:
        code = serve(pool, listen_fds, log, seat, allow_root, master)
    except BaseException as e:  # the worker must end in os._exit, never unwind into the master's code
        if not isinstance(e, (KeyboardInterrupt, SystemExit)):
            log.exception("worker failed")
        code = e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else os.EX_SOFTWARE
    stdio.end_request()  # os._exit flushes nothing: keep the last words
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def serve(pool, listen_fds: list[int], log, seat, allow_root: bool, master: int | None) -> int:
    _init_signals()
    set_process_title("pyfpm: pool %s" % pool.name)  # before a chroot hides libc's path
    dirs = probe.import_dirs(pool)  # seen from outside the chroot: for an import error's hint
    statm = _worker.open_statm() if pool.pm_max_memory else -1  # a chroot may have no /proc
    try:
        unix.apply(pool, log, allow_root)
    except unix.UnixError as e:
        log.error(e.reason)
        return os.EX_SOFTWARE
    _die_with_parent(master)  # after apply(): changing the uid clears the parent-death signal
    log_line = log.log  # the master names the pool and the worker in each line

    def take_new_files() -> None:
        channel.take_files(seat.channel)

    end_output = stdio.worker_output(pool, log, _worker.output_written)
    loaded = _app(pool, seat, log_line, dirs)
    if loaded is None:
        return os.EX_UNAVAILABLE  # the previous workers still serve (a reload)
    app, special, retry = loaded
    # A list, not a generator: every listener is prepared, not only those up to a TCP one.
    tcp = any([_prepare_listener(fd, options.stamps_receive_times(pool)) for fd in listen_fds])
    if seat.channel >= 0 and (pool.request_slowlog_timeout or pool.request_terminate_timeout):
        slowlog.arm_worker(seat.channel)  # the master's way in when ptrace is refused
    access = None
    if seat.access_fd >= 0:
        access = accesslog.Writer(seat.access_fd,
                                  accesslog.compile(pool.access_format, pool.access_json),
                                  pool.access_suppress_path, pool.name, tcp)
    # Answering 503 ends with its while, not with a count or a size: each new worker tries
    # to import the app again, which the pause between tries is there to limit.
    limits = dict(max_requests=seat.max_requests) if retry is None else \
        dict(max_requests=0, max_memory=0)
    told = options.for_pool(
        pool, base_environ(pool), tcp=tcp, **limits, log=log_line, board=seat.board.mem,
        slot=seat.slot, special=special, access=access,
        on_reopen=take_new_files if seat.channel >= 0 and access is not None else None,
        allow=clients.acceptor(pool, log_line, tcp), errors_log=workerlog.ErrorsLog(log),
        on_output=end_output, statm_fd=statm, park_fd=seat.park_fd, handoff_fd=seat.handoff_fd,
        kept=seat.shared.table if seat.shared is not None else None, kept_rx=seat.kept_rx,
        kept_conns=seat.shared.inherited() if seat.shared is not None else (),
        left_queued=seat.left_queued)
    requests, reason, rss = _worker.serve(listen_fds, app, told)
    if retry:
        return os.EX_UNAVAILABLE
    if reason == "max_memory":
        log.notice("RSS %.1f MiB exceeds pm.max_memory (%.1f MiB) after request %d; recycling"
                   % (rss / 2**20, pool.pm_max_memory / 2**20, requests))
    elif reason == "max_requests":
        log.debug("served its %d requests (pm.max_requests); recycling" % requests)
    return 0


def _app(pool, seat, log_line, dirs) -> tuple | None:
    """(the app, the special paths, the retry timer): the pool's app (the status pages for
    a status pool), or one answering 503 for seat.retry_after seconds when it cannot be
    loaded (its retry timer then ends the loop); None when the previous configuration's
    workers still serve the pool: this one exits instead."""
    if seat.shows is not None:
        return pages.not_found, pages.special_paths(pool, seat.shows[1], seat.shows[0]), None
    try:
        if pool.app is None:  # script mode: each request names its .py file
            app = scripts.ScriptApp(pool, log_line)
        else:
            app = (seat.app.install() if seat.app is not None
                   else apps.load(pool.app, pool.chdir, pool.python_path, pool.virtualenv))
        return app, pages.special_paths(pool, seat.board), None
    except apps.AppLoadError as e:
        reason = probe.explain(e, dirs)
        log_line("error", reason + _traceback_of(e))
        if seat.retry_after <= 0:
            return None
        seat.board.mem.mark_app_failed(seat.slot, time.time_ns() // 1000, reason)
        app = pages.unavailable(seat.retry_after)
        log_line("warning", "answering 503 for %.2g seconds, then a new worker tries to load "
                            "the app again" % seat.retry_after)
        return (app, pages.special_paths(pool, seat.board, unavailable=app),
                _stop_after(seat.retry_after))


def memory_warnings(pools) -> list[str]:
    """What pm.max_memory measures where the master (so each worker before it chroots)
    cannot read /proc: the peak RSS instead of the current one. The start, -t and a reload
    say so."""
    limited = [pool.name for pool in pools if pool.pm_max_memory]
    fd = _worker.open_statm() if limited else -1
    if fd >= 0 or not limited:
        if fd >= 0:
            os.close(fd)
        return []
    return ["[pool %s] pm.max_memory: %s cannot be read (no /proc); the workers compare "
            "their peak RSS (getrusage) with it instead of their current RSS" % (name, _worker.STATM)
            for name in limited]


def _traceback_of(error: apps.AppLoadError) -> str:
    """The traceback of what the app's import raised, when it raised in the app's own code
    (a module that is merely missing says all in one line)."""
    cause = error.__cause__
    if cause is None or (isinstance(cause, ModuleNotFoundError) and cause.__traceback__ is not None
                         and cause.__traceback__.tb_next is None):
        return ""
    return "\n" + "".join(traceback.format_exception(cause)).rstrip("\n")


def _stop_after(seconds: float) -> list:
    """End the serve loop after ``seconds``; the list returned is non-empty once it has."""
    fired = []

    def due(signum, frame):
        fired.append(True)
        _worker.request_stop()
    signal.signal(signal.SIGALRM, due)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    return fired


def base_environ(pool) -> dict:
    """The environ keys that are the same for every request of the pool."""
    return {
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        # Our wsgi.input returns b"" at the body's end even without CONTENT_LENGTH (chunked).
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": _worker.FileWrapper,
        "fpm.pool": pool,
        "fpm.version": __version__,
        "fpm.finish_request": _worker.finish_request,
    }


def _init_signals() -> None:
    """QUIT finishes the request in hand, then the worker exits; TERM and INT kill at once."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP,
                signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    # A web server that hangs up mid-response must give EPIPE, not kill the worker.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _worker.watch_quit()
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _die_with_parent(master: int | None) -> None:
    """Workers never outlive the master, even one killed with SIGKILL. In a session of
    their own, nothing else would stop them: no terminal's or group's signal reaches them."""
    unix.libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    # The master died before prctl() took effect: the worker has another parent now (init,
    # or a subreaper such as systemd --user, whose pid is not 1).
    if os.getppid() != (master or os.getppid()):
        os.kill(os.getpid(), signal.SIGTERM)


def _prepare_listener(fd: int, stamp: bool) -> bool:
    """Non-blocking (the loop tries accept first and polls on EAGAIN); on TCP, TCP_NODELAY,
    which accepted sockets inherit on Linux, so a response's last record is not held back,
    TCP_DEFER_ACCEPT (nginx's `listen deferred`), so that a connection reaches accept() with
    its first bytes, not before nginx has written them (a silent one after a second), and
    with ``stamp`` SO_TIMESTAMPNS (inherited too) for the kernel's receive times.
    True for a TCP socket."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    s = socket.socket(fileno=fd)
    try:
        tcp = s.family in (socket.AF_INET, socket.AF_INET6)
        if tcp:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
            if stamp:
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        return tcp
    finally:
        s.detach()
