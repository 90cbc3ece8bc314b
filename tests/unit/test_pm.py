"""The process managers' decisions on synthetic scoreboard snapshots (no processes)."""
from types import SimpleNamespace

import pytest

from fpm import pm
from fpm.scoreboard import IDLE, RUNNING, STARTING
from tests.conftest import blank_slot

S = 1_000_000  # µs


def pool(pm_name="dynamic", **kw):
    values = dict(name="www", pm=pm_name, pm_max_children=10, pm_start_servers=3,
                  pm_min_spare_servers=2, pm_max_spare_servers=4, pm_max_spawn_rate=32,
                  pm_process_idle_timeout=10)
    values.update(kw)
    return SimpleNamespace(**values)


def worker(pid, stage=IDLE, started=0, changed=0):
    return blank_slot(pid=pid, stage=stage, started=started * S, changed=changed * S)


def busy(n, first_pid=100):
    return [worker(first_pid + i, RUNNING) for i in range(n)]


def test_initial_workers_per_mode():
    assert pm.initial(pool("static")) == 10
    assert pm.initial(pool("dynamic")) == 3
    assert pm.initial(pool("ondemand")) == 0


def test_static_refills_to_max_children():
    plan = pm.maintain(pool("static"), busy(7), pm.PmState(), 0)
    assert plan.spawn == 3 and plan.stop is None


def test_dynamic_stops_the_idle_worker_that_started_first_one_per_tick():
    workers = [worker(1, started=5), worker(2, started=1), worker(3, started=3),
               worker(4, started=2), worker(5, started=4)]  # 5 idle > max_spare 4
    plan = pm.maintain(pool(), workers, pm.PmState(spawn_rate=4), 100 * S)
    assert plan.stop == 2 and plan.spawn == 0
    assert plan.state.spawn_rate == 1


def test_dynamic_never_stops_a_worker_still_loading():
    workers = [worker(i, STARTING) for i in range(5)]
    plan = pm.maintain(pool(), workers, pm.PmState(), 0)
    assert plan.stop is None and plan.spawn == 0


def test_dynamic_spawn_rate_doubles_on_busy_ticks_up_to_max_spawn_rate():
    p = pool(pm_max_children=100, pm_min_spare_servers=50, pm_max_spare_servers=60,
             pm_max_spawn_rate=16)
    state, spawned, workers = pm.PmState(), [], busy(0)
    for _ in range(7):
        plan = pm.maintain(p, workers, state, 0)
        spawned.append(plan.spawn)
        state = plan.state
        workers = workers + busy(plan.spawn, 1000 + len(workers))  # all of them get busy
    assert spawned == [1, 2, 4, 8, 16, 16, 16]


def test_dynamic_spawns_only_what_min_spare_and_max_children_allow():
    p = pool(pm_max_children=6, pm_min_spare_servers=3, pm_max_spare_servers=5)
    plan = pm.maintain(p, busy(3) + [worker(9)], pm.PmState(spawn_rate=8), 0)
    assert plan.spawn == 2  # min_spare 3 - idle 1
    plan = pm.maintain(p, busy(5), pm.PmState(spawn_rate=8), 0)
    assert plan.spawn == 1


def test_dynamic_seems_busy_warning_from_rate_8():
    p = pool(pm_max_children=100, pm_min_spare_servers=50, pm_max_spare_servers=60)
    quiet = pm.maintain(p, busy(3), pm.PmState(spawn_rate=4), 0)
    loud = pm.maintain(p, busy(3), pm.PmState(spawn_rate=8), 0)
    assert quiet.messages == ()
    assert loud.messages == (("warning", "[pool www] seems busy (you may need to increase "
                              "pm.start_servers, or pm.min/max_spare_servers), spawning 8 "
                              "children, there are 0 idle, and 3 total children"),)


def test_max_children_warning_once_per_episode_and_counted():
    p = pool(pm_max_children=4)
    state = pm.PmState()
    first = pm.maintain(p, busy(4), state, 0)
    assert first.messages == (("warning", "[pool www] server reached pm.max_children setting "
                               "(4), consider raising it"),)
    assert first.state.max_children_reached == 1 and first.spawn == 0
    second = pm.maintain(p, busy(4), first.state, 0)
    assert second.messages == () and second.state.max_children_reached == 1
    # A worker frees up, the pool spawns again: the next saturation is a new episode.
    third = pm.maintain(p, busy(3), second.state, 0)
    assert third.spawn == 1 and not third.state.warned
    fourth = pm.maintain(p, busy(4), third.state, 0)
    assert fourth.state.max_children_reached == 2 and len(fourth.messages) == 1


def test_dynamic_quiet_tick_resets_the_rate():
    plan = pm.maintain(pool(), [worker(1), worker(2), worker(3)], pm.PmState(spawn_rate=16), 0)
    assert plan.spawn == 0 and plan.stop is None and plan.state.spawn_rate == 1


def test_ondemand_forks_one_when_nobody_is_idle():
    p = pool("ondemand", pm_max_children=3)
    assert pm.on_waiting_connection(p, [], pm.PmState()).spawn == 1
    assert pm.on_waiting_connection(p, busy(2), pm.PmState()).spawn == 1
    assert pm.on_waiting_connection(p, busy(1) + [worker(7, STARTING)], pm.PmState()).spawn == 0
    assert pm.on_waiting_connection(p, busy(1) + [worker(7)], pm.PmState()).spawn == 0


def test_ondemand_at_max_children_warns_once_without_the_pm_prefix():
    p = pool("ondemand", pm_max_children=2)
    plan = pm.on_waiting_connection(p, busy(2), pm.PmState())
    assert plan.spawn == 0
    assert plan.messages == (("warning", "[pool www] server reached max_children setting (2), "
                              "consider raising it"),)
    assert pm.on_waiting_connection(p, busy(2), plan.state).messages == ()


def test_ondemand_idle_timeout_checks_the_earliest_started_idle_worker():
    p = pool("ondemand")
    fresh = [worker(1, started=0, changed=95), worker(2, started=5, changed=0)]
    assert pm.maintain(p, fresh, pm.PmState(), 100 * S).stop is None
    stale = [worker(1, started=0, changed=80), worker(2, started=5, changed=99)]
    assert pm.maintain(p, stale, pm.PmState(), 100 * S).stop == 1


@pytest.mark.parametrize("process_max, running, wanted, room", [
    (0, 50, 7, 7), (10, 8, 7, 2), (10, 10, 1, 0), (10, 12, 1, 0)])
def test_process_max_caps_forks(process_max, running, wanted, room):
    assert pm.process_room(process_max, running, wanted) == room
