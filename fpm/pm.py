"""Process managers as objects the master asks (``of(pool)``), their decisions pure: given a
pool's workers (scoreboard copies), its config and what the manager remembers, say how many
workers to fork and which idle one to stop.

PHP-FPM's algorithms (reference §3): every second, dynamic stops one idle worker when there
are more than pm.max_spare_servers idle, and forks when there are fewer than
pm.min_spare_servers, doubling its spawn rate on each busy tick up to pm.max_spawn_rate;
ondemand forks one worker when a connection waits and none is idle, and stops the idle worker
that has been idle longest once it passes pm.process_idle_timeout. The max_children warning is
given once per episode: it is re-armed only by a successful spawn.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from fpm.scoreboard import IDLE, Slot


@dataclass(frozen=True)
class PmState:
    """What a pool's manager carries from one decision to the next."""

    spawn_rate: int = 1
    warned: bool = False  # the max_children warning was given in this episode
    max_children_reached: int = 0  # episodes so far (the status page's counter)


@dataclass(frozen=True)
class Plan:
    state: PmState
    spawn: int = 0
    stop: int | None = None  # pid of an idle worker to stop gracefully
    messages: tuple[tuple[str, str], ...] = ()


def initial(pool) -> int:
    """Workers to fork at start (fpm.config checks process.max against them)."""
    return of(pool).initial(pool)


def _stoppable(workers: Sequence[Slot]) -> Slot | None:
    """The idle worker that started first (PHP-FPM's choice); one still loading never counts."""
    idle = [w for w in workers if w.stage == IDLE]
    return min(idle, key=lambda w: w.started) if idle else None


def _reached(pool, state: PmState, text: str) -> Plan:
    if state.warned:
        return Plan(replace(state, spawn_rate=1))
    state = PmState(1, True, state.max_children_reached + 1)
    return Plan(state, messages=(("warning", "[pool %s] %s (%d), consider raising it"
                                  % (pool.name, text, pool.pm_max_children)),))


# Each process manager by its pm directive's word, in the order the manual gives them: a
# Mode subclass is one by being defined (config's pm directive takes these words).
MODES: dict[str, Mode] = {}


class Mode:
    """A process manager, as the master asks it: what to do each second, and how it treats
    the pool's size and its listen queue."""

    name = ""
    started_by: str | None = None  # the directive that says how many workers it forks at start
    fixed_size = False  # always pm.max_children workers: one short was lost, and is respawned
    watches_queue = False  # forks when a connection waits in the listen queue and none is idle

    def initial(self, pool) -> int:
        """Workers to fork at start."""
        return getattr(pool, self.started_by.replace(".", "_")) if self.started_by else 0

    def maintain(self, pool, workers: Sequence[Slot], state: PmState, now_us: int) -> Plan:
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        MODES[cls.name] = cls()


class Static(Mode):
    name, started_by, fixed_size = "static", "pm.max_children", True

    def maintain(self, pool, workers, state, now_us):
        return Plan(state, spawn=max(0, pool.pm_max_children - len(workers)))


class Dynamic(Mode):
    name, started_by = "dynamic", "pm.start_servers"

    def maintain(self, pool, workers, state, now_us):
        idle = sum(w.idle for w in workers)
        running = len(workers)
        if idle > pool.pm_max_spare_servers:
            oldest = _stoppable(workers)
            if oldest is not None:
                return Plan(replace(state, spawn_rate=1), stop=oldest.pid)
        if idle >= pool.pm_min_spare_servers:
            return Plan(replace(state, spawn_rate=1))
        if running >= pool.pm_max_children:
            return _reached(pool, state, "server reached pm.max_children setting")
        messages = ()
        if state.spawn_rate >= 8:
            messages = (("warning", "[pool %s] seems busy (you may need to increase "
                         "pm.start_servers, or pm.min/max_spare_servers), spawning %d children, "
                         "there are %d idle, and %d total children"
                         % (pool.name, state.spawn_rate, idle, running)),)
        n = min(state.spawn_rate, pool.pm_min_spare_servers - idle, pool.pm_max_children - running)
        rate = min(state.spawn_rate * 2, pool.pm_max_spawn_rate)
        return Plan(PmState(rate, False, state.max_children_reached), spawn=n, messages=messages)


class Ondemand(Mode):
    name, watches_queue = "ondemand", True

    def maintain(self, pool, workers, state, now_us):
        oldest = _stoppable(workers)
        if oldest is not None and now_us - oldest.changed >= pool.pm_process_idle_timeout * 1_000_000:
            return Plan(state, stop=oldest.pid)
        return Plan(state)




def of(pool) -> Mode:
    """The process manager ``pool`` names (its pm directive)."""
    return MODES[pool.pm]


def maintain(pool, workers: Sequence[Slot], state: PmState, now_us: int) -> Plan:
    """The once-a-second decision for one pool. ``workers`` excludes those already stopping."""
    return of(pool).maintain(pool, workers, state, now_us)


def on_waiting_connection(pool, workers: Sequence[Slot], state: PmState) -> Plan:
    """ondemand: a connection waits in the listen queue."""
    if len(workers) >= pool.pm_max_children:
        return _reached(pool, state, "server reached max_children setting")
    if any(w.idle for w in workers):
        return Plan(state)  # an idle worker (or one about to be) will take it
    return Plan(replace(state, warned=False), spawn=1)


def process_room(process_max: int, running: int, wanted: int) -> int:
    """How many of ``wanted`` forks the global process.max (0: no cap) allows."""
    if process_max <= 0:
        return wanted
    return max(0, min(wanted, process_max - running))
