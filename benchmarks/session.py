"""What every benchmark phase's command does around its measurements (`make bench`,
`bench-replicas`, `bench-growth`, `bench-slow-link`, `bench-soak`, `bench-profile`): hold the
machine's service lock, keep the processes' logs while it runs, turn a failed check or an
unreachable service into its exit status, describe the machine, and write the stamped result
file beside its raw record."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
from aiormq.exceptions import AMQPConnectionError

from benchmarks import machine
from benchmarks.config import BenchConfig
from benchmarks.database import BenchmarkFailed
from benchmarks.measure import Context
from benchmarks.progress import Progress
from tests.support.service_lock import LOCK_PATH as SERVICE_LOCK


@contextlib.contextmanager
def services_held(progress: Progress) -> Iterator[None]:
    """The machine's service lock (tests/support/service_lock.py), shared, for the whole run:
    the tests that stop RabbitMQ or PostgreSQL (marked `disruptive`) take it exclusively, so they
    wait until the benchmark is done, and the benchmark waits for an outage in progress to end.
    A plain `flock`, not the tests' turnstile: in CI the benchmark runs inside a test that
    holds the lock already (tests/support/service_lock.py says why)."""
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


def run_phase(
    name: str,
    config: BenchConfig,
    body: Callable[[Context], Coroutine[Any, Any, dict[str, Any]]],
) -> tuple[dict[str, Any], Context]:
    """`body` under the service lock, with a fresh logs directory: the result and the context
    (its FIGURES record). Exits 1 if a check failed (the logs kept), 2 if RabbitMQ or PostgreSQL
    cannot be reached, 130 on Ctrl-C."""
    progress = Progress()
    logs = Path(tempfile.mkdtemp(prefix=f"coupon-{name}-"))
    context = Context(config, progress, logs)
    try:
        with services_held(progress):
            result = asyncio.run(body(context))
    except BenchmarkFailed as error:
        progress.say(f"\nBENCHMARK FAILED: {error}\n(process logs kept in {logs})")
        sys.exit(1)
    except (OSError, AMQPConnectionError) as error:
        shutil.rmtree(logs, ignore_errors=True)
        progress.say(
            f"{name}: cannot reach RabbitMQ or PostgreSQL ({type(error).__name__}: {error}); "
            "start them (make services) or set AMQP_URL and DATABASE_URL"
        )
        sys.exit(2)
    except KeyboardInterrupt:
        progress.say(f"\ninterrupted (process logs kept in {logs})")
        sys.exit(130)
    shutil.rmtree(logs, ignore_errors=True)
    return result, context


async def describe(config: BenchConfig) -> dict[str, Any]:
    """The machine, the services' versions and the load (benchmarks/machine.py)."""
    connection = await aio_pika.connect(config.amqp_url)
    try:
        return await machine.describe(connection, config.admin_database_url)
    finally:
        await connection.close()


def write_result(result: dict[str, Any], record: list[str], directory: Path, prefix: str) -> Path:
    """`<prefix><stamp>.json` and, beside it, its raw record `<prefix><stamp>.log` (the run's
    FIGURES lines); the result names both."""
    stamp = datetime.fromisoformat(result["started_at"]).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"{prefix}{stamp}.json"
    result["file"] = path.name
    result["raw_record"] = f"{prefix}{stamp}.log"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / result["raw_record"]).write_text("\n".join(record) + "\n")
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path
