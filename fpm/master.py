"""The master: bind, fork the workers, then wait on signals and timers, in PHP-FPM's states.

=========== ============= ================= =============================================
state        entered on    first signal      escalation (pct = process_control_timeout)
=========== ============= ================= =============================================
NORMAL       start         -                 a worker that exits is replaced
RELOADING    USR2 (later)  SIGQUIT           as FINISHING, then re-exec instead of exit
FINISHING    QUIT          SIGQUIT           pct > 0: SIGTERM after pct, then SIGKILL
                                             every 1 s; pct = 0: wait for the workers
TERMINATING  TERM, INT     SIGTERM           SIGKILL after pct (1 s if 0), then every 1 s
=========== ============= ================= =============================================

Overrides: NORMAL -> any other; RELOADING -> FINISHING or TERMINATING; FINISHING ->
TERMINATING; TERMINATING -> none. No worker is spawned outside NORMAL. Outside NORMAL, the
moment the last worker is reaped the master logs ``exiting, bye-bye!``, removes its pid file
and unix sockets, and exits 0. The loop blocks in poll() on the signal pipe with the next
timer as timeout, so an idle master reacts to a signal within microseconds.
"""
from __future__ import annotations

import enum
import math
import os
import select
import signal
import time

from fpm import sockets
from fpm.children import Children, respawn_delay
from fpm.log import Logger, strerror
from fpm.proctitle import set_process_title
from fpm.signals import SignalQueue, handler_name, name as signal_name

EX_OK, EX_USAGE, EX_SOFTWARE, EX_CONFIG = 0, 64, 70, 78


class State(enum.Enum):
    NORMAL = "normal"
    RELOADING = "reloading"
    FINISHING = "finishing"
    TERMINATING = "terminating"


