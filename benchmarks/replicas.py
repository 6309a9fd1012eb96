"""`make bench-replicas` (= `python -m benchmarks.replicas`): two worker processes consuming one
queue against one, in one run (issue 22, "Replicas"; docs/performance.md, "Replicas").

Each process is `coupon-worker run` as a user runs it, with the same settings; two are started
together on one queue and one database. The workloads are `make bench`'s (benchmarks/workloads.py,
measured by benchmarks/measure.py; the runs: benchmarks/replicas_runner.py), each on a fresh stage:

1. throughput, preloaded queue, per workload: `repetitions` interleaved runs (one process, two,
   one, two, ...), each figure the median with its range; counted from the moment every process
   is consuming (a second process's start-up would otherwise count as the first's work);
2. latency at a steady offered rate (200/s) per workload, interleaved the same way;
3. the hot coupon shared by both: `--hot-commands` redeems (20,000) of one coupon holding
   `--hot-stock` (15,000), two processes logging every command (`WORKER_LOG_LEVEL=debug`), so
   that which replica answered what is read from their logs.

In every run, PostgreSQL's view of it (benchmarks/locks.py): lock waits sampled and the
database's deadlock counter; from each process's log, how many commands it answered; from
/proc, the CPU time it used once consuming. Every measured run states one `FIGURES [...]` line
(kept in `benchmarks/results/replicas-<stamp>.log` beside `replicas-<stamp>.json`);
benchmarks/replicas_record.py makes the summaries from exactly those values. Exit 1 if any run
lost or doubled a command, 2 on bad arguments or unreachable services.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from benchmarks import locks
from benchmarks.config import (
    KNOBS,
    RESULTS_DIR,
    WORKLOAD_NAMES,
    BenchConfig,
    check,
    service_urls,
)
from benchmarks.measure import Context
from benchmarks.replicas_runner import run_all
from benchmarks.replicas_table import render
from benchmarks.session import describe, run_phase, write_result

FORMAT: Final = 1


def worker_settings(config: BenchConfig) -> dict[str, Any]:
    """The per-process knobs, and what two processes hold between them."""
    knobs = {name: config.effective_knob(name) for name in KNOBS}
    return {
        "per_process": knobs,
        "two_replicas": {
            "unacknowledged_deliveries": 2 * knobs["prefetch"],
            "batches_in_flight": 2 * knobs["concurrency"],
            "database_connections": 2 * knobs["pool_size"],
        },
    }


async def run(config: BenchConfig, context: Context, hot: tuple[int, int]) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    started = time.monotonic()
    description = await describe(config)
    description["postgresql_max_connections"] = await locks.max_connections(
        config.admin_database_url
    )
    context.progress.say(
        f"replicas: {len(config.workloads)} workloads x {config.commands:,} commands, one worker "
        f"process against two; load average {description['load_average_at_start']}"
    )
    figures = await run_all(context, *hot)
    return {
        "format": FORMAT,
        "status": "passed",
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
        "command": "python -m benchmarks.replicas " + shlex.join(sys.argv[1:]),
        "machine": description,
        "settings": {
            **{k: v for k, v in config.describe().items() if not k.startswith("memory")},
            "hot_commands": hot[0],
            "hot_stock": hot[1],
        },
        "worker_settings": worker_settings(config),
        **figures,
    }


def write(result: dict[str, Any], record: list[str], directory: Path) -> Path:
    """`replicas-<stamp>.json` and its raw record `replicas-<stamp>.log`."""
    return write_result(result, record, directory, prefix="replicas-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.replicas",
        description="Two coupon-worker processes on one queue against one: throughput, latency, "
        "lock waits and deadlocks per workload, and a hot coupon shared by both, on the local "
        "RabbitMQ and PostgreSQL (AMQP_URL, DATABASE_URL).",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: small counts")
    parser.add_argument("--commands", type=int, help="preloaded commands per run (20000)")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOAD_NAMES, default=WORKLOAD_NAMES)
    parser.add_argument("--repetitions", type=int, default=3, help="interleaved, median (3)")
    parser.add_argument("--latency-rate", type=float, default=200.0, help="offered/s (200)")
    parser.add_argument("--latency-seconds", type=float, help="length of a latency run (10)")
    parser.add_argument("--hot-commands", type=int, help="redeems of the shared coupon (20000)")
    parser.add_argument("--hot-stock", type=int, help="what the shared coupon holds (15000)")
    for name, (variable, _) in KNOBS.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, help=f"worker's {variable} (else from env)"
        )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    return parser


def config_from(args: argparse.Namespace) -> tuple[BenchConfig, tuple[int, int]]:
    knobs = {}
    for name, (variable, _) in KNOBS.items():
        value = getattr(args, name)
        if value is None and os.environ.get(variable):
            value = int(os.environ[variable])
        if value is not None:
            knobs[name] = value
    commands = args.commands or (2_000 if args.quick else 20_000)
    hot_commands = args.hot_commands or commands
    hot_stock = args.hot_stock or hot_commands * 3 // 4
    amqp_url, admin_database_url = service_urls()
    config = BenchConfig(
        amqp_url=amqp_url,
        admin_database_url=admin_database_url,
        workloads=tuple(args.workloads),
        commands=commands,
        memory_commands=commands,  # (no memory phase here)
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds or (2.0 if args.quick else 10.0),
        repetitions=args.repetitions,
        quick=bool(args.quick),
        knobs=knobs,
        output_dir=args.output_dir,
    )
    check(config)
    if not 1 <= hot_stock < hot_commands <= 1_000_000:
        raise ValueError("--hot-stock must be from 1 to fewer than --hot-commands (<= 1,000,000)")
    return config, (hot_commands, hot_stock)


def main(argv: list[str] | None = None) -> None:
    try:
        config, hot = config_from(build_parser().parse_args(argv))
    except ValueError as error:
        print(f"benchmark: {error}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    result, context = run_phase("replicas", config, lambda context: run(config, context, hot))
    path = write(result, context.record, config.output_dir)
    print(render(result))  # noqa: T201 - the benchmark's own output
    context.progress.say(f"\n{result['seconds']:.0f}s; results in {path}")


if __name__ == "__main__":
    main()
