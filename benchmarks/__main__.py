"""`uv run python -m benchmarks` (or `make bench`): throughput and latency of the real worker.

Starts worker processes (`python -m worker run`) against the local RabbitMQ and PostgreSQL
(`AMQP_URL`, `DATABASE_URL`, defaulting to the Makefile's), in a database and under a broker
name prefix of its own, and prints a table; the same figures go to benchmarks/results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiormq.exceptions import AMQPConnectionError

from benchmarks.harness import Bench, BenchmarkError
from benchmarks.throughput import VARIANTS, Trial, measure_latency, render, run_trial, summarise

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--commands", type=int, default=1200, help="commands per throughput trial (default 1200)"
    )
    parser.add_argument(
        "--repetitions", type=int, default=4, help="trials of each variant (default 4)"
    )
    parser.add_argument(
        "--latency-requests",
        type=int,
        default=200,
        help="request/reply round trips to time, one at a time (default 200; 0 skips)",
    )
    parser.add_argument(
        "--creates", type=float, default=0.2, help="share of creates in the workload (0.2)"
    )
    parser.add_argument(
        "--log-level", default="INFO", help="the workers' WORKER_LOG_LEVEL (default INFO)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON file ({RESULTS})")
    return parser


def say(text: str) -> None:
    print(text, flush=True)  # noqa: T201 - the benchmark's own output


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bench = Bench(
        os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        os.environ.get("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"),
        args.log_level,
    )
    started = time.monotonic()
    load_before = os.getloadavg()
    trials: list[Trial] = []
    latencies: list[float] = []
    try:
        await bench.open()
        for repetition in range(args.repetitions):
            # Rotate the order every repetition, so that no variant always runs first.
            shift = repetition % len(VARIANTS)
            for variant in (*VARIANTS[shift:], *VARIANTS[:shift]):
                trial = await run_trial(bench, variant, repetition, args.commands, args.creates)
                trials.append(trial)
                say(
                    f"  repetition {repetition + 1}/{args.repetitions} {variant.name:<10} "
                    f"{trial.throughput:7.0f} commands/s ({trial.measured} in {trial.seconds:.2f}s)"
                )
        if args.latency_requests:
            latencies = await measure_latency(bench, args.latency_requests)
    finally:
        await bench.close()
    summary = summarise(trials, latencies)
    summary["run"] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, shared with other test runs",
        "python": platform.python_version(),
        "commands_per_trial": args.commands,
        "repetitions": args.repetitions,
        "creates_share": args.creates,
        "worker_log_level": args.log_level,
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "seconds": round(time.monotonic() - started, 1),
    }
    return summary


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.commands < 100 or args.repetitions < 1 or args.latency_requests < 0:
        sys.exit("--commands must be at least 100, --repetitions at least 1")
    say(
        f"coupon-worker benchmark: {len(VARIANTS)} variants x {args.repetitions} repetitions "
        f"of {args.commands} commands, interleaved"
    )
    try:
        summary = asyncio.run(run(args))
    except BenchmarkError as error:
        sys.exit(f"benchmark aborted: {error}")
    except (OSError, AMQPConnectionError) as error:
        sys.exit(
            f"benchmark aborted: cannot reach RabbitMQ or PostgreSQL ({type(error).__name__}: "
            f"{error}); start them (scripts/ensure-services) or set AMQP_URL and DATABASE_URL"
        )
    say("")
    say(render(summary))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2) + "\n")
    say(f"\n{summary['run']['seconds']:.0f}s; results written to {args.output}")


if __name__ == "__main__":
    main()
