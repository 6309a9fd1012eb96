"""Where a workload's time goes: one preloaded worker run of a `make bench` workload (the
1,000-coupon `redeem` by default), the worker sampled by py-spy and the database's statements
counted by `pg_stat_statements` (issue 22, item 2).

    make bench-profile                         # PROFILE_ARGS="--workload mixed --commands 40000"

py-spy (the `dev` group) attaches to the worker process once it is up (`py-spy record --pid`,
collapsed stacks; as root, or with ptrace allowed) and stops when it exits. `pg_stat_statements`
counts only where the server preloads it (`shared_preload_libraries`); the phase creates the
extension in the admin database (`DATABASE_URL`'s) to read the view, keeps the statements of the
run's own fresh database (by its oid: nobody else's, and nothing to reset), or says that the
statement table is left out. The run is `benchmarks.measure.measure` itself, exactly-once
checks included, so what is profiled is what `make bench` measures.

Written to `docs/profiles/<workload>-<time>.txt`: the run's figures; the worker's samples against
the samples it would have taken had it been busy all the time (how much of the wall time the
worker's own thread ran); self time by package and by leaf frame; inclusive time of the hottest
functions; and the statements by total execution time with calls, rows and mean time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from benchmarks.config import build_parser, config_from
from benchmarks.database import BenchmarkFailed
from benchmarks.measure import Context, measure
from benchmarks.provenance import BENCHMARK_CODE, head, uncommitted
from benchmarks.session import run_phase

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "docs" / "profiles"
RATE = 200  # py-spy samples per second
TOP = 25


@dataclass
class Sampler:
    """py-spy attached to the first `coupon-worker run` child of this process once a log in
    `logs` says a worker is ready (start-up, imports above all, is not what is profiled)."""

    logs: Path
    raw: Path
    py_spy: str
    process: subprocess.Popen[bytes] | None = None
    pid: int = 0
    attached_at: float = 0.0
    detached_at: float = 0.0
    watch: asyncio.Task[None] | None = field(default=None, repr=False)

    async def attach_when_started(self) -> None:
        me = psutil.Process()
        while True:
            if any("worker_ready" in log.read_text() for log in self.logs.glob("*.log")):
                break
            await asyncio.sleep(0.01)
        while True:
            for child in me.children(recursive=True):
                try:
                    command = " ".join(child.cmdline())
                except psutil.Error:
                    continue
                if "coupon-worker" in command and " run" in command and "py-spy" not in command:
                    self.pid = child.pid
                    self.process = subprocess.Popen(  # noqa: ASYNC220 - started once, not waited on
                        [
                            *(self.py_spy, "record", "--pid", str(child.pid)),
                            *("--rate", str(RATE), "--format", "raw"),
                            *("--output", str(self.raw), "--nonblocking", "--full-filenames"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    )
                    self.attached_at = time.monotonic()
                    return
            await asyncio.sleep(0.02)

    async def finish(self) -> None:
        if self.process is None:
            raise SystemExit("profile: the worker process was never seen, so py-spy never ran")
        _, errors = await asyncio.to_thread(self.process.communicate, timeout=60)
        self.detached_at = time.monotonic()
        if not self.raw.exists():
            raise SystemExit(f"profile: py-spy wrote nothing: {errors.decode(errors='replace')}")


def stacks(raw: Path) -> Counter[tuple[str, ...]]:
    """py-spy's collapsed stacks: `frame;frame;leaf count` per line."""
    counted: Counter[tuple[str, ...]] = Counter()
    for line in raw.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            counted[tuple(frames.split(";"))] += int(count)
    return counted


def package(frame: str) -> str:
    """`function (/full/path/to/module.py:line)` → the package it is in: a distribution's
    top-level package, `stdlib:<module>`, or this project's `worker/`, `contracts/`."""
    path = frame.rpartition(" (")[2].rstrip(")").rsplit(":", 1)[0].replace("\\", "/")
    found = re.search(r"/site-packages/([^/]+)", path)
    if found:
        return found.group(1).removesuffix(".py")
    found = re.search(r"/lib/python3\.\d+/([^/]+)", path)
    if found:
        return f"stdlib:{found.group(1).removesuffix('.py')}"
    if path.startswith("<frozen"):
        return "stdlib:importlib"
    parts = Path(path).parts
    for own in ("worker", "contracts", "benchmarks"):
        if own in parts:
            return f"{own}/"
    return "other"


