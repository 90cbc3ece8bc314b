"""bench/compare.py's report: medians over rounds per scenario and server, pyfpm's ratio to
each peer, starvation under keep_conn, start and syscall figures, issue 6's and issue 17's
targets met or not, a slow request's effect on the others' latency, errors under recycling
and reloads, as markdown tables and a PNG bar chart. Pure functions of the measured cells."""

from __future__ import annotations

import math
import statistics
import textwrap
from pathlib import Path

STARVED_SHARE = 0.1  # a connection served less than this share of the median one is starved
# Issue 17's scenarios (compare.SCENARIOS): with one slow request in flight and without;
# Django with keep_conn on and off; POSTs under recycling and reloads.
SLOW, SLOW_BASE = "slow-c8", "slow-base-c8"
DJANGO_KEEP, DJANGO_OFF = "django-keep-c16", "django-c16"
RECYCLE = "recycle-c16"
FRONTS = ("keep_conn on for pyfpm; PHP-FPM, uWSGI and flup behind their usual front, keep_conn "
          "off; gunicorn and Granian behind proxy_pass")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(cells: list[dict]) -> dict:
    """{(scenario, server): medians of every figure over the rounds that ran, the error
    counts summed, the failures listed}."""
    groups: dict = {}
    for cell in cells:
        groups.setdefault((cell["scenario"], cell["server"]), []).append(cell)
    out = {}
    for key, group in groups.items():
        ok = [c for c in group if "error" not in c]
        out[key] = {
            "rounds": len(ok),
            "failed": [c["error"] for c in group if "error" in c],
            **{name: median(c.get(name) for c in ok) for name in
               ("rate", "p50", "p99", "backend_us", "nginx_us", "other_pct")},
            "max": max((c["max"] for c in ok if c.get("max") is not None), default=None),
            "rates": [c["rate"] for c in ok],
            "non2xx": sum(c["non2xx"] for c in ok),
            "socket_errors": sum(c["socket_errors"] for c in ok),
            "nginx_errors": sum(c["nginx_errors"] for c in ok),
            **{name: sum(c.get(name, 0) for c in ok) for name in
               ("upstream_errors", "timeouts", "slow_done", "slow_failed", "reloads",
                "requests")},
            "queue": max((c["midway"] for c in ok if c.get("midway") is not None), default=None),
            "stalled_s": max((c.get("stalled_s", 0) for c in group), default=0),
            "conns": merge_conns([c["conns"] for c in ok if c.get("conns")]),
            "pools": [c["pools"] for c in ok if c.get("pools")],
        }
    return out


def starvation(counts, clients: int, timeouts: int = 0, upstream_timeouts: int = 0) -> dict:
    """Whether a keep_conn cell starved connections, from the requests each client
    connection had answered (``counts``: one number per connection that had any): starved
    if fewer than ``clients`` connections were served, one was served less than
    STARVED_SHARE of the median connection, wrk counted timeouts or nginx logged upstream
    timeouts. min, median and max count a connection never served as 0 (so the median of
    a cell where 2 of 64 connections got every answer is 0, and its max says how many)."""
    served = len(counts)
    per = sorted([0] * (clients - served) + list(counts))
    mid = statistics.median(per) if per else 0
    low = sum(1 for n in per if n < STARVED_SHARE * mid)
    return {"served": served, "clients": clients, "min": per[0] if per else 0,
            "median": mid, "max": per[-1] if per else 0, "low": low,
            "timeouts": timeouts, "upstream_timeouts": upstream_timeouts,
            "starved": served < clients or low > 0 or timeouts > 0 or upstream_timeouts > 0}


def merge_conns(rounds: list[dict]) -> dict | None:
    """starvation() of several rounds as one: the worst round's served and min, the median
    of the medians, the timeouts summed, starved if any round was."""
    if not rounds:
        return None
    return {"served": min(r["served"] for r in rounds), "clients": rounds[0]["clients"],
            "min": min(r["min"] for r in rounds), "median": median(r["median"] for r in rounds),
            "max": max(r["max"] for r in rounds),
            "low": max(r["low"] for r in rounds),
            "timeouts": sum(r["timeouts"] for r in rounds),
            "upstream_timeouts": sum(r["upstream_timeouts"] for r in rounds),
            "starved": any(r["starved"] for r in rounds)}


