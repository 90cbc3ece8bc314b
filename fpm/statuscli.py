"""``pyfpm status ADDRESS``: a pool's status page read over FastCGI, straight from the pool's
socket (no web server needed), shown as a summary with a worker table, as JSON, or as a view
redrawn every interval like top.

It asks ``--path`` (the pool's ``pm.status_path``) with ``?json&full``, so it reads PHP-FPM's
pools as well as pyfpm's. Without ``--path`` it asks ``/status``, and when a
``pm.status_listen`` address answers that its status page is elsewhere (its 404 names the
path), it asks there. Exit codes, as ``pyfpm request``'s: 0; 1 when the answer is not a
status page (or not FastCGI); 2 when the address cannot be reached; 64 for usage errors. The request rate is the change of ``accepted conn`` over the interval, which
counts the status requests too (one per interval).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
from datetime import datetime

from fpm import client
from fpm.refusals import LABELS
from fpm.status import STATUS_PATH_HEADER

EX_ANSWER, EX_UNREACHABLE = 1, 2  # as pyfpm request's; os.EX_OK and os.EX_USAGE besides
DEFAULT_PATH = "/status"
CLEAR = "\x1b[H\x1b[2J"  # cursor home, erase the screen

# A worker's URI is whatever a client sent: shown raw, an escape sequence in it would drive
# the terminal. Control characters (C0, DEL, C1) and lone surrogates are written as \xNN.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class StatusError(Exception):
    """The status could not be read; ``code`` is the exit code that says why."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# --- reading ----------------------------------------------------------------------------------

def status_uri(path: str) -> str:
    return path + ("&" if "?" in path else "?") + "json&full"


def parse(response: client.Response, path: str) -> dict:
    """The status JSON of a FastCGI response, or StatusError saying what came back instead."""
    what = "%d %s" % (response.status, response.reason)
    ctype = response.header("Content-Type")
    if ctype:
        what += ", %s" % ctype
    if response.body:
        preview = response.body[:60].decode("utf-8", "replace")
        what += ": %s%s" % (safe(preview), "..." if len(response.body) > 60 else "")
    elsewhere = response.header(STATUS_PATH_HEADER)
    hint = ("this pm.status_listen address serves the status page at %s (--path %s)"
            % (safe(elsewhere), safe(elsewhere)) if elsewhere
            else "is pm.status_path = %s set in this pool?" % path)
    not_status = StatusError(EX_ANSWER, "%s is not a status page (the answer was %s); %s"
                             % (path, what, hint))
    if response.status != 200:
        raise not_status
    try:
        data = json.loads(response.body)
    except ValueError:
        raise not_status from None
    if not isinstance(data, dict) or not {"pool", "accepted conn"} <= data.keys():
        raise not_status
    return data


def fetch(address: str, path: str | None, timeout: float) -> tuple[dict, str]:
    """The status JSON and the path it was found at. Without ``path``: /status, or where a
    pm.status_listen address says its status page is."""
    response = _ask(address, path or DEFAULT_PATH, timeout)
    found = response.header(STATUS_PATH_HEADER)
    if path is None and response.status == 404 and found and found != DEFAULT_PATH:
        path, response = found, _ask(address, found, timeout)
    path = path or DEFAULT_PATH
    return parse(response, path), path


def _ask(address: str, path: str, timeout: float) -> client.Response:
    try:
        return client.request(address, status_uri(path), timeout=timeout)
    except ValueError as e:  # an address fpm.client cannot read
        raise StatusError(os.EX_USAGE, str(e)) from None
    except client.FastCGIError as e:
        raise StatusError(EX_ANSWER, "%s: not a FastCGI answer: %s" % (address, e)) from None
    except TimeoutError:
        raise StatusError(EX_UNREACHABLE, "%s: no answer after %g s" % (address, timeout)) \
            from None
    except ConnectionRefusedError:
        raise StatusError(EX_UNREACHABLE, "%s: connection refused (is the pool listening "
                          "there?)" % address) from None
    except FileNotFoundError:
        raise StatusError(EX_UNREACHABLE, "%s: no such socket" % address) from None
    except OSError as e:
        raise StatusError(EX_UNREACHABLE, "%s: %s" % (address, e.strerror or e)) from None


# --- showing (pure) ---------------------------------------------------------------------------

def safe(s) -> str:
    """``s`` as text that cannot drive a terminal."""
    return _UNSAFE.sub(lambda m: "\\x%02x" % (ord(m[0]) & 0xFF), str(s))


