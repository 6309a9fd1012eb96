"""The replicas phase's figures (benchmarks/replicas.py): what each measured run states (one
`FIGURES [...]` line, kept in the raw record `replicas-<stamp>.log`), the summaries the result
file gives, made from exactly those values, and the same summaries rebuilt from the raw record
alone (`tests/unit/test_replicas_record.py` compares the two, so a figure edited by hand in a
result file shows)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Final

from benchmarks.record import runs as parsed_runs
from benchmarks.runner import ratio, summary

TARGETS: Final = ("x1", "x2")  # one worker process, two on the same queue
RATIO_TARGET: Final = 0.95  # two replicas' throughput at least this share of one's (issue 22)
LOCK_KEYS: Final = (
    "lock_samples",
    "lock_waiting_samples",
    "lock_waits_seen",
    "lock_most_at_once",
    "lock_longest_ms",
    "deadlocks",
)
LATENCY_KEYS: Final = ("p50_ms", "p99_ms", "max_ms")


def replica_figures(name: str, values: Sequence[float]) -> dict[str, float]:
    """`name_1`, `name_2`, ...: one figure per process, in the order they were started."""
    return {f"{name}_{index}": value for index, value in enumerate(values, start=1)}


def per_replica(figures: dict[str, Any], name: str) -> list[float]:
    """The `name_<i>` figures of a run, in order."""
    count = sum(1 for key in figures if key.startswith(f"{name}_"))
    return [figures[f"{name}_{index}"] for index in range(1, count + 1)]


def smallest_share(runs: Sequence[dict[str, Any]]) -> float | None:
    """The smallest share of the commands that any one process answered, over the runs (None
    for one process)."""
    shares = []
    for figures in runs:
        answered = per_replica(figures, "answered")
        total = float(sum(answered))
        if len(answered) > 1 and total > 0:
            shares.append(min(answered) / total)
    return round(min(shares), 3) if shares else None


def summarize_locks(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Lock waits over a target's runs: the median share of samples that found a waiter,
    the waits seen and deadlocks added up, the longest wait and the most waiters at once."""
    shares = [r["lock_waiting_samples"] / r["lock_samples"] for r in runs if r["lock_samples"]]
    return {
        "samples": sum(int(r["lock_samples"]) for r in runs),
        "waiting_share": round(statistics.median(shares), 3) if shares else 0.0,
        "waits_seen": sum(int(r["lock_waits_seen"]) for r in runs),
        "most_at_once": max(int(r["lock_most_at_once"]) for r in runs),
        "longest_ms": max(float(r["lock_longest_ms"]) for r in runs),
        "deadlocks": sum(int(r["deadlocks"]) for r in runs),
    }