def slow_effect(summary, server) -> dict | None:
    """/hello under one slow request in flight against without, for one server: both cells'
    p50/p99/max, p99 with ÷ without, the slow requests answered and failed; None unless both
    cells were measured."""
    slow, base = summary.get((SLOW, server)), summary.get((SLOW_BASE, server))
    if not slow or not base or slow["p99"] is None or not base["p99"]:
        return None
    return {"slow": slow, "base": base, "ratio": slow["p99"] / base["p99"],
            "done": slow["slow_done"], "failed": slow["slow_failed"]}


def shrank(pools) -> bool:
    """Whether an ondemand pool stopped idle workers during a recycle cell: in some run the
    workers after the idle wait were fewer than under load (``pools``: per round, per run
    [workers under load, workers after the wait])."""
    return any(after < busy for rnd in pools for busy, after in rnd)


def issue17_targets(summary, server="pyfpm") -> list[tuple[str, str, bool | None]]:
    """Issue 17's targets for ``server`` as (target, measured, met), met None when the run did
    not measure it."""
    rows = []
    effect = slow_effect(summary, server)
    rows.append(("keep_conn on, 2 workers, c8 + one 1.5 s request in flight: /hello p99 ≤ 2× "
                 "its p99 without",
                 f"{effect['slow']['p99']:.2f} / {effect['base']['p99']:.2f} ms = "
                 f"{effect['ratio']:.2f}×" if effect else "not measured",
                 effect["ratio"] <= 2 if effect else None))
    r = summary.get((RECYCLE, server))
    if r and r["rounds"]:
        measured = (f"{r['non2xx']} non-2xx, {r['upstream_errors']} upstream error lines "
                    f"({r['requests']:,} POSTs, {r['reloads']} reloads; pool shrank when idle: "
                    f"{'yes' if shrank(r['pools']) else 'no'})")
        met = r["non2xx"] == 0 and r["upstream_errors"] == 0 and r["socket_errors"] == 0
    else:
        measured, met = "not measured", None
    rows.append(("keep_conn on, POSTs at c16, pm.max_requests = 50, USR2 reloads, ondemand "
                 "shrinking: 0 non-2xx at wrk, 0 upstream errors in nginx's log", measured, met))
    on, off = summary.get((DJANGO_KEEP, server)), summary.get((DJANGO_OFF, server))
    both = bool(on and off and on["rate"] and off["rate"])
    rows.append(("Django with keep_conn on: p99 ≤ its p99 with keep_conn off",
                 f"{on['p99']:.2f} / {off['p99']:.2f} ms" if both else "not measured",
                 on["p99"] <= off["p99"] if both else None))
    rows.append(("Django with keep_conn on: req/s ≥ keep_conn off",
                 f"{on['rate']:,.0f} / {off['rate']:,.0f} = {on['rate'] / off['rate']:.2f}×"
                 if both else "not measured", on["rate"] >= off["rate"] if both else None))
    return rows


def start_figures(times) -> dict:
    """Median and max in ms of the start times that answered, the reasons of those that did
    not (``times``: ms, or the reason as text)."""
    ms = [t for t in times if not isinstance(t, str)]
    return {"n": len(ms), "median": median(ms), "max": max(ms) if ms else None,
            "errors": [t for t in times if isinstance(t, str)]}


