"""Why two worker processes answer a steady 200/s with a longer tail than one (docs/
performance.md, "Replicas"): the scheduler's view of the latency runs of `make bench-replicas`.

    uv run python scripts/replicas_runqueue.py [--workloads create mixed] [--repetitions 3]

The same runs as the replicas phase's latency runs (`benchmarks.measure.measure`, 200/s for 10 s,
one process and two interleaved), each watched while every process consumes: from
/proc/<pid>/task/*/schedstat (time on a CPU, time runnable but waiting for one, times scheduled
in), for the worker processes and for their PostgreSQL backends, per command answered; the
machine's busy share (/proc/stat); and every 10 ms the CPU each worker process last ran on
(two processes on the same one). Prints one line per run and the medians per workload and count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks.config import BenchConfig
from benchmarks.measure import Context, measure
from benchmarks.processes import Window
from benchmarks.progress import Progress
from benchmarks.stage import Stage

INTERVAL = 0.01


def schedstat(pid: int) -> tuple[int, int, int]:
    """(ns on a CPU, ns waiting on a run queue, times scheduled in), over the process's threads."""
    total = [0, 0, 0]
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                values = (task / "schedstat").read_text().split()
                for index in range(3):
                    total[index] += int(values[index])
    return total[0], total[1], total[2]


def busy() -> tuple[float, float]:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return sum(times) - idle, sum(times)


class Probe:
    def __init__(self) -> None:
        self.figures: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def watch(self, stage: Stage, window: Window) -> AsyncIterator[dict[str, Any]]:
        task = asyncio.create_task(self._sample(stage, window))
        try:
            yield self.figures
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sample(self, stage: Stage, window: Window) -> None:
        while not window.ready_at:  # noqa: ASYNC110 - a plain field that measure() sets
            await asyncio.sleep(INTERVAL)
        workers = [
            p.pid
            for p in psutil.Process().children()
            if any("coupon-worker" in part for part in p.cmdline())
        ]
        database = make_url(stage.database_url).database
        engine = create_async_engine(stage.admin_url)
        try:
            async with engine.connect() as connection:
                rows = await connection.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = :d "
                        "AND application_name = 'coupon-worker'"
                    ),
                    {"d": database},
                )
                backends = [int(row.pid) for row in rows]
        finally:
            await engine.dispose()
        start = {pid: schedstat(pid) for pid in (*workers, *backends)}
        machine_start = busy()
        same = samples = 0
        handles = [psutil.Process(pid) for pid in workers]
        while not window.done_at:
            with contextlib.suppress(psutil.Error):
                cpus = [handle.cpu_num() for handle in handles]
                samples += 1
                same += len(cpus) > 1 and len(set(cpus)) == 1
            await asyncio.sleep(INTERVAL)
        end = {pid: schedstat(pid) for pid in start}
        machine_end = busy()

        def delta(pids: list[int]) -> list[int]:
            return [sum(end[p][i] - start[p][i] for p in pids) for i in range(3)]

        self.figures.update(
            workers=delta(workers),
            backends=delta(backends),
            backend_count=len(backends),
            machine_busy=(machine_end[0] - machine_start[0]) / (machine_end[1] - machine_start[1]),
            same_cpu_share=same / samples if samples else 0.0,
        )


def per_command(figures: dict[str, Any], key: str, commands: int) -> dict[str, float]:
    on_cpu, waiting, slices = figures[key]
    return {
        f"{key}_cpu_ms": on_cpu / 1e6 / commands,
        f"{key}_wait_ms": waiting / 1e6 / commands,
        f"{key}_wait_per_slice_us": waiting / 1e3 / slices if slices else 0.0,
        f"{key}_slices": slices / commands,
    }


async def main(workloads: list[str], repetitions: int) -> None:
    config = BenchConfig(
        amqp_url=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        admin_database_url=os.environ.get(
            "DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    context = Context(config, Progress(), Path(tempfile.mkdtemp(prefix="coupon-runqueue-")))
    table: dict[tuple[str, int], list[dict[str, float]]] = {}
    for workload in workloads:
        for repetition in range(1, repetitions + 1):
            for replicas in (1, 2):
                probe = Probe()
                run = await measure(
                    context, "worker", workload, 2000, 200.0, replicas=replicas, watch=probe.watch
                )
                commands = run["from_ready"]["commands"]
                row = {
                    "p50_ms": run["latency"]["p50_ms"],
                    "p99_ms": run["latency"]["p99_ms"],
                    **per_command(probe.figures, "workers", commands),
                    **per_command(probe.figures, "backends", commands),
                    "machine_busy": probe.figures["machine_busy"],
                    "same_cpu_share": probe.figures["same_cpu_share"],
                }
                table.setdefault((workload, replicas), []).append(row)
                print(  # noqa: T201
                    f"{workload} x{replicas} #{repetition} "
                    + " ".join(f"{k}={v:.3f}" for k, v in row.items()),
                    flush=True,
                )
    print("\nmedians")  # noqa: T201
    for (workload, replicas), rows in table.items():
        medians = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(  # noqa: T201
            f"{workload} x{replicas} " + " ".join(f"{k}={v:.3f}" for k, v in medians.items())
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["create", "mixed"])
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.workloads, args.repetitions))
