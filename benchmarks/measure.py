"""One measured run: a fresh stage, a plan, the target process (worker or ceiling; or several
worker processes, replicas on one queue), every outcome observed, the processes stopped, and the
exactly-once checks. A check that fails raises `BenchmarkFailed` with the verdict, after the
stage is cleaned up. A phase may watch the run (`Watch`: benchmarks/locks.py samples
PostgreSQL's lock waits) from before the processes start until after they stopped."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks import checks, database, timing
from benchmarks.config import BenchConfig, CeilingConfiguration
from benchmarks.database import BenchmarkFailed
from benchmarks.grown_runs import GrownTables
from benchmarks.observer import Observer
from benchmarks.processes import TargetProcess, Window, running
from benchmarks.progress import Phase, Progress
from benchmarks.stage import Stage
from benchmarks.workloads import Plan, build_plan

QUIET_AFTER = 0.5  # seconds to wait after the last outcome, so that a late copy is seen

# Watches a run's stage from before its processes start until after they stopped (the Window
# says when they were measured); the dict it yields is filled by its exit.
Watch = Callable[[Stage, Window], AbstractAsyncContextManager[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Context:
    config: BenchConfig
    progress: Progress
    logs: Path
    record: list[str] = field(default_factory=list)  # the run's FIGURES lines, in order


async def measure(
    context: Context,
    target: str,
    workload: str,
    size: int,
    rate: float | None = None,
    ceiling: CeilingConfiguration | None = None,
    inspect: Callable[[AsyncEngine], Awaitable[None]] | None = None,
    *,
    replicas: int = 1,
    hot_stock: int | None = None,
    watch: Watch | None = None,
    grown: GrownTables | None = None,
) -> dict[str, Any]:
    """Preloaded (`rate` None: the queue is full before the target starts) or paced; the
    ceiling as `ceiling` says (else one batch at a time on the default loop). `inspect` is
    given the worker's database once the worker has exited, before it is dropped; `replicas`
    worker processes started together; `hot_stock` as `build_plan` takes it; the worker over
    `grown` tables (benchmarks/grown_runs.py) instead of a fresh database."""
    config = context.config
    ceiling = ceiling or CeilingConfiguration("asyncio", 1)
    shown = f"ceiling ({ceiling.name})" if target == "ceiling" else target
    shown += f" x{replicas}" if replicas > 1 else ""
    label = f"{shown} {workload}" + (f" at {rate:.0f}/s" if rate else "")
    if grown is not None and target != "worker":
        raise ValueError("only the worker runs over grown tables")
    stage = Stage(config.amqp_url, config.admin_database_url, grown.database_url if grown else "")
    verdict = checks.Verdict()
    try:
        await stage.open(with_database=target == "worker")
        if grown is None:
            plan = build_plan(
                workload,
                size,
                seed=config.seed,
                coupons=config.coupons,
                reply_to=stage.reply_to,
                hot_stock=hot_stock,
            )
            await stage.preseed(plan.preseed)
        else:
            assert stage.engine is not None
            plan = await grown.plan(
                stage.engine, workload, size, seed=config.seed, reply_to=stage.reply_to
            )
        if rate is None:
            with context.progress.phase(f"{label}: preload", len(plan)) as phase:
                await stage.preload(plan.messages, phase.advance)
        processes = [
            _process(context, target, stage, f"{label} {index}", ceiling)
            for index in range(1, replicas + 1)
        ]
        window = Window()
        async with (
            watch(stage, window) if watch else _unwatched() as watched,
            running(stage, processes, window),
        ):
            with context.progress.phase(label, len(plan)) as phase:
                sent, achieved = await _drive(stage, plan, rate, phase, processes)
        assert stage.observer is not None
        arrivals = stage.observer.arrivals
        result: dict[str, Any] = {"target": target, "workload": workload, "commands": len(plan)}
        if target == "ceiling":
            result["ceiling"] = ceiling.describe()
        result["mode"] = "preloaded" if rate is None else "paced"
        result.update(timing.throughput(arrivals))
        counted = [at for at in timing.first_answers(arrivals).values() if at >= window.ready_at]
        result["from_ready"] = {
            "commands": len(counted),
            **timing.throughput(arrivals, since=window.ready_at),
        }
        if rate is not None:
            result["offered_per_second"] = round(rate, 1)
            result["sent_per_second"] = round(achieved, 1)
            result["latency"] = timing.latency(plan.messages, sent, arrivals)
        if target == "worker":
            result["peak_rss_bytes"] = max(process.peak_rss for process in processes)
            result["worker_reported"] = _ready_record(processes[0].log)
        if replicas > 1 or watch:
            result["processes"] = window.describe(processes)
            result["logs"] = [str(process.log) for process in processes]  # for the caller to read
        if watch:
            result["watched"] = watched
        checks.check_outcomes(plan, arrivals, verdict)
        left = await stage.broker.depth(stage.topology.worker_queue)
        dead = await stage.broker.depth(stage.topology.dead_queue)
        checks.check_queues(plan, left, dead, verdict)
        if stage.engine is not None:
            state = await (
                grown.read_state(stage.engine, plan) if grown else database.read_state(stage.engine)
            )
            checks.check_database(plan, state, verdict)
            if inspect is not None:
                await inspect(stage.engine)
        result["checks"] = verdict.describe()
    finally:
        await stage.close()
    if not verdict.passed:
        problems = "\n  ".join(verdict.problems)
        raise BenchmarkFailed(f"{label}: the exactly-once checks FAILED:\n  {problems}")
    return result


def _process(
    context: Context, target: str, stage: Stage, label: str, ceiling: CeilingConfiguration
) -> TargetProcess:
    name = "".join(c if c.isalnum() or c in "-." else "-" for c in label)
    log = context.logs / f"{name}-{len(list(context.logs.iterdir()))}.log"
    config = context.config
    if target == "ceiling":
        return TargetProcess.ceiling(
            {"AMQP_URL": config.amqp_url},
            log,
            f"--prefix={stage.prefix}",
            f"--prefetch={config.effective_knob('prefetch')}",
            f"--batch-size={config.effective_knob('batch_size')}",
            f"--concurrency={ceiling.concurrency}",
            f"--loop={ceiling.loop}",
        )
    env = {
        "AMQP_URL": config.amqp_url,
        "DATABASE_URL": stage.database_url,
        "WORKER_NAME_PREFIX": stage.prefix,
        **config.worker_environment(),
    }
    return TargetProcess.worker(env, log)


@contextlib.asynccontextmanager
async def _unwatched() -> AsyncIterator[dict[str, Any]]:
    yield {}


async def _drive(
    stage: Stage, plan: Plan, rate: float | None, phase: Phase, processes: list[TargetProcess]
) -> tuple[dict[str, float], float]:
    observer = stage.observer
    assert observer is not None
    ticker = asyncio.create_task(_tick(observer, phase))
    try:
        sent: dict[str, float] = {}
        achieved = 0.0
        if rate is not None:
            channel = stage.broker.ch
            exchange = await channel.get_exchange(stage.topology.commands_exchange, ensure=False)
            sent, achieved = await timing.publish_paced(exchange, plan.messages, rate)
        # Generous: a loaded machine and a slow build still finish; 60 s of silence is a stall.
        await observer.wait_answered(
            len(plan),
            within=300 + len(plan) / 20,
            idle=60,
            alive=lambda: all(process.running() for process in processes),
        )
        await asyncio.sleep(QUIET_AFTER)
        phase.update_to(observer.answered)
        return sent, achieved
    finally:
        ticker.cancel()


async def _tick(observer: Observer, phase: Phase) -> None:
    while True:
        phase.update_to(observer.answered)
        await asyncio.sleep(0.25)


def _ready_record(log: Path) -> dict[str, Any]:
    """The settings the worker says it runs with (its `worker_ready` line)."""
    for line in log.read_text(errors="replace").splitlines():
        if "worker_ready" in line:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    keys = ("prefetch", "batch_size", "concurrency", "db_pool_size")
                    return {key: record[key] for key in keys if key in record}
    return {}
