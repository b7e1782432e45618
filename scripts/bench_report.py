#!/usr/bin/env python3
"""Runs every benchmark executable and prints the tables, in three sections:

1. eventbus against the alternatives (HEADLINE_EXECUTABLE, bench/bus.cpp): per scenario, each
   variant's ns per event (median over the repetitions), its time divided by the scenario's
   reference (the fastest of the variants listed in HEADLINE_REFERENCES: a hand-written
   mutex + deque bus for BM_SyncTyped, the faster of mutex_cv_queue and moodycamel_blocking for
   BM_AsyncTyped), and max / min of ns per event over the repetitions (how stable the row is).
2. Peer queues and pools (bench/ring_buffer.cpp, bench/event_store.cpp): benchmark, ns per item
   (median over the repetitions), and for each peer row the ratio of the peer's time to ours in
   the same scenario.
3. The twins of GoEventBus's benchmarks (bench/go_twins.cpp), which have no peers: benchmark and
   ns per event (median).

Called by scripts/bench, which builds the executables and passes, through the environment:
  EVENTBUS_BENCH_DIR            directory holding bench_* executables
  EVENTBUS_BENCH_RESULTS        directory for the raw JSON, the table (table.md) and the chart (SVG)
  EVENTBUS_BENCH_ARGS           Google Benchmark arguments (repetitions, or a tiny min time for
                                --smoke)
  EVENTBUS_BENCH_HEADLINE_ARGS  the same for HEADLINE_EXECUTABLE (default: EVENTBUS_BENCH_ARGS);
                                its JSON must keep every repetition (no
                                --benchmark_report_aggregates_only) for max / min

Benchmark names follow `<scenario>/<variant>[/real_time]`. In section 2, rows whose queue starts
with `eventbus` are ours and the reference for a scenario's ratios is its first eventbus row in
REFERENCE_ORDER.

A benchmark that fails its checks, or an executable that fails, is left out of the tables and
listed after them ("FAILED"); the exit status is then 1.

The rows of TWINS_EXECUTABLE are named `BM_<Name>/<event kind>[/threads:<T>]` and count one item
per event, so their ns per item is ns per event. They are listed by name, a name's event kinds
together, in the order the executable ran them.
"""

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REFERENCE_ORDER = ["eventbus_return_error", "eventbus_block", "eventbus_drop_oldest"]
TWINS_EXECUTABLE = "bench_go_twins"
HEADLINE_EXECUTABLE = "bench_bus"
# Scenario of HEADLINE_EXECUTABLE -> the variants whose fastest (lowest median) is its reference.
HEADLINE_REFERENCES = {
    "BM_SyncTyped": ["mutex_deque_bus"],
    "BM_AsyncTyped": ["mutex_cv_queue", "moodycamel_blocking"],
}

# What did not run or failed its checks: left out of the tables, listed after them.
FAILURES: list[str] = []


def run(executable: Path, results: Path, args: list[str]) -> Path:
    out = results / f"{executable.name}.json"
    cmd = [str(executable), *args, f"--benchmark_out={out}", "--benchmark_out_format=json"]
    out.unlink(missing_ok=True)  # never read a previous run's results
    print(f"== {' '.join(shlex.quote(c) for c in cmd)}", file=sys.stderr, flush=True)
    status = subprocess.run(cmd, check=False, stdout=sys.stderr).returncode
    if status != 0:
        FAILURES.append(f"{executable.name}: exit status {status}")
    return out


def entries(json_file: Path) -> list[dict]:
    """The rows of a results file, without the benchmarks that failed (any repetition), which
    go to FAILURES instead."""
    try:
        data = json.loads(json_file.read_text())
    except (OSError, ValueError) as error:
        FAILURES.append(f"{json_file.name}: no results ({error})")
        return []
    rows = data.get("benchmarks", [])
    failed: dict[str, str] = {}
    for entry in rows:
        if entry.get("error_occurred"):
            failed.setdefault(entry.get("run_name", entry["name"]), entry.get("error_message", ""))
    FAILURES.extend(f"{name}: {message}" for name, message in failed.items())
    return [e for e in rows if e.get("run_name", e["name"]) not in failed and not e.get("error_occurred")]


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
    singles: dict[str, float] = {}
    medians: dict[str, float] = {}
    for entry in entries(json_file):
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


