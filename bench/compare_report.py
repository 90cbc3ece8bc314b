"""bench/compare.py's report: medians over rounds per scenario and server, pyfpm's ratio to
each peer, as markdown tables and a PNG bar chart. Pure functions of the measured cells."""

from __future__ import annotations

import statistics
from pathlib import Path


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
            **{name: median(c[name] for c in ok) for name in
               ("rate", "p50", "p99", "backend_us", "nginx_us", "other_pct")},
            "rates": [c["rate"] for c in ok],
            "non2xx": sum(c["non2xx"] for c in ok),
            "socket_errors": sum(c["socket_errors"] for c in ok),
            "nginx_errors": sum(c["nginx_errors"] for c in ok),
            "queue": max((c["midway"] for c in ok if c["midway"] is not None), default=None),
            "stalled_s": max((c.get("stalled_s", 0) for c in group), default=0),
        }
    return out


def ratio(summary, scenario, peer, ours="pyfpm"):
    a, b = summary.get((scenario, ours)), summary.get((scenario, peer))
    if not a or not b or not a["rate"] or not b["rate"]:
        return None
    return a["rate"] / b["rate"]


def num(value, fmt="{:,.0f}"):
    return "-" if value is None else fmt.format(value)


def cell_text(summary, scenario, server, failures):
    if server in failures:
        return "not started"
    s = summary.get((scenario, server))
    if not s or s["rate"] is None:
        return "failed" if s and s["failed"] else "-"
    return f"**{s['rate']:,.0f}**"


def markdown(scenarios, servers, summary, memory, failures, meta) -> str:
    """The whole report: req/s with pyfpm's ratios, the details per cell, memory, failures."""
    peers = [s for s in servers if s != "pyfpm"]
    lines = [f"### {meta['title']}", "", meta["description"], ""]
    head = ["scenario", *servers] + ([f"pyfpm ÷ {p}" for p in peers] if "pyfpm" in servers else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sc in scenarios:
        row = [sc.title] + [cell_text(summary, sc.key, s, failures) for s in servers]
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
                f"| {sc.title}", server, num(s["rate"]),
                " / ".join(f"{r:,.0f}" for r in s["rates"]) or "-",
                num(s["p50"], "{:.2f}"), num(s["p99"], "{:.2f}"), errors, num(s["queue"]),
                num(s["backend_us"], "{:.1f}"), num(s["nginx_us"], "{:.1f}"),
                num(s["other_pct"], "{:.0f}")]) + " |")
    if memory:
        lines += ["", "Idle workers after the warm-up (median of the 2 workers; "
                  "/proc/PID/smaps_rollup, USS = private pages), MiB:", "",
                  "| server | worker USS | worker PSS | worker RSS | master PSS |",
                  "|---|---|---|---|---|"]
        for server in servers:
            m = memory.get(server)
            if not m:
                continue
            mib = lambda kb: num(None if kb is None else kb / 1024, "{:.1f}")  # noqa: E731
            lines.append(f"| {server} | {mib(m['uss'])} | {mib(m['pss'])} | {mib(m['rss'])} "
                         f"| {mib(m['master_pss'])} |")
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
    colours = {"pyfpm": "#2b7bb9", "php-fpm": "#8892bf", "uwsgi": "#e0a030", "flup": "#999999"}
    fig, axes = plt.subplots(1, len(scenarios), figsize=(3.2 * len(scenarios) + 0.6, 3.6),
                             squeeze=False)
    for ax, sc in zip(axes[0], scenarios):
        rates = [(summary.get((sc.key, s)) or {}).get("rate") or 0 for s in servers]
        bars = ax.bar(range(len(servers)), rates, color=[colours.get(s, "#666") for s in servers])
        for bar, rate in zip(bars, rates):
            ax.annotate(f"{rate:,.0f}" if rate else "n/a", (bar.get_x() + bar.get_width() / 2, rate),
                        ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(servers)), servers, rotation=30, fontsize=8)
        ax.set_title(sc.title, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.15)
    axes[0][0].set_ylabel("req/s (median)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
