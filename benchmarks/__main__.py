"""`make bench` (= `uv run python -m benchmarks`): the worker as a user runs it, against a
broker-only ceiling, on the local RabbitMQ and PostgreSQL. See docs/performance.md.

Writes benchmarks/results/<UTC timestamp>.json and benchmarks/results/latest.json, and beside
them the run's raw record, <UTC timestamp>.log: one `FIGURES [...]` line per measured run, from
which tests/unit/test_benchmark_record.py rebuilds the result file's figures. Prints the tables
of docs/performance.md (`python -m benchmarks.table --write docs/performance.md` puts them
there; `make bench` does both). Exit 1 if the worker lost or doubled a command (or the run
cannot be trusted), 2 on bad arguments or unreachable services.
"""

from __future__ import annotations

import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.config import BenchConfig, build_parser, config_from
from benchmarks.measure import Context
from benchmarks.runner import run_all
from benchmarks.session import describe, run_phase, write_result
from benchmarks.table import render

FORMAT = 2  # 2: medians of repetitions, the ceiling's configurations, a raw record


async def run(config: BenchConfig, context: Context) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    started = time.monotonic()
    description = await describe(config)
    context.progress.say(
        f"coupon-worker benchmark: {len(config.workloads)} workloads x {config.commands:,} "
        f"commands; load average {description['load_average_at_start']}"
    )
    figures = await run_all(context)
    return {
        "format": FORMAT,
        "status": "passed",
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
        "command": "python -m benchmarks " + shlex.join(sys.argv[1:]),
        "machine": description,
        "settings": config.describe(),
        **figures,
    }


def write(result: dict[str, Any], record: list[str], directory: Path) -> Path:
    """The result file and its raw record `<stamp>.log`, and latest.json (the same)."""
    path = write_result(result, record, directory, prefix="")
    (directory / "latest.json").write_text(path.read_text())
    return path


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        config = config_from(args)
    except ValueError as error:
        print(f"benchmark: {error}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    result, context = run_phase("bench", config, lambda context: run(config, context))
    path = write(result, context.record, config.output_dir)
    print(render(result))  # noqa: T201 - the benchmark's own output
    context.progress.say(f"\n{result['seconds']:.0f}s; results in {path} and latest.json")


if __name__ == "__main__":
    main()
