"""What the figures were measured on: the machine, how busy it was, and every version that
moves them (Python, the client libraries, RabbitMQ, PostgreSQL, the worker's revision)."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
from aio_pika.abc import AbstractConnection
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks import provenance
from benchmarks.database import server_version

LIBRARIES = ("aio-pika", "aiormq", "sqlalchemy", "asyncpg", "pydantic", "structlog", "uvloop")
REPOSITORY = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def revision() -> dict[str, Any]:
    """The commit the run measures, and whether the code under test (the worker and the
    benchmark, `provenance.BENCHMARK_CODE`) had uncommitted changes when it started."""
    commit = provenance.head(40)
    return {
        "commit": None if commit == "unknown" else commit,
        "dirty": provenance.uncommitted(provenance.BENCHMARK_CODE),
    }


async def describe(connection: AbstractConnection, admin_database_url: str) -> dict[str, Any]:
    engine = create_async_engine(admin_database_url)
    try:
        postgres = await server_version(engine)
    finally:
        await engine.dispose()
    underlay = getattr(connection.transport, "connection", None)
    properties = getattr(underlay, "server_properties", None) or {}
    rabbitmq = properties.get("version")
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "load_average_at_start": [round(value, 2) for value in os.getloadavg()],
        "python": platform.python_version(),
        "libraries": library_versions(),
        "rabbitmq": rabbitmq.decode() if isinstance(rabbitmq, bytes) else rabbitmq,
        "postgresql": postgres,
        "revision": revision(),
    }
