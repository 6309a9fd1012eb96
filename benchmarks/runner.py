"""The whole benchmark, in one run so that every ratio compares figures taken minutes apart:

0. the ceiling's configuration: each of `BenchConfig.ceiling_configurations()` (the worker's
   event loop and concurrency, one batch at a time, the default loop) once on the first
   workload; the best is the ceiling of everything after it (all of them are reported);
1. throughput, preloaded queue, per workload: `repetitions` interleaved runs (ceiling, worker,
   ceiling, worker, ...), each figure the median with its range;
2. latency, paced, on the latency workload: at the offered rate (200/s), then at half of the
   median maximum each target reached in 1 (the ceiling at half the ceiling's, the worker at
   half the worker's), interleaved and repeated the same way;
3. memory: the worker's peak RSS in a long run of the memory workload, against its peak in
   the runs of the same workload in 1.

Every measured run states one `FIGURES [...]` line (printed, and kept in the run's raw record
beside the result file); `summarize_throughput` and `summarize_latency` make the result file's
figures from exactly those values, so `tests/unit/test_benchmark_record.py` can rebuild them
from the raw record. Other phases (benchmarks/<phase>.py) plug in the same way: measure with
`measure`, state each run with `state`, summarize with `summary`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks.config import CeilingConfiguration
from benchmarks.measure import Context, measure
from benchmarks.provenance import figures_line

TARGETS = ("ceiling", "worker")
GROWTH_TOLERANCE = 1.10  # peak RSS within 10 % counts as flat (issue 8's target)
THROUGHPUT_KEYS = ("commands", "commands_per_second", "seconds")
LATENCY_KEYS = ("commands", "offered_per_second", "p50_ms", "p99_ms", "max_ms", "samples")


def state(context: Context, label: str, figures: dict[str, Any]) -> None:
    """One measured run's figures: printed and kept for the raw record."""
    text = figures_line(label, figures)
    context.record.append(text)
    context.progress.say(text)


def run_label(phase: str, workload: str, target: str, repetition: int, **extra: object) -> str:
    """`phase workload target #n` (+ `key=value` parts): the label of one run's line."""
    parts = [phase, workload, target, f"#{repetition}", *(f"{k}={v}" for k, v in extra.items())]
    return " ".join(parts)


def summary(values: Sequence[float]) -> dict[str, Any]:
    """The median of the repetitions and their range."""
    return {
        "median": round(statistics.median(values), 3),
        "range": [min(values), max(values)],
    }


