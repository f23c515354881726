"""`halflife bench report`: a markdown report with plots from the latest result of each bench.

    halflife bench report [--results-dir bench/results] [--output bench/results/report.md]

Reads the newest `*-<name>.json` of hotpath, baseline, e2e, collector and workload, writes the
report with a headline table against the targets of the benchmark issue and PNG plots next to it
(throughput against the idiomatic baseline, latency against offered rate, state bytes per contact).
The plots need matplotlib (in the `dev` and `bench` extras); `plot_data` computes what they show,
so everything but the rendering is exercised without it.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
from pathlib import Path
from typing import Any

import orjson

from bench.common import RESULTS_DIR, new_result, write_result

NAMES = ("hotpath", "baseline", "e2e", "collector", "workload")
TARGETS = {
    "hot path events/s per core": (1_000_000, ">="),
    "halflife / idiomatic bytewax (same run)": (10.0, ">="),
    "e2e through Redis, events/s": (300_000, ">="),
    "p99 event->trigger at 50% of max, ms": (250.0, "<="),
    "state bytes per contact (1M contacts)": (256.0, "<="),
}


def latest(results_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for name in NAMES:
        files = sorted(glob.glob(str(results_dir / f"*-{name}.json")))
        if files:
            data = orjson.loads(Path(files[-1]).read_bytes())
            data["_file"] = os.path.basename(files[-1])
            out[name] = data
    return out


def headline(results: dict[str, dict[str, Any]]) -> list[tuple[str, float, float, str, bool | None, str]]:
    """(figure, value, target, comparison, met, source) per target; value NaN when not measured."""
    nan = float("nan")
    hot = results.get("hotpath", {})
    base = results.get("baseline", {})
    e2e = results.get("e2e", {})
    runs = e2e.get("runs", [])
    # The configuration with the highest sustainable rate (fewer processes on a tie) gives both e2e figures.
    best: dict[str, Any] = max(runs, key=lambda r: (r.get("max_sustainable_rate", 0.0), -r["processes"]), default={})
    half_p99 = ((best.get("half_load") or {}).get("latency", {}).get("at_event", {}).get("p99", nan))
    values = {
        "hot path events/s per core": (hot.get("hotpath", {}).get("per_core_events_per_s", nan), "hotpath"),
        "halflife / idiomatic bytewax (same run)": (base.get("ratio", nan), "baseline"),
        "e2e through Redis, events/s": (best.get("max_sustainable_rate", nan), "e2e"),
        "p99 event->trigger at 50% of max, ms": (half_p99, "e2e"),
        "state bytes per contact (1M contacts)": (hot.get("state", {}).get("bytes_per_contact", nan), "hotpath"),
    }
    rows = []
    for name, (target, cmp) in TARGETS.items():
        value, source = values[name]
        met = None if value != value else (value >= target if cmp == ">=" else value <= target)
        rows.append((name, value, target, cmp, met, results.get(source, {}).get("_file", "-")))
    return rows


def plot_data(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the plots show, as plain data."""
    data: dict[str, Any] = {}
    base = results.get("baseline")
    if base:
        data["throughput"] = {
            "labels": ["halflife", "idiomatic bytewax"],
            "events_per_s": [base["halflife"]["events_per_s"], base["baseline"]["events_per_s"]],
            "per_core": [base["halflife"]["per_core_events_per_s"], base["baseline"]["per_core_events_per_s"]],
            "ratio": base.get("ratio"),
            "equal": base.get("triggers", {}).get("equal"),
        }
    e2e = results.get("e2e")
    if e2e:
        series = []
        for run in e2e.get("runs", []):
            steps = sorted(run["steps"], key=lambda s: s["rate"])
            series.append({
                "processes": run["processes"],
                "rate": [s["rate"] for s in steps],
                "p50": [s["latency"]["at_event"].get("p50", math.nan) for s in steps],
                "p99": [s["latency"]["at_event"].get("p99", math.nan) for s in steps],
                "sustainable": [s["sustainable"] for s in steps],
                "max_rate": run.get("max_sustainable_rate", 0.0),
            })
        data["latency"] = series
    hot = results.get("hotpath")
    if hot and hot.get("state"):
        per = hot["state"]["breakdown_bytes_per_contact"]
        top = sorted(per.items(), key=lambda kv: -kv[1])[:10]
        rest = sum(per.values()) - sum(v for _, v in top)
        data["state"] = {"labels": [k for k, _ in top] + (["other"] if rest > 0 else []),
                         "bytes_per_contact": [v for _, v in top] + ([rest] if rest > 0 else []),
                         "contacts": hot["state"]["contacts"]}
    return data


