"""The master's reload (USR2): the new configuration is read and checked and its new
sockets bound, then the master re-executes itself (fpm.reexec); the new master retires the
previous one's workers once its own are ready. Whatever fails, the current configuration
keeps serving and the log says why."""
from __future__ import annotations

import os
import signal
import time

from fpm import config as fpm_config
from fpm import pm, reexec, sockets
from fpm.children import Child
from fpm.scoreboard import STARTING
from fpm.signals import HANDLED
from fpm.states import State
from fpm.timers import HANDOVER_POLL, RECYCLE_HOLD_MAX, Timer


class Reloading:
    """Part of fpm.master.Master: USR2, and the hand-over after it."""

    adopted_at = 0.0  # time.monotonic() when this master adopted the previous one's workers

    def _old_serving(self, pool_name: str) -> list[Child]:
        """The previous configuration's workers that still serve the pool (a reload)."""
        return [c for c in self.children.by_pid.values()
                if c.pool.name == pool_name and c.stopping == "reload" and c.last_signal is None]

    def _hand_over(self) -> None:
        """Retire the inherited workers of each pool whose new workers are all ready."""
        self.timers.cancel((Timer.HANDOVER,))
        for name in sorted(self.handover):
            pool = self.pools.get(name)
            old = self._old_serving(name)
            if pool is not None and old:
                fresh = self._slots(name)
                failed = self.failures.get(name) or any(s.app_failed for s in fresh)
                if failed or time.monotonic() - self.adopted_at > RECYCLE_HOLD_MAX:
                    # They serve on for as long as the new app fails or loads, and recycle
                    # as usual meanwhile (their boards crossed the exec holding it back).
                    for child in old:
                        child.board.mem.hold_recycling(False)
                if failed or len(fresh) < pm.initial(pool) or any(s.stage == STARTING
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
            self.timers.set((Timer.HANDOVER,), time.monotonic() + HANDOVER_POLL)
        elif self.notifier is not None:
            self.notifier.ready()

    def _reload(self) -> None:
        """Check the new configuration and bind its new sockets, then re-execute; on any
        problem, say so and go on serving as before. Meanwhile this master replaces no
        worker: the workers do not recycle until it has re-executed (the boards cross the
        exec set, the new master retires their workers) or gone back to serving."""
        if self.state is not State.NORMAL:
            self.log.debug("not reloading, because already in '%s' state" % self.state.value)
            return
        boards = list(self.boards.values())
        for board in boards:
            board.mem.hold_recycling(True)
        self.log.notice("Reloading in progress ...")
        try:
            self._check_and_reexec()
        finally:  # only when the exec did not happen
            for board in boards:
                board.mem.hold_recycling(False)

    def _check_and_reexec(self) -> None:
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

    def handle_usr2(self) -> None:
        self._reload()
