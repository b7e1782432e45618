#!/usr/bin/env python3
"""Runs every benchmark executable and prints its tables as soon as it has finished.

Each executable's raw output goes to files (EVENTBUS_BENCH_RESULTS/<executable>.json and
<executable>.console.txt); the terminal shows one progress line per executable, then its tables.
A run stopped with Ctrl-C has already printed the tables of the executables that finished (and
writes them to table.md). The tables:

1. eventbus against the alternatives (HEADLINE_EXECUTABLE, bench/bus.cpp): per scenario, each
   variant's ns per event (median over the repetitions), its time divided by the scenario's
   reference (the fastest of the variants listed in HEADLINE_REFERENCES: a hand-written
   mutex + deque bus for BM_SyncTyped, the faster of mutex_cv_queue and moodycamel_blocking for
   BM_AsyncTyped), and max / min of ns per event over the repetitions (how stable the row is).
2. Peer queues and pools (bench/ring_buffer.cpp, bench/event_store.cpp), one table each:
   benchmark, ns per item (median over the repetitions), and for each peer row the ratio of the
   peer's time to ours in the same scenario.
3. The twins of GoEventBus's benchmarks (bench/go_twins.cpp), which have no peers: benchmark and
   ns per op (median), where one op is one iteration of the Go benchmark (what Go's ns/op
   counts); then the executable's other rows, in ns per event.

Called by scripts/bench, which builds the executables and passes, through the environment:
  EVENTBUS_BENCH_DIR            directory holding bench_* executables
  EVENTBUS_BENCH_RESULTS        directory for the raw output, the table (table.md) and the chart
  EVENTBUS_BENCH_MODE           default, full or smoke (shown in the progress lines)
  EVENTBUS_BENCH_ARGS           Google Benchmark arguments (repetitions, or a tiny min time for
                                smoke)
  EVENTBUS_BENCH_HEADLINE_ARGS  the same for HEADLINE_EXECUTABLE (default: EVENTBUS_BENCH_ARGS);
                                its JSON must keep every repetition (no
                                --benchmark_report_aggregates_only) for max / min

Benchmark names follow `<scenario>/<variant>[/real_time]`. In the peer tables, rows whose queue
starts with `eventbus` are ours and the reference for a scenario's ratios is its first eventbus
row in REFERENCE_ORDER.

A benchmark that fails its checks, or an executable that fails, is left out of the tables and
listed after that executable's tables ("FAILED") and again at the end; the exit status is then 1.

4. The JetStream bridge against the NATS C client (NATS_EXECUTABLE, bench/nats.cpp), two tables:
   publish throughput (messages/s, median; each row's time per message divided by that of
   NATS_PUBLISH_REFERENCE of the same message size) and ping-pong latency (the p50_us and p99_us
   counters and the mean, median over the repetitions; p50 and p99 divided by those of
   NATS_LATENCY_REFERENCE).

The rows of TWINS_EXECUTABLE are named `BM_<Name>/<event kind>[/threads:<T>]` and count one item
per iteration; the twins carry the counter `twin` (1). They are listed by name, a name's event
kinds together, in the order the executable ran them.
"""

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REFERENCE_ORDER = ["eventbus_return_error", "eventbus_block", "eventbus_drop_oldest"]
TWINS_EXECUTABLE = "bench_go_twins"
HEADLINE_EXECUTABLE = "bench_bus"
NATS_EXECUTABLE = "bench_nats"
NATS_PUBLISH_REFERENCE = "raw_async"  # BM_NatsPublish/<variant>/<bytes>
NATS_LATENCY_REFERENCE = "raw_fetch"  # BM_NatsLatency/<variant>
# Scenario of HEADLINE_EXECUTABLE -> the variants whose fastest (lowest median) is its reference.
HEADLINE_REFERENCES = {
    "BM_SyncTyped": ["mutex_deque_bus"],
    "BM_AsyncTyped": ["mutex_cv_queue", "moodycamel_blocking"],
}
# Titles of the peer tables, by executable.
PEER_TITLES = {
    "bench_event_store": "The async store against a mutex + condition variable pool (bench/event_store.cpp)",
    "bench_ring_buffer": "The ring against peer queues (bench/ring_buffer.cpp)",
}
AGGREGATE_SUFFIXES = ("_mean", "_median", "_stddev", "_cv")

# What did not run or failed its checks: left out of the tables, listed after them.
FAILURES: list[str] = []


