"""The status page (``pm.status_path``) and ping (``ping.path``) bodies, as pure functions.

A snapshot of the scoreboard (``PoolStatus``) goes in; a content type and a body come out. No
clock is read here: the caller puts the "since" and duration values in the snapshot and passes
the local UTC offset, so every number on one page comes from one instant.

Formats are PHP-FPM 8's (fpm_status.c), byte for byte for PHP-FPM's fields: ``text`` (default),
``json``, ``xml``, ``html`` (the XHTML table page) and ``openmetrics``, each with ``full`` for
per-process data. pyfpm's additions always come AFTER PHP-FPM's fields, so parsers written for
PHP-FPM keep working: the configured limits (``max children``; for ``pm = dynamic`` also
``start servers``, ``min spare servers``, ``max spare servers``) after ``slow requests``, then
``app status`` (``ok``, or ``failing`` while the workers cannot load the app and answer 503)
and ``app error`` (why, ``-`` when ok), then ``parked connections`` (waiting in the master for
their request head, or kept for the web server's next request) and the refusal counters ``head timeouts``, ``slow bodies``, ``parked
closed``, ``accept failures`` and ``protocol errors`` (fpm.refusals; OpenMetrics counters,
``_total``), the worker's ``rss`` (bytes) after ``last request memory``, and in OpenMetrics a
``phpfpm_max_children`` gauge (and the dynamic limits) plus, with ``full``, per-process families
labelled by pid, which PHP-FPM never emits (php-src #9494).

Deliberate differences from PHP-FPM:

* Every string is escaped for its format. PHP-FPM escapes only the query string (JSON, XML,
  HTML) and writes the pool, URI path, user and script raw, so a hostile URI or user name breaks
  the JSON or injects markup into the HTML page; that is a bug, not a format. Here: JSON strings
  through ``json.dumps`` (all of them; ``/`` stays unescaped, which decoders read the same as
  PHP's ``\\/``); XML and HTML escape ``& < > "`` (PHP's ``htmlspecialchars`` set) and replace
  characters XML forbids with U+FFFD; text writes control characters as ``\\xNN`` so a value
  cannot forge a ``name: value`` line; OpenMetrics escapes ``\\ " newline`` in HELP text and
  label values. Lone surrogates (undecodable bytes) become U+FFFD, so bodies are valid UTF-8.
* Format keys must match whole (``?json``), as in PHP-FPM 8.3+. Older PHP-FPM compared each
  query key as a *prefix* of the format name, so ``?j`` meant JSON and a cache-buster such as
  ``?h=123`` silently switched to HTML; that is not harmless, so it is not kept.
* OpenMetrics: PHP-FPM declares six families ``counter`` whose samples lack the ``_total``
  suffix OpenMetrics requires of counter samples, which strict parsers reject (the reference
  Python parser stops at the first one, "Clashing name"). They are declared ``unknown`` here,
  the type that makes no claim on the sample name, so the series names every dashboard queries
  stay PHP-FPM's. PHP-FPM's TYPE-before-HELP order for ``phpfpm_listen_queue_length`` is kept:
  OpenMetrics allows a family's descriptors in any order.
* Text, XML and HTML content types carry ``;charset=UTF-8``, as PHP-FPM's really do (PHP's SAPI
  appends ``default_charset`` to every ``text/*`` type).
* Times in text and HTML use the one UTC offset passed in; PHP-FPM formats each time with the
  offset in force at that time, which differs only across a DST change.

The live page (``?live``, pyfpm's addition, in the role of PHP-FPM's separate status.html) is
one self-contained HTML document, the same bytes for every request: its script polls
``?json&full`` relative to its own URL every ``&refresh=N`` seconds (default 2, clamped to
1..60), so it works under whatever location a proxy mounts it, and draws every value with
``textContent``, never as markup. ``live`` wins over the other format keys (``?html&live`` is
the live page); ``full`` changes nothing on it.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import dataclasses
from dataclasses import dataclass, make_dataclass
from datetime import datetime, timezone
from urllib.parse import unquote_plus

from fpm.log import _MONTHS  # the C locale's, as the error log's dates use


FORMATS = ("html", "xml", "json", "openmetrics")  # PHP-FPM's precedence; anything else: text
LIVE = "live"  # pyfpm's live page: above every format, being a different page, not a format

CONTENT_TYPES = {
    "text": "text/plain;charset=UTF-8",
    "html": "text/html;charset=UTF-8",
    LIVE: "text/html;charset=UTF-8",
    "xml": "text/xml;charset=UTF-8",
    "json": "application/json",
    "openmetrics": "application/openmetrics-text; version=1.0.0; charset=utf-8",
}

NO_CACHE_HEADERS = [
    ("Expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
    ("Cache-Control", "no-cache, no-store, must-revalidate, max-age=0"),
]

# Sent with a pm.status_listen address's 404: the path its status page is at, which
# `pyfpm status` asks next when it was not told the path.
STATUS_PATH_HEADER = "X-Fpm-Status-Path"


def choose(query_string: str) -> tuple[str, bool]:
    """(format, full) from the query string's keys: live > html > xml > json > openmetrics >
    text.

    A key counts whatever its value (``?json=1``, ``?full=0``) and in any order; keys are
    URL-decoded and must match whole and case-sensitively, as PHP's ``$_GET`` keys do.
    """
    keys = {unquote_plus(part.partition("=")[0]) for part in query_string.split("&")}
    fmt = next((f for f in (LIVE, *FORMATS) if f in keys), "text")
    return fmt, "full" in keys


def ping_response(body_text: str) -> tuple[str, bytes]:
    """(content type, body) of the ping answer: ``ping.response`` as is, no newline."""
    # surrogateescape gives back the configuration file's own bytes if it was not UTF-8.
    return CONTENT_TYPES["text"], body_text.encode("utf-8", "surrogateescape")


# --- the field table --------------------------------------------------------------------------
# One row per field, in PHP-FPM's order, pyfpm's additions last. Every format is drawn from it,
# and so are the snapshots (PoolStatus, ProcStatus); a pool field whose attr names a field of
# the scoreboard's header (or a refusal cause) is that field's value (fpm.pages.snapshot).

STR, DASH, INT, TIME, PERCENT = "str", "dash", "int", "time", "percent"  # DASH: "-" when empty
COUNTER, GAUGE, UNKNOWN = "counter", "gauge", "unknown"


@dataclass(frozen=True)
class Metric:
    """How a field appears in OpenMetrics."""
    name: str
    type: str
    help: str
    type_first: bool = False   # PHP-FPM prints this family's TYPE line before its HELP line
    label: str | None = None   # the value is this label of a sample worth 1 (a state)


@dataclass(frozen=True)
class Field:
    """One status field. ``label`` is PHP-FPM's name: the text and HTML label and the JSON key;
    the XML tag is the label with dashes for spaces."""
    label: str
    attr: str
    kind: str = INT
    metric: Metric | None = None
    text_label: str | None = None  # where PHP-FPM's text label differs ("request URI")
    dynamic_only: bool = False     # shown only for pm = dynamic (the spare-server limits)
    idle_only: bool = False        # 0 unless the process is Idle: PHP-FPM shows the last
    # request's CPU and memory only once it has ended, not a running request's partial values


POOL_FIELDS = (
    Field("pool", "pool", STR),
    Field("process manager", "process_manager", STR),  # static, dynamic or ondemand
    Field("start time", "start_time", TIME),  # epoch seconds
    Field("start since", "start_since", metric=Metric(
        "phpfpm_start_since", UNKNOWN, "The number of seconds since FPM has started.")),
    Field("accepted conn", "accepted_conn", metric=Metric(
        "phpfpm_accepted_connections", UNKNOWN, "The number of requests accepted by the pool.")),
    Field("listen queue", "listen_queue", metric=Metric(
        "phpfpm_listen_queue", GAUGE,
        "The number of requests in the queue of pending connections.")),
    Field("max listen queue", "max_listen_queue", metric=Metric(
        "phpfpm_max_listen_queue", UNKNOWN,
        "The maximum number of requests in the queue of pending connections since FPM has "
        "started.")),
    Field("listen queue len", "listen_queue_len", metric=Metric(
        "phpfpm_listen_queue_length", GAUGE,
        "The size of the socket queue of pending connections.", type_first=True)),
    Field("idle processes", "idle_processes", metric=Metric(
        "phpfpm_idle_processes", GAUGE, "The number of idle processes.")),
    Field("active processes", "active_processes", metric=Metric(
        "phpfpm_active_processes", GAUGE, "The number of active processes.")),
    Field("total processes", "total_processes", metric=Metric(
        "phpfpm_total_processes", GAUGE, "The number of idle + active processes.")),
    Field("max active processes", "max_active_processes", metric=Metric(
        "phpfpm_max_active_processes", UNKNOWN,
        "The maximum number of active processes since FPM has started.")),
    Field("max children reached", "max_children_reached", metric=Metric(
        "phpfpm_max_children_reached", UNKNOWN,
        "The number of times, the process limit has been reached, when pm tries to start more "
        "children (works only for pm 'dynamic' and 'ondemand').")),
    Field("slow requests", "slow_requests", metric=Metric(
        "phpfpm_slow_requests", UNKNOWN,
        "The number of requests that exceeded your 'request_slowlog_timeout' value.")),
    # pyfpm's additions: the configured limits (PHP-FPM users asked for them, php-src #16221)
    Field("max children", "max_children", metric=Metric(
        "phpfpm_max_children", GAUGE,
        "The maximum number of processes of the pool (pm.max_children).")),
    Field("start servers", "start_servers", dynamic_only=True, metric=Metric(
        "phpfpm_start_servers", GAUGE,
        "The number of processes created on startup (pm.start_servers).")),
    Field("min spare servers", "min_spare_servers", dynamic_only=True, metric=Metric(
        "phpfpm_min_spare_servers", GAUGE,
        "The desired minimum number of idle processes (pm.min_spare_servers).")),
    Field("max spare servers", "max_spare_servers", dynamic_only=True, metric=Metric(
        "phpfpm_max_spare_servers", GAUGE,
        "The desired maximum number of idle processes (pm.max_spare_servers).")),
    Field("app status", "app_status", STR, metric=Metric(
        "phpfpm_app_status", GAUGE,
        "Whether the workers could load the pool's app: 1 for the status it is in (ok, or "
        "failing: they answer 503).", label="status")),
    Field("app error", "app_error", DASH),  # why, from the last worker that tried; "" when ok
    Field("parked connections", "parked_connections", metric=Metric(
        "phpfpm_parked_connections", GAUGE,
        "The number of connections waiting in the master for their request head, or kept for "
        "the web server's next request by a worker that stopped.")),
    Field("head timeouts", "head_timeouts", metric=Metric(
        "phpfpm_head_timeouts", COUNTER,
        "The number of connections closed because their request head did not come within "
        "request_head_timeout.")),
    Field("slow bodies", "slow_bodies", metric=Metric(
        "phpfpm_slow_bodies", COUNTER,
        "The number of requests answered 408 because their body came slower than "
        "request_body_min_rate, or stalled for request_read_timeout.")),
    Field("parked closed", "parked_closed", metric=Metric(
        "phpfpm_parked_closed", COUNTER,
        "The number of connections closed while waiting for their request head because the "
        "pool held as many as it may.")),
    Field("accept failures", "accept_failures", metric=Metric(
        "phpfpm_accept_failures", COUNTER,
        "The number of times a worker's accept() failed for want of file descriptors.")),
    Field("protocol errors", "protocol_errors", metric=Metric(
        "phpfpm_protocol_errors", COUNTER,
        "The number of connections closed because what their peer sent broke the FastCGI "
        "protocol.")),
)

PROC_FIELDS = (
    Field("pid", "pid"),
    # "Starting", "Idle", "Reading headers", "Running" or "Finishing"
    Field("state", "state", STR, metric=Metric(
        "phpfpm_process_state", GAUGE,
        "The state of the process: 1 for the state it is in.", label="state")),
    Field("start time", "start_time", TIME),  # epoch seconds the worker was forked
    Field("start since", "start_since"),
    Field("requests", "requests", metric=Metric(
        "phpfpm_process_requests", COUNTER, "The number of requests the process has served.")),
    Field("request duration", "request_duration", metric=Metric(
        "phpfpm_process_request_duration_microseconds", GAUGE,
        "The duration of the current request, or of the last one if the process is idle, "
        "in microseconds.")),
    Field("request method", "request_method", DASH),
    # the real REQUEST_URI, query included
    Field("request uri", "request_uri", DASH, text_label="request URI"),
    Field("content length", "content_length"),
    Field("user", "user", DASH),
    Field("script", "script", DASH),
    Field("last request cpu", "last_request_cpu", PERCENT, idle_only=True, metric=Metric(
        "phpfpm_process_last_request_cpu", GAUGE,
        "The CPU percentage the last request used; 0 while the process is not idle.")),
    Field("last request memory", "last_request_memory", idle_only=True, metric=Metric(
        "phpfpm_process_last_request_memory_bytes", GAUGE,
        "The memory the last request used, in bytes; 0 while the process is not idle.")),
    # pyfpm's addition
    Field("rss", "rss", metric=Metric(
        "phpfpm_process_rss_bytes", GAUGE, "The resident set size of the process, in bytes.")),
)


# --- the snapshot: a value per field row -------------------------------------------------------

_TYPES = {STR: str, DASH: str, INT: int, TIME: float, PERCENT: float}


def _snapshot(name: str, doc: str, fields: tuple[Field, ...], *more) -> type:
    """A frozen dataclass with an attribute per row of ``fields`` (then ``more``), each zero
    (or empty) unless given: a status field is added by its row alone."""
    cls = make_dataclass(
        name, [(f.attr, _TYPES[f.kind], dataclasses.field(default=_TYPES[f.kind]()))
               for f in fields] + list(more), frozen=True)
    cls.__doc__ = doc
    return cls


ProcStatus = _snapshot("ProcStatus", "One worker's row of the status page.", PROC_FIELDS)
PoolStatus = _snapshot("PoolStatus", "A pool's status snapshot: what one status request shows.",
                       POOL_FIELDS, ("procs", tuple, dataclasses.field(default=())))


def _pairs(fields, obj):
    """(field, value) for the fields ``obj`` shows, PHP-FPM's rules applied to the values."""
    for f in fields:
        if f.dynamic_only and obj.process_manager != "dynamic":
            continue
        value = getattr(obj, f.attr)
        if f.idle_only and obj.state != "Idle":
            value = 0
        if f.kind == DASH:
            value = value or "-"
        yield f, value