def render(data: dict[str, Any], out_dir: Path) -> list[str]:
    """PNG files of the plots (needs matplotlib); returns their names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    if "throughput" in data:
        t = data["throughput"]
        fig, ax = plt.subplots(figsize=(7, 4))
        x = range(len(t["labels"]))
        ax.bar([i - 0.2 for i in x], t["events_per_s"], width=0.4, label="events/s (wall)", color="#2b6cb0")
        ax.bar([i + 0.2 for i in x], t["per_core"], width=0.4, label="events/s per core (CPU)", color="#90cdf4")
        ax.set_xticks(list(x), t["labels"])
        ax.set_ylabel("events per second")
        same = "same triggers" if t.get("equal") else "TRIGGERS DIFFER"
        ax.set_title(f"Same workload and rules, {same}: halflife is {t['ratio']:.1f}x")
        for i, v in enumerate(t["events_per_s"]):
            ax.annotate(f"{v:,.0f}", (i - 0.2, v), ha="center", va="bottom", fontsize=8)
        for i, v in enumerate(t["per_core"]):
            ax.annotate(f"{v:,.0f}", (i + 0.2, v), ha="center", va="bottom", fontsize=8)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "throughput.png", dpi=110)
        plt.close(fig)
        files.append("throughput.png")
    if data.get("latency"):
        fig, ax = plt.subplots(figsize=(7, 4))
        for i, s in enumerate(data["latency"]):
            color = f"C{i}"
            ax.plot(s["rate"], s["p99"], marker="o", color=color, label=f"p99, {s['processes']} process(es)")
            ax.plot(s["rate"], s["p50"], marker=".", linestyle="--", color=color,
                    label=f"p50, {s['processes']} process(es)")
            if s["max_rate"]:
                ax.axvline(s["max_rate"], color="grey", linewidth=0.8, linestyle=":")
        ax.axhline(250, color="red", linewidth=0.8, label="target p99 250 ms")
        ax.set_xlabel("offered rate, events/s (dotted: max sustainable)")
        ax.set_ylabel("event -> trigger latency, ms")
        ax.set_yscale("log")
        ax.set_title("Latency against offered load (Redis end to end)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "latency.png", dpi=110)
        plt.close(fig)
        files.append("latency.png")
    if "state" in data:
        s = data["state"]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.barh(s["labels"][::-1], s["bytes_per_contact"][::-1], color="#68d391")
        ax.axvline(256, color="red", linewidth=0.8, label="target: 256 bytes in all")
        ax.set_xlabel("bytes per contact")
        ax.set_title(f"State per contact: {sum(s['bytes_per_contact']):,.0f} bytes ({s['contacts']:,} contacts)",
                     fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "state.png", dpi=110)
        plt.close(fig)
        files.append("state.png")
    return files


def _fmt(v: float) -> str:
    if v != v:
        return "not measured"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:,.1f}"


def markdown(results: dict[str, dict[str, Any]], images: list[str]) -> str:
    lines = ["# halflife benchmark report", ""]
    lines.append("Figures from the latest result of each bench (`halflife bench …`); files under bench/results/.")
    lines.append("")
    lines.append("| figure | measured | target | met | from |")
    lines.append("|---|---:|---:|:---:|---|")
    for name, value, target, cmp, met, src in headline(results):
        mark = "-" if met is None else ("yes" if met else "**no**")
        lines.append(f"| {name} | {_fmt(value)} | {cmp} {_fmt(target)} | {mark} | {src} |")
    lines.append("")
    for img in images:
        lines.append(f"![{img[:-4]}]({img})")
        lines.append("")
    hot = results.get("hotpath")
    if hot:
        h = hot["hotpath"]
        lines += ["## Hot path (in-process dataflow)", "",
                  f"`{hot.get('command', 'halflife bench hotpath')}`: {h['events']:,} events, "
                  f"{h['events_per_s']:,.0f} events/s wall, {h['cpu_s_per_million']:.2f} CPU s per million events "
                  f"= **{h['per_core_events_per_s']:,.0f} events/s per core**.", "",
                  "| stage | seconds | s per million events |", "|---|---:|---:|"]
        for k, v in h["stages_s"].items():
            lines.append(f"| {k} | {v:.2f} | {v / h['events'] * 1e6:.2f} |")
        st = hot.get("state")
        if st:
            lines += ["", f"State: {st['contacts']:,} contacts, **{st['bytes_per_contact']:,.0f} bytes per contact** "
                          f"({st['bytes_total'] / 2**20:,.0f} MiB).", "", "| held by | bytes per contact |", "|---|---:|"]
            for k, v in list(st["breakdown_bytes_per_contact"].items())[:15]:
                lines.append(f"| {k} | {v:,.1f} |")
        lines.append("")
    base = results.get("baseline")
    if base:
        tr = base["triggers"]
        lines += ["## Against idiomatic bytewax", "",
                  f"`{base.get('command', 'halflife bench baseline')}`: {base['halflife']['events']:,} events; triggers "
                  f"equal: **{'yes' if tr['equal'] else 'NO'}** ({tr['halflife']:,} records).", "",
                  "| dataflow | events/s | CPU s per million | events/s per core |", "|---|---:|---:|---:|",
                  f"| halflife | {base['halflife']['events_per_s']:,.0f} | {base['halflife']['cpu_s_per_million']:.2f} | "
                  f"{base['halflife']['per_core_events_per_s']:,.0f} |",
                  f"| idiomatic bytewax | {base['baseline']['events_per_s']:,.0f} | "
                  f"{base['baseline']['cpu_s_per_million']:.2f} | {base['baseline']['per_core_events_per_s']:,.0f} |",
                  "", f"Ratio: **{base['ratio']:.1f}x** (per core {base['ratio_per_core']:.1f}x).", ""]
    e2e = results.get("e2e")
    if e2e:
        lines += ["## End to end through Redis", "", f"`{e2e.get('command', 'halflife bench e2e')}`", "",
                  "| processes | step | offered events/s | backlog flat | p50 ms | p99 ms | p99.9 ms | max ms |",
                  "|---:|---|---:|:---:|---:|---:|---:|---:|"]
        for run in e2e["runs"]:
            for s in run["steps"]:
                ev = s["latency"]["at_event"]
                lines.append(f"| {run['processes']} | {s['name']} | {s['rate']:,.0f} | "
                             f"{'yes' if s['sustainable'] else 'no'} | {_fmt(ev.get('p50', math.nan))} | "
                             f"{_fmt(ev.get('p99', math.nan))} | {_fmt(ev.get('p99.9', math.nan))} | "
                             f"{_fmt(ev.get('max', math.nan))} |")
        lines.append("")
    col = results.get("collector")
    if col:
        c = col["collector"]
        lines += ["## Collector", "", f"`{col.get('command', 'halflife bench collector')}` ({c['driver']}): "
                  f"**{c['events_per_s']:,.0f} events/s** accepted, request p50 {_fmt(c['p50_ms'])} ms, "
                  f"p99 {_fmt(c['p99_ms'])} ms, collector {_fmt(c['collector_cpu_s_per_million'])} CPU s per million "
                  f"events.", ""]
    wl = results.get("workload")
    if wl:
        lines += ["## Workload generator", ""]
        for r in wl["runs"]:
            per_cpu = r.get("events_per_cpu_s")
            cpu = f", {per_cpu:,.0f} events per CPU second" if per_cpu and per_cpu == per_cpu else ""
            lines.append(f"* {r['jobs']} job(s): {r['events']:,} events in {r['seconds']:.2f} s = "
                         f"**{r['events_per_s']:,.0f} events/s**{cpu} ({r.get('bytes_per_event', 0):.0f} bytes/event)")
        lines.append("")
    for name, data in results.items():
        load = data.get("machine", {}).get("loadavg_1m_at_start")
        if load is not None and load > 1.5:
            lines.append(f"> note: {name} started with a 1-minute load average of {load} on "
                         f"{data['machine'].get('cpus')} CPUs: other work was running.")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    results_dir = Path(args.results_dir) if args.results_dir else RESULTS_DIR
    results = latest(results_dir)
    out = Path(args.output) if args.output else results_dir / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = plot_data(results)
    try:
        images = render(data, out.parent)
    except ImportError:
        images = []
        print("matplotlib is not installed: the report has no plots (pip install -e '.[bench]')")
    out.write_text(markdown(results, images))
    summary = new_result("report", args)
    summary.update({"report": str(out), "images": images, "sources": {k: v["_file"] for k, v in results.items()},
                    "headline": [list(r) for r in headline(results)]})
    write_result("report", summary, results_dir)
    print(f"halflife bench report: {out} ({len(images)} plots) from {', '.join(sorted(results)) or 'no results'}")
    for name, value, target, cmp, met, _src in headline(results):
        print(f"  {name:<42} {_fmt(value):>14}  target {cmp} {_fmt(target):<10} "
              f"{'' if met is None else ('met' if met else 'MISSED')}")
    return 0