def pretty_json(data: dict) -> str:
    """The status JSON, indented. Non-ASCII text stays readable; DEL and C1 controls, which
    JSON leaves raw, are written as \\u escapes (the same string to a decoder)."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    return re.sub("[\x7f-\x9f]", lambda m: "\\u%04x" % ord(m[0]), text)


def since(seconds) -> str:
    days, rest = divmod(int(seconds), 86400)
    hms = "%02d:%02d:%02d" % (rest // 3600, rest // 60 % 60, rest % 60)
    return "%dd %s" % (days, hms) if days else hms


def duration(us) -> str:
    return "%.2f s" % (us / 1e6) if us >= 1_000_000 else "%.1f ms" % (us / 1e3)


def size(n) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return "%d%s" % (n, unit) if unit == "B" else "%.1f%s" % (n, unit)
        n /= 1024


def rate(now: dict, before: dict | None, seconds: float) -> float | None:
    """Requests per second between two samples; None without a usable earlier one (none yet,
    or the pool restarted: its counter began again)."""
    if (before is None or seconds <= 0 or now["accepted conn"] < before["accepted conn"]
            or now.get("start time") != before.get("start time")):
        return None
    return (now["accepted conn"] - before["accepted conn"]) / seconds


def overview(data: dict) -> list[str]:
    """The pool in four lines; then what it refused, once it has (pyfpm's counters), and
    the app's error while it cannot be loaded."""
    g = data.get
    started = g("start time")
    when = (" since " + datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M:%S")
            if isinstance(started, (int, float)) else "")
    limits = ["max %s" % g("max children")] if "max children" in data else []
    limits += ["max active %s" % g("max active processes"),
               "max children reached %s" % g("max children reached")]
    return [safe(line) for line in (
        "pool %s (%s), up %s%s" % (g("pool"), g("process manager"), since(g("start since", 0)),
                                   when),
        "processes  %s active, %s idle, %s total (%s)" % (
            g("active processes"), g("idle processes"), g("total processes"), ", ".join(limits)),
        "requests   %s accepted, %s slow" % (g("accepted conn"), g("slow requests")),
        "queue      %s waiting, max %s, backlog %s" % (
            g("listen queue"), g("max listen queue"), g("listen queue len")),
    ) + refused(data) + (("app        FAILING, answered 503: %s" % g("app error"),)
         if g("app status") == "failing" else ())]


def refused(data: dict) -> tuple[str, ...]:
    """A line of the refusal counters that are not 0 (none: no line)."""
    counts = ["%s %s" % (data[label], label) for label in LABELS.values() if data.get(label)]
    return ("refused    " + ", ".join(counts),) if counts else ()


COLUMNS = (  # heading, width (None: the rest of the line), right-aligned, value
    ("PID", 7, True, lambda p: p.get("pid")),
    ("STATE", 15, False, lambda p: p.get("state")),
    ("REQS", 7, True, lambda p: p.get("requests")),
    ("DURATION", 10, True, lambda p: duration(p.get("request duration", 0))),
    ("CPU", 7, True, lambda p: "%.1f%%" % p.get("last request cpu", 0)),
    ("RSS", 7, True, lambda p: size(p["rss"]) if "rss" in p else "-"),
    ("METHOD", 6, False, lambda p: p.get("request method")),
    ("URI", None, False, lambda p: p.get("request uri")),
)


def table(procs: list[dict], width: int | None = None, rows: int | None = None) -> list[str]:
    """The worker table, by pid; lines cut at ``width`` and at most ``rows`` workers shown
    (then a line says how many more) when given."""
    def line(values):
        cells = [("%*s" if right else "%-*s") % (w, v) if w else v
                 for (_, w, right, _), v in zip(COLUMNS, values)]
        text = " ".join(cells).rstrip()
        return text[:width] if width else text

    ordered = sorted(procs, key=lambda p: p.get("pid", 0))
    shown = ordered if rows is None or len(ordered) <= rows else ordered[:max(rows - 1, 0)]
    out = [line([c[0] for c in COLUMNS])]
    out += [line([safe(c[3](p)) for c in COLUMNS]) for p in shown]
    if len(shown) < len(ordered):
        out.append("... %d more" % (len(ordered) - len(shown)))
    return out


def summary(data: dict, width: int | None = None) -> str:
    """The default output: the pool, then its workers."""
    return "\n".join(overview(data) + [""] + table(data.get("processes", []), width)) + "\n"


def frame(data: dict, per_second: float | None, heading: str, width: int | None = None,
          height: int | None = None) -> str:
    """One screen of ``--watch``: a heading, the rate and the pool, the workers that fit."""
    lines = [heading, "rate       %s" % ("-" if per_second is None else
                                           "%.1f req/s" % per_second)]
    lines += overview(data) + [""]
    # Room for the workers: the terminal less the lines above, the table's heading and the
    # line the cursor rests on.
    room = None if height is None else max(height - len(lines) - 2, 1)
    lines += table(data.get("processes", []), width, room)
    return "\n".join(line[:width] if width else line for line in lines) + "\n"


# --- command line -----------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(os.EX_USAGE, "%s: error: %s\n" % (self.prog, message))


def _positive(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text) from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError("%r is not above zero" % text)
    return value


def _count(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("%r is not a count of 1 or more" % text)
    return int(text)


def _parser():
    p = _Parser(prog="pyfpm status",
                description="Show a pool's status page, read over FastCGI from its address.")
    p.add_argument("address", help="the pool's listen address: host:port, [ipv6]:port, port, "
                                   "or a unix socket path (unix:PATH too)")
    p.add_argument("--path",
                   help="the pool's pm.status_path (default: /status, or the path a "
                        "pm.status_listen address names)")
    p.add_argument("--json", action="store_true", help="print the status JSON (full)")
    p.add_argument("--watch", action="store_true",
                   help="redraw every interval, with the request rate, until Ctrl-C")
    p.add_argument("--interval", type=_positive, metavar="S",
                   help="seconds between redraws with --watch (default: 2)")
    p.add_argument("--count", type=_count, metavar="N", help="with --watch, stop after N")
    p.add_argument("--timeout", type=_positive, default=5.0, metavar="S",
                   help="seconds to wait for each answer (default: 5)")
    return p


def main(argv=None, out=None) -> int:
    p = _parser()
    try:
        args = p.parse_args(argv)
        if args.json and args.watch:
            p.error("--json and --watch do not go together")
        if not args.watch and (args.interval or args.count):
            p.error("--interval and --count go with --watch")
    except SystemExit as e:
        return e.code
    out = out or sys.stdout
    args.interval = args.interval or 2.0
    try:
        if args.watch:
            return watch(args, out)
        data, _ = fetch(args.address, args.path, args.timeout)
    except StatusError as e:
        print("pyfpm status: %s" % e, file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    out.write(pretty_json(data) + "\n" if args.json else summary(data, _width(out)))
    out.flush()
    return os.EX_OK


def _width(out) -> int | None:
    """Lines are cut to the terminal's width; sent elsewhere they are whole."""
    return shutil.get_terminal_size().columns if out.isatty() else None


def watch(args, out, clock=time.monotonic, sleep=time.sleep) -> int:
    """Redraw until Ctrl-C (exit 0) or ``--count`` frames (the last fetch's exit code).
    A failed fetch is shown in its frame and the watch goes on: the pool may be restarting."""
    tty = out.isatty()
    before, before_t, frames = None, 0.0, 0
    path = args.path  # once found, the status page is asked there each time
    try:
        while True:
            started = clock()
            size = shutil.get_terminal_size() if tty else None
            failed = None
            try:
                data, path = fetch(args.address, path, args.timeout)
            except StatusError as e:
                if e.code == os.EX_USAGE:
                    print("pyfpm status: %s" % e, file=sys.stderr)
                    return e.code
                failed = e
            # The address last: a long socket path is what the terminal's width cuts.
            heading = "pyfpm status  %s  every %g s  %s %s" % (
                time.strftime("%H:%M:%S"), args.interval, safe(args.address),
                safe(path or DEFAULT_PATH))
            if failed is not None:
                code, text, before = failed.code, heading + "\n" + str(failed) + "\n", None
            else:
                per_second = rate(data, before, started - before_t)
                code, before, before_t = os.EX_OK, data, started
                text = frame(data, per_second, heading, size and size.columns,
                             size and size.lines)
            out.write(CLEAR + text if tty else ("\n" if frames else "") + text)
            out.flush()
            frames += 1
            if args.count and frames >= args.count:
                return code
            sleep(max(0.0, args.interval - (clock() - started)))
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
        return os.EX_OK
