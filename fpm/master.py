"""The master: bind, fork the workers, then wait on signals, timers and (ondemand) listening
sockets, in PHP-FPM's states.

=========== ============= ================= =============================================
state        entered on    first signal      escalation (pct = process_control_timeout)
=========== ============= ================= =============================================
NORMAL       start         -                 workers are managed by their pool's pm
FINISHING    QUIT          SIGQUIT           pct > 0: SIGTERM after pct, then SIGKILL
                                             every 1 s; pct = 0: wait for the workers
TERMINATING  TERM, INT     SIGTERM           SIGKILL after pct (1 s if 0), then every 1 s
=========== ============= ================= =============================================

Overrides: NORMAL -> any other; FINISHING -> TERMINATING; TERMINATING -> none. No worker is
spawned outside NORMAL. Outside NORMAL, the moment the last worker is reaped the master logs
``exiting, bye-bye!``, removes its pid file and unix sockets, and exits 0.

USR2 (and an emergency restart) is no state: in NORMAL, the new configuration is checked and
its new sockets bound, then the master re-executes itself at once (fpm.reexec). The new
master serves with new workers while the previous ones finish their requests; a broken
configuration is logged and the current one keeps serving.

Besides the signal pipe, the loop sleeps until the next timer: pm maintenance every second,
the request-timeout heartbeat, per-worker escalations, the reload hand-over, systemd reports,
the deadlines of connections parked until their request is there (fpm.parking). It also
watches each pool's park socket and the parked connections, and once a second logs the
pools' refusals by episode (fpm.refusals).
"""
from __future__ import annotations

import enum
import gc
import math
import os
import random
import select
import signal
import time

from fpm import config as fpm_config
from fpm import (channel, pages, parking, pm, poollogs, reexec, refusals, sockdiag, sockets,
                 systemd, trace)
from fpm.children import Child, Children, Seat, app_retry, describe_status, respawn_delay
from fpm import stdio
from fpm.log import Logger, strerror
from fpm.proctitle import set_process_title
from fpm.scoreboard import (FINISHING, IDLE, ORDER_TIMEOUT, READING, RUNNING, STARTING, Board,
                            now_us)
from fpm.tracer import Tracer
from fpm.signals import HANDLED, SignalQueue, handler_name, name as signal_name

# Deaths that mean the code, not the load, is broken: they count for emergency_restart_*.
FAULT_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                           signal.SIGABRT, signal.SIGSYS})
MAINTENANCE = 1.0  # seconds between pm decisions (PHP-FPM's heartbeat)
MIN_HEARTBEAT = 0.13  # floor of the request-timeout check interval, as PHP-FPM's
HANDOVER_POLL = 0.02  # how often a reload checks whether the new workers are ready
ONDEMAND_RECHECK = 0.01  # a connection still queued with nobody idle: look again this soon


class State(enum.Enum):
    NORMAL = "normal"
    FINISHING = "finishing"
    TERMINATING = "terminating"


_OVERRIDES = {
    State.NORMAL: {State.FINISHING, State.TERMINATING},
    State.FINISHING: {State.TERMINATING},
    State.TERMINATING: set(),
}


def may_switch(current: State, new: State) -> bool:
    return new in _OVERRIDES[current]


def next_signal(state: State, last: int | None, timeout: int) -> tuple[int, float | None]:
    """The signal for the workers' next round and how long to wait before the round after.

    ``None`` as the wait means no escalation: a graceful stop with process_control_timeout 0
    waits for in-flight requests however long they take (PHP-FPM would kill them after 1 s).
    """
    if last is None:
        if state is State.TERMINATING:
            return signal.SIGTERM, float(timeout or 1)
        return signal.SIGQUIT, (float(timeout) if timeout > 0 else None)
    if last == signal.SIGQUIT:
        return signal.SIGTERM, 1.0
    return signal.SIGKILL, 1.0


def escalation(last: int | None, stopping: str | None, stage: int) -> int | None:
    """The signal for one worker still alive after the ``last`` one it was sent alone; None:
    not now, look again on the next tick.

    A worker the process manager stopped (``stopping == "idle"``) that is still idle a tick
    after its SIGQUIT ignores that signal (an app that blocks it): SIGKILL, as PHP-FPM does
    since bug #77023, or the pool would stay over size for ever. One serving a request (it
    took one as the QUIT came, or goes on serving with QUIT blocked) is left to finish it.
    Any other worker goes SIGQUIT, SIGTERM, then SIGKILL.
    """
    if stopping == "idle":
        return signal.SIGKILL if stage == IDLE else None
    return signal.SIGTERM if last == signal.SIGQUIT else signal.SIGKILL


def record_fault(faults: tuple[float, ...], now: float, threshold: int,
                 interval: int) -> tuple[tuple[float, ...], bool]:
    """emergency_restart_*: remember a crash; True when the last ``threshold`` crashes all
    happened within ``interval`` seconds (then start counting afresh)."""
    if threshold <= 0 or interval <= 0:
        return faults, False
    faults = (faults + (now,))[-threshold:]
    if len(faults) == threshold and now - faults[0] <= interval:
        return (), True
    return faults, False


def timed_out(slot, timeout: int, track_finished: bool, now: int) -> float | None:
    """Seconds the slot's request has run when that is past ``timeout``, else None."""
    if timeout <= 0 or slot.stage not in (READING, RUNNING, FINISHING):
        return None
    if slot.stage == FINISHING and not track_finished:
        return None
    elapsed = (now - slot.accepted) / 1e6
    return elapsed if elapsed >= timeout else None


def slow(slot, timeout: int, now: int) -> float | None:
    """Seconds the slot's request has run when the app has run it past
    request_slowlog_timeout, else None (PHP-FPM traces Running requests only)."""
    if timeout <= 0 or slot.stage != RUNNING:
        return None
    elapsed = (now - slot.accepted) / 1e6
    return elapsed if elapsed >= timeout else None


def heartbeat(pools) -> float | None:
    """How often to check request timeouts: a third of the shortest, at least 130 ms."""
    timeouts = [t for p in pools for t in (p.request_terminate_timeout, p.request_slowlog_timeout)
                if t > 0]
    return max(MIN_HEARTBEAT, min(timeouts) / 3) if timeouts else None