def function(frame: str) -> str:
    """`function (dir/module.py)`: the name and the last two parts of its path."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(path.split('/')[-2:])})"


def summarize(counted: Counter[tuple[str, ...]]) -> list[str]:
    total = sum(counted.values()) or 1
    by_package: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in counted.items():
        if not stack:
            continue
        by_package[package(stack[-1])] += count
        leaves[function(stack[-1])] += count
        for name in {function(frame) for frame in stack}:
            inclusive[name] += count

    def block(title: str, counter: Counter[str]) -> list[str]:
        rows = [f"{100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(TOP)]
        return [f"== {title}", *rows, ""]

    return [
        *block("self time by package", by_package),
        *block("self time by leaf frame", leaves),
        *block("inclusive time", inclusive),
    ]


async def statements_ready(database_url: str) -> bool:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as connection:
            preloaded = (await connection.execute(text("SHOW shared_preload_libraries"))).scalar()
            if "pg_stat_statements" not in str(preloaded):
                return False
            await connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
            return True
    finally:
        await engine.dispose()


async def profile(context: Context, workload: str, size: int, py_spy: str) -> dict[str, Any]:
    """The profile's lines (`{"lines": [...]}`), of one run in `context` (benchmarks/session.py
    holds the service lock and keeps the logs)."""
    config = context.config
    sampler = Sampler(context.logs, context.logs / "py-spy.raw", py_spy)
    counting = await statements_ready(config.admin_database_url)
    sampler.watch = asyncio.create_task(sampler.attach_when_started())
    seen = Inspection()
    started = time.monotonic()
    result: dict[str, Any] = await measure(context, "worker", workload, size, inspect=seen.read)
    await sampler.finish()
    sampled_seconds = sampler.detached_at - sampler.attached_at
    counted = stacks(sampler.raw)
    samples = sum(counted.values())
    if samples == 0:
        raise BenchmarkFailed(
            f"py-spy took no sample of the worker busy: the run's {result['seconds']} s "
            "of work were over before py-spy had attached; profile more commands (--commands)"
        )
    lines = [
        f"# python -m benchmarks.profile {' '.join(sys.argv[1:])}".rstrip(),
        f"# {datetime.now(UTC).isoformat(timespec='seconds')}, commit {head()}"
        + (" (uncommitted changes)" if uncommitted(BENCHMARK_CODE) else "")
        + f", load average {' / '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"# workload {workload}: {result['commands']:,} commands preloaded, "
        f"{result['commands_per_second']:,.0f} commands/s over {result['seconds']} s "
        f"(checks: {result['checks']}); run {time.monotonic() - started:.0f} s in all",
        f"# worker pid {sampler.pid} sampled {sampled_seconds:.1f} s at {RATE}/s (from its ready "
        f"line to its exit): {samples:,} samples of its busy thread(s), "
        f"{100 * samples / max(1.0, sampled_seconds * RATE):.0f} % of the wall time",
        "",
        *summarize(counted),
    ]
    lines += seen.tables
    if counting:
        lines += await read_statements(config.admin_database_url, seen.oid)
    else:
        lines.append(
            "== statements: pg_stat_statements is not preloaded by this PostgreSQL "
            "(shared_preload_libraries), so the statement table is left out"
        )
    return {"lines": lines}


@dataclass
class Inspection:
    """What the run's database says once the worker has exited (its backends' counters
    flushed), before the run drops it: its oid (its statements stay in pg_stat_statements under
    it) and its tables' counters (pg_stat_user_tables): rows written, how many updates were HOT
    (no index entry written), dead rows left, scans."""

    oid: int = 0
    tables: list[str] = field(default_factory=list)

    async def read(self, engine: AsyncEngine) -> None:
        query = text(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_dead_tup, seq_scan, idx_scan,"
            " pg_total_relation_size(relid) AS bytes FROM pg_stat_user_tables ORDER BY relname"
        )
        oid_query = text("SELECT oid FROM pg_database WHERE datname = current_database()")
        async with engine.connect() as connection:
            self.oid = int((await connection.execute(oid_query)).scalar_one())
            rows = (await connection.execute(query)).all()
        self.tables = [
            "== tables (pg_stat_user_tables, once the worker had exited)",
            "  table                    inserted    updated  HOT upd.   dead  seq scans  idx scans"
            "   size kB",
        ]
        for row in rows:
            self.tables.append(
                f"  {row.relname:<22} {row.n_tup_ins:10,} {row.n_tup_upd:10,}"
                f" {row.n_tup_hot_upd:9,} {row.n_dead_tup:6,} {row.seq_scan or 0:10,}"
                f" {row.idx_scan or 0:10,} {row.bytes // 1024:9,}"
            )
        self.tables.append("")


async def read_statements(admin_url: str, oid: int) -> list[str]:
    """The run's database's statements (the worker's, and the benchmark's own preseed and
    read-back), by total execution time."""
    engine = create_async_engine(admin_url)
    query = text(
        "SELECT calls, rows, total_exec_time, mean_exec_time, query FROM pg_stat_statements "
        "WHERE dbid = :oid ORDER BY total_exec_time DESC LIMIT :top"
    )
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(query, {"oid": oid, "top": TOP})).all()
    finally:
        await engine.dispose()
    total = sum(float(row.total_exec_time) for row in rows) or 1.0
    lines = [
        "== statements by total execution time (pg_stat_statements, the run's database: the",
        "   worker's statements and the benchmark's own preseed and read-back)",
        "  share    total ms      calls       rows  mean ms  query",
    ]
    for row in rows:
        query_text = " ".join(str(row.query).split())
        lines.append(
            f"{100 * row.total_exec_time / total:6.1f}%  {row.total_exec_time:10.1f}  "
            f"{row.calls:9,}  {row.rows:9,}  {row.mean_exec_time:7.3f}  {query_text[:400]}"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile",
        description="One preloaded worker run of a workload under py-spy and pg_stat_statements.",
        parents=[build_parser()],
        conflict_handler="resolve",
        add_help=False,
    )
    parser.add_argument("--workload", default="redeem", help="the workload profiled (redeem)")
    parser.add_argument("--output", type=Path, help="the profile's file (docs/profiles/...)")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        sys.exit("profile: py-spy is not installed (make setup installs the dev group)")
    config = config_from(args)
    result, _ = run_phase(
        "profile", config, lambda context: profile(context, args.workload, config.commands, py_spy)
    )
    lines: list[str] = result["lines"]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output = args.output or PROFILES / f"{args.workload}-{stamp}.txt"
    output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))  # noqa: T201 - the phase's own output
    print(f"written to {output}")  # noqa: T201


if __name__ == "__main__":
    main()
