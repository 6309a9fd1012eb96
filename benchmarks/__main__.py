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

import asyncio
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
from aiormq.exceptions import AMQPConnectionError

from benchmarks import machine
from benchmarks.config import BenchConfig, build_parser, config_from
from benchmarks.database import BenchmarkFailed
from benchmarks.measure import Context
from benchmarks.progress import Progress
from benchmarks.runner import run_all
from benchmarks.table import render

FORMAT = 2  # 2: medians of repetitions, the ceiling's configurations, a raw record
SERVICE_LOCK = os.environ.get("COUPON_SERVICE_LOCK", "/tmp/coupon-services.lock")


@contextlib.contextmanager
def services_held(progress: Progress) -> Iterator[None]:
    """The machine's service lock, shared, for the whole run: the tests that stop RabbitMQ or
    PostgreSQL (marked `disruptive`) take it exclusively, so they wait until the benchmark is
    done, and the benchmark waits for an outage in progress to end."""
    with open(SERVICE_LOCK, "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.say(f"waiting for {SERVICE_LOCK}: a test is stopping a service")
            fcntl.flock(lock, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


async def run(config: BenchConfig, context: Context) -> dict[str, Any]:
    started_at = datetime.now(UTC)
    started = time.monotonic()
    progress = context.progress
    connection = await aio_pika.connect(config.amqp_url)
    try:
        description = await machine.describe(connection, config.admin_database_url)
    finally:
        await connection.close()
    progress.say(
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
    """The result file, latest.json (the same), and the raw record `<stamp>.log`."""
    stamp = datetime.fromisoformat(result["started_at"]).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"{stamp}.json"
    result["file"] = path.name
    result["raw_record"] = f"{stamp}.log"
    text = json.dumps(result, indent=2) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / result["raw_record"]).write_text("\n".join(record) + "\n")
    path.write_text(text)
    (directory / "latest.json").write_text(text)
    return path


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        config = config_from(args)
    except ValueError as error:
        print(f"benchmark: {error}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    progress = Progress()
    logs = Path(tempfile.mkdtemp(prefix="coupon-bench-"))
    context = Context(config, progress, logs)
    try:
        with services_held(progress):
            result = asyncio.run(run(config, context))
    except BenchmarkFailed as error:
        progress.say(f"\nBENCHMARK FAILED: {error}\n(process logs kept in {logs})")
        sys.exit(1)
    except (OSError, AMQPConnectionError) as error:
        shutil.rmtree(logs, ignore_errors=True)
        progress.say(
            f"benchmark: cannot reach RabbitMQ or PostgreSQL ({type(error).__name__}: {error}); "
            "start them (make services) or set AMQP_URL and DATABASE_URL"
        )
        sys.exit(2)
    except KeyboardInterrupt:
        progress.say(f"\ninterrupted (process logs kept in {logs})")
        sys.exit(130)
    shutil.rmtree(logs, ignore_errors=True)
    path = write(result, context.record, config.output_dir)
    print(render(result))  # noqa: T201 - the benchmark's own output
    progress.say(f"\n{result['seconds']:.0f}s; results in {path} and latest.json")


if __name__ == "__main__":
    main()