def summarize_times(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Per command answered, the median over the runs of the processes' CPU time and of their
    time waiting for a CPU (ms, all processes together)."""

    def per_command(name: str) -> float:
        values = [1000 * sum(per_replica(r, name)) / r["commands"] for r in runs if r["commands"]]
        return round(statistics.median(values), 3) if values else 0.0

    return {
        "cpu_ms_per_command": per_command("cpu_seconds"),
        "run_queue_ms_per_command": per_command("run_queue_seconds"),
    }


def summarize_throughput(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per target the median commands/s and range; the ratio of two replicas' median to one's
    and the range of the repetitions' own ratios (each x2 run against the x1 run before it)."""
    row: dict[str, Any] = {}
    for target in TARGETS:
        rates = [r["commands_per_second"] for r in runs[target]]
        row[target] = {
            "commands_per_second": summary(rates)["median"],
            "range": summary(rates)["range"],
            "locks": summarize_locks(runs[target]),
            **summarize_times(runs[target]),
        }
    paired = [
        ratio(two["commands_per_second"], one["commands_per_second"])
        for one, two in zip(runs["x1"], runs["x2"], strict=True)
    ]
    row["ratio"] = ratio(row["x2"]["commands_per_second"], row["x1"]["commands_per_second"])
    row["ratio_range"] = [min(paired), max(paired)]
    row["smallest_share"] = smallest_share(runs["x2"])
    return row


def summarize_latency(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per target the median p50, p99 and max (and the p99's range); the ratio of the p99s."""
    row: dict[str, Any] = {}
    for target in TARGETS:
        latency = {key: summary([r[key] for r in runs[target]])["median"] for key in LATENCY_KEYS}
        row[target] = {
            "offered_per_second": runs[target][0]["offered_per_second"],
            **latency,
            "p99_range": summary([r["p99_ms"] for r in runs[target]])["range"],
            "locks": summarize_locks(runs[target]),
            **summarize_times(runs[target]),
        }
    row["p99_ratio"] = ratio(row["x2"]["p99_ms"], row["x1"]["p99_ms"])
    row["smallest_share"] = smallest_share(runs["x2"])
    return row


def summarize_hot(figures: dict[str, Any], stock: int) -> dict[str, Any]:
    """The shared hot coupon's run: its figures, and each requirement met or not."""
    commands = int(figures["commands"])
    answered = per_replica(figures, "answered")
    return {
        **figures,
        "stock": stock,
        "exactly_stock_redeemed": figures["redeemed"] == stock == commands - figures["exhausted"],
        "remaining_zero": figures["remaining"] == 0,
        "one_outcome_each": figures["lost"] == figures["doubled"] == figures["copies"] == 0,
        "no_deadlock": figures["deadlocks"] == 0,
        "each_replica_worked": len(answered) > 1 and min(answered) > 0,
        "attributed_once_each": figures["attributed"] == commands
        and figures["attributed_twice"] == 0,
    }


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Issue 22's targets for replicas, from the summaries: no collapse (each workload's ratio
    at least `RATIO_TARGET`), no deadlock anywhere, the hot coupon exactly right."""
    ratios = {workload: row["ratio"] for workload, row in result["throughput"].items()}
    deadlocks = sum(
        row[target]["locks"]["deadlocks"]
        for phase in ("throughput", "latency")
        for row in result[phase].values()
        for target in TARGETS
    ) + int(result["hot"]["deadlocks"])
    hot = result["hot"]
    checks = (
        "exactly_stock_redeemed",
        "remaining_zero",
        "one_outcome_each",
        "no_deadlock",
        "each_replica_worked",
        "attributed_once_each",
    )
    return {
        "ratio_at_least": RATIO_TARGET,
        "ratios_met": {workload: ratio >= RATIO_TARGET for workload, ratio in ratios.items()},
        "deadlocks": deadlocks,
        "hot_met": all(bool(hot[check]) for check in checks),
    }


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """What a result file states for the page (no per-run detail)."""

    def bare(row: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in row.items() if key not in ("runs", "run")}

    out = {phase: {w: bare(row) for w, row in result[phase].items()} for phase in PHASES}
    out["hot"] = bare(result["hot"])
    out["targets"] = result["targets"]
    return out


PHASES: Final = ("throughput", "latency")


def rebuild(lines: list[str], stock: int) -> dict[str, Any]:
    """`headline` of a result file, computed from its raw record alone."""
    phases: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {
        phase: defaultdict(lambda: {target: [] for target in TARGETS}) for phase in PHASES
    }
    hot: dict[str, Any] = {}
    for words, figures in parsed_runs(lines):
        phase, workload, target = words[0], words[1], words[2]
        if phase == "hot":
            hot = dict(figures)
        else:
            phases[phase][workload][target].append(dict(figures))
    out: dict[str, Any] = {
        "throughput": {w: summarize_throughput(r) for w, r in phases["throughput"].items()},
        "latency": {w: summarize_latency(r) for w, r in phases["latency"].items()},
        "hot": summarize_hot(hot, stock),
    }
    out["targets"] = targets(out)
    return out