_OVERRIDES = {
    State.NORMAL: {State.RELOADING, State.FINISHING, State.TERMINATING},
    State.RELOADING: {State.FINISHING, State.TERMINATING},
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
    """Runs the pools of ``config`` until a stop signal; ``run()`` returns the exit code."""

    def __init__(self, config, log: Logger, pid_file: str | None = None,
                 status_fd: int | None = None):
        self.config = config
        self.log = log
        self.pid_file = pid_file
        self.status_fd = status_fd  # a daemon's pipe to the process that launched it
        self.pools = {pool.name: pool for pool in config.pools}
        self.state = State.NORMAL
        self.timers = Timers()
        self.last_signal: int | None = None
        self.failures: dict[str, int] = {}  # consecutive fast app-load failures per pool
        self.reaped: list = []  # exits seen in the current batch of signals
        self.listeners: list[sockets.Listener] = []
        self.pid_written = False
        self.signals: SignalQueue
        self.children: Children

    # --- start and stop ------------------------------------------------------------------

    def run(self) -> int:
        # Handlers first: a TERM during start-up is queued, not fatal.
        self.signals = SignalQueue()
        try:
            code = self._start()
            if code == EX_OK:
                code = self._loop()
        except Exception:
            self.log.exception("the master failed")
            if hasattr(self, "children"):
                self.children.kill_all(signal.SIGKILL)
            code = EX_SOFTWARE
        finally:
            self._cleanup()
        self._report(code)
        return code

    def _start(self) -> int:
        try:
            self.listeners = sockets.open_all(self.config.pools, self.log)
        except sockets.ListenError as e:
            self.log.error(str(e))
            self.log.error("FPM initialization failed")
            return EX_CONFIG
        if self.pid_file:
            try:
                _write_pid_file(self.pid_file)
            except OSError as e:
                self.log.error("unable to create the pid file '%s': %s"
                               % (self.pid_file, strerror(e)))
                self.log.error("FPM initialization failed")
                return EX_CONFIG
            self.pid_written = True
        fds: dict[str, list[int]] = {name: [] for name in self.pools}
        for listener in self.listeners:
            fds[listener.pool_name].append(listener.fd)
        self.children = Children(self.log, self.signals, fds)
        if self.status_fd is not None:
            self.children.close_in_child.add(self.status_fd)
        self._launch()
        self.log.notice("fpm is running, pid %d" % os.getpid())
        for pool in self.config.pools:
            if pool.pm != "static":
                self.log.warning("[pool %s] pm = %s is not implemented yet; running "
                                 "pm.max_children (%d) workers as pm = static"
                                 % (pool.name, pool.pm, pool.pm_max_children))
            self._fill(pool)
        self.log.notice("ready to handle connections")
        self._report(EX_OK)
        return EX_OK

    def _launch(self) -> None:
        """From here the log is final: stderr follows a log file (so stray output of the
        workers lands there too) and a daemon lets go of the terminal."""
        self.log.echo_stderr = False
        if self.log.is_file:
            os.dup2(self.log.fd, 2)
        if self.status_fd is not None:
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
        poller = select.poll()
        poller.register(self.signals.rfd, select.POLLIN)
        while True:
            for key in self.timers.pop_due(time.monotonic()):
                self._on_timer(key)
            if self.state is not State.NORMAL and not self.children:
                self.log.notice("exiting, bye-bye!")
                return EX_OK
            timeout = self.timers.timeout(time.monotonic())
            # Round up: waking a hair early would spin until the deadline.
            poller.poll(None if timeout is None else math.ceil(timeout * 1000))
            for sig in self.signals.drain():
                getattr(self, handler_name(sig))()
            # Replace the dead only after the whole batch: a Ctrl-C reaches the workers and
            # the master together, and the master's SIGINT may sit behind their SIGCHLD.
            if self.reaped and self.state is State.NORMAL:
                self._replace(self.reaped)
            self.reaped = []

    def _on_timer(self, key: tuple) -> None:
        if key[0] == "pctl":
            self._pctl_round()
        elif key[0] == "spawn" and self.state is State.NORMAL:
            self._fill(self.pools[key[1]])

    # --- workers --------------------------------------------------------------------------

    def _fill(self, pool) -> None:
        """Fork until ``pool`` has pm.max_children workers (static)."""
        while self.children.count(pool.name) < pool.pm_max_children:
            try:
                self.children.spawn(pool)
            except OSError as e:
                self.log.syserror("[pool %s] fork() failed; trying again in 1 second" % pool.name, e)
                self.timers.set(("spawn", pool.name), time.monotonic() + 1.0)
                return

    def _replace(self, exits) -> None:
        """Respawn after exits in NORMAL, holding back pools whose app does not load."""
        now = time.monotonic()
        for gone in exits:
            pool = gone.child.pool
            delay, self.failures[pool.name] = respawn_delay(
                gone.status, gone.lifetime, self.failures.get(pool.name, 0))
            if delay:
                self.log.warning("[pool %s] child %d could not load the app (exit code 70 "
                                 "%.6f seconds after start); next spawn in %g seconds"
                                 % (pool.name, gone.child.pid, gone.lifetime, delay))
                self.timers.set(("spawn", pool.name), now + delay)
        for pool in {gone.child.pool.name: gone.child.pool for gone in exits}.values():
            if not self.timers.pending(("spawn", pool.name)):
                self._fill(pool)

    # --- states ---------------------------------------------------------------------------

    def _switch(self, new: State) -> None:
        if new is self.state:
            return
        if not may_switch(self.state, new):
            self.log.debug("not switching to '%s' state, because already in '%s' state"
                           % (new.value, self.state.value))
            return
        self.state = new
        self.last_signal = None
        for key in [("spawn", name) for name in self.pools]:
            self.timers.cancel(key)
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

    def handle_term(self) -> None:
        self.log.notice("Terminating ...")
        self._switch(State.TERMINATING)

    handle_int = handle_term

    def handle_quit(self) -> None:
        self.log.notice("Finishing ...")
        self._switch(State.FINISHING)

    def handle_usr1(self) -> None:
        try:
            self.log.reopen()
        except OSError as e:
            self.log.syserror("unable to reopen the error log file '%s'" % self.log.target, e)
            return
        if not self.log.is_file:
            self.log.notice("error log file re-opened")
            return
        os.dup2(self.log.fd, 2)  # stderr was pointed at the old file at launch
        self.log.notice("error log file re-opened")
        if self.state is State.NORMAL and self.children:
            # The workers still hold the old file (a fork-time copy of the fd). Recycle them
            # gracefully, as PHP-FPM does for its access logs, so their lines follow.
            self.log.notice("gracefully restarting the workers so they log to the new file")
            self.children.kill_all(signal.SIGQUIT)

    def handle_usr2(self) -> None:
        self.log.warning("graceful reload (SIGUSR2) is not supported by this version; "
                         "signal ignored")

    def handle_chld(self) -> None:
        self.reaped += self.children.reap()
        if not self.children:
            self.timers.cancel(("pctl",))


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
        return EX_SOFTWARE
    status = os.read(read_fd, 1)
    return status[0] if status else EX_SOFTWARE


def serve(config, log: Logger, *, pid_file: str | None, daemon: bool) -> int:
    """Run ``config`` as a master (in the background if ``daemon``); the exit code."""
    for level, text in config.messages:
        log.log(level, text)
    status_fd = daemonize(log) if daemon else None
    where = config.path if config.path.startswith("(") else "(%s)" % config.path
    set_process_title("pyfpm: master process %s" % where)
    return Master(config, log, pid_file, status_fd).run()
