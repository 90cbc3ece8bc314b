"""The WSGI apps a worker answers ``pm.status_path`` and ``ping.path`` with: a snapshot of the
pool's scoreboard rendered by fpm.status, and the ping reply. Also the hidden pool that
``pm.status_listen`` adds, so the status answers while every worker of the pool is busy."""
from __future__ import annotations

import dataclasses
import os
import time

from fpm import status
from fpm.scoreboard import Slot

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _rss(pid: int) -> int:
    """The worker's resident set now, in bytes; 0 once it is gone."""
    try:
        with open("/proc/%d/statm" % pid, "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def _named(fields, source: dict) -> dict:
    """The values of the status fields named as a field of ``source`` (the scoreboard's)."""
    return {f.attr: source[f.attr] for f in fields if f.attr in source}


def proc_status(slot: Slot, now_us: int, epoch_now: float) -> status.ProcStatus:
    idle = slot.idle
    duration = slot.duration if idle else now_us - slot.accepted
    # CPU and memory describe a finished request, so PHP-FPM shows them for idle workers only.
    cpu = 100.0 * slot.cpu / slot.duration if idle and slot.duration else 0.0
    rss = _rss(slot.pid)
    return status.ProcStatus(**{
        **_named(status.PROC_FIELDS, vars(slot)),
        "state": slot.stage_name, "start_time": epoch_now - (now_us - slot.started) / 1e6,
        "start_since": (now_us - slot.started) // 1_000_000,
        "request_duration": max(0, duration), "last_request_cpu": cpu,
        "last_request_memory": (slot.rss or rss) if idle else 0, "rss": rss})


def _live_slots(board) -> list[Slot]:
    return [s for s in map(board.read, range(board.nslots)) if s.pid and s.stage]


def snapshot(pool, board) -> status.PoolStatus:
    """The pool's status now, from its scoreboard (this request's own worker included)."""
    now_us = time.monotonic_ns() // 1000
    epoch_now = time.time()
    header = board.header()
    slots = _live_slots(board)
    procs = tuple(proc_status(s, now_us, epoch_now) for s in slots)
    failing = any(s.app_failed for s in slots)
    idle = sum(s.idle for s in slots)
    start = header["start_epoch_us"] / 1e6 or epoch_now
    return status.PoolStatus(**{
        **_named(status.POOL_FIELDS, {**header, **header["refusals"]}),
        "pool": pool.name, "process_manager": pool.pm, "start_time": start,
        "start_since": int(epoch_now - start), "idle_processes": idle,
        "active_processes": len(procs) - idle, "total_processes": len(procs),
        "max_active_processes": max(header["max_active"], len(procs) - idle),
        "max_children": pool.pm_max_children, "start_servers": pool.pm_start_servers,
        "min_spare_servers": pool.pm_min_spare_servers,
        "max_spare_servers": pool.pm_max_spare_servers,
        "app_status": "failing" if failing else "ok",
        "app_error": board.mem.app_error()[1] if failing else "", "procs": procs})


def status_app(pool, board):
    def app(environ, start_response):
        fmt, full = status.choose(environ.get("QUERY_STRING", ""))
        # The live page fetches its numbers itself: no scoreboard (and /proc) reads for it.
        shown = snapshot(pool, board) if fmt != status.LIVE else None
        content_type, body = status.render(shown, fmt, full, time.localtime().tm_gmtoff)
        return _reply(environ, start_response, content_type, body)
    return app


def ping_app(text: str, board):
    """``ping.response``; 503 while the master finishes (QUIT) or a worker of the pool could
    not load its app, as the status page's ``app status`` says: a health check takes the
    host out. (On pm.status_listen, ``board`` is the shown pool's.)"""
    content_type, body = status.ping_response(text)

    def app(environ, start_response):
        why = _not_ready(board)
        if why is not None:
            start_response("503 Service Unavailable", [
                ("Content-Type", "text/plain"), *status.NO_CACHE_HEADERS,
                ("Content-Length", str(len(why)))])
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else [why]
        return _reply(environ, start_response, content_type, body)
    return app


STOPPING = b"Service Unavailable: this host is stopping.\n"
CANNOT_LOAD = b"Service Unavailable: the application cannot be loaded; try again later.\n"


def _not_ready(board) -> bytes | None:
    if board is None:
        return None
    if board.mem.finishing():
        return STOPPING
    if any(s.app_failed for s in _live_slots(board)):
        return CANNOT_LOAD
    return None


def _reply(environ, start_response, content_type: str, body: bytes):
    start_response("200 OK", [("Content-Type", content_type), *status.NO_CACHE_HEADERS,
                              ("Content-Length", str(len(body)))])
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def special_paths(pool, board, shown=None, unavailable=None) -> dict:
    """{path: app} for the worker loop: ``pool``'s status and ping pages, when configured,
    showing ``board``, whose pool is ``shown`` (default ``pool``; see status_pool). With
    ``unavailable`` (the app could not be loaded), the ping answers with it: not ready; so
    it does while the master finishes (ping_app)."""
    paths = {}
    if pool.pm_status_path:
        paths[pool.pm_status_path] = status_app(shown or pool, board)
    if pool.ping_path:
        paths[pool.ping_path] = unavailable or ping_app(pool.ping_response, board)
    return paths


def unavailable(retry_after: float):
    """The answer of a worker whose app could not be loaded: 503, with when to ask again.
    Why it failed is in the error log and on the status page, never in the response."""
    headers = [("Content-Type", "text/plain"), ("Retry-After", str(max(1, round(retry_after)))),
               ("Content-Length", str(len(CANNOT_LOAD)))]

    def app(environ, start_response):
        start_response("503 Service Unavailable", headers)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [CANNOT_LOAD]
    return app


def not_found(environ, start_response):
    """A status pool's answer to any other path: it names the paths it serves."""
    pool = environ["fpm.pool"]  # the status pool: pm_status_path is the one it answers
    pages = "status page (%s)" % pool.pm_status_path
    if pool.ping_path:
        pages += " and ping page (%s)" % pool.ping_path
    body = ("Not Found: this address serves the pool's %s only.\n" % pages).encode()
    start_response("404 Not Found", [("Content-Type", "text/plain"),
                                     ("Content-Length", str(len(body))),
                                     (status.STATUS_PATH_HEADER, pool.pm_status_path)])
    return [body]


def status_pool(pool, poll_only: bool):
    """``pm.status_listen``: PHP-FPM's hidden ``<pool>_status`` pool on that address.

    Two workers at most, forked on demand (one static worker where ``events.mechanism =
    poll`` rules ondemand out), which load no app: they answer the pool's status path
    (``/`` when it has none) and ping path from the pool's scoreboard, and 404 elsewhere.
    Unlike PHP-FPM, the main pool's own status path is left as configured: setting it to
    ``/`` there would hide the application's home page.
    """
    return dataclasses.replace(
        pool, name=pool.name + "_status", listen=(pool.pm_status_listen,), pm_status_listen=None,
        pm="static" if poll_only else "ondemand", pm_max_children=1 if poll_only else 2,
        pm_start_servers=1 if poll_only else 0, pm_status_path=pool.pm_status_path or "/",
        app=None, preload=False, mount="", access_log=None, slowlog=None,
        request_slowlog_timeout=0, request_terminate_timeout=0, pm_max_requests=0,
        pm_max_memory=0, catch_workers_output=False)