def benchmark_count(executable: Path) -> int | None:
    try:
        listed = subprocess.run(
            [str(executable), "--benchmark_list_tests"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum(1 for line in listed.splitlines() if line.strip())


def finished_count(console: Path) -> int:
    """Benchmarks with at least one result line in the console output so far."""
    try:
        text = console.read_text(errors="replace")
    except OSError:
        return 0
    names = set()
    for line in text.splitlines():
        if not line.startswith("BM_"):
            continue
        name = line.split()[0]
        for suffix in AGGREGATE_SUFFIXES:
            name = name.removesuffix(suffix)
        names.add(name)
    return len(names)


def run(executable: Path, results: Path, args: list[str], position: str) -> Path:
    """Runs one executable, its output to files; one progress line on stderr (updated in place
    when stderr is a terminal)."""
    out = results / f"{executable.name}.json"
    console = results / f"{executable.name}.console.txt"
    cmd = [str(executable), *args, f"--benchmark_out={out}", "--benchmark_out_format=json"]
    out.unlink(missing_ok=True)  # never read a previous run's results
    total = benchmark_count(executable)
    of_total = f"/{total}" if total is not None else ""
    prefix = f"{position} {executable.name}"
    live = sys.stderr.isatty()
    start = time.monotonic()
    with console.open("w") as sink:
        sink.write(f"$ {' '.join(shlex.quote(c) for c in cmd)}\n")
        sink.flush()
        process = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT)
        try:
            if not live:  # the line is finished when the executable is
                count = total if total is not None else "?"
                print(f"{prefix}: {count} benchmarks ...", end="", file=sys.stderr, flush=True)
            while process.poll() is None:
                if live:
                    elapsed = time.monotonic() - start
                    done = finished_count(console)
                    print(f"\r{prefix}: {done}{of_total} benchmarks, {elapsed:.0f} s ",
                          end="", file=sys.stderr, flush=True)
                try:
                    process.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
        except BaseException:
            process.terminate()
            process.wait()
            print(file=sys.stderr)
            raise
    elapsed = time.monotonic() - start
    status = process.returncode
    done = finished_count(console)
    summary = f"{done}{of_total} benchmarks in {elapsed:.0f} s (console output: {console.name})"
    if live:
        print(f"\r\033[K{prefix}: {summary}", file=sys.stderr, flush=True)
    else:
        print(f" {summary}", file=sys.stderr, flush=True)
    if status != 0:
        FAILURES.append(f"{executable.name}: exit status {status} (see {console})")
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


def collect(json_file: Path) -> tuple[dict[str, float], bool, set[str]]:
    """Benchmark name -> ns per item: the median aggregate when repeated, else the single run;
    whether every row is a median; and the names of the rows marked as twins."""
    singles: dict[str, float] = {}
    medians: dict[str, float] = {}
    twins: set[str] = set()
    for entry in entries(json_file):
        name = entry.get("run_name", entry["name"])
        if entry.get("twin"):
            twins.add(name)
        if entry.get("run_type") == "aggregate":
            if entry.get("aggregate_name") == "median":
                medians[name] = ns_per_item(entry)
        else:
            singles.setdefault(name, ns_per_item(entry))
    return {**singles, **medians}, set(singles) <= set(medians), twins


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


def collect_entries(json_file: Path) -> tuple[dict[str, dict], bool]:
    """Benchmark name -> its result: the median aggregate when repeated (counters included),
    else the single run, in the order the executable ran them; and whether every row is a
    median."""
    singles: dict[str, dict] = {}
    medians: dict[str, dict] = {}
    for entry in entries(json_file):
        name = entry.get("run_name", entry["name"])
        if entry.get("run_type") == "aggregate":
            if entry.get("aggregate_name") == "median":
                medians[name] = entry
        else:
            singles.setdefault(name, entry)
    merged = {name: medians.get(name, entry) for name, entry in {**singles, **medians}.items()}
    return merged, set(singles) <= set(medians)


def nats_tables(results: dict[str, dict]) -> tuple[list[tuple[str, float, float, str]],
                                                    list[tuple[str, float, float, float, str]]]:
    """bench_nats: (row, messages/s, ns per message, time / reference) per publish row and
    (row, p50 us, p99 us, mean us, p50 and p99 / reference) per latency row, in run order."""
    publish: dict[str, dict[str, float]] = {}  # size -> variant -> ns per message
    latency: dict[str, tuple[float, float, float]] = {}  # variant -> p50, p99, mean (us)
    for name, entry in results.items():
        scenario, rest = split(name)
        if scenario == "BM_NatsPublish":
            variant, _, size = rest.partition("/")
            publish.setdefault(size, {})[variant] = ns_per_item(entry)
        elif scenario == "BM_NatsLatency":
            latency[rest] = (entry.get("p50_us", 0.0), entry.get("p99_us", 0.0),
                             ns_per_item(entry) / 1e3)
    publish_rows = []
    for size, variants in publish.items():
        reference = variants.get(NATS_PUBLISH_REFERENCE)
        for variant, ns in variants.items():
            if reference is None:
                ratio = ""
            elif variant == NATS_PUBLISH_REFERENCE:
                ratio = "1.00x (reference)"
            else:
                ratio = f"{ns / reference:.2f}x vs {NATS_PUBLISH_REFERENCE}"
            publish_rows.append((f"BM_NatsPublish/{variant}/{size}", 1e9 / ns, ns, ratio))
    latency_rows = []
    reference_latency = latency.get(NATS_LATENCY_REFERENCE)
    for variant, (p50, p99, mean) in latency.items():
        if reference_latency is None or not reference_latency[0] or not reference_latency[1]:
            ratio = ""
        elif variant == NATS_LATENCY_REFERENCE:
            ratio = "1.00x (reference)"
        else:
            ratio = (f"{p50 / reference_latency[0]:.2f}x / {p99 / reference_latency[1]:.2f}x "
                     f"vs {NATS_LATENCY_REFERENCE}")
        latency_rows.append((f"BM_NatsLatency/{variant}", p50, p99, mean, ratio))
    return publish_rows, latency_rows


def nats_markdown(publish: list[tuple[str, float, float, str]],
                  latency: list[tuple[str, float, float, float, str]], stat: str) -> str:
    sections = []
    if publish:
        text = (
            "The JetStream bridge against the NATS C client (bench/nats.cpp; one nats-server on\n"
            "loopback, memory streams): 1000 messages published and acknowledged per iteration.\n"
            "Time / reference above 1.00x: slower than the C client's own asynchronous publish.\n\n"
            f"| benchmark | messages/s ({stat}) | ns per message | time / reference |\n"
            "|---|---:|---:|---|\n"
        )
        text += "".join(f"| {name} | {rate:.0f} | {ns:.0f} | {ratio} |\n"
                        for name, rate, ns, ratio in publish)
        sections.append(text)
    if latency:
        text = (
            "Ping-pong latency over the same server, one 64-byte message at a time, from the\n"
            "producer's stamp to the receiving side having the message (bench/nats.cpp).\n\n"
            f"| benchmark | p50 us ({stat}) | p99 us | mean us | p50 / p99 vs reference |\n"
            "|---|---:|---:|---:|---|\n"
        )
        text += "".join(f"| {name} | {p50:.1f} | {p99:.1f} | {mean:.1f} | {ratio} |\n"
                        for name, p50, p99, mean, ratio in latency)
        sections.append(text)
    return "\n".join(sections)


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


def headline_markdown(headline: list[tuple[str, float, str, str]]) -> str:
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
    return text


def peer_markdown(title: str, lines: list[tuple[str, float, str]], stat: str) -> str:
    text = f"{title}:\n\n| benchmark | ns per item ({stat}) | peer time / ours |\n|---|---:|---|\n"
    for name, ns, ratio in lines:
        text += f"| {name} | {ns:.1f} | {ratio} |\n"
    return text


def twins_markdown(twins: list[tuple[str, float]], others: list[tuple[str, float]], stat: str) -> str:
    sections = []
    if twins:
        text = (
            "GoEventBus benchmarks, twinned (bench/go_twins.cpp): each row times what its Go\n"
            "benchmark times; ns per op is per iteration of the Go benchmark, as Go's ns/op (one\n"
            "subscribe, one publish() call, one drain(), one transaction of 16 events: see the\n"
            "file's header).\n\n"
            f"| benchmark | ns per op ({stat}) |\n|---|---:|\n"
        )
        text += "".join(f"| {name} | {ns:.1f} |\n" for name, ns in twins)
        sections.append(text)
    if others:
        text = (
            "bench/go_twins.cpp, our own rows (not twins; ns per event; see the file's header):\n\n"
            f"| benchmark | ns per event ({stat}) |\n|---|---:|\n"
        )
        text += "".join(f"| {name} | {ns:.1f} |\n" for name, ns in others)
        sections.append(text)
    return "\n".join(sections)


def failures_markdown(failures: list[str]) -> str:
    return "FAILED, left out of the tables:\n\n" + "".join(f"- {failure}\n" for failure in failures)


def chart(lines: list[tuple[str, float]], svg: Path) -> None:
    if shutil.which("gnuplot") is None:
        print("gnuplot not found: no chart", file=sys.stderr)
        return
    data = svg.with_suffix(".dat")
    data.write_text("".join(f'"{name.removeprefix("BM_")}" {ns:.3f}\n' for name, ns in reversed(lines)))
    height = 120 + 18 * len(lines)
    # Horizontal bars on a log axis, drawn as boxes from 1 ns to the value.
    script = f"""
set terminal svg size 900,{height} dynamic noenhanced font 'sans,11'
set output '{svg}'
set title 'eventbus benchmarks: ns per item (twins: per op), median (lower is better)'
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


def report(exe: Path, json_file: Path, bars: list[tuple[str, float]]) -> str:
    """The tables of one executable's results (markdown); adds its rows to `bars`."""
    if exe.name == HEADLINE_EXECUTABLE:
        headline = headline_table(collect_repetitions(json_file))
        bars.extend((name, ns) for name, ns, _, _ in headline)
        return headline_markdown(headline) if headline else ""
    if exe.name == NATS_EXECUTABLE:
        results, all_medians = collect_entries(json_file)
        publish, latency = nats_tables(results)
        bars.extend((name, ns) for name, _, ns, _ in publish)
        bars.extend((name, mean * 1e3) for name, _, _, mean, _ in latency)
        return nats_markdown(publish, latency, "median" if all_medians else "single run")
    rows, all_medians, twin_names = collect(json_file)
    stat = "median" if all_medians else "single run"
    if exe.name == TWINS_EXECUTABLE:
        twins = twin_table({n: ns for n, ns in rows.items() if n in twin_names})
        others = twin_table({n: ns for n, ns in rows.items() if n not in twin_names})
        bars.extend(twins + others)
        return twins_markdown(twins, others, stat)
    lines = table(rows)
    bars.extend((name, ns) for name, ns, _ in lines)
    return peer_markdown(PEER_TITLES.get(exe.name, exe.name), lines, stat) if lines else ""


def main() -> int:
    bench_dir = Path(os.environ["EVENTBUS_BENCH_DIR"])
    results = Path(os.environ["EVENTBUS_BENCH_RESULTS"])
    mode = os.environ.get("EVENTBUS_BENCH_MODE", "default")
    args = shlex.split(os.environ.get("EVENTBUS_BENCH_ARGS", ""))
    headline_args = shlex.split(os.environ.get("EVENTBUS_BENCH_HEADLINE_ARGS", "")) or args
    results.mkdir(parents=True, exist_ok=True)
    found = sorted(p for p in bench_dir.glob("bench_*") if p.is_file() and os.access(p, os.X_OK))
    if not found:
        print(f"error: no benchmark executables in {bench_dir}", file=sys.stderr)
        return 1
    # The headline first: its table is the one most readers want.
    executables = sorted(found, key=lambda p: p.name != HEADLINE_EXECUTABLE)
    print(
        f"Running {len(executables)} benchmark executables ({mode} run: {' '.join(headline_args)} "
        f"for {HEADLINE_EXECUTABLE}, {' '.join(args)} for the others); each one's tables print when "
        f"it finishes, raw output in {results}",
        file=sys.stderr,
        flush=True,
    )
    sections: list[str] = []
    bars: list[tuple[str, float]] = []
    stopped = False
    for index, exe in enumerate(executables, 1):
        failures_before = len(FAILURES)
        try:
            json_file = run(exe, results, headline_args if exe.name == HEADLINE_EXECUTABLE else args,
                            f"[{index}/{len(executables)}]")
        except KeyboardInterrupt:
            stopped = True
            break
        text = report(exe, json_file, bars)
        new_failures = FAILURES[failures_before:]
        if new_failures:
            text += ("\n" if text else "") + failures_markdown(new_failures)
        if text:
            sections.append(text)
            print(f"\n{text}", flush=True)
    (results / "table.md").write_text("\n".join(sections))
    if stopped:
        if sections:
            print(f"stopped: the tables above are those of the executables that finished; "
                  f"they are also in {results / 'table.md'}", file=sys.stderr)
        else:
            print("stopped before any executable finished", file=sys.stderr)
        return 130
    chart(bars, results / "benchmarks.svg")
    print(f"\nraw output, table.md and benchmarks.svg in {results}", file=sys.stderr)
    if FAILURES:
        print(f"error: {len(FAILURES)} failure(s):", file=sys.stderr)
        for failure in FAILURES:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
