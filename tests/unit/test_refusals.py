"""fpm.refusals: refusals logged once per cause per episode, with the counter."""
import errno

from fpm import config, refusals

POOL = config.loads("[www]\nlisten = 9000\npm = static\npm.max_children = 2\n").pools[0]


def counters(**by_cause):
    return tuple(by_cause.get(cause, 0) for cause in refusals.CAUSES)


def test_a_flood_is_two_lines():
    watch, events = refusals.update(refusals.Watch(), counters(head_timeouts=3), 100.0)
    assert [(e.ended, e.cause, e.count, e.total) for e in events] == [
        (False, "head_timeouts", 3, 3)]
    for second in range(1, 30):  # a thousand more, a second at a time
        watch, events = refusals.update(watch, counters(head_timeouts=3 + 40 * second),
                                        100.0 + second)
        assert events == []
    watch, events = refusals.update(watch, counters(head_timeouts=1163), 129.0 + refusals.QUIET - 0.5)
    assert events == []
    watch, events = refusals.update(watch, counters(head_timeouts=1163), 129.0 + refusals.QUIET)
    assert [(e.ended, e.count, e.seconds, e.total) for e in events] == [(True, 1163, 29.0, 1163)]


def test_the_next_episode_begins_afresh():
    watch, _ = refusals.update(refusals.Watch(), counters(slow_bodies=1), 0.0)
    watch, events = refusals.update(watch, counters(slow_bodies=1), refusals.QUIET)
    assert [e.ended for e in events] == [True]
    watch, events = refusals.update(watch, counters(slow_bodies=2), 60.0)
    assert [(e.ended, e.count, e.total) for e in events] == [(False, 1, 2)]


def test_causes_have_their_own_episodes():
    watch, events = refusals.update(refusals.Watch(), counters(head_timeouts=1), 0.0)
    watch, events = refusals.update(watch, counters(head_timeouts=1, accept_failures=5), 1.0)
    assert [(e.cause, e.ended) for e in events] == [("accept_failures", False)]


def test_lines_name_the_setting_and_the_counter():
    began = refusals.Event(False, "head_timeouts", 1, 0.0, 7)
    assert refusals.line(began, POOL, 900, 0) == (
        "warning", "[pool www] connections closed: no whole request head within "
                   "request_head_timeout (10s) (head timeouts: 7)")
    ended = refusals.Event(True, "head_timeouts", 1234, 41.6, 1240)
    assert refusals.line(ended, POOL, 900, 0) == (
        "notice", "[pool www] head timeouts: 1234 in 42 s, none for 5 s now (head timeouts: 1240)")


def test_each_cause_says_what_it_is():
    words = {cause: refusals.what(cause, POOL, 900, errno.EMFILE) for cause in refusals.CAUSES}
    assert words["slow_bodies"] == (
        "requests answered 408: their body came slower than request_body_min_rate (1K bytes/s) "
        "after request_read_timeout (60s), or stalled that long")
    assert "(900)" in words["parked_closed"]
    assert "Too many open files (EMFILE)" in words["accept_failures"]
    assert set(refusals.LABELS) == set(refusals.CAUSES)