# --- escaping ---------------------------------------------------------------------------------

_SURROGATES = re.compile("[\ud800-\udfff]")
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
_TEXT_CONTROLS = {c: "\\x%02x" % c for c in (*range(0x20), 0x7f)}
_OM_ESCAPES = {ord("\\"): "\\\\", ord('"'): '\\"', ord("\n"): "\\n"}


def _text(s: str) -> str:
    return _SURROGATES.sub("\ufffd", s).translate(_TEXT_CONTROLS)


def _json(s: str) -> str:
    return json.dumps(_SURROGATES.sub("\ufffd", s))


def _markup(s: str) -> str:
    """For XML and XHTML element content."""
    s = _NOT_XML.sub("\ufffd", s)
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _om(s: str) -> str:
    """For OpenMetrics HELP text and label values."""
    return _SURROGATES.sub("\ufffd", s).translate(_OM_ESCAPES)


_ESCAPE = {"text": _text, "json": _json, "xml": _markup, "html": _markup, "openmetrics": _om}


def _clf_time(epoch: float, utc_offset: int) -> str:
    """``%d/%b/%Y:%H:%M:%S %z`` with C-locale month names, in the given offset."""
    t = datetime.fromtimestamp(math.floor(epoch) + utc_offset, timezone.utc)
    minutes = abs(utc_offset) // 60
    return "%02d/%s/%d:%02d:%02d:%02d %s%02d%02d" % (
        t.day, _MONTHS[t.month - 1], t.year, t.hour, t.minute, t.second,
        "-" if utc_offset < 0 else "+", minutes // 60, minutes % 60)


def _show(fmt: str, f: Field, value, utc_offset: int) -> str:
    """A value as ``fmt`` writes it."""
    if f.kind in (STR, DASH):
        return _ESCAPE[fmt](value)
    if f.kind == TIME:  # text and HTML show a date, JSON and XML the epoch (PHP's "%s")
        return _clf_time(value, utc_offset) if fmt in ("text", "html") else str(math.floor(value))
    if f.kind == PERCENT:
        return "%.2f" % value
    return str(int(value))


# --- the formats ------------------------------------------------------------------------------

def render(status: PoolStatus | None, fmt: str, full: bool,
           utc_offset_seconds: int) -> tuple[str, bytes]:
    """(content type, body) of the status page in ``fmt`` (one of ``choose``'s formats);
    ``status`` may be None for the live page, which shows none of it.

    ``utc_offset_seconds``: east of UTC, for the text and HTML dates; the caller's
    ``time.localtime(now).tm_gmtoff``.
    """
    if fmt not in CONTENT_TYPES:
        raise ValueError("unknown status format %r" % fmt)
    if fmt == LIVE:  # its script fetches the data itself
        return CONTENT_TYPES[LIVE], LIVE_PAGE

    def rows(fields, obj):
        return [(f, _show(fmt, f, v, utc_offset_seconds)) for f, v in _pairs(fields, obj)]

    pool = rows(POOL_FIELDS, status)
    procs = [rows(PROC_FIELDS, p) for p in status.procs] if full else None
    body = _RENDERERS[fmt](pool, procs)
    return CONTENT_TYPES[fmt], body.encode("utf-8")


def _render_text(pool, procs):
    def block(rows):
        return "".join("%-22s%s\n" % ((f.text_label or f.label) + ":", v) for f, v in rows)

    out = block(pool)
    for rows in procs or ():
        out += "\n" + "*" * 24 + "\n" + block(rows)
    return out


def _render_json(pool, procs):
    def obj(rows):
        return ",".join('"%s":%s' % (f.label, v) for f, v in rows)

    out = "{" + obj(pool)
    if procs is None:
        return out + "}"
    return out + ', "processes":[' + ",".join("{" + obj(rows) + "}" for rows in procs) + "]}"


def _render_xml(pool, procs):
    def elements(rows):
        return ["<%s>%s</%s>" % (tag, v, tag)
                for tag, v in ((f.label.replace(" ", "-"), v) for f, v in rows)]

    out = '<?xml version="1.0" ?>\n<status>\n' + "".join(e + "\n" for e in elements(pool))
    if procs is None:
        return out + "</status>"
    return (out + "<processes>\n"
            + "".join("<process>" + "".join(elements(rows)) + "</process>\n" for rows in procs)
            + "</processes>\n</status>")


_XHTML_HEAD = (
    '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
    '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
    '<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">\n'
    "<head><title>PHP-FPM Status Page</title></head>\n"
    "<body>\n")


def _render_html(pool, procs):
    out = (_XHTML_HEAD + "<table>\n"
           + "".join("<tr><th>%s</th><td>%s</td></tr>\n" % (f.label, v) for f, v in pool)
           + "</table>\n")
    if procs is None:
        return out + "</body></html>"
    header = "".join("<th>%s</th>" % f.label for f in PROC_FIELDS)
    return (out + '<table border="1">\n<tr>' + header + "</tr>\n"
            + "".join("<tr>" + "".join("<td>%s</td>" % v for _, v in rows) + "</tr>\n"
                      for rows in procs)
            + "</table></body></html>")


def _render_openmetrics(pool, procs):
    shown = {f.attr: v for f, v in pool}
    lines = ["# HELP phpfpm_up Could pool %s using a %s PM on PHP-FPM be reached?"
             % (shown["pool"], shown["process_manager"]),
             "# TYPE phpfpm_up gauge",
             "phpfpm_up 1"]

    def family(m: Metric, samples):
        """``samples``: (labels, value) pairs, labels already written as ``k="v",...``."""
        meta = ["# HELP %s %s" % (m.name, _om(m.help)), "# TYPE %s %s" % (m.name, m.type)]
        lines.extend(reversed(meta) if m.type_first else meta)
        # OpenMetrics names a counter's samples <family>_total.
        name = m.name + "_total" if m.type == COUNTER else m.name
        lines.extend("%s{%s} %s" % (name, labels, v) if labels else "%s %s" % (name, v)
                     for labels, v in samples)

    for f, v in pool:
        if f.metric:
            family(f.metric, [('%s="%s"' % (f.metric.label, v), "1") if f.metric.label
                              else ("", v)])
    # Per process: one family per field, a sample per process in it (families must not
    # interleave), in PROC_FIELDS order.
    families: dict[Metric, list] = {}
    for rows in procs or ():
        pid = next(v for f, v in rows if f.attr == "pid")
        for f, v in rows:
            if f.metric is None:
                continue
            labels = 'pid="%s"' % pid
            if f.metric.label:
                labels += ',%s="%s"' % (f.metric.label, v)
                v = "1"
            families.setdefault(f.metric, []).append((labels, v))
    for m, samples in families.items():
        family(m, samples)
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


_RENDERERS = {"text": _render_text, "json": _render_json, "xml": _render_xml,
              "html": _render_html, "openmetrics": _render_openmetrics}


# --- the live page ----------------------------------------------------------------------------
# Static: no value of the pool is ever written into it, so there is nothing to escape here; the
# script puts every value into the DOM as text. The Content-Security-Policy admits exactly this
# script and style (by hash), so even a mistake that turned data into markup could not run.

_LIVE_STYLE = """
:root { color-scheme: light dark; --fg: #1d2327; --dim: #6b7479; --line: #d5dadd;
  --accent: #2463eb; --busy: #b45309; --bad: #b91c1c; --bg: #fff; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6e8ea; --dim: #9aa3a8; --line: #3a4146;
  --accent: #6ea0ff; --busy: #f0a050; --bad: #f87171; --bg: #16191c; } }
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: var(--fg);
  background: var(--bg); }
h1 { font-size: 1.3em; margin: 0; }
h2 { font-size: 1em; margin: 1.2em 0 .4em; color: var(--dim); font-weight: 600; }
#summary { color: var(--dim); margin: .3em 0; }
#error { color: var(--bad); font-weight: 600; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: .15em .7em .15em 0; text-align: left; vertical-align: top; }
#pool th { font-weight: normal; color: var(--dim); }
#workers thead th { border-bottom: 1px solid var(--line); }
#workers td.num { text-align: right; }
#workers td.uri { font-family: ui-monospace, monospace; word-break: break-all; }
#workers tr.running td, #workers tr.reading td, #workers tr.finishing td { color: var(--busy); }
svg { width: 100%; max-width: 60em; height: 9em; border: 1px solid var(--line); }
#rate-line { fill: none; stroke: var(--accent); stroke-width: 1.5;
  vector-effect: non-scaling-stroke; }
#rate-area { fill: var(--accent); opacity: .15; }
svg text { fill: var(--dim); font-size: 11px; }
.columns { display: flex; flex-wrap: wrap; gap: 0 3em; }
"""

_LIVE_SCRIPT = r"""
"use strict";
(() => {
  const WINDOW_S = 300;  // the span of the chart
  const W = 600, H = 120;  // the chart's viewBox
  const asked = parseFloat(new URLSearchParams(location.search).get("refresh"));
  const refresh = Number.isFinite(asked) ? Math.min(60, Math.max(1, asked)) : 2;
  // Relative to this page's own URL: the same path under whatever location a proxy mounts it.
  const source = new URL("?json&full", location.href);
  const STATES = { "Idle": "idle", "Running": "running", "Reading headers": "reading",
                   "Finishing": "finishing", "Starting": "starting" };
  const $ = (id) => document.getElementById(id);
  let samples = [];  // {t: seconds on this page's clock, accepted, started}

  const seconds = (s) => {
    const d = Math.floor(s / 86400), hms = new Date((s % 86400) * 1000).toISOString().slice(11, 19);
    return d ? d + "d " + hms : hms;
  };
  const duration = (us) => us >= 1e6 ? (us / 1e6).toFixed(2) + " s" : (us / 1e3).toFixed(1) + " ms";
  const bytes = (b) => b >= 1048576 ? (b / 1048576).toFixed(1) + " MiB"
                                    : Math.round(b / 1024) + " KiB";
  const rate = (r) => (r >= 100 ? r.toFixed(0) : r.toFixed(1)) + " req/s";

  function cell(row, value, cls) {
    const td = row.insertCell();
    td.textContent = String(value);
    if (cls) td.className = cls;
  }

  function showPool(data) {
    const body = document.createElement("tbody");
    for (const [key, value] of Object.entries(data)) {
      if (key === "processes") continue;
      const row = body.insertRow();
      const th = document.createElement("th");
      th.textContent = key;
      row.appendChild(th);
      cell(row, key === "start time" ? new Date(value * 1000).toLocaleString()
                : key === "start since" ? seconds(value) : value);
    }
    $("pool").replaceChildren(body);
  }

  function showWorkers(procs) {
    const body = document.createElement("tbody");
    for (const p of [...procs].sort((a, b) => a.pid - b.pid)) {
      const row = body.insertRow();
      row.className = STATES[p.state] || "";
      row.dataset.pid = String(p.pid);
      cell(row, p.pid, "num");
      cell(row, p.state);
      cell(row, p.requests, "num");
      cell(row, duration(p["request duration"]), "num");
      cell(row, p["request method"]);
      cell(row, p["request uri"], "uri");
      cell(row, p.rss === undefined ? "-" : bytes(p.rss), "num");
      cell(row, Number(p["last request cpu"]).toFixed(2) + " %", "num");
    }
    $("workers").tBodies[0].replaceWith(body);
  }

  function record(data, now) {
    const last = samples[samples.length - 1];
    // A restarted pool counts from zero again: the old history says nothing about it.
    if (last && (data["accepted conn"] < last.accepted || data["start time"] !== last.started)) {
      samples = [];
    }
    samples.push({ t: now, accepted: data["accepted conn"], started: data["start time"] });
    samples = samples.filter((s) => now - s.t <= WINDOW_S + refresh);
  }

  function rates() {
    const out = [];
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1], b = samples[i];
      out.push({ t: b.t, rate: (b.accepted - a.accepted) / (b.t - a.t) });
    }
    return out;
  }

  function draw(points, now) {
    // The axis tops at the first 1, 2 or 5 times a power of ten at or above the peak.
    const peak = Math.max(0, ...points.map((p) => p.rate));
    let top = 1;
    for (let k = 0; top < peak; k++) top = [1, 2, 5][k % 3] * 10 ** Math.floor(k / 3);
    const xy = points.map((p) => [(W - (now - p.t) / WINDOW_S * W).toFixed(1),
                                  (H - p.rate / top * H).toFixed(1)]);
    const line = xy.map(([x, y], i) => (i ? "L" : "M") + x + " " + y).join(" ");
    $("rate-line").setAttribute("d", line);
    $("rate-area").setAttribute("d", xy.length < 2 ? "" :
      line + " L" + xy[xy.length - 1][0] + " " + H + " L" + xy[0][0] + " " + H + " Z");
    $("rate-top").textContent = rate(top);
    $("rate-now").textContent = points.length ? rate(points[points.length - 1].rate) : "-";
  }

  function show(data) {
    if (typeof data !== "object" || data === null || !("accepted conn" in data)) {
      throw new Error(source.pathname + " did not answer with a status page");
    }
    const now = performance.now() / 1000;
    record(data, now);
    document.title = "pyfpm status: " + data.pool;
    $("pool-name").textContent = data.pool;
    $("summary").textContent = data["process manager"] + " \u00b7 "
      + data["active processes"] + " active, " + data["idle processes"] + " idle of "
      + data["total processes"] + " \u00b7 accepted " + data["accepted conn"]
      + " \u00b7 updated " + new Date().toLocaleTimeString() + ", every " + refresh + " s";
    showPool(data);
    showWorkers(data.processes || []);
    draw(rates(), now);
    $("error").hidden = true;
  }

  function fail(err) {
    $("error").textContent = "Update failed: " + err.message + " (showing the last data)";
    $("error").hidden = false;
  }

  function poll() {
    fetch(source, { cache: "no-store", headers: { "Accept": "application/json" } })
      .then((r) => {
        if (!r.ok) throw new Error(source.pathname + " answered " + r.status + " " + r.statusText);
        return r.json();
      })
      .then(show)
      .catch(fail)
      .finally(() => setTimeout(poll, refresh * 1000));
  }
  poll();
})();
"""

_LIVE_BODY = """\
<body>
<h1>pyfpm status <span id="pool-name"></span></h1>
<p id="summary">Loading&#8230;</p>
<p id="error" role="alert" hidden></p>
<h2>Accepted requests per second, last 5 minutes (<span id="rate-now">-</span> now;
status requests count too)</h2>
<svg id="chart" viewBox="0 0 600 120" preserveAspectRatio="none" role="img"
 aria-label="requests per second">
<path id="rate-area" d=""/><path id="rate-line" d=""/>
<text id="rate-top" x="4" y="12"></text><text x="4" y="116">0</text>
</svg>
<div class="columns">
<section><h2>Pool</h2><table id="pool"></table></section>
<section><h2>Workers</h2><table id="workers"><thead><tr><th>pid</th><th>state</th>
<th>requests</th><th>duration</th><th>method</th><th>uri</th><th>rss</th><th>cpu</th></tr>
</thead><tbody></tbody></table></section>
</div>
<noscript><p>This page needs JavaScript; <a href="?html&amp;full">?html&amp;full</a> shows
the same data as a static table.</p></noscript>
"""


def _csp_hash(text: str) -> str:
    return "'sha256-%s'" % base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


LIVE_PAGE = (
    '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
    '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
    "connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "script-src %s; style-src %s\">\n"
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    "<title>pyfpm status</title>\n<style>%s</style>\n</head>\n%s<script>%s</script>\n"
    "</body>\n</html>\n"
    % (_csp_hash(_LIVE_SCRIPT), _csp_hash(_LIVE_STYLE), _LIVE_STYLE, _LIVE_BODY, _LIVE_SCRIPT)
).encode()
