"""The replicas phase's runs (benchmarks/replicas.py is its command): throughput and latency per
workload, one worker process and two interleaved (x1, x2, x1, x2, ...), then the hot coupon
shared by two. Each run is `measure`'s, with PostgreSQL watched (benchmarks/locks.py); each states
one `FIGURES [...]` line, and benchmarks/replicas_record.py summarizes exactly those values.

Who answered what comes from the processes' own logs (`answered_by`): the commands of each
`batch_answered` line and each dead letter; at DEBUG, every command's id and outcome
(`command_processed`), which the hot run turns on. The events carry no trace of the process
that published them (contract v1: an outcome is the same whoever answers).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any, Final

from benchmarks import locks, replicas_record
from benchmarks.measure import Context, measure
from benchmarks.replicas_record import LOCK_KEYS, TARGETS, replica_figures
from benchmarks.runner import run_label, state

HOT: Final = "redeem-hot"
COUNTS: Final = {"x1": 1, "x2": 2}


async def run_all(context: Context, hot_commands: int, hot_stock: int) -> dict[str, Any]:
    config = context.config
    say = context.progress.say
    out: dict[str, Any] = {"throughput": {}, "latency": {}}
    for phase in ("throughput", "latency"):
        for workload in config.workloads:
            stated: dict[str, list[dict[str, Any]]] = {target: [] for target in TARGETS}
            runs: dict[str, list[dict[str, Any]]] = {target: [] for target in TARGETS}
            for repetition in range(1, config.repetitions + 1):
                for target in TARGETS:
                    run = await _measure(context, phase, workload, COUNTS[target])
                    figures = _figures(phase, run)
                    state(context, run_label(phase, workload, target, repetition), figures)
                    stated[target].append(figures)
                    runs[target].append(run)
            if phase == "throughput":
                row = replicas_record.summarize_throughput(stated)
                say(
                    f"== {workload}: x1 {row['x1']['commands_per_second']:.0f}/s, x2 "
                    f"{row['x2']['commands_per_second']:.0f}/s, ratio {row['ratio']:.2f}"
                )
            else:
                row = replicas_record.summarize_latency(stated)
                say(
                    f"== {workload} at {config.latency_rate:.0f}/s: p99 x1 {row['x1']['p99_ms']}"
                    f" ms, x2 {row['x2']['p99_ms']} ms"
                )
            out[phase][workload] = {**row, "runs": runs}

    # Every command logged with its message id and outcome (the libraries stay at WARNING).
    logged = dataclasses.replace(
        context, config=dataclasses.replace(config, worker_log_level="debug")
    )
    run = await measure(
        logged, "worker", HOT, hot_commands, replicas=2, hot_stock=hot_stock, watch=locks.lock_watch
    )
    figures = _hot_figures(run)
    state(context, run_label("hot", HOT, "x2", 1), figures)
    out["hot"] = {**replicas_record.summarize_hot(figures, hot_stock), "run": run}
    out["targets"] = replicas_record.targets(out)
    say(
        f"== hot coupon: {figures['redeemed']} redeemed, {figures['exhausted']} Exhausted, "
        f"answered {figures['answered_1']} / {figures['answered_2']} by the two replicas"
    )
    return out


async def _measure(context: Context, phase: str, workload: str, replicas: int) -> dict[str, Any]:
    config = context.config
    if phase == "throughput":
        size, rate = config.commands, None
    else:
        size, rate = max(int(config.latency_rate * config.latency_seconds), 20), config.latency_rate
    run = await measure(
        context, "worker", workload, size, rate, replicas=replicas, watch=locks.lock_watch
    )
    run["answered"] = [answered_by(Path(log))["answered"] for log in run.pop("logs")]
    return run


def _figures(phase: str, run: dict[str, Any]) -> dict[str, Any]:
    """What a run states: its throughput (from the moment every process consumed) or its
    latency; lock waits and deadlocks; per process, commands answered, CPU seconds and seconds
    waiting for a CPU."""
    if phase == "throughput":
        figures = {k: run["from_ready"][k] for k in ("commands", "seconds", "commands_per_second")}
    else:
        figures = {"offered_per_second": run["offered_per_second"], "commands": run["commands"]}
        figures |= {k: run["latency"][k] for k in (*replicas_record.LATENCY_KEYS, "samples")}
    figures |= {key: run["watched"][key] for key in LOCK_KEYS}
    figures |= replica_figures("answered", run["answered"])
    return figures | _times(run)


def _hot_figures(run: dict[str, Any]) -> dict[str, Any]:
    """The hot run's outcomes (the observer's checks, the database), and who answered what
    (the replicas' logs: every command's id and outcome at DEBUG)."""
    checks = run["checks"]
    logs = [answered_by(Path(log)) for log in run.pop("logs")]
    ids = Counter(message_id for log in logs for message_id in log["outcomes"])
    figures: dict[str, Any] = {
        "commands": run["commands"],
        "redeemed": checks["redeemed_in_database"],
        "exhausted": checks["exhausted"],
        "remaining": checks["remaining"],
        "lost": checks["lost"],
        "doubled": checks["doubled"],
        "copies": checks["copies"],
        "attributed": len(ids),
        "attributed_twice": sum(1 for n in ids.values() if n > 1),
        "commands_per_second": run["from_ready"]["commands_per_second"],
    }
    figures |= {key: run["watched"][key] for key in LOCK_KEYS}
    figures |= replica_figures("answered", [log["answered"] for log in logs])
    for outcome, name in (("coupon.redeemed", "redeemed"), ("coupon.error", "exhausted")):
        counts = [sum(1 for o in log["outcomes"].values() if o == outcome) for log in logs]
        figures |= replica_figures(f"{name}_by", counts)
    return figures | _times(run)


def _times(run: dict[str, Any]) -> dict[str, Any]:
    """Per process, once every one consumed: CPU seconds, and seconds waiting for a CPU."""
    return replica_figures("cpu_seconds", [p["cpu_seconds"] for p in run["processes"]]) | (
        replica_figures("run_queue_seconds", [p["run_queue_seconds"] for p in run["processes"]])
    )


def answered_by(log: Path) -> dict[str, Any]:
    """From a worker's JSON log: the commands it answered (its `batch_answered` counts and its
    dead letters) and, at DEBUG, each command's outcome by message id."""
    answered = 0
    outcomes: dict[str, str] = {}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        event = record.get("event")
        if event == "batch_answered":
            answered += int(record.get("count", 0))
        elif event == "command_dead_lettered":
            answered += 1
        elif event == "command_processed":
            outcomes[str(record.get("message_id"))] = str(record.get("outcome"))
    return {"answered": answered, "outcomes": outcomes}
