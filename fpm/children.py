"""Fork and reap workers; describe how they ended; decide how soon to replace them.

Worker contract (``fpm.worker.run(pool, listen_fds, log, seat, allow_root, master)``): it
is entered right after fork() with SIGTERM, SIGINT and SIGQUIT *blocked* and every signal
the master handled back at SIG_DFL. It installs its own handlers, then unblocks those
signals, so a worker can never die from a signal that arrives before it knows how to take
it (PHP-FPM's rule). It must not return; if it does, or raises, the child exits 70.

Before that the new child leaves the master's session (``setsid``): no process of another
session may SIGCONT it, nor it the master or another pool's workers, whatever their uids,
and a terminal's signals (Ctrl-C) reach the master alone, which stops its workers by its own
rules. A session cannot be joined, only inherited, so the workers of a pool cannot share
one of their own unless a process of that session forks them: each has its own.

It keeps no descriptor of the master's but those its pool's workers need: its pool's
listening sockets (``fds_by_pool``), what its ``Seat`` names (channel, access log, what a
preloaded app opened) and its end of its log socket (fpm.workerlog); stdin is /dev/null,
stdout and stderr the capture pipes or /dev/null (fpm.stdio.redirect). Everything else (the
error log, other pools' sockets, channels and logs, the master's epoll, signal pipe and
scoreboard memfds) is closed, whatever it is, so that nothing the master opens later leaks
into a pool by default. Nor does it share the scoreboards of other pools, mapped in the
master before the fork (it could write what their status pages show and what the master
decides on): only its own, and for a pm.status_listen worker the one it shows.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable

from fpm import stdio, trace, unix, workerlog
from fpm.log import Logger
from fpm.scoreboard import STARTING
from fpm.signals import SignalQueue, name as signal_name

FORK_BLOCKED = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}


# A pool whose app cannot be loaded is tried again by a new worker after 1 s, 2 s, 4 s ...
# (doubling with each failed try, at most 2 ** MAX_TRIES s). Meanwhile the worker that
# failed answers every request 503 (os.EX_UNAVAILABLE when its time is up), unless the
# previous configuration's workers still serve the pool (a reload): then it exits at once
# and the pool waits. A worker that ends before it was ready to serve (it could not start,
# or its import killed it) holds the pool back the same way. Workers of one try that fail
# together count as one failed try. Every other exit is replaced at once.
MAX_TRIES = 5


def app_retry(tries: int) -> float:
    """Seconds before a pool whose app failed to load ``tries`` times in a row tries again."""
    return 2.0 ** min(tries, MAX_TRIES)


@dataclass
class Child:
    pid: int
    pool: object  # the PoolConfig it serves
    started: float  # time.monotonic() at fork
    board: object = None  # its pool's scoreboard.Board (of its generation)
    slot: int = -1
    # Why the master asked it to go ("idle", "reload", "stop", "recovered": it answered 503
    # and its pool's app loads again); None while it serves.
    # A stopping worker is not replaced and no longer counts for its process manager.
    stopping: str | None = None
    last_signal: int | None = None  # the last signal the master sent it alone
    # Every signal it was asked to die by: those the master sent it, and, once the master
    # stops, the signal that stopped the master (it may have reached the whole group).
    asked: set[int] = field(default_factory=set)
    timed_out: int = 0  # `accepted` of the request it was terminated for
    slow_logged: int = 0  # `accepted` of the request it was traced into the slowlog for
    channel: int = -1  # the master's end of its fpm.channel socket pair
    kept_tx: int = -1  # the master's end of its kept channel (fpm.sharing)
    output: tuple[int, int] | None = None  # read ends of its stdout and stderr (catch_workers_output)
    log: int = -1  # the master's end of its log socket (fpm.workerlog)
    tries: int = 0  # its pool's failed tries to load the app when it was forked (app_retry)


@dataclass(frozen=True)
class Seat:
    """What a new worker needs besides its pool: its scoreboard slot, its own request limit
    (pm.max_requests plus its share of jitter), the app when the master preloaded it, its end
    of the channel to the master (fpm.channel; -1 for none), for a pm.status_listen pool the
    (pool, scoreboard) whose status it shows, its pool's access log (-1 for none), its pool's
    failed tries to load the app so far, how long to answer 503 if it cannot load it
    either (see app_retry), the descriptors the preloaded app opened (the worker keeps
    them: the app's objects use them), its pool's park and hand-off sockets
    (fpm.parking), and its listeners systemd holds (their queue is the next master's)."""

    board: object
    slot: int
    max_requests: int = 0
    app: object = None
    channel: int = -1
    shows: tuple | None = None
    access_fd: int = -1
    tries: int = 0  # the pool's failed tries to load the app so far
    retry_after: float = 0.0  # seconds to answer 503 if the app cannot be loaded (0: exit)
    app_fds: frozenset[int] = frozenset()
    park_fd: int = -1  # the pool's park socket, to the master (fpm.parking; -1: none)
    handoff_fd: int = -1  # the pool's hand-off socket, from the master
    shared: object = None  # the pool's shared kept connections (fpm.sharing.Shared), if any
    kept_rx: int = -1  # its end of its kept channel: copies of newly shared connections
    left_queued: frozenset[int] = frozenset()  # its pool's listeners systemd holds


@dataclass(frozen=True)
class Exit:
    child: Child
    status: int  # the raw wait status
    lifetime: float  # seconds from fork to reap
    ready: bool = True  # it had left STARTING: its app loaded (or failed and it answered 503)
    app_failed: bool = False  # it could not load the app and answered 503

    def describe(self) -> tuple[str, str]:
        """(level, log line) in PHP-FPM's words."""
        child = self.child
        level = exit_level(self.status, child.stopping, child.asked)
        if child.stopping == "idle" and level == "debug":
            return level, ("[pool %s] child %d has been killed by the process management "
                           "after %.6f seconds from start" % (child.pool.name, child.pid,
                                                              self.lifetime))
        return level, "[pool %s] child %d exited %s after %.6f seconds from start" % (
            child.pool.name, child.pid, describe_status(self.status), self.lifetime)


def describe_status(status: int) -> str:
    """``with code 0`` or ``on signal 9 (SIGKILL)``."""
    if os.WIFEXITED(status):
        return "with code %d" % os.WEXITSTATUS(status)
    sig = os.WTERMSIG(status)
    core = " - core dumped" if os.WCOREDUMP(status) else ""
    return "on signal %d (%s%s)" % (sig, signal_name(sig), core)


def exit_level(status: int, stopping: str | None, asked) -> str:
    """The level of a worker's exit line, from why the master asked it to go (``stopping``)
    and the signals it was asked to die by (``asked``).

    ========================== ============================================ =========
    why it went                exit                                         level
    ========================== ============================================ =========
    stop, reload               code 0, or a signal it was asked to die by   debug
    idle (process manager)     code 0, or SIGQUIT                           debug
    nobody asked               code 0 (pm.max_requests), or SIGQUIT         notice
    any                        any other code or signal                     warning
    ========================== ============================================ =========

    PHP-FPM's fpm_children_bury(), except that it logs every exit during a stop or reload
    at DEBUG, a crash too: here a crash, and a signal nobody asked for (the OOM killer's),
    stay warnings, since a request may have been lost. As there, an idle worker that had to
    be killed (it ignored SIGQUIT) and a request_terminate_timeout kill are warnings.
    """
    if os.WIFEXITED(status):
        if os.WEXITSTATUS(status) != 0:
            return "warning"
        return "notice" if stopping is None else "debug"
    sig = os.WTERMSIG(status)
    if stopping in ("stop", "reload") and sig in asked:
        return "debug"
    if sig == signal.SIGQUIT:
        return "notice" if stopping is None else "debug"
    return "warning"


def respawn_delay(gone: Exit, failures: int) -> tuple[float, int]:
    """(seconds to wait before the pool spawns again, its new count of failed tries)."""
    child = gone.child
    failed = min(max(failures, child.tries + 1), MAX_TRIES)
    if gone.app_failed:
        return 0.0, failed  # it answered 503 for its while: the next try is due
    code = os.WEXITSTATUS(gone.status) if os.WIFEXITED(gone.status) else None
    if code == os.EX_UNAVAILABLE or not gone.ready:
        # It never served: what is left of its try's pause.
        return max(0.0, app_retry(child.tries) - gone.lifetime), failed
    return 0.0, 0


class Children:
    """The master's view of its workers: fork them, signal them, reap them."""

    def __init__(self, log: Logger, signals: SignalQueue, fds_by_pool: dict[str, list[int]],
                 allow_root: bool = False, forget=None):
        self.log = log
        self.allow_root = allow_root
        self.signals = signals
        self.fds_by_pool = fds_by_pool
        self.by_pid: dict[int, Child] = {}
        self.captures: dict = {}  # pool name -> fpm.stdio.Capture, for catch_workers_output
        # The workers' log sockets; forget(fd) is the master's, before one is closed.
        self.logs = workerlog.Reader(log, forget)
        self.master = os.getpid()  # the same across a reload's re-exec
        # Every scoreboard the master maps (fpm.scoreboard.Board), of this generation and
        # of the one before a reload; every pool's shared kept connections (fpm.sharing).
        self.boards: Callable[[], list] = lambda: []
        self.shared: Callable[[], list] = lambda: []

    def __len__(self) -> int:
        return len(self.by_pid)

    def serving(self, pool_name: str) -> list[Child]:
        """The pool's workers that are not on their way out."""
        return [c for c in self.by_pid.values() if c.pool.name == pool_name and c.stopping is None]

    def spawn(self, pool, seat: Seat, respawn: bool = False, channel: int = -1,
              kept_tx: int = -1) -> Child:
        """Fork one worker of ``pool`` into ``seat``; ``channel`` and ``kept_tx`` are the
        master's ends of the pairs whose other ends are ``seat.channel`` and
        ``seat.kept_rx``. Raises OSError when fork() fails.

        Logged at NOTICE when it replaces one that exited, else (start, process manager)
        at DEBUG, as PHP-FPM does: an ondemand pool would otherwise fill the log.
        """
        # Import in the master, once: every worker then shares the loaded modules.
        from fpm import worker
        capture = self.captures.get(pool.name) if pool.catch_workers_output else None
        ends, output = capture.pipes() if capture is not None else (None, None)
        log, log_end = workerlog.pair()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORK_BLOCKED)
        try:
            pid = os.fork()
            if pid == 0:
                self._become_worker(worker.run, pool, seat, log_end, ends)
        except OSError:
            if capture is not None:
                capture.cancel(output)
            os.close(log)
            raise
        finally:
            os.close(log_end)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        seat.board.mem.set_pid(seat.slot, pid)
        for fd in (seat.channel, seat.kept_rx):
            if fd >= 0:
                os.close(fd)
        if capture is not None:
            capture.attach(pid, output)
        self.logs.attach(pid, pool, log)
        child = Child(pid, pool, time.monotonic(), seat.board, seat.slot, channel=channel,
                      kept_tx=kept_tx, output=output, tries=seat.tries, log=log)
        self.by_pid[pid] = child
        self.log.log("notice" if respawn else "debug", "[pool %s] child %d started" % (pool.name, pid))
        return child

    def adopt(self, child: Child) -> None:
        """Take over a worker of the master this process was before a re-exec."""
        self.by_pid[child.pid] = child

    def _become_worker(self, run, pool, seat: Seat, log_end: int, output) -> None:
        """In the new child: leave the master's session, shed the master's state (the module
        docstring) and run the worker. Never returns."""
        code = os.EX_SOFTWARE
        log = None
        try:
            log = workerlog.WorkerLog(log_end, self.log.level, self.log.buffering)
            os.setsid()
            self.signals.close()
            self.log.leave()
            own = self.fds_by_pool[pool.name]
            shown = {id(seat.board), id(seat.shows[1]) if seat.shows is not None else None}
            for board in self.boards():
                if id(board) not in shown:
                    board.mem.unshare()
            for shared in self.shared():
                if shared is not seat.shared:
                    shared.table.unshare()
            copies = (*seat.shared.table.fds, *seat.shared.fds()) if seat.shared is not None else ()
            unix.close_fds_except({0, 1, 2, *own, seat.channel, seat.access_fd, log_end,
                                   seat.park_fd, seat.handoff_fd, *(output or ()),
                                   *seat.app_fds, seat.kept_rx, *copies})
            stdio.redirect(output)
            run(pool, list(own), log, seat, self.allow_root, self.master)
            log.error("the worker returned")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else os.EX_SOFTWARE
        except BaseException:
            if log is not None:
                log.exception("the worker failed")
        finally:
            # Never unwind into the master's code: no atexit, no finally blocks of the parent.
            os._exit(code)

    def reap(self) -> list[Exit]:
        """Collect every exited child without blocking; log how each one ended.

        A traced worker's ptrace stop comes through here too: the late stop of a trace that
        gave up waiting is handed to fpm.trace, which lets the worker go."""
        exits = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if trace.on_wait_status(pid, status) or os.WIFSTOPPED(status):
                continue
            gone = self.bury(pid, status)
            if gone is not None:
                exits.append(gone)
        return exits

    def bury(self, pid: int, status: int) -> Exit | None:
        """Account for a child that exited with ``status`` (reaped here or by fpm.trace)."""
        trace.forget(pid)
        child = self.by_pid.pop(pid, None)
        if child is None:
            self.log.warning("unknown child (%d) exited %s" % (pid, describe_status(status)))
            return None
        ready, app_failed = True, False
        if child.board is not None:
            last = child.board.read(child.slot)
            ready, app_failed = last.stage != STARTING, last.app_failed
            child.board.release(child.slot)
        for fd in (child.channel, child.kept_tx):
            if fd >= 0:
                os.close(fd)
        if child.pool.name in self.captures:
            self.captures[child.pool.name].drop(pid)
        self.logs.drop(pid)
        gone = Exit(child, status, time.monotonic() - child.started, ready, app_failed)
        self.log.log(*gone.describe())
        return gone

    def kill(self, child: Child, sig: int) -> None:
        self.log.debug("[pool %s] sending signal %d %s to child %d"
                       % (child.pool.name, sig, signal_name(sig), child.pid))
        child.asked.add(sig)
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            pass  # exited, not reaped yet: its SIGCHLD is on the way

    def kill_all(self, sig: int) -> None:
        for child in list(self.by_pid.values()):
            self.kill(child, sig)

    def stop_all(self, by: int) -> None:
        """The master is stopping, on signal ``by``: every worker is on its way out. ``by``
        counts as asked of each: a Ctrl-C, or systemd's KillMode=control-group, delivers it
        to the workers as well, and they die of it before the master's own signal arrives."""
        for child in self.by_pid.values():
            child.stopping = "stop"
            child.asked.add(by)
