"""The master's start-up and its end: sockets (kept across a reload, passed by systemd,
or bound), the pid file, the pools' scoreboards and log files, the parking lots, the
previous master's workers, preloaded apps, the launch into the final log, the first workers
and systemd's notifications; on the way out, the sockets and the pid file."""
from __future__ import annotations

import functools
import gc
import os
import select
import time

from fpm import config as fpm_config
from fpm import parking, pm, poollogs, reexec, sharing, sockets, stdio, systemd
from fpm.children import Child, Children
from fpm.log import strerror
from fpm.scoreboard import Board
from fpm.timers import MAINTENANCE, Timer, heartbeat


class StartError(Exception):
    """What keeps the master from starting, as the log says it."""


class Startup:
    """Part of fpm.master.Master: how it starts, and what it undoes when it ends."""

    def _start(self) -> int:
        """Open what the configuration names, then begin serving; os.EX_CONFIG (logged)
        when something cannot be opened."""
        try:
            self.listeners = self._open_listeners()
            if self.pid_file:
                try:
                    _write_pid_file(self.pid_file)
                except OSError as e:
                    raise StartError("unable to create the pid file '%s': %s"
                                     % (self.pid_file, strerror(e))) from e
                self.pid_written = True
            self._open_files()
        except (sockets.ListenError, poollogs.Unopenable, StartError) as e:
            self.log.error(str(e))
            self.log.error("FPM initialization failed")
            return os.EX_CONFIG
        fds: dict[str, list[int]] = {name: [] for name in self.pools}
        for listener in self.listeners:
            fds[listener.pool_name].append(listener.fd)
        self.children = Children(self.log, self.signals, fds, self.allow_root,
                                 forget=self._forget_output)
        self.children.boards = lambda: [*self.boards.values(), *self.old_boards]
        self.children.shared = lambda: [lot.shared for lot in self.lots.values()
                                        if lot.shared is not None]
        self._open_lots()
        for pool in self.pool_list:
            if pool.catch_workers_output:
                self._capture(pool)
        if self.inherited is not None:
            self._adopt_children(self.inherited)
        self._preload()
        self._launch()
        self.log.notice("fpm is running, pid %d" % os.getpid())
        self._serve_first(fds)
        self.log.notice("ready to handle connections")
        self._start_systemd()
        self._report(os.EX_OK)
        return os.EX_OK

    def _open_files(self) -> None:
        """Each pool's scoreboard and log files (the access logs and slowlogs the master
        opens for its workers); the streams that crossed a reload and that no log of the new
        configuration names are closed."""
        for fd in self.streams.values():
            os.set_inheritable(fd, False)  # they crossed the exec of a reload
        for pool in self.pool_list:
            self.boards[pool.name] = Board(pool.name, _slots(pool))
            files = poollogs.open_files(pool, self.streams)
            for field, held in (("access_log", self.access_fds), ("slowlog", self.slowlog_fds)):
                if field in files:
                    held[pool.name] = files[field]
        used = set(self.access_fds.values()) | set(self.slowlog_fds.values())
        for number, fd in list(self.streams.items()):
            if fd not in used:  # the new configuration writes no log there
                os.close(fd)
                del self.streams[number]

    def _serve_first(self, fds: dict[str, list[int]]) -> None:
        """Each pool's first workers, its ondemand watch, its status; the master's timers."""
        for pool in self.pool_list:
            self._spawn(pool, pm.initial(pool))
            if pm.of(pool).watches_queue:
                # A connection handed over with its head waits like one in the listen queue.
                for fd in fds[pool.name] + [self.lots[pool.name].ends.hand_rx]:
                    self.ondemand_fds[fd] = pool.name
                    self.poller.register(fd, select.EPOLLIN | select.EPOLLET)
            self._publish(pool)
        self.timers.set((Timer.MAINTENANCE,), time.monotonic() + MAINTENANCE)
        beat = heartbeat(self.pool_list)
        if beat is not None:
            self.timers.set((Timer.HEARTBEAT,), time.monotonic() + beat)
        if self.handover:
            self.timers.set((Timer.HANDOVER,), time.monotonic())

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
        shared = {}
        if self.inherited is not None:
            shared = reexec.adopt_shared(self.inherited)
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
        edge = self.config.global_.events_mechanism != "poll"  # else level-triggered
        for pool in self.pool_list:
            count = parking.limit(parking.effective_backlog(pool.listen_backlog),
                                  len(pool.listen), nofile, open_now, reserve,
                                  len(self.pool_list))
            lot = parking.Lot(pool.name, ends[pool.name], self.boards[pool.name], self.poller,
                              edge, count, self.parked_in,
                              pool.request_read_timeout * 1_000_000, pool.request_body_min_rate,
                              pool.request_head_timeout * 1_000_000)
            self.lots[pool.name] = lot
            self.park_rx[lot.ends.park_rx] = lot
            self.poller.register(lot.ends.park_rx, select.EPOLLIN)
            lot.shared = shared.pop(pool.name, None)
            size = sharing.table_size(count, pool.rlimit_files)
            if lot.shared is None and size:
                lot.shared = sharing.Shared.create(pool.name, size)
            if lot.shared is not None:
                lot.targets = functools.partial(self._kept_targets, pool.name)
                lot.shared.poller, lot.shared.index = self.poller, self.ondemand_fds
        for gone in shared.values():  # a pool gone from the configuration
            gone.close()
        if self.inherited is not None:
            for name, entry in reexec.parked_entries(self.inherited):
                if name in self.lots:
                    self.lots[name].adopt(*entry)
                else:
                    os.close(entry[0])
            for lot in self.lots.values():
                self._arm(lot)

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
        self.adopted_at = time.monotonic()
        for pid, pool_name, board_fd, slot, started, ours, output, log, kept in inherited.children:
            pool = self.pools.get(pool_name) or fpm_config.PoolConfig(name=pool_name, listen=())
            boards[board_fd].adopt(slot)
            for fd in tuple(fd for fd in (ours, log, kept) if fd >= 0) + (output or ()):
                os.set_inheritable(fd, False)
            if output is not None:
                self._capture(pool).adopt(pid, output)
                self._watch(self.children.captures[pool.name], output)
            if log >= 0:  # a master before fpm.workerlog: its workers write the log themselves
                self.children.logs.attach(pid, pool, log)
                self._watch(self.children.logs, (log,))
            # Its kept channel crosses the exec too: closed, it would take the worker out of
            # the pool's sleepers (fpm._kept) while the new workers still load the app.
            self.children.adopt(Child(pid, pool, started, boards[board_fd], slot, stopping="reload",
                                      channel=ours, output=output, log=log, kept_tx=kept))
            self.handover.add(pool_name)
        # Workers that died while the exec ran were reaped by nobody yet.
        self.reaped += self.children.reap()
        for name in self.lots:
            self._retire_old_queues(name)

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
            self.timers.set((Timer.SYSTEMD,), time.monotonic() + every)

    def _report_systemd(self) -> None:
        slots = [c.board.read(c.slot) for c in self.children.by_pid.values()]
        idle = sum(s.idle for s in slots)
        requests = sum(b.mem.accepted_conn for b in self.boards.values())
        self.notifier.status(systemd.status_line(len(slots) - idle, idle, requests, 0,
                                                 self.reported_requests, self.report_every))
        self.reported_requests = requests
        if self.watchdog:
            self.notifier.watchdog()
        self.timers.set((Timer.SYSTEMD,), time.monotonic() + self.report_every)


def _slots(pool) -> int:
    """Scoreboard size: twice pm.max_children, so workers told to stop may still hold their
    slots while their replacements start."""
    return 2 * pool.pm_max_children


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