class Timers:
    """Named deadlines on the monotonic clock; the loop sleeps until the earliest."""

    def __init__(self):
        self._at: dict[tuple, float] = {}

    def set(self, key: tuple, at: float) -> None:
        self._at[key] = at

    def cancel(self, key: tuple) -> None:
        self._at.pop(key, None)

    def pending(self, key: tuple) -> bool:
        return key in self._at

    def timeout(self, now: float) -> float | None:
        """Seconds until the earliest deadline (0 if one is due), None if there is none."""
        if not self._at:
            return None
        return max(0.0, min(self._at.values()) - now)

    def pop_due(self, now: float) -> list[tuple]:
        due = [key for key, at in self._at.items() if at <= now]
        for key in due:
            del self._at[key]
        return due


class Master:
    """Runs the pools of ``config`` until a stop signal; ``run()`` returns the exit code.

    ``loader`` re-reads and checks the configuration for a reload (raises ConfigError).
    ``inherited`` is what the previous master passed across a re-exec.
    """

    def __init__(self, config, log: Logger, pid_file: str | None = None,
                 status_fd: int | None = None, *, allow_root: bool = False, loader=None,
                 inherited: reexec.Inherited | None = None):
        self.config = config
        self.log = log
        self.pid_file = pid_file
        self.status_fd = status_fd  # a daemon's pipe to the process that launched it
        self.allow_root = allow_root
        self.loader = loader
        self.inherited = inherited
        poll_only = config.global_.events_mechanism == "poll"
        # pm.status_listen adds a hidden pool per pool; it shows its pool's scoreboard.
        self.shows = {pool.name + "_status": pool.name for pool in config.pools
                      if pool.pm_status_listen}
        self.pool_list = list(config.pools) + [pages.status_pool(pool, poll_only)
                                               for pool in config.pools if pool.pm_status_listen]
        self.pools = {pool.name: pool for pool in self.pool_list}
        self.state = State.NORMAL
        self.timers = Timers()
        self.last_signal: int | None = None
        self.failures: dict[str, int] = {}  # consecutive failures to load the app, per pool
        self.reaped: list = []  # exits seen in the current batch of signals
        self.listeners: list[sockets.Listener] = []
        self.boards: dict[str, Board] = {}  # this generation's, by pool
        self.old_boards: list[Board] = []  # inherited, until their last worker is gone
        self.pm_states = {name: pm.PmState() for name in self.pools}
        self.apps: dict[str, object] = {}  # fpm.apps.Preloaded by pool
        self.app_fds: dict[str, frozenset[int]] = {}  # what each preloaded app opened
        self.handover: set[str] = set()  # pools whose inherited workers await the new ones
        self.faults: tuple[float, ...] = ()
        self.warned_process_max = False
        self.pid_written = False
        self.orig_stderr: int | None = None
        self.notifier = systemd.Notifier.from_env(os.environ, log)
        self.report_every: float | None = None
        self.watchdog = False
        self.reported_requests = 0
        self.poller = _Poll() if config.global_.events_mechanism == "poll" else select.epoll()
        self.queues = sockdiag.ListenQueues()
        self.tracer = Tracer(log)
        if any(self._traced(pool) for pool in config.pools):
            self.tracer.prepare()
        self.started_epoch_us = time.time_ns() // 1000
        self.ondemand_fds: dict[int, str] = {}  # listening fd -> ondemand pool
        self.access_fds: dict[str, int] = {}  # pool -> its access log, opened here for workers
        self.slowlog_fds: dict[str, int] = {}  # pool -> its slowlog, which the master writes
        # Descriptor number -> a copy of what it was when pyfpm started (fpm.log.stream_fd),
        # carried across reloads: pool logs on /dev/stderr and the like write there.
        self.streams: dict[int, int] = dict(inherited.streams) if inherited is not None else {}
        # Connections waiting for their request head (fpm.parking), by pool; the lot of
        # each parked descriptor and of each pool's park socket, for the loop's events.
        self.lots: dict[str, parking.Lot] = {}
        self.parked_in: dict[int, parking.Lot] = {}
        self.park_rx: dict[int, parking.Lot] = {}
        self.refusal_watch = {name: refusals.Watch() for name in self.pools}
        # Read ends of the workers' log sockets and captured output, and their readers
        # (fpm.workerlog.Reader, fpm.stdio.Capture).
        self.output_fds: dict[int, object] = {}
        self.signals: SignalQueue
        self.children: Children

    # --- start and stop ------------------------------------------------------------------

    def run(self) -> int:
        # Handlers first: a TERM during start-up is queued, not fatal. A re-exec arrives
        # with these signals blocked, so that none is lost in between: unblock them now.
        self.signals = SignalQueue()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
        try:
            code = self._start()
            if code == os.EX_OK:
                code = self._loop()
        except Exception:
            self.log.exception("the master failed")
            if hasattr(self, "children"):
                self.children.kill_all(signal.SIGKILL)
            code = os.EX_SOFTWARE
        finally:
            self._cleanup()
        self._report(code)
        return code

    def _start(self) -> int:
        try:
            self.listeners = self._open_listeners()
        except sockets.ListenError as e:
            self.log.error(str(e))
            self.log.error("FPM initialization failed")
            return os.EX_CONFIG
        if self.pid_file:
            try:
                _write_pid_file(self.pid_file)
            except OSError as e:
                self.log.error("unable to create the pid file '%s': %s"
                               % (self.pid_file, strerror(e)))
                self.log.error("FPM initialization failed")
                return os.EX_CONFIG
            self.pid_written = True
        fds: dict[str, list[int]] = {name: [] for name in self.pools}
        for listener in self.listeners:
            fds[listener.pool_name].append(listener.fd)
        for fd in self.streams.values():
            os.set_inheritable(fd, False)  # they crossed the exec of a reload
        for pool in self.pool_list:
            self.boards[pool.name] = Board(pool.name, _slots(pool))
            try:
                files = poollogs.open_files(pool, self.streams)
            except poollogs.Unopenable as e:
                self.log.error(str(e))
                self.log.error("FPM initialization failed")
                return os.EX_CONFIG
            for field, held in (("access_log", self.access_fds), ("slowlog", self.slowlog_fds)):
                if field in files:
                    held[pool.name] = files[field]
        used = set(self.access_fds.values()) | set(self.slowlog_fds.values())
        for number, fd in list(self.streams.items()):
            if fd not in used:  # the new configuration writes no log there
                os.close(fd)
                del self.streams[number]
        self.children = Children(self.log, self.signals, fds, self.allow_root,
                                 forget=self._forget_output)
        self.children.boards = lambda: [*self.boards.values(), *self.old_boards]
        self._open_lots()
        for pool in self.pool_list:
            if pool.catch_workers_output:
                self._capture(pool)
        if self.inherited is not None:
            self._adopt_children(self.inherited)
        self._preload()
        self._launch()
        self.log.notice("fpm is running, pid %d" % os.getpid())
        for pool in self.pool_list:
            self._spawn(pool, pm.initial(pool))
            if pool.pm == "ondemand":
                # A connection handed over with its head waits like one in the listen queue.
                for fd in fds[pool.name] + [self.lots[pool.name].ends.hand_rx]:
                    self.ondemand_fds[fd] = pool.name
                    self.poller.register(fd, select.EPOLLIN | select.EPOLLET)
            self._publish(pool)
        self.timers.set(("maintenance",), time.monotonic() + MAINTENANCE)
        beat = heartbeat(self.pool_list)
        if beat is not None:
            self.timers.set(("heartbeat",), time.monotonic() + beat)
        if self.handover:
            self.timers.set(("handover",), time.monotonic())
        self.log.notice("ready to handle connections")
        self._start_systemd()
        self._report(os.EX_OK)
        return os.EX_OK

    def _open_listeners(self) -> list[sockets.Listener]:
        """One socket per listen address of every pool: kept across a reload, passed by
        systemd, else bound here."""
        adopted: dict[str, sockets.Listener] = {}  # by listen address
        if self.inherited is not None:
            adopted, unused = reexec.adopt_listeners(self.inherited, self.pool_list)
            for listener in adopted.values():
                self.log.notice('using inherited socket fd=%d, "%s"' % (listener.fd, listener.key))
            sockets.close_all(unused)
        owner = {text: pool.name for pool in self.pool_list for text in pool.listen}
        for text, sock in systemd.adopt_sockets(self.pool_list, self.log).items():
            adopted[text] = sockets.Listener(owner[text], sockets.parse_listen(text), sock,
                                             owned=False)
        return sockets.open_all(self.pool_list, self.log, adopted)

    def _open_lots(self) -> None:
        """Each pool's park and hand-off sockets (those of the previous master after a
        reload, with the connections it held) and its limit of parked connections."""
        ends = {}
        if self.inherited is not None:
            for name, fds in self.inherited.lots:
                for fd in fds:
                    os.set_inheritable(fd, False)
                if name in self.pools:
                    ends[name] = parking.Ends(*fds)
                else:  # a pool gone from the configuration: what waited for it goes too
                    parking.Ends(*fds).close()
        for pool in self.pool_list:
            if pool.name not in ends:
                ends[pool.name] = parking.Ends.make()
        nofile, open_now = parking.free_fds()
        reserve = parking.RESERVE_FDS + parking.FDS_PER_WORKER * sum(
            pool.pm_max_children for pool in self.pool_list)
        edge = not isinstance(self.poller, _Poll)
        for pool in self.pool_list:
            count = parking.limit(parking.effective_backlog(pool.listen_backlog),
                                  len(pool.listen), nofile, open_now, reserve,
                                  len(self.pool_list))
            lot = parking.Lot(pool.name, ends[pool.name], self.boards[pool.name], self.poller,
                              edge, count, self.parked_in,
                              pool.request_read_timeout * 1_000_000, pool.request_body_min_rate)
            self.lots[pool.name] = lot
            self.park_rx[lot.ends.park_rx] = lot
            self.poller.register(lot.ends.park_rx, select.EPOLLIN)
        if self.inherited is not None:
            for name, entry in reexec.parked_entries(self.inherited):
                if name in self.lots:
                    self.lots[name].adopt(*entry)
                else:
                    os.close(entry[0])
            for lot in self.lots.values():
                self._arm(lot)

    def _arm(self, lot: parking.Lot) -> None:
        """The timers a lot needs: its next head deadline, a retry of the hand-off, a
        recheck of partial heads (level-triggered poller)."""
        due = lot.next_due()
        if due is None:
            self.timers.cancel(("parked", lot.name))
        else:
            self.timers.set(("parked", lot.name),
                            time.monotonic() + max(0.0, (due - parking.now_us()) / 1e6))
        if lot.retry and not self.timers.pending(("handoff", lot.name)):
            self.timers.set(("handoff", lot.name), time.monotonic() + parking.RETRY)
        if lot.resting and not self.timers.pending(("recheck", lot.name)):
            self.timers.set(("recheck", lot.name), time.monotonic() + parking.RECHECK)

    def _adopt_children(self, inherited: reexec.Inherited) -> None:
        """The previous master's workers: ours to reap, retired once the new ones serve."""
        boards = {}
        for fd, nslots, pool_name in inherited.boards:
            os.set_inheritable(fd, False)
            try:
                boards[fd] = Board(pool_name, nslots, fd)
            except ValueError:
                # A master of another pyfpm version (an upgrade): its workers are adopted,
                # retired and reaped as usual, but their state is not shown.
                self.log.warning("[pool %s] the previous master's scoreboard has another "
                                 "layout; its workers are not shown until they are retired"
                                 % pool_name)
                os.close(fd)
                boards[fd] = Board(pool_name, nslots)
        self.old_boards = list(boards.values())
        for pid, pool_name, board_fd, slot, started, ours, output, log in inherited.children:
            pool = self.pools.get(pool_name) or fpm_config.PoolConfig(name=pool_name, listen=())
            boards[board_fd].adopt(slot)
            for fd in tuple(fd for fd in (ours, log) if fd >= 0) + (output or ()):
                os.set_inheritable(fd, False)
            if output is not None:
                self._capture(pool).adopt(pid, output)
                self._watch(self.children.captures[pool.name], output)
            if log >= 0:  # a master before fpm.workerlog: its workers write the log themselves
                self.children.logs.attach(pid, pool, log)
                self._watch(self.children.logs, (log,))
            self.children.adopt(Child(pid, pool, started, boards[board_fd], slot, stopping="reload",
                                      channel=ours, output=output, log=log))
            self.handover.add(pool_name)
        # Workers that died while the exec ran were reaped by nobody yet.
        self.reaped += self.children.reap()

    def _preload(self) -> None:
        """``preload``: import each such pool's app here, once, so workers share its pages.
        A pool in script mode (no ``app``) has nothing to import: which scripts it runs is
        known only per request, so each worker compiles the ones it serves."""
        from fpm import apps
        for pool in self.pool_list:
            if not pool.preload:
                continue
            if pool.app is None:
                self.log.notice("[pool %s] preload: script mode has no app to import; each "
                                "worker compiles the scripts it serves" % pool.name)
                continue
            stdio.install()  # the streams the app may keep are those its workers redirect
            before = _open_fds()
            try:
                self.apps[pool.name] = apps.preload(pool.app, pool.chdir, pool.python_path,
                                                    pool.virtualenv)
                # Its objects use them (a log file, a connection): its workers keep them.
                self.app_fds[pool.name] = frozenset(_open_fds() - before)
            except apps.AppLoadError as e:
                # The other pools serve; this one's workers try themselves, and answer 503.
                self.log.error("[pool %s] preload: %s; its workers import the app themselves "
                               "and answer 503 while it cannot be loaded" % (pool.name, e))
        if self.apps:
            # The preloaded objects live as long as the master: frozen, they are left out of
            # the workers' collections, which would otherwise write to (and so copy) their pages.
            gc.freeze()

    def _launch(self) -> None:
        """From here the log is final: stderr follows a log file (so the master's own stray
        output, a library's warning, lands there too) and a daemon lets go of the terminal.
        Workers' stdout and stderr are redirected at fork (fpm.stdio)."""
        self.log.echo_stderr = False
        daemon = self.status_fd is not None
        if self.log.is_file:
            # What a re-executed master starts with as stderr; a daemon keeps no copy of
            # the launcher's, or whoever waits on that pipe would wait for ever.
            self.orig_stderr = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC) if daemon else os.dup(2)
            os.dup2(self.log.fd, 2)
        if daemon:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.close(null)

    def _report(self, code: int) -> None:
        """Tell the launching process (daemon mode) how start-up went, once."""
        if self.status_fd is None:
            return
        try:
            os.write(self.status_fd, bytes([code]))
        except OSError:
            pass  # the launcher gave up waiting; nothing more to tell
        os.close(self.status_fd)
        self.status_fd = None

    def _cleanup(self) -> None:
        sockets.close_all(self.listeners)
        self.listeners = []
        if self.pid_written and self.pid_file:
            _remove_pid_file(self.pid_file)
            self.pid_written = False

    def _loop(self) -> int:
        self.poller.register(self.signals.rfd, select.EPOLLIN)
        while True:
            for key in self.timers.pop_due(time.monotonic()):
                self._on_timer(key)
            if self.state is not State.NORMAL and not self.children:
                self.log.notice("exiting, bye-bye!")
                return os.EX_OK
            timeout = self.timers.timeout(time.monotonic())
            # Round up: waking a hair early would spin until the deadline.
            events = self.poller.poll(-1 if timeout is None else math.ceil(timeout * 1000) / 1000)
            for fd, mask in events:
                if fd in self.parked_in:
                    lot = self.parked_in[fd]
                    lot.look(fd, mask)
                    self._arm(lot)
                elif fd in self.park_rx:
                    self.park_rx[fd].receive()
                    self._arm(self.park_rx[fd])
                elif fd in self.output_fds:
                    self.output_fds[fd].readable(fd)
                elif fd in self.ondemand_fds and self.state is State.NORMAL:
                    self._on_waiting_connection(self.pools[self.ondemand_fds[fd]])
            for sig in sorted(self.signals.drain(), key=_signal_order):
                getattr(self, handler_name(sig))()
            if self.reaped:
                self._after_exits(self.reaped)
            self.reaped = []

    def _on_timer(self, key: tuple) -> None:
        kind = key[0]
        if kind == "pctl":
            self._pctl_round()
        elif kind == "maintenance" and self.state is State.NORMAL:
            self._maintain()
            self.timers.set(key, time.monotonic() + MAINTENANCE)
        elif kind == "heartbeat":
            self._check_timeouts()
            self.timers.set(key, time.monotonic() + heartbeat(self.pool_list))
        elif kind == "spawn" and self.state is State.NORMAL:
            self._maintain_pool(self.pools[key[1]])
        elif kind == "escalate":
            self._escalate(key[1])
        elif kind == "handover" and self.state is State.NORMAL:
            self._hand_over()
        elif kind == "ondemand" and self.state is State.NORMAL:
            self._recheck_queue(self.pools[key[1]])
        elif kind == "systemd":
            self._report_systemd()
        elif kind in ("parked", "handoff", "recheck"):
            lot = self.lots[key[1]]
            if kind == "parked":
                lot.expire(parking.now_us())
            elif kind == "handoff":
                lot.hand_over_ready()
            else:
                lot.recheck()
            self._arm(lot)

    # --- workers --------------------------------------------------------------------------

    def _spawn(self, pool, n: int, respawn: bool = False) -> int:
        """Fork up to ``n`` workers of ``pool``, within process.max; how many were forked."""
        running = sum(1 for c in self.children.by_pid.values() if c.stopping is None)
        allowed = pm.process_room(self.config.global_.process_max, running, n)
        if allowed < n and not self.warned_process_max:
            self.log.warning("The maximum number of processes has been reached. Please review "
                             "your configuration and consider raising 'process.max'")
            self.warned_process_max = True
        board = self.boards[pool.name]
        for i in range(allowed):
            slot = board.claim()
            if slot is None:
                return i  # workers told to stop still hold their slots: next tick
            jitter = random.randint(0, pool.pm_max_requests_jitter) if pool.pm_max_requests else 0
            ours, theirs = channel.pair() if self._needs_channel(pool) else (-1, -1)
            shown = self.shows.get(pool.name)
            tries = self.failures.get(pool.name, 0)
            # While the previous configuration's workers serve the pool, one that cannot load
            # the app leaves the requests to them instead of answering 503. Otherwise it
            # answers 503 for a while, spread so that a pool's workers do not all try again
            # (and leave it without a worker) at once.
            retry = 0.0 if self._old_serving(pool.name) else app_retry(tries) * random.uniform(0.75, 1.0)
            ends = self.lots[pool.name].ends
            seat = Seat(board, slot, pool.pm_max_requests + jitter, self.apps.get(pool.name),
                        theirs, None if shown is None else (self.pools[shown], self.boards[shown]),
                        self.access_fds.get(pool.name, -1), tries, retry,
                        self.app_fds.get(pool.name, frozenset()), ends.park_tx, ends.hand_rx)
            try:
                child = self.children.spawn(pool, seat, respawn, ours)
            except OSError as e:
                for fd in (ours, theirs):
                    if fd >= 0:
                        os.close(fd)
                board.release(slot)
                self.log.syserror("[pool %s] fork() failed; trying again in 1 second" % pool.name, e)
                self.timers.set(("spawn", pool.name), time.monotonic() + 1.0)
                return i
            if child.output is not None:
                self._watch(self.children.captures[pool.name], child.output)
            self._watch(self.children.logs, (child.log,))
        return allowed

    def _capture(self, pool) -> stdio.Capture:
        """The pool's catch_workers_output reader, made on first use."""
        if pool.name not in self.children.captures:
            self.children.captures[pool.name] = stdio.Capture(
                self.log, pool.name, pool.decorate_workers_output, self.log.limit,
                self.log.buffering, forget=self._forget_output)
        return self.children.captures[pool.name]

    def _watch(self, reader, fds) -> None:
        """Hand ``reader`` the fds of a worker's output when they are readable."""
        for fd in fds:
            self.output_fds[fd] = reader
            self.poller.register(fd, select.EPOLLIN)

    def _forget_output(self, fd: int) -> None:
        """A worker's captured pipe or log socket is at its end (the worker is gone, or
        going): no longer watched; closed once the worker is reaped."""
        self.poller.unregister(fd)
        del self.output_fds[fd]

    def _needs_channel(self, pool) -> bool:
        """A worker gets a channel when it has an access log to reopen on USR1, or may be
        traced (the faulthandler fallback sends its stack over it)."""
        return pool.access_log is not None or self._traced(pool)

    @staticmethod
    def _traced(pool) -> bool:
        """Its workers' stacks may be read: into the slowlog, or when a request is killed."""
        return pool.request_slowlog_timeout > 0 or pool.request_terminate_timeout > 0

    def _slots(self, pool_name: str) -> list:
        """Scoreboard copies of the pool's serving workers, for its process manager."""
        return [c.board.read(c.slot) for c in self.children.serving(pool_name)]

    def _apply(self, pool, plan: pm.Plan) -> None:
        self.pm_states[pool.name] = plan.state
        # A status pool's two workers at most are by design: no "max_children reached".
        for level, text in plan.messages if pool.name not in self.shows else ():
            self.log.log(level, text)
        if plan.stop is not None:
            child = self.children.by_pid[plan.stop]
            child.stopping = "idle"
            self._signal(child, signal.SIGQUIT, MAINTENANCE)
        if plan.spawn:
            # A static pool short of workers lost some: those are respawns.
            self._spawn(pool, plan.spawn, respawn=pool.pm == "static")

    def _maintain(self) -> None:
        for pool in self.pool_list:
            if not self.timers.pending(("spawn", pool.name)):
                self._maintain_pool(pool)
            self._publish(pool)

    def _publish(self, pool) -> None:
        """The status page's pool-wide numbers that only the master knows or can correct,
        and the refusals' episodes (fpm.refusals)."""
        board = self.boards[pool.name]
        lot = self.lots[pool.name]
        lot.settle()
        self.refusal_watch[pool.name], events = refusals.update(
            self.refusal_watch[pool.name], board.mem.refusals(), time.monotonic())
        if events:
            accept_errno = board.header()["accept_errno"]
            for event in events:
                self.log.log(*refusals.line(event, pool, lot.count, accept_errno))
        slots = [board.read(i) for i in board.taken]
        queued = capacity = 0
        for listener in self.listeners:
            if listener.pool_name == pool.name:
                numbers = self.queues.query(listener.fd)
                if numbers is not None:
                    queued, capacity = queued + numbers[0], capacity + numbers[1]
        board.mem.set_master_counters(self.started_epoch_us, sum(not s.idle for s in slots),
                                      self.pm_states[pool.name].max_children_reached,
                                      queued, capacity)

    def _maintain_pool(self, pool) -> None:
        serving = self.children.serving(pool.name)
        slots = [c.board.read(c.slot) for c in serving]
        if any(s.stage != STARTING and not s.app_failed for s in slots):
            # Its app loads (again): the workers still answering 503 make way for new ones.
            self.failures[pool.name] = 0
            for child, slot in zip(serving, slots):
                if slot.app_failed:
                    child.stopping = "recovered"
                    self._signal(child, signal.SIGQUIT, 1.0)
            slots = [s for s in slots if not s.app_failed]
        self._apply(pool, pm.maintain(pool, slots, self.pm_states[pool.name], now_us()))

    def _on_waiting_connection(self, pool) -> None:
        if self.timers.pending(("spawn", pool.name)):
            return  # its app does not load: forking per connection would only fail faster
        plan = pm.on_waiting_connection(pool, self._slots(pool.name), self.pm_states[pool.name])
        if plan.spawn:
            self.log.debug("[pool %s] got accept without idle child available .... I forked"
                           % pool.name)
        self._apply(pool, plan)
        if len(self.children.serving(pool.name)) < pool.pm_max_children:
            self.timers.set(("ondemand", pool.name), time.monotonic() + ONDEMAND_RECHECK)

    def _recheck_queue(self, pool) -> None:
        """Edge-triggered readiness says nothing about connections that were already
        queued: while one still waits, act as if it had just arrived."""
        fds = [fd for fd, name in self.ondemand_fds.items() if name == pool.name]
        waiting = select.poll()
        for fd in fds:
            waiting.register(fd, select.POLLIN)
        if waiting.poll(0):
            self._on_waiting_connection(pool)

    def _after_exits(self, exits) -> None:
        """Emergency restart bookkeeping; in NORMAL, replace the workers that were not told
        to go (holding back pools whose app does not load)."""
        now = time.monotonic()
        reload = False
        for gone in exits:
            if os.WIFSIGNALED(gone.status) and os.WTERMSIG(gone.status) in FAULT_SIGNALS:
                g = self.config.global_
                self.faults, hit = record_fault(self.faults, now, g.emergency_restart_threshold,
                                                g.emergency_restart_interval)
                if hit:
                    self.log.warning("failed processes threshold (%d in %d sec) is reached, "
                                     "initiating reload" % (g.emergency_restart_threshold,
                                                            g.emergency_restart_interval))
                    reload = True
        self._close_spent_boards()
        if self.state is not State.NORMAL:
            return
        for gone in exits:
            name = gone.child.pool.name
            if gone.child.stopping == "reload" and name in self.pools and not self._old_serving(name):
                # The previous configuration's last worker of the pool is gone: the new ones
                # serve now, with a 503 if they cannot load the app, without a pause.
                self.timers.cancel(("spawn", name))
                self._maintain_pool(self.pools[name])
        if self.handover:
            self._hand_over()
        replace = [g for g in exits if g.child.stopping is None and g.child.pool.name in self.pools]
        for gone in replace:
            pool = self.pools[gone.child.pool.name]
            delay, self.failures[pool.name] = respawn_delay(gone, self.failures.get(pool.name, 0))
            if delay:
                code = os.WEXITSTATUS(gone.status) if os.WIFEXITED(gone.status) else None
                why = ("could not load the app" if code == os.EX_UNAVAILABLE
                       else "ended before it was ready to serve")
                self.log.warning("[pool %s] child %d %s (exited %s %.6f seconds after start); "
                                 "next spawn in %.3g seconds"
                                 % (pool.name, gone.child.pid, why, describe_status(gone.status),
                                    gone.lifetime, delay))
                self.timers.set(("spawn", pool.name), now + delay)
        for gone in replace:
            pool = self.pools[gone.child.pool.name]
            if not self.timers.pending(("spawn", pool.name)):
                # One for one, as PHP-FPM respawns; a static pool refills to max_children.
                room = pool.pm_max_children - len(self.children.serving(pool.name))
                self._spawn(pool, min(room, pool.pm_max_children if pool.pm == "static" else 1),
                            respawn=True)
        if reload:
            self._reload()

    def _close_spent_boards(self) -> None:
        in_use = {id(c.board) for c in self.children.by_pid.values()}
        for board in [b for b in self.old_boards if id(b) not in in_use]:
            self.old_boards.remove(board)
            board.close()

    # --- timeouts and per-worker escalation --------------------------------------------------

    def _check_timeouts(self) -> None:
        """request_slowlog_timeout: trace the worker into the slowlog, once per request;
        request_terminate_timeout: trace it, then stop it (its 504 goes out first)."""
        now = now_us()
        for child in list(self.children.by_pid.values()):
            pool = self.pools.get(child.pool.name)
            if pool is None or child.pid not in self.children.by_pid:
                continue  # not a pool of this configuration, or gone during an earlier trace
            if not self._traced(pool):
                continue
            slot = child.board.read(child.slot)
            elapsed = slow(slot, pool.request_slowlog_timeout, now)
            if elapsed is not None and child.slow_logged != slot.accepted:
                child.slow_logged = slot.accepted
                self.log.warning('[pool %s] child %d, script \'%s\' (request: "%s %s") '
                                 'executing too slow (%.6f sec), logging'
                                 % self._request_words(pool, child, slot, elapsed))
                child.board.mem.count_slow_request()
                if not self._trace(pool, child, slot, elapsed):
                    continue
            elapsed = timed_out(slot, pool.request_terminate_timeout,
                                pool.request_terminate_timeout_track_finished, now)
            if elapsed is None or child.timed_out == slot.accepted:
                continue
            child.timed_out = slot.accepted
            self.log.warning('[pool %s] child %d, script \'%s\' (request: "%s %s") execution '
                             'timed out (%.6f sec), terminating'
                             % self._request_words(pool, child, slot, elapsed))
            if not self._trace(pool, child, slot, elapsed):
                continue
            child.board.mem.set_order(child.slot, ORDER_TIMEOUT)
            self._signal(child, signal.SIGTERM, 1.0)

    @staticmethod
    def _request_words(pool, child, slot, elapsed: float) -> tuple:
        return (pool.name, child.pid, _printable(slot.script or pool.app or ""), slot.method,
                _printable(slot.request_uri), elapsed)

    def _trace(self, pool, child, slot, elapsed: float) -> bool:
        """Write the worker's stack (slowlog, else error log); False if it exited meanwhile."""
        try:
            stack = self.tracer.stack(child, pool.request_slowlog_trace_depth)
        except trace.Gone as e:
            if e.status is not None:  # reaped by the tracer: account for it as the reaper would
                gone = self.children.bury(child.pid, e.status)
                if gone is not None:
                    self.reaped.append(gone)
            return False
        self.tracer.write(pool, child, slot, elapsed, stack, self.slowlog_fds.get(pool.name))
        return True

    def _signal(self, child: Child, sig: int, escalate_after: float | None) -> None:
        """Signal one worker; unless it has gone by ``escalate_after`` s, signal it harder."""
        child.last_signal = sig
        self.children.kill(child, sig)
        if escalate_after is not None:
            self.timers.set(("escalate", child.pid), time.monotonic() + escalate_after)

    def _escalate(self, pid: int) -> None:
        child = self.children.by_pid.get(pid)
        if child is None:
            return
        sig = escalation(child.last_signal, child.stopping, child.board.read(child.slot).stage)
        if sig is None:
            self.timers.set(("escalate", pid), time.monotonic() + MAINTENANCE)
            return
        self.log.notice("[pool %s] child %d still alive, sending %s"
                        % (child.pool.name, pid, signal_name(sig)))
        self._signal(child, sig, 1.0)

    # --- reload ------------------------------------------------------------------------------

    def _old_serving(self, pool_name: str) -> list[Child]:
        """The previous configuration's workers that still serve the pool (a reload)."""
        return [c for c in self.children.by_pid.values()
                if c.pool.name == pool_name and c.stopping == "reload" and c.last_signal is None]

    def _hand_over(self) -> None:
        """Retire the inherited workers of each pool whose new workers are all ready."""
        self.timers.cancel(("handover",))
        for name in sorted(self.handover):
            pool = self.pools.get(name)
            old = self._old_serving(name)
            if pool is not None and old:
                fresh = self._slots(name)
                if len(fresh) < pm.initial(pool) or any(s.stage == STARTING or s.app_failed
                                                        for s in fresh):
                    continue
            if old:
                self.log.notice("[pool %s] %d child(ren) of the previous configuration finish "
                                "their requests and exit" % (name, len(old)))
            pct = self.config.global_.process_control_timeout
            for child in old:
                self._signal(child, signal.SIGQUIT, float(pct) if pct > 0 else None)
            self.handover.discard(name)
        if self.handover:
            self.timers.set(("handover",), time.monotonic() + HANDOVER_POLL)
        elif self.notifier is not None:
            self.notifier.ready()

    def _reload(self) -> None:
        """Check the new configuration and bind its new sockets, then re-execute; on any
        problem, say so and go on serving as before."""
        if self.state is not State.NORMAL:
            self.log.debug("not reloading, because already in '%s' state" % self.state.value)
            return
        self.log.notice("Reloading in progress ...")
        try:
            if self.loader is None:
                raise fpm_config.ConfigError(["this master cannot re-read its configuration"])
            config = self.loader()
        except fpm_config.ConfigError as e:
            for line in e.errors:
                self.log.error(line)
            self.log.error("reload failed: the new configuration is invalid; still serving "
                           "with the current one")
            return
        except reexec.WouldFail as e:
            for line in e.errors:
                self.log.error("the new master would not start: %s" % line)
            self.log.error("reload failed: still serving with the current configuration")
            return
        except Exception:  # whatever reading it met (a working directory since removed...)
            self.log.exception("reload failed: the new configuration could not be read; still "
                               "serving with the current one")
            return
        current = {l.address.text for l in self.listeners}
        fresh: list[sockets.Listener] = []
        try:
            for pool in config.pools:
                for text in pool.listen:
                    if text.strip() not in current:
                        fresh.append(sockets.open_listener(pool, text, self.log))
        except sockets.ListenError as e:
            sockets.close_all(fresh)
            self.log.error(str(e))
            self.log.error("reload failed: still serving with the current configuration")
            return
        if self.notifier is not None:
            self.notifier.reloading()
        argv = reexec.command()
        self.log.notice("reloading: execvp(\"%s\", {%s})"
                        % (argv[0], ", ".join('"%s"' % a for a in argv)))
        # A signal that came while the reload was prepared is a byte in this master's pipe,
        # which the exec closes: raised again, blocked, it waits for the new master (or for
        # this one, if the exec fails). SIGCHLD need not: the new master reaps what it adopts.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        for sig in set(self.signals.drain()) - {signal.SIGCHLD}:
            os.kill(os.getpid(), sig)
        error = reexec.execute(self.listeners + fresh,
                               list(self.boards.values()) + self.old_boards,
                               list(self.children.by_pid.values()), self.orig_stderr,
                               self.streams, self.lots)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        sockets.close_all(fresh)
        self.log.syserror("failed to reload: execvp() failed; still serving", error)

    # --- systemd ---------------------------------------------------------------------------

    def _start_systemd(self) -> None:
        if self.notifier is None:
            return
        every, watchdog, messages = systemd.interval(
            os.environ, self.config.global_.systemd_interval, os.getpid())
        for level, text in messages:
            self.log.log(level, text)
        self.report_every, self.watchdog = every, watchdog
        if not self.handover:
            self.notifier.ready()
        if every is not None:
            self.timers.set(("systemd",), time.monotonic() + every)

    def _report_systemd(self) -> None:
        slots = [c.board.read(c.slot) for c in self.children.by_pid.values()]
        idle = sum(s.idle for s in slots)
        requests = sum(b.mem.accepted_conn for b in self.boards.values())
        self.notifier.status(systemd.status_line(len(slots) - idle, idle, requests, 0,
                                                 self.reported_requests, self.report_every))
        self.reported_requests = requests
        if self.watchdog:
            self.notifier.watchdog()
        self.timers.set(("systemd",), time.monotonic() + self.report_every)

    # --- states ---------------------------------------------------------------------------

    def _switch(self, new: State, by: int) -> None:
        """Enter ``new`` on the master's signal ``by``."""
        if new is self.state:
            return
        if not may_switch(self.state, new):
            self.log.debug("not switching to '%s' state, because already in '%s' state"
                           % (new.value, self.state.value))
            return
        self.state = new
        self.last_signal = None
        if new is State.FINISHING:
            # Before the workers are told: each drains the hand-off queue as it stops.
            for lot in self.lots.values():
                lot.hand_over_all()
                self._arm(lot)
        self.children.stop_all(by)
        for name in self.pools:
            self.timers.cancel(("spawn", name))
        if self.notifier is not None:
            self.notifier.stopping()
        self._pctl_round()

    def _pctl_round(self) -> None:
        """Signal every worker for the current state; arm the next escalation."""
        self.timers.cancel(("pctl",))
        if not self.children:
            return
        sig, wait = next_signal(self.state, self.last_signal, self.config.global_.process_control_timeout)
        if self.last_signal is not None:
            self.log.notice("%d child(ren) still alive, sending %s" % (len(self.children), signal_name(sig)))
        self.last_signal = sig
        self.children.kill_all(sig)
        if wait is not None:
            self.timers.set(("pctl",), time.monotonic() + wait)

    # --- signal handlers (called from the loop, never from a signal context) --------------

    def handle_term(self, by: int = signal.SIGTERM) -> None:
        self.log.notice("Terminating ...")
        self._switch(State.TERMINATING, by)

    def handle_int(self) -> None:
        self.handle_term(signal.SIGINT)

    def handle_quit(self) -> None:
        self.log.notice("Finishing ...")
        self._switch(State.FINISHING, signal.SIGQUIT)

    def handle_usr1(self) -> None:
        """Reopen the error log (only the master writes it), the access logs and the slowlogs
        onto their fd numbers, then hand the new access logs to the workers (fpm.channel),
        which take them before their next line: no worker restarts and no line is lost
        (PHP-FPM restarts every worker)."""
        if self.log.is_file:
            try:
                self.log.reopen()
                os.dup2(self.log.fd, 2)  # stderr was pointed at the old file at launch
                self.log.notice("error log file re-opened")
            except OSError as e:
                self.log.syserror("unable to reopen the error log file '%s'" % self.log.target, e)
        held = {"access_log": self.access_fds, "slowlog": self.slowlog_fds}
        for field, words in poollogs.FILES:
            for name, fd in held[field].items():
                path = getattr(self.pools[name], field)
                try:
                    poollogs.reopen(path, fd)
                except OSError as e:
                    self.log.syserror("[pool %s] unable to reopen %s '%s'" % (name, words, path), e)
        if self.access_fds:
            self.log.notice("access log file re-opened")
        for child in self.children.by_pid.values():
            if child.channel >= 0 and child.pool.name in self.access_fds:
                try:
                    channel.send_files(child.channel, [self.access_fds[child.pool.name]])
                except OSError as e:
                    self.log.syserror("[pool %s] child %d: unable to hand over the reopened "
                                      "log files" % (child.pool.name, child.pid), e)
        for board in list(self.boards.values()) + self.old_boards:
            board.mem.bump_log_generation()

    def handle_usr2(self) -> None:
        self._reload()

    def handle_chld(self) -> None:
        self.reaped += self.children.reap()
        if not self.children:
            self.timers.cancel(("pctl",))


_STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)


def _signal_order(sig: int) -> int:
    """The order a batch of signals is handled in: stops first, SIGCHLD last.

    A stop must not wait behind a reload (USR2) of the same batch: the reload's exec would
    take the stop's byte with the old signal pipe, and the new master would never stop
    (a reload storm, then TERM). And a Ctrl-C reaches the workers and the master together,
    and the master's SIGINT may sit behind their SIGCHLD (the kernel stacks the second
    handler's frame on the first, so it runs first): reaping after the batch's other signals
    knows deaths by the stop signal as asked for, and replaces the dead only after it."""
    return 0 if sig in _STOPS else 2 if sig == signal.SIGCHLD else 1


class _Poll:
    """``events.mechanism = poll``: select.poll behind epoll's interface (level-triggered,
    so the configuration refuses ondemand with it)."""

    def __init__(self):
        self._poll = select.poll()

    def register(self, fd: int, mask: int) -> None:
        self._poll.register(fd, select.POLLIN)

    def unregister(self, fd: int) -> None:
        self._poll.unregister(fd)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        return self._poll.poll(None if timeout < 0 else timeout * 1000)


def _slots(pool) -> int:
    """Scoreboard size: twice pm.max_children, so workers told to stop may still hold their
    slots while their replacements start."""
    return 2 * pool.pm_max_children