def collect_repetitions(json_file: Path) -> dict[str, list[float]]:
    """Benchmark name -> ns per item of each repetition (one entry when not repeated), in the
    order the executable ran them. A JSON written with --benchmark_report_aggregates_only has no
    repetitions: its rows get their median aggregate as their only value."""
    runs: dict[str, list[float]] = {}
    medians: dict[str, float] = {}
    for entry in entries(json_file):
        name = entry.get("run_name", entry["name"])
        if entry.get("run_type") != "aggregate":
            runs.setdefault(name, []).append(ns_per_item(entry))
        elif entry.get("aggregate_name") == "median":
            medians.setdefault(name, ns_per_item(entry))
    for name, ns in medians.items():
        runs.setdefault(name, [ns])
    return runs


def headline_table(runs: dict[str, list[float]]) -> list[tuple[str, float, str, str]]:
    """eventbus against the alternatives: (row, median ns per event, time / reference, max / min
    over the repetitions), scenarios and variants in run order."""
    by_scenario: dict[str, dict[str, list[float]]] = {}
    for name, values in runs.items():
        scenario, variant = split(name)
        by_scenario.setdefault(scenario, {})[variant] = values
    out = []
    for scenario, variants in by_scenario.items():
        medians = {variant: statistics.median(values) for variant, values in variants.items()}
        candidates = [v for v in HEADLINE_REFERENCES.get(scenario, []) if v in medians]
        reference = min(candidates, key=lambda v: medians[v]) if candidates else None
        for variant, values in variants.items():
            if reference is None:
                ratio = ""
            elif variant == reference:
                ratio = "1.00x (reference)"
            else:
                ratio = f"{medians[variant] / medians[reference]:.2f}x vs {reference}"
            spread = f"{max(values) / min(values):.2f} ({len(values)} runs)" if len(values) > 1 else ""
            out.append((f"{scenario}/{variant}", medians[variant], ratio, spread))
    return out


def markdown(
    headline: list[tuple[str, float, str, str]],
    lines: list[tuple[str, float, str]],
    twins: list[tuple[str, float]],
    medians: bool = True,
) -> str:
    sections = []
    stat = "median" if medians else "single run"
    if headline:
        repeated = any(spread for *_, spread in headline)
        text = (
            "eventbus against the alternatives (bench/bus.cpp; every row in one binary, the same\n"
            "price_tick payload and handler). Time / reference below 1.00x: faster than the\n"
            "reference. Max / min: slowest over fastest repetition.\n\n"
            f"| benchmark | ns per event ({'median' if repeated else 'single run'}) "
            "| time / reference | max / min |\n|---|---:|---|---|\n"
        )
        for name, ns, ratio, spread in headline:
            text += f"| {name} | {ns:.1f} | {ratio} | {spread} |\n"
        sections.append(text)
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
    if FAILURES:
        text = "FAILED, left out of the tables:\n\n"
        text += "".join(f"- {failure}\n" for failure in FAILURES)
        sections.append(text)
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
    headline_args = shlex.split(os.environ.get("EVENTBUS_BENCH_HEADLINE_ARGS", "")) or args
    results.mkdir(parents=True, exist_ok=True)
    executables = sorted(p for p in bench_dir.glob("bench_*") if p.is_file() and os.access(p, os.X_OK))
    if not executables:
        print(f"error: no benchmark executables in {bench_dir}", file=sys.stderr)
        return 1
    headline_runs: dict[str, list[float]] = {}
    rows: dict[str, float] = {}
    twin_rows: dict[str, float] = {}
    all_medians = True
    for exe in executables:
        if exe.name == HEADLINE_EXECUTABLE:
            headline_runs.update(collect_repetitions(run(exe, results, headline_args)))
            continue
        collected, medians = collect(run(exe, results, args))
        all_medians = all_medians and medians
        (twin_rows if exe.name == TWINS_EXECUTABLE else rows).update(collected)
    headline = headline_table(headline_runs)
    lines = table(rows)
    twins = twin_table(twin_rows)
    text = markdown(headline, lines, twins, all_medians)
    (results / "table.md").write_text(text)
    print(text)
    bars = [(name, ns, "") for name, ns, _, _ in headline] + lines
    chart(bars + [(name, ns, "") for name, ns in twins], results / "benchmarks.svg")
    print(f"raw JSON, table.md and benchmarks.svg in {results}", file=sys.stderr)
    if FAILURES:
        print(f"error: {len(FAILURES)} failure(s), listed after the tables", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