def syscall_figures(entry: dict, top: int = 5) -> dict:
    """Syscalls per request of the workers (strace -c counts over the requests wrk
    completed meanwhile), the master's separately, and the workers' ``top`` syscalls."""
    if "error" in entry:
        return {"error": entry["error"]}
    n = max(entry["requests"], 1)
    workers = {k: v for k, v in entry["workers"].items() if k != "total"}
    master = entry.get("master") or {}
    return {"requests": entry["requests"],
            "per_request": sum(workers.values()) / n,
            "master_per_request": sum(v for k, v in master.items() if k != "total") / n,
            "top": [(name, calls / n) for name, calls in
                    sorted(workers.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]}


def ratio(summary, scenario, peer, ours="pyfpm"):
    a, b = summary.get((scenario, ours)), summary.get((scenario, peer))
    if not a or not b or not a["rate"] or not b["rate"]:
        return None
    return a["rate"] / b["rate"]


def own_ratio(summary, scenario, other, server="pyfpm"):
    """One server's req/s in ``scenario`` ÷ its req/s in ``other``."""
    a, b = summary.get((scenario, server)), summary.get((other, server))
    if not a or not b or not a["rate"] or not b["rate"]:
        return None
    return a["rate"] / b["rate"]


P99_SCENARIOS = ("unix-c16", "unix-c64", "tcp-c16", "params-c16")  # hello, keep_conn off


def targets(summary, memory=None, starts=None, syscalls=None) -> list[tuple[str, str, bool | None]]:
    """Issue 6's targets for pyfpm as (target, measured, met): met None when the run did not
    measure it. ``starts``/``syscalls`` are start_figures()/syscall_figures() by server."""
    rows = []

    def check(target, value, fmt, met):
        rows.append((target, "not measured" if value is None else fmt.format(value),
                     None if value is None else bool(met(value))))

    check("≥ 1.7× PHP-FPM's req/s (unix, c16)", ratio(summary, "unix-c16", "php-fpm"),
          "{:.2f}×", lambda r: r >= 1.7)
    check("≥ 1.25× uWSGI's req/s (unix, c16)", ratio(summary, "unix-c16", "uwsgi"),
          "{:.2f}×", lambda r: r >= 1.25)
    check("ahead of uWSGI at c64 (unix)", ratio(summary, "unix-c64", "uwsgi"),
          "{:.2f}×", lambda r: r > 1)
    check("ahead of uWSGI over TCP (c16)", ratio(summary, "tcp-c16", "uwsgi"),
          "{:.2f}×", lambda r: r > 1)
    ours = summary.get(("unix-c16", "pyfpm")) or {}
    check("backend CPU ≤ 22 µs per request (unix, c16)", ours.get("backend_us"),
          "{:.1f} µs", lambda us: us <= 22)
    calls = (syscalls or {}).get("pyfpm") or {}
    check("≤ 5 syscalls per hello-world request (workers, strace -c)",
          calls.get("per_request"), "{:.1f}", lambda n: n <= 5)
    p99 = [(key, summary[key, "pyfpm"]["p99"], summary[key, "php-fpm"]["p99"])
           for key in P99_SCENARIOS
           if (summary.get((key, "pyfpm")) or {}).get("p99") is not None
           and (summary.get((key, "php-fpm")) or {}).get("p99") is not None]
    rows.append(("p99 no worse than PHP-FPM's (hello, keep_conn off)",
                 "; ".join(f"{k} {a:.2f} / {b:.2f} ms" for k, a, b in p99) or "not measured",
                 all(a <= b for _, a, b in p99) if p99 else None))
    conns = (summary.get(("keep-c64", "pyfpm")) or {}).get("conns")
    rows.append(("keep_conn on, c64: no connection starves",
                 f"{conns['served']}/{conns['clients']} served, min {conns['min']:,} / median "
                 f"{conns['median']:,.0f} requests per connection, {conns['timeouts']} wrk / "
                 f"{conns['upstream_timeouts']} nginx timeouts" if conns else "not measured",
                 (not conns["starved"]) if conns else None))
    check("keep_conn on, c64: req/s above keep_conn off (unix, c64)",
          own_ratio(summary, "keep-c64", "unix-c64"), "{:.2f}×", lambda r: r > 1)
    check("TCP ≥ 80 % of unix (c16)", own_ratio(summary, "tcp-c16", "unix-c16"),
          "{:.0%}", lambda r: r >= 0.8)
    check("1 MiB upload ≥ 825 MiB/s (c16)", (summary.get(("post-c16", "pyfpm")) or {}).get("rate"),
          "{:,.0f} MiB/s", lambda r: r >= 825)
    ours = (memory or {}).get("pyfpm") or {}
    check("idle worker USS ≤ 2 MiB (preload = yes; at start, before any load)",
          (ours.get("fresh") or {}).get("uss"), "{:,.0f} KiB", lambda kb: kb <= 2048)
    check("idle worker USS ≤ 2 MiB (preload = yes; after the warm-up)", ours.get("uss"),
          "{:,.0f} KiB", lambda kb: kb <= 2048)
    start = (starts or {}).get("pyfpm") or {}
    check("start to first response ≤ 25 ms (median)", start.get("median"), "{:.1f} ms",
          lambda ms: ms <= 25)
    return rows


def floor_verdict(first: dict, second: dict | None, floor: float) -> tuple[int, list[str]]:
    """The CI guard: (exit status, lines to print) from pyfpm ÷ PHP-FPM by scenario title,
    first measured, then (``second``) measured again for those below ``floor``. Fails only
    for a scenario below the floor both times (or with no ratio at all): one noisy
    measurement on a shared CI machine does not fail the build."""
    lines, code = [], 0
    for title, r in first.items():
        text = f"pyfpm ÷ php-fpm, {title}: " + ("n/a" if r is None else f"{r:.2f}×")
        if r is not None and r >= floor:
            lines.append(text)
            continue
        again = (second or {}).get(title)
        if second is None or title not in second:
            lines.append(f"{text}, below the floor {floor:g}×")
            code = 1
        elif again is not None and again >= floor:
            lines.append(f"{text}, below the floor {floor:g}×; measured again: {again:.2f}×, "
                         f"above it: passes")
        else:
            lines.append(f"{text}, below the floor {floor:g}×; measured again: "
                         + ("n/a" if again is None else f"{again:.2f}×") + ", below it too: fails")
            code = 1
    return code, lines


def num(value, fmt="{:,.0f}"):
    return "-" if value is None else fmt.format(value)


def mib_text(rate, mib) -> str:
    """" (N MiB/s)" for a scenario whose requests or responses carry ``mib`` MiB each."""
    return "" if not mib or not rate or mib == 1 else f" ({rate * mib:,.0f} MiB/s)"


def cell_text(summary, scenario, server, failures, mib=None):
    if server in failures:
        return "not started"
    s = summary.get((scenario, server))
    if not s or s["rate"] is None:
        return "failed" if s and s["failed"] else "-"
    starved = " (starved)" if (s.get("conns") or {}).get("starved") else ""
    return f"**{s['rate']:,.0f}**" + mib_text(s["rate"], mib) + starved


def markdown(scenarios, servers, summary, memory, failures, meta, starts=None,
             syscalls=None, recycling=None) -> str:
    """The whole report: req/s with pyfpm's ratios, the details per cell, starvation under
    keep_conn, a slow request's effect, recycling and reloads, memory, start times,
    syscalls, the targets, failures. ``starts`` and ``syscalls``: start_figures() and
    syscall_figures() by server; ``recycling``: how each server recycles and reloads."""
    peers = [s for s in servers if s != "pyfpm"]
    lines = [f"### {meta['title']}", "", meta["description"], ""]
    head = ["scenario", *servers] + ([f"pyfpm ÷ {p}" for p in peers] if "pyfpm" in servers else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sc in scenarios:
        row = [sc.title] + [cell_text(summary, sc.key, s, failures, sc.mib) for s in servers]
        if "pyfpm" in servers:
            row += [num(ratio(summary, sc.key, p), "{:.2f}×") for p in peers]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Medians over the rounds. Details (latency from wrk --latency; errors summed over "
              "the rounds: wrk's non-2xx / wrk's socket errors incl. timeouts / error lines nginx "
              "logged; queue = the most connections waiting in the backend's accept queue at "
              "half time, i.e. that no worker took (`ss -l` Recv-Q); CPU from "
              "/proc/PID/schedstat of the backend's master and workers, and of nginx, over the "
              "requests wrk counted; other = the machine's busy time that was none of backend, "
              "nginx and wrk, % of one CPU):", "",
              "| scenario | server | req/s | req/s per round | p50 ms | p99 ms | errors | queue | "
              "backend µs/req | nginx µs/req | other CPU % |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for sc in scenarios:
        for server in servers:
            s = summary.get((sc.key, server))
            if server in failures or not s:
                continue
            errors = f"{s['non2xx']} / {s['socket_errors']} / {s['nginx_errors']}"
            if s["failed"]:
                errors += f"; {len(s['failed'])} round(s) failed: {s['failed'][0]}"
            if s["stalled_s"] > 0.5:
                errors += f"; stalled up to {s['stalled_s']:.1f} s before a round"
            lines.append(" | ".join([
                f"| {sc.title}", server, num(s["rate"]) + mib_text(s["rate"], sc.mib),
                " / ".join(f"{r:,.0f}" for r in s["rates"]) or "-",
                num(s["p50"], "{:.2f}"), num(s["p99"], "{:.2f}"), errors, num(s["queue"]),
                num(s["backend_us"], "{:.1f}"), num(s["nginx_us"], "{:.1f}"),
                num(s["other_pct"], "{:.0f}")]) + " |")
    counted = [(sc, server, summary[sc.key, server]["conns"]) for sc in scenarios
               for server in servers if (summary.get((sc.key, server)) or {}).get("conns")]
    if counted:
        lines += ["", "Requests per client connection under `fastcgi_keep_conn on` (nginx's "
                  "access log of `$connection` for that location, 200s only, a connection never "
                  "served counting 0; the worst round's connections served, minimum and "
                  "maximum, the median of the rounds' medians; "
                  f"starved = a connection not served or served < {STARVED_SHARE:.0%} of the "
                  "median, wrk timeouts, or nginx upstream timeouts):", "",
                  "| scenario | server | connections served | min / median / max requests "
                  "per connection | wrk / nginx timeouts | starved? |",
                  "|---|---|---|---|---|---|"]
        for sc, server, c in counted:
            lines.append(f"| {sc.title} | {server} | {c['served']} / {c['clients']} | "
                         f"{c['min']:,} / {c['median']:,.0f} / {c['max']:,} | {c['timeouts']} / "
                         f"{c['upstream_timeouts']} | {'**starved**' if c['starved'] else 'no'} |")
    effects = [(server, slow_effect(summary, server)) for server in servers]
    if any(e for _, e in effects):
        lines += ["", "One 1.5 s request in flight the whole cell (re-sent as soon as it is "
                  "answered), 2 workers, `wrk -c8` on /hello through the same location "
                  f"({FRONTS}): "
                  "/hello's latency in ms, medians over the rounds (max: the worst round's):", "",
                  "| server | without: p50 / p99 / max | with: p50 / p99 / max | p99 with ÷ "
                  "without | req/s without / with | slow requests answered / failed |",
                  "|---|---|---|---|---|---|"]
        def lat(c):
            return " / ".join(num(c[k], "{:.2f}") for k in ("p50", "p99", "max"))
        for server, e in effects:
            if not e:
                continue
            lines.append(f"| {server} | {lat(e['base'])} | {lat(e['slow'])} | "
                         f"**{e['ratio']:.2f}×** | {num(e['base']['rate'])} / "
                         f"{num(e['slow']['rate'])} | {e['done']} / {e['failed']} |")
    recycled = [(server, summary[RECYCLE, server]) for server in servers
                if (summary.get((RECYCLE, server)) or {}).get("rounds")]
    if recycled:
        lines += ["", "POSTs of 1 MiB at c16 while workers are recycled and the server reloads "
                  f"({FRONTS}; per round: 3 wrk runs, the reload signal halfway through each, then "
                  "the wait for idle workers to stop; errors summed over the rounds; workers: "
                  "under load, just before the reload → after the wait, per run):", "",
                  "| server | reload; recycling | POSTs | non-2xx | socket errors | nginx error "
                  "lines (upstream) | reloads | workers |", "|---|---|---|---|---|---|---|---|"]
        for server, r in recycled:
            pools = "; ".join(", ".join(f"{a}→{b}" for a, b in rnd) for rnd in r["pools"])
            lines.append(f"| {server} | {(recycling or {}).get(server, '')} | {r['requests']:,} | "
                         f"**{r['non2xx']}** | {r['socket_errors']} | {r['nginx_errors']} "
                         f"({r['upstream_errors']}) | {r['reloads']} | {pools} |")
    if memory:
        lines += ["", "Idle workers (median of the 2 workers; /proc/PID/smaps_rollup, USS = "
                  "private pages), MiB: right after the start, before any load, and after the "
                  "warm-up of every scenario (1 MiB uploads, 100 KiB responses):", "",
                  "| server | worker USS at start | worker USS / PSS / RSS after the warm-up "
                  "| master PSS |", "|---|---|---|---|"]
        for server in servers:
            m = memory.get(server)
            if not m:
                continue
            mib = lambda kb: num(None if kb is None else kb / 1024, "{:.1f}")  # noqa: E731
            lines.append(f"| {server} | {mib((m.get('fresh') or {}).get('uss'))} | "
                         f"{mib(m['uss'])} / {mib(m['pss'])} / {mib(m['rss'])} "
                         f"| {mib(m['master_pss'])} |")
    if starts:
        lines += ["", "Start to first response: fresh starts on a unix socket, each in its own "
                  "directory and process group; ms from Popen to the first hello-world answer "
                  "over FastCGI (polled every 2 ms):", "",
                  "| server | median ms | max ms | starts |", "|---|---|---|---|"]
        for server, f in starts.items():
            note = f"{f['n']}" + (f"; {len(f['errors'])} failed: {f['errors'][0]}"
                                  if f["errors"] else "")
            lines.append(f"| {server} | {num(f['median'], '{:.1f}')} | "
                         f"{num(f['max'], '{:.1f}')} | {note} |")
    if syscalls:
        lines += ["", "System calls per hello-world request (unix, c16, keep_conn off; "
                  "`strace -c -f` attached to the workers, and separately to the master, "
                  "while wrk ran; calls ÷ requests wrk completed; strace slows the server, "
                  "only the counts matter):", "",
                  "| server | workers | master | top syscalls of the workers, per request |",
                  "|---|---|---|---|"]
        for server, f in syscalls.items():
            if "error" in f:
                lines.append(f"| {server} | failed: {f['error']} | | |")
                continue
            top = ", ".join(f"{name} {n:.2f}" for name, n in f["top"])
            lines.append(f"| {server} | **{f['per_request']:.1f}** | "
                         f"{f['master_per_request']:.2f} | {top} |")
    for issue, rows in (("6", targets(summary, memory, starts, syscalls)),
                        ("17", issue17_targets(summary))):
        if "pyfpm" not in servers or all(met is None for _, _, met in rows):
            continue  # none of that issue's scenarios in this run
        lines += ["", f"Issue {issue}'s targets for pyfpm, from this run:", "",
                  "| target | measured | met? |", "|---|---|---|"]
        for target, measured, met in rows:
            verdict = "-" if met is None else ("yes" if met else "**no**")
            lines.append(f"| {target} | {measured} | {verdict} |")
    if failures:
        lines += ["", "Not started:", ""]
        lines += [f"- {server}: {why}" for server, why in failures.items()]
    return "\n".join(lines) + "\n"


def chart(path: Path, scenarios, servers, summary, title: str) -> str | None:
    """A PNG of req/s per scenario, one panel each (their scales differ: the 1 MiB POST is
    ~30× fewer requests); None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    colours = {"pyfpm": "#2b7bb9", "php-fpm": "#8892bf", "uwsgi": "#e0a030", "flup": "#999999",
               "gunicorn": "#499848", "granian": "#c0504d", "granian-1t": "#e08a88"}
    cols = min(len(scenarios), 5)
    rows = math.ceil(len(scenarios) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 0.6, 3.6 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(scenarios):]:
        ax.set_visible(False)
    for ax, sc in zip(flat, scenarios):
        cells = [summary.get((sc.key, s)) or {} for s in servers]
        rates = [c.get("rate") or 0 for c in cells]
        bars = ax.bar(range(len(servers)), rates, color=[colours.get(s, "#666") for s in servers])
        for bar, rate, c in zip(bars, rates, cells):
            label = f"{rate:,.0f}" + mib_text(rate, sc.mib).replace(" (", "\n(") if rate else "n/a"
            if (c.get("conns") or {}).get("starved"):
                label += "\nstarved"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, rate),
                        ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(servers)), servers, rotation=30, fontsize=8)
        ax.set_title(textwrap.fill(sc.title, 34), fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.15)
    for row in axes:
        row[0].set_ylabel("req/s (median)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