def _printable(text: str) -> str:
    """PHP-FPM's rule for the script in timeout lines: non-printable bytes become '.'."""
    return "".join(ch if ch.isprintable() else "." for ch in text)


def _open_fds() -> set[int]:
    """This process's open descriptors (not the one that listed them, closed by now)."""
    listed = {int(fd) for fd in os.listdir("/proc/self/fd")}
    return {fd for fd in listed if _is_open(fd)}


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _write_pid_file(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, b"%d\n" % os.getpid())
    finally:
        os.close(fd)


def _remove_pid_file(path: str) -> None:
    """Remove ``path`` unless it no longer names this process (a successor took it over)."""
    try:
        with open(path, "rb") as f:
            if f.read().strip() != str(os.getpid()).encode():
                return
        os.unlink(path)
    except OSError:
        pass


def daemonize(log: Logger) -> int:
    """Fork into the background; return, in the daemon, the fd to report start-up on.

    The launching process waits (at most 10 s) for the daemon's status byte and exits with
    it: 0 once the daemon is ready, its exit code (78 for a bind conflict) if start-up
    failed, 70 if it died or stayed silent.
    """
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    if os.fork():
        os.close(write_fd)
        os._exit(_await_daemon(read_fd, log))
    os.close(read_fd)
    os.setsid()
    return write_fd


def _await_daemon(read_fd: int, log: Logger) -> int:
    poller = select.poll()
    poller.register(read_fd, select.POLLIN)
    if not poller.poll(10_000):
        log.error("the master process didn't send back its status "
                  "(via the pipe to the calling process)")
        return os.EX_SOFTWARE
    status = os.read(read_fd, 1)
    return status[0] if status else os.EX_SOFTWARE


def serve(config, log: Logger, *, pid_file: str | None, daemon: bool, allow_root: bool = False,
          loader=None) -> int:
    """Run ``config`` as a master (in the background if ``daemon``); the exit code.

    A master re-executed by a reload inherits its predecessor's sockets and workers, and
    stays in the foreground it already has (its pid must not change).
    """
    for level, text in config.messages:
        log.log(level, text)
    try:
        inherited = reexec.take()
    except ValueError as e:
        log.error(str(e))
        return os.EX_SOFTWARE
    status_fd = daemonize(log) if daemon and inherited is None else None
    where = config.path if config.path.startswith("(") else "(%s)" % config.path
    set_process_title("pyfpm: master process %s" % where)
    return Master(config, log, pid_file, status_fd, allow_root=allow_root, loader=loader,
                  inherited=inherited).run()
