"""The master's stops: QUIT (finish the requests in hand) and TERM or INT (now), each a
state (fpm.states) whose rounds of signals escalate until the last worker is gone."""
from __future__ import annotations

import signal
import time

from fpm.signals import name as signal_name
from fpm.states import State, may_switch, next_signal
from fpm.timers import Timer


class Stopping:
    """Part of fpm.master.Master: entering a stop state, and its rounds of signals."""

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
            self.timers.cancel((Timer.SPAWN, name))
        if self.notifier is not None:
            self.notifier.stopping()
        self._pctl_round()

    def _pctl_round(self) -> None:
        """Signal every worker for the current state; arm the next escalation."""
        self.timers.cancel((Timer.PCTL,))
        if not self.children:
            return
        sig, wait = next_signal(self.state, self.last_signal, self.config.global_.process_control_timeout)
        if self.last_signal is not None:
            self.log.notice("%d child(ren) still alive, sending %s" % (len(self.children), signal_name(sig)))
        self.last_signal = sig
        self.children.kill_all(sig)
        if wait is not None:
            self.timers.set((Timer.PCTL,), time.monotonic() + wait)

    def handle_term(self, by: int = signal.SIGTERM) -> None:
        self.log.notice("Terminating ...")
        self._switch(State.TERMINATING, by)

    def handle_int(self) -> None:
        self.handle_term(signal.SIGINT)

    def handle_quit(self) -> None:
        self.log.notice("Finishing ...")
        self._switch(State.FINISHING, signal.SIGQUIT)
