"""Refusals: connections a pool turned away for what their peer did (or did not do), or for
want of descriptors, logged once per cause per episode with the counter the status page
shows, never once per connection.

Workers and the master only add to the pool's counters (the scoreboard's, in
fpm._board.REFUSAL_CAUSES order). Once a second the master hands them to update(): the
first refusal after a quiet spell begins an episode, logged as a WARNING; the episode
ends, with a NOTICE saying how many it held and for how long, once QUIET seconds pass
without one. A flood is two lines, whatever its size.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from fpm import _board, status
from fpm.config import Size

QUIET = float(_board.REFUSAL_QUIET)  # seconds without a refusal of a cause that end its episode

CAUSES = _board.REFUSAL_CAUSES
# The status page's name of each counter, by the board's.
LABELS = {f.attr: f.label for f in status.POOL_FIELDS if f.attr in CAUSES}


@dataclass(frozen=True)
class Episode:
    began: float  # time.monotonic() of its first refusal
    before: int  # the counter before it
    last: float  # its latest refusal


@dataclass(frozen=True)
class Event:
    ended: bool  # False: an episode began
    cause: str
    count: int  # refusals in the episode so far (all of them once it ended)
    seconds: float  # from its first refusal to its last
    total: int  # the counter


@dataclass(frozen=True)
class Watch:
    """What the master remembers of one pool's counters between two looks."""
    seen: tuple[int, ...] = (0,) * len(CAUSES)
    episodes: tuple[Episode | None, ...] = (None,) * len(CAUSES)


def update(watch: Watch, counters: tuple[int, ...], now: float) -> tuple[Watch, list[Event]]:
    """The new watch and the episodes that began or ended since the last look."""
    seen, episodes, events = [], [], []
    for cause, before, count, episode in zip(CAUSES, watch.seen, counters, watch.episodes):
        if count > before:
            if episode is None:
                episode = Episode(now, before, now)
                events.append(Event(False, cause, count - before, 0.0, count))
            else:
                episode = Episode(episode.began, episode.before, now)
        elif episode is not None and now - episode.last >= QUIET:
            events.append(Event(True, cause, count - episode.before,
                                episode.last - episode.began, count))
            episode = None
        seen.append(max(count, before))
        episodes.append(episode)
    return Watch(tuple(seen), tuple(episodes)), events


def what(cause: str, pool, parked_limit: int, accept_errno: int) -> str:
    """What a refusal of ``cause`` is, in the pool's own settings."""
    if cause == "head_timeouts":
        return ("connections closed: no whole request head within request_head_timeout "
                "(%ds)" % pool.request_head_timeout)
    if cause == "slow_bodies":
        if not pool.request_body_min_rate:
            return ("requests answered 408: their body stalled for request_read_timeout "
                    "(%ds)" % pool.request_read_timeout)
        return ("requests answered 408: their body came slower than request_body_min_rate "
                "(%s bytes/s) after request_read_timeout (%ds), or stalled that long"
                % (Size(1).show(pool.request_body_min_rate), pool.request_read_timeout))
    if cause == "protocol_errors":
        return ("connections closed: what their peer sent broke the FastCGI protocol (the "
                "first is logged above, the others at log_level = debug)")
    if cause == "parked_closed":
        return ("connections closed: more waited for their request head than the pool may "
                "hold (%d)" % parked_limit)
    name = errno.errorcode.get(accept_errno, "errno %d" % accept_errno)
    return ("workers could not accept connections: %s (%s); they pause accepting and try "
            "again, the connections wait in the listen queue"
            % (os.strerror(accept_errno), name))


def line(event: Event, pool, parked_limit: int, accept_errno: int) -> tuple[str, str]:
    """(level, text) of an episode's first or last log line."""
    label = LABELS[event.cause]
    if not event.ended:
        return "warning", "[pool %s] %s (%s: %d)" % (
            pool.name, what(event.cause, pool, parked_limit, accept_errno), label, event.total)
    return "notice", "[pool %s] %s: %d in %.0f s, none for %g s now (%s: %d)" % (
        pool.name, label, event.count, event.seconds, QUIET, label, event.total)
