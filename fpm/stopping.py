"""The master's stops: QUIT (finish the requests in hand) and TERM or INT (now), each a
state (fpm.states) whose rounds of signals escalate until the last worker is gone.

QUIT, as one host of several behind a web server: the host stops being offered connections
before it stops reading the ones it has. Its listening sockets let no new connection in
(fpm.sockets.Listener.refuse), the workers serve what is queued, then each listener stops
listening (a connect() is refused at once: the web server tries another host, having sent
nothing); the workers close each kept connection after its response, marked so that nginx
does not reuse it (fpm._worker, "finishing")."""
from __future__ import annotations

import signal
import time

from fpm import clients, parking
from fpm.log import strerror
from fpm.signals import name as signal_name
from fpm.states import State, may_switch, next_signal
from fpm.timers import SHUT_POLL, SHUT_QUIET, SHUT_SPIN, Timer


class Stopping:
    """Part of fpm.master.Master: entering a stop state, and its rounds of signals."""

    finishing_since = 0.0  # time.monotonic() when QUIT came
    to_shut: tuple | list = ()  # the listeners still listening while finishing

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
            for board in self.children.boards():
                board.mem.finish()
        self.children.stop_all(by)
        for name in self.pools:
            self.timers.cancel((Timer.SPAWN, name))
        if self.notifier is not None:
            self.notifier.stopping()
        self._pctl_round()
        if new is State.FINISHING:
            self._refuse_new_connections()

    def _refuse_new_connections(self) -> None:
        """Finishing, its workers told: each listening socket of its own stops listening
        (_shut_drained), what it holds handed to the workers; systemd's keep their queue
        for the next master."""
        self.finishing_since = time.monotonic()
        self.to_shut = [l for l in self.listeners if l.owned]
        self._shut_drained()

    def _shut_drained(self) -> None:
        """Each listener stops listening once the master has taken what it holds: a
        connect() is refused from then on (the web server tries another host, having sent
        nothing). A unix listener's file is removed first; a TCP listener holds new SYNs
        back (the client sends one again a second later) while the handshakes under way
        complete: until nothing has come for SHUT_QUIET. What the master takes goes to the
        workers as a parked connection."""
        for listener in list(self.to_shut):
            if listener.tcp:
                if not listener.holding:
                    self._try(listener, "hold new connections back", listener.hold_syns)
                    listener.quiet_since = time.monotonic()
                taken = self._take_until_quiet(listener)
            else:
                self._try(listener, "remove the socket's file", listener.refuse)
                taken = self._take_queued(listener)
            if taken is None:
                continue
            listener.shut()
            self.to_shut.remove(listener)
            self.log.debug("[pool %s] stopped listening on '%s' %.1f ms after QUIT (%d taken)"
                           % (listener.pool_name, listener.address.text,
                              (time.monotonic() - self.finishing_since) * 1000, taken))
        if self.to_shut:
            self.timers.set((Timer.SHUT,), time.monotonic() + SHUT_POLL)
            return
        for board in self.children.boards():
            board.mem.listeners_shut()

    def _take_until_quiet(self, listener) -> int | None:
        """Take what comes at ``listener`` until nothing has for SHUT_QUIET (the master
        looks for up to SHUT_SPIN at a time); None while it is not quiet yet."""
        taken = 0
        until = time.monotonic() + SHUT_SPIN
        while True:
            got = self._take_queued(listener)
            now = time.monotonic()
            if got:
                taken += got
                listener.quiet_since = now
            elif now - listener.quiet_since >= SHUT_QUIET:
                return taken
            if now >= until:
                return None
            time.sleep(SHUT_QUIET / 10)

    def _take_queued(self, listener) -> int:
        """Accept what is queued at ``listener`` into its pool's parking lot, which hands
        each to a worker (the lot is stopping: fpm.parking.Lot.hand_over_all)."""
        lot = self.lots.get(listener.pool_name)
        pool = self.pools.get(listener.pool_name)
        allow = clients.acceptor(pool, self.log.log, listener.tcp) if pool else None
        taken = 0
        while lot is not None:
            try:
                conn, _ = listener.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                break
            except OSError as e:
                self._cannot(listener, "take the connections queued", e)
                break
            if allow is not None and not allow(conn.fileno()):
                conn.close()
                continue
            lot.adopt(conn.detach(), parking.now_us() + lot.head_timeout, 0, 0, b"", 0.0)
            taken += 1
        if taken:
            lot.hand_over_all()
        return taken

    def _try(self, listener, what: str, act, *args) -> None:
        try:
            act(*args)
        except OSError as e:
            self._cannot(listener, what, e)

    def _cannot(self, listener, what: str, e: OSError) -> None:
        self.log.warning("[pool %s] cannot %s on '%s' while finishing: %s; a connection that "
                         "comes as it stops listening may be reset"
                         % (listener.pool_name, what, listener.address.text, strerror(e)))

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