def summarize_throughput(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per target: the median commands/s and range of its runs; the ratio of the medians and
    the range of the per-repetition ratios."""
    row: dict[str, Any] = {}
    for target in TARGETS:
        rates = [run["commands_per_second"] for run in runs[target]]
        row[target] = {
            "commands_per_second": summary(rates)["median"],
            "range": summary(rates)["range"],
            "runs": runs[target],
        }
        if target == "worker":
            row[target]["peak_rss_bytes"] = max(
                run.get("peak_rss_bytes", 0) for run in runs[target]
            )
    paired = [
        ratio(w["commands_per_second"], c["commands_per_second"])
        for c, w in zip(runs["ceiling"], runs["worker"], strict=True)
    ]
    row["ratio_to_ceiling"] = ratio(
        row["worker"]["commands_per_second"], row["ceiling"]["commands_per_second"]
    )
    row["ratio_range"] = [min(paired), max(paired)]
    return row


def summarize_latency(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per target: median p50, p99 and max over the runs (with the p50 and p99 ranges); the
    ratio of the median p99s."""
    row: dict[str, Any] = {}
    for target in TARGETS:
        figures = [run["latency"] for run in runs[target]]
        latency = {key: summary([f[key] for f in figures])["median"] for key in LATENCY_FIGURES}
        latency |= {f"{key}_range": summary([f[key] for f in figures])["range"] for key in RANGED}
        row[target] = {
            "offered_per_second": runs[target][0]["offered_per_second"],
            "latency": latency,
            "runs": runs[target],
        }
    row["p99_ratio_to_ceiling"] = ratio(
        row["worker"]["latency"]["p99_ms"], row["ceiling"]["latency"]["p99_ms"]
    )
    return row


LATENCY_FIGURES = ("p50_ms", "p99_ms", "max_ms")
RANGED = ("p50_ms", "p99_ms")


async def choose_ceiling(context: Context, workload: str) -> dict[str, Any]:
    """Each ceiling configuration once on `workload`; the fastest is `chosen`."""
    tried: list[dict[str, Any]] = []
    for configuration in context.config.ceiling_configurations():
        run = await measure(
            context, "ceiling", workload, context.config.commands, ceiling=configuration
        )
        label = run_label(
            "ceiling-choice", workload, "ceiling", 1, config=configuration.name.replace(" ", "")
        )
        state(context, label, {key: run[key] for key in THROUGHPUT_KEYS})
        tried.append(
            {**configuration.describe(), "commands_per_second": run["commands_per_second"]}
        )
    best = max(tried, key=lambda t: t["commands_per_second"])
    context.progress.say(
        "== ceiling: "
        + ", ".join(
            f"{t['loop']} x{t['concurrency']} {t['commands_per_second']:.0f}/s" for t in tried
        )
        + f"; measuring against {best['loop']} x{best['concurrency']}"
    )
    return {
        "workload": workload,
        "tried": tried,
        "chosen": {k: best[k] for k in ("loop", "concurrency")},
    }


async def run_all(context: Context) -> dict[str, Any]:
    config = context.config
    say = context.progress.say
    workloads = list(config.workloads)
    for needed in (config.latency_workload, config.memory_workload):
        if needed not in workloads:
            workloads.append(needed)

    choice = await choose_ceiling(context, workloads[0])
    ceiling = CeilingConfiguration(**choice["chosen"])

    throughput: dict[str, Any] = {}
    for workload in workloads:
        runs: dict[str, list[dict[str, Any]]] = {target: [] for target in TARGETS}
        for repetition in range(1, config.repetitions + 1):
            for target in TARGETS:
                run = await measure(context, target, workload, config.commands, ceiling=ceiling)
                figures = {key: run[key] for key in THROUGHPUT_KEYS}
                if target == "worker":
                    figures["peak_rss_bytes"] = run["peak_rss_bytes"]
                state(context, run_label("throughput", workload, target, repetition), figures)
                runs[target].append(run)
        throughput[workload] = {"commands": config.commands, **summarize_throughput(runs)}
        row = throughput[workload]
        say(
            f"== {workload}: worker {row['worker']['commands_per_second']:.0f}/s, ceiling "
            f"{row['ceiling']['commands_per_second']:.0f}/s, ratio {row['ratio_to_ceiling']:.2f}"
        )

    latency: dict[str, Any] = {}
    workload = config.latency_workload
    for level in ("offered", "half_max"):
        runs = {target: [] for target in TARGETS}
        for repetition in range(1, config.repetitions + 1):
            for target in TARGETS:
                maximum = throughput[workload][target]["commands_per_second"]
                rate = config.latency_rate if level == "offered" else max(maximum / 2, 1.0)
                size = max(int(rate * config.latency_seconds), 20)
                run = await measure(context, target, workload, size, rate, ceiling=ceiling)
                figures = {
                    "commands": run["commands"],
                    "offered_per_second": run["offered_per_second"],
                }
                figures |= {key: run["latency"][key] for key in (*LATENCY_FIGURES, "samples")}
                state(
                    context,
                    run_label("latency", workload, target, repetition, level=level),
                    figures,
                )
                runs[target].append(run)
        latency[level] = {"workload": workload, **summarize_latency(runs)}
        say(
            f"== latency {level}: worker p99 {latency[level]['worker']['latency']['p99_ms']} ms, "
            f"ceiling p99 {latency[level]['ceiling']['latency']['p99_ms']} ms"
        )

    short = throughput[config.memory_workload]["worker"]
    long = await measure(context, "worker", config.memory_workload, config.memory_commands)
    state(
        context,
        run_label("memory", config.memory_workload, "worker", 1),
        {"commands": long["commands"], "peak_rss_bytes": long["peak_rss_bytes"]},
    )
    growth = ratio(long["peak_rss_bytes"], short["peak_rss_bytes"])
    memory = {
        "workload": config.memory_workload,
        "short": {"commands": config.commands, "peak_rss_bytes": short["peak_rss_bytes"]},
        "long": {"commands": long["commands"], "peak_rss_bytes": long["peak_rss_bytes"]},
        "long_run": long,
        "ratio": growth,
        "grows_with_count": growth > GROWTH_TOLERANCE,
    }
    say(f"== memory: peak RSS {growth:.2f}x from {config.commands} to {long['commands']}")
    return {"ceiling": choice, "throughput": throughput, "latency": latency, "memory": memory}


def ratio(numerator: float, denominator: float) -> float:
    """`numerator / denominator` to 3 places; 0 when there is nothing to divide by."""
    return round(numerator / denominator, 3) if denominator else 0.0
