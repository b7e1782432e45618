#!/usr/bin/env python3
"""Runs every benchmark executable and prints one table in two sections: benchmark, ns per item
(median over the repetitions), and for each peer row the ratio of the peer's time to ours in the
same scenario; then the twins of GoEventBus's benchmarks, which have no peers: benchmark and ns per
event (median).

Called by scripts/bench, which builds the executables and passes, through the environment:
  EVENTBUS_BENCH_DIR      directory holding bench_* executables
  EVENTBUS_BENCH_RESULTS  directory for the raw JSON, the table (table.md) and the chart (SVG)
  EVENTBUS_BENCH_ARGS     Google Benchmark arguments (repetitions, or a tiny min time for --smoke)

Benchmark names follow `<scenario>/<queue>[/real_time]`; rows whose queue starts with `eventbus`
are ours. The reference for a scenario's ratios is its first eventbus row in REFERENCE_ORDER.

The rows of TWINS_EXECUTABLE (bench/go_twins.cpp) are named `BM_<Name>/<event kind>[/threads:<T>]`
and count one item per event, so their ns per item is ns per event. They are listed by name, a
name's event kinds together, in the order the executable ran them.

After them come issue 6's goals, computed from the same numbers: BM_EventStore_Sync/typed over the
floor BM_HandlerCall/std_function (the same handler called directly through a std::function; goal
at most 3x) and BM_EventStore_Sync/dynamic over BM_EventStore_Sync/typed (goal at least 10x). The
ratios are printed whether or not a goal is met.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REFERENCE_ORDER = ["eventbus_return_error", "eventbus_block", "eventbus_drop_oldest"]
TWINS_EXECUTABLE = "bench_go_twins"

# Issue 6: (label, numerator row, denominator row, goal text, predicate on the ratio). Rows are
# (name, kind) as split() returns them.
SYNC_TYPED = ("BM_EventStore_Sync", "typed")
SYNC_DYNAMIC = ("BM_EventStore_Sync", "dynamic")
HANDLER_FLOOR = ("BM_HandlerCall", "std_function")
ISSUE6_GOALS = [
    ("typed / floor", SYNC_TYPED, HANDLER_FLOOR, "≤ 3x", lambda r: r <= 3.0),
    ("dynamic / typed", SYNC_DYNAMIC, SYNC_TYPED, "≥ 10x", lambda r: r >= 10.0),
]


def run(executable: Path, results: Path, args: list[str]) -> Path:
    out = results / f"{executable.name}.json"
    cmd = [str(executable), *args, f"--benchmark_out={out}", "--benchmark_out_format=json"]
    print(f"== {' '.join(shlex.quote(c) for c in cmd)}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    return out


def ns_per_item(entry: dict) -> float:
    ips = entry.get("items_per_second")
    if ips:
        return 1e9 / ips
    # No items counted: fall back to the time per iteration, converted to ns.
    scale = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}[entry.get("time_unit", "ns")]
    return entry["real_time"] * scale


def collect(json_file: Path) -> tuple[dict[str, float], bool]:
    """Benchmark name -> ns per item: the median aggregate when repeated, else the single run;
    and whether every row is a median."""
    data = json.loads(json_file.read_text())
    singles: dict[str, float] = {}
    medians: dict[str, float] = {}
    for entry in data.get("benchmarks", []):
        if entry.get("error_occurred"):
            raise SystemExit(f"benchmark failed: {entry['name']}: {entry.get('error_message')}")
        name = entry.get("run_name", entry["name"])
        if entry.get("run_type") == "aggregate":
            if entry.get("aggregate_name") == "median":
                medians[name] = ns_per_item(entry)
        else:
            singles.setdefault(name, ns_per_item(entry))
    return {**singles, **medians}, set(singles) <= set(medians)


def split(name: str) -> tuple[str, str]:
    parts = [p for p in name.split("/") if p not in ("real_time", "manual_time")]
    return parts[0], "/".join(parts[1:]) or parts[0]


def table(rows: dict[str, float]) -> list[tuple[str, float, str]]:
    by_scenario: dict[str, list[tuple[str, float]]] = {}
    for name, ns in rows.items():
        scenario, queue = split(name)
        by_scenario.setdefault(scenario, []).append((queue, ns))
    out = []
    for scenario, entries in by_scenario.items():
        ours = {q: ns for q, ns in entries if q.startswith("eventbus")}
        ref_name = next((q for q in REFERENCE_ORDER if q in ours), next(iter(ours), None))
        for queue, ns in entries:
            if queue.startswith("eventbus") or ref_name is None:
                ratio = ""
            else:
                ratio = f"{ns / ours[ref_name]:.2f}x vs {ref_name}"
            out.append((f"{scenario}/{queue}", ns, ratio))
    return out


def twin_table(rows: dict[str, float]) -> list[tuple[str, float]]:
    """GoEventBus twins: no ratios; grouped by name (first-seen order), kinds in run order."""
    by_name: dict[str, list[tuple[str, float]]] = {}
    for name, ns in rows.items():
        scenario, kind = split(name)
        by_name.setdefault(scenario, []).append((f"{scenario}/{kind}", ns))
    return [row for entries in by_name.values() for row in entries]


def issue6_goals(rows: dict[str, float], medians: bool) -> str:
    """Issue 6's ratios from the twins' rows, met or not; empty if a row did not run."""
    by_row = {split(name): ns for name, ns in rows.items()}
    needed = {SYNC_TYPED, SYNC_DYNAMIC, HANDLER_FLOOR}
    missing = sorted("/".join(row) for row in needed if row not in by_row)
    if missing:
        return f"Issue 6 goals: not computed, rows missing: {', '.join(missing)}\n"
    source = "medians" if medians else "single runs, NOT medians (use repetitions for numbers)"
    text = (
        "Issue 6 goals: BM_EventStore_Sync (subscribe + publish + handler, per event) against the\n"
        "floor BM_HandlerCall/std_function (the same typed handler called directly through a\n"
        f"std::function), from {source}:\n\n"
        "| ratio | measured | ns per event | goal | met |\n|---|---:|---|---|---|\n"
    )
    for label, top, bottom, goal, met in ISSUE6_GOALS:
        ratio = by_row[top] / by_row[bottom]
        ns = f"{by_row[top]:.1f} / {by_row[bottom]:.1f}"
        text += f"| {label} | {ratio:.2f}x | {ns} | {goal} | {'yes' if met(ratio) else 'no'} |\n"
    return text


def markdown(
    lines: list[tuple[str, float, str]],
    twins: list[tuple[str, float]],
    goals: str = "",
    medians: bool = True,
) -> str:
    sections = []
    stat = "median" if medians else "single run"
    if lines:
        text = f"| benchmark | ns per item ({stat}) | peer time / ours |\n|---|---:|---|\n"
        for name, ns, ratio in lines:
            text += f"| {name} | {ns:.1f} | {ratio} |\n"
        sections.append(text)
    if twins:
        text = "GoEventBus benchmarks, twinned (bench/go_twins.cpp):\n\n"
        text += f"| benchmark | ns per event ({stat}) |\n|---|---:|\n"
        for name, ns in twins:
            text += f"| {name} | {ns:.1f} |\n"
        sections.append(text)
    if goals:
        sections.append(goals)
    return "\n".join(sections)


def chart(lines: list[tuple[str, float, str]], svg: Path) -> None:
    if shutil.which("gnuplot") is None:
        print("gnuplot not found: no chart", file=sys.stderr)
        return
    data = svg.with_suffix(".dat")
    data.write_text("".join(f'"{name.removeprefix("BM_")}" {ns:.3f}\n' for name, ns, _ in reversed(lines)))
    height = 120 + 18 * len(lines)
    # Horizontal bars on a log axis, drawn as boxes from 1 ns to the value.
    script = f"""
