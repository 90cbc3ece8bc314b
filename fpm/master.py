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

import math
import os
import random
import select
import signal
import time

from fpm import channel, pages, parking, pm, reexec, refusals, sockdiag, sockets, systemd
from fpm.children import Child, Children, Seat, app_retry, describe_status, respawn_delay
from fpm import stdio
from fpm.log import Logger
from fpm.proctitle import set_process_title
from fpm.reloading import Reloading
from fpm.reopening import Reopening
from fpm.scoreboard import STARTING, Board, now_us
from fpm.sharing import KeptConnections
from fpm.signals import HANDLED, SignalQueue, handler_name
from fpm.startup import Startup
from fpm.states import State
from fpm.stopping import Stopping
from fpm.timeouts import Timeouts, Traced
from fpm.timers import MAINTENANCE, Timer, Timers, heartbeat
from fpm.tracer import Tracer

# Deaths that mean the code, not the load, is broken: they count for emergency_restart_*.
FAULT_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                           signal.SIGABRT, signal.SIGSYS})
ONDEMAND_RECHECK = 0.01  # a connection still queued with nobody idle: look again this soon


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


class Master(Startup, Reloading, Stopping, Timeouts, Reopening, KeptConnections):
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
        self._take_pools(config)
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
        # Where a connection waits for an ondemand pool's worker: its listening sockets, and
        # while it has none, its shared kept connections (fpm.sharing); fd -> pool.
        self.ondemand_fds: dict[int, str] = {}
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
        # Slowlog traces whose faulthandler dump is under way (fpm.timeouts), by worker pid;
        # the pid of each dump's descriptor.
        self.dumps: dict[int, Traced] = {}
        self.dump_fds: dict[int, int] = {}
        self.signals: SignalQueue
        self.children: Children

    def _take_pools(self, config) -> None:
        """The configured pools, and the hidden pool pm.status_listen adds to each that has
        it, which shows its pool's scoreboard."""
        poll_only = config.global_.events_mechanism == "poll"
        self.shows = {pool.name + "_status": pool.name for pool in config.pools
                      if pool.pm_status_listen}
        self.pool_list = list(config.pools) + [pages.status_pool(pool, poll_only)
                                               for pool in config.pools if pool.pm_status_listen]
        self.pools = {pool.name: pool for pool in self.pool_list}

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

    def _arm(self, lot: parking.Lot) -> None:
        """The timers a lot needs: its next head deadline, a retry of the hand-off, a
        recheck of partial heads (level-triggered poller)."""
        due = lot.next_due()
        if due is None:
            self.timers.cancel((Timer.PARKED, lot.name))
        else:
            self.timers.set((Timer.PARKED, lot.name),
                            time.monotonic() + max(0.0, (due - parking.now_us()) / 1e6))
        if lot.retry and not self.timers.pending((Timer.HANDOFF, lot.name)):
            self.timers.set((Timer.HANDOFF, lot.name), time.monotonic() + parking.RETRY)
        if lot.resting and not self.timers.pending((Timer.RECHECK, lot.name)):
            self.timers.set((Timer.RECHECK, lot.name), time.monotonic() + parking.RECHECK)

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
                elif fd in self.dump_fds:
                    self._on_dump(fd)
                elif fd in self.ondemand_fds and self.state is State.NORMAL:
                    self._on_waiting_connection(self.pools[self.ondemand_fds[fd]])
            for sig in sorted(self.signals.drain(), key=_signal_order):
                getattr(self, handler_name(sig))()
            if self.reaped:
                self._after_exits(self.reaped)
            self.reaped = []

    def _on_timer(self, key: tuple) -> None:
        kind, *arg = key
        if kind.normal_only and self.state is not State.NORMAL:
            return
        if kind is Timer.PCTL:
            self._pctl_round()
        elif kind is Timer.SHUT:
            self._shut_drained()
        elif kind is Timer.MAINTENANCE:
            self._maintain()
            self.timers.set(key, time.monotonic() + MAINTENANCE)
        elif kind is Timer.HEARTBEAT:
            self._check_timeouts()
            self.timers.set(key, time.monotonic() + heartbeat(self.pool_list))
        elif kind is Timer.SPAWN:
            self._maintain_pool(self.pools[arg[0]])
        elif kind is Timer.ESCALATE:
            self._escalate(arg[0])
        elif kind is Timer.DUMP:
            self._end_dump(arg[0])
        elif kind is Timer.HANDOVER:
            self._hand_over()
        elif kind is Timer.ONDEMAND:
            self._recheck_queue(self.pools[arg[0]])
        elif kind is Timer.SYSTEMD:
            self._report_systemd()
        else:  # a parking lot's
            lot = self.lots[arg[0]]
            if kind is Timer.PARKED:
                lot.expire(parking.now_us())
            elif kind is Timer.HANDOFF:
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
            lot = self.lots[pool.name]
            kept_tx, kept_rx = lot.kept_channel()
            seat = Seat(board, slot, pool.pm_max_requests + jitter, self.apps.get(pool.name),
                        theirs, None if shown is None else (self.pools[shown], self.boards[shown]),
                        self.access_fds.get(pool.name, -1), tries, retry,
                        self.app_fds.get(pool.name, frozenset()), lot.ends.park_tx,
                        lot.ends.hand_rx, lot.shared, kept_rx,
                        frozenset(l.fd for l in self.listeners
                                  if l.pool_name == pool.name and not l.owned))
            try:
                child = self.children.spawn(pool, seat, respawn, ours, kept_tx)
            except OSError as e:
                for fd in (ours, theirs, kept_tx, kept_rx):
                    if fd >= 0:
                        os.close(fd)
                board.release(slot)
                self.log.syserror("[pool %s] fork() failed; trying again in 1 second" % pool.name, e)
                self.timers.set((Timer.SPAWN, pool.name), time.monotonic() + 1.0)
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
            self._spawn(pool, plan.spawn, respawn=pm.of(pool).fixed_size)
        self._watch_kept(pool)

    def _maintain(self) -> None:
        for pool in self.pool_list:
            if not self.timers.pending((Timer.SPAWN, pool.name)):
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
        if self.timers.pending((Timer.SPAWN, pool.name)):
            return  # its app does not load: forking per connection would only fail faster
        plan = pm.on_waiting_connection(pool, self._slots(pool.name), self.pm_states[pool.name])
        if plan.spawn:
            self.log.debug("[pool %s] got accept without idle child available .... I forked"
                           % pool.name)
        self._apply(pool, plan)
        if len(self.children.serving(pool.name)) < pool.pm_max_children:
            self.timers.set((Timer.ONDEMAND, pool.name), time.monotonic() + ONDEMAND_RECHECK)

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
        self._kept_after_exits(exits)
        if self.state is not State.NORMAL:
            return
        for gone in exits:
            name = gone.child.pool.name
            if gone.child.stopping == "reload" and name in self.pools and not self._old_serving(name):
                # The previous configuration's last worker of the pool is gone: the new ones
                # serve now, with a 503 if they cannot load the app, without a pause.
                self.timers.cancel((Timer.SPAWN, name))
                self._maintain_pool(self.pools[name])
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
                self.timers.set((Timer.SPAWN, pool.name), now + delay)
        for gone in replace:
            pool = self.pools[gone.child.pool.name]
            if not self.timers.pending((Timer.SPAWN, pool.name)):
                # One for one, as PHP-FPM respawns; a static pool refills to max_children.
                room = pool.pm_max_children - len(self.children.serving(pool.name))
                self._spawn(pool, min(room, pool.pm_max_children if pm.of(pool).fixed_size else 1),
                            respawn=True)
        if self.handover:  # with what the exits changed: the failures to load, the respawns
            self._hand_over()
        if reload:
            self._reload()

    def _close_spent_boards(self) -> None:
        in_use = {id(c.board) for c in self.children.by_pid.values()}
        for board in [b for b in self.old_boards if id(b) not in in_use]:
            self.old_boards.remove(board)
            board.close()

    def _signal(self, child: Child, sig: int, escalate_after: float | None) -> None:
        """Signal one worker; unless it has gone by ``escalate_after`` s, signal it harder."""
        child.last_signal = sig
        self.children.kill(child, sig)
        if escalate_after is not None:
            self.timers.set((Timer.ESCALATE, child.pid), time.monotonic() + escalate_after)

    # --- signal handlers (called from the loop, never from a signal context) --------------

    def handle_chld(self) -> None:
        self.reaped += self.children.reap()
        if not self.children:
            self.timers.cancel((Timer.PCTL,))


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