set terminal svg size 900,{height} dynamic noenhanced font 'sans,11'
set output '{svg}'
set title 'eventbus benchmarks: ns per item, median (lower is better)'
set style fill solid 0.8 border -1
set yrange [-0.8:{len(lines) - 0.2}]
set logscale x
set xrange [1:*]
set lmargin 36
set xlabel 'ns per item (log scale)'
set grid xtics
unset key
plot '{data}' using 2:0:(1):2:($0-0.35):($0+0.35):yticlabels(1) with boxxyerror lc rgb '#3a7bd5'
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)


def main() -> int:
    bench_dir = Path(os.environ["EVENTBUS_BENCH_DIR"])
    results = Path(os.environ["EVENTBUS_BENCH_RESULTS"])
    args = shlex.split(os.environ.get("EVENTBUS_BENCH_ARGS", ""))
    results.mkdir(parents=True, exist_ok=True)
    executables = sorted(p for p in bench_dir.glob("bench_*") if p.is_file() and os.access(p, os.X_OK))
    if not executables:
        print(f"error: no benchmark executables in {bench_dir}", file=sys.stderr)
        return 1
    rows: dict[str, float] = {}
    twin_rows: dict[str, float] = {}
    all_medians = True
    for exe in executables:
        collected, medians = collect(run(exe, results, args))
        all_medians = all_medians and medians
        (twin_rows if exe.name == TWINS_EXECUTABLE else rows).update(collected)
    lines = table(rows)
    twins = twin_table(twin_rows)
    goals = issue6_goals(twin_rows, all_medians) if twin_rows else ""
    text = markdown(lines, twins, goals, all_medians)
    (results / "table.md").write_text(text)
    print(text)
    chart(lines + [(name, ns, "") for name, ns in twins], results / "benchmarks.svg")
    print(f"raw JSON, table.md and benchmarks.svg in {results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
