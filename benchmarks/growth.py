"""The growth phase (issue 22: cost as the tables grow): the create, redeem and mixed workloads of
`make bench` through the worker over empty tables and over grown ones — 10,000,000
`processed_command` rows and 1,000,000 coupons — in one run, interleaved (empty, grown, empty,
grown, ...), each figure the median of the repetitions; the grown figure as a share of the empty
one (target: at least 0.9 of it). Then the time `coupon-worker prune` takes on the grown tables.

    make bench-growth                # GROWTH_ARGS="--processed 1000000 --coupons 100000"

The grown tables are one database (benchmarks/grown_tables.py: made in SQL in minutes, their
indexes as the migration made them), shared by the grown runs in turn (grown_runs.py); each
empty run has a fresh database, as in `make bench`. The empty runs are `make bench`'s own
(redeems over 1,000 preseeded coupons); the grown runs redeem and get coupons drawn uniformly
from every one of the grown coupons that holds 20 or more (about 73 % of them), so that each
batch touches coupons and index pages all over the table, as live traffic would; creates use
`make bench`'s codes, tagged per run. The exactly-once checks are `make bench`'s
(benchmarks/checks.py), on the run's slice of the grown database. The table and index sizes (and
btree leaf densities) are recorded after the preload, after the runs and after the prune.

Writes `benchmarks/results/growth-<time>.json` and its raw record `growth-<time>.log` (one
`FIGURES` line per measured run, from which tests/unit/test_growth_table.py rebuilds the
figures), then `python -m benchmarks.growth_table --write docs/performance.md` renders them
(`make bench-growth` does both). Exit 1 if a check failed, 2 on bad arguments or services.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks import grown_tables, relations
from benchmarks.config import RESULTS_DIR, BenchConfig, build_parser, config_from
from benchmarks.database import migrate
from benchmarks.grown_runs import GrownTables
from benchmarks.measure import Context, measure
from benchmarks.runner import ratio, run_label, state, summary
from benchmarks.session import describe, run_phase, write_result
from tests.support.database import create_database, drop_database

FORMAT = 1
WORKLOADS = ("create", "redeem", "mixed")
TABLES = ("empty", "grown")
TARGET = 0.9  # grown at least 0.9 of empty (issue 22)
RUN_KEYS = ("commands", "commands_per_second", "seconds", "peak_rss_bytes")


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per kind of tables the median commands/s and range of its runs; the ratio of the
    medians (grown / empty) and the range of the repetitions' own ratios."""
    row: dict[str, Any] = {}
    for tables in TABLES:
        rates = [run["commands_per_second"] for run in runs[tables]]
        row[tables] = {**summary(rates), "runs": runs[tables]}
    paired = [
        ratio(grown["commands_per_second"], empty["commands_per_second"])
        for empty, grown in zip(runs["empty"], runs["grown"], strict=True)
    ]
    row["ratio"] = ratio(row["grown"]["median"], row["empty"]["median"])
    row["ratio_range"] = [min(paired), max(paired)]
    row["meets_target"] = row["ratio"] >= TARGET
    return row


async def grow_and_measure(args: argparse.Namespace, context: Context) -> dict[str, Any]:
    config = context.config
    say = context.progress.say
    database_url = await create_database(config.admin_database_url, "coupon_growth")
    engine = create_async_engine(database_url, isolation_level="AUTOCOMMIT", pool_size=1)
    try:
        await migrate(database_url, config.amqp_url)
        say(f"== preloading {args.processed:,} processed commands, {args.coupons:,} coupons")
        preload = await grown_tables.preload(
            engine,
            processed=args.processed,
            coupons=args.coupons,
            history_days=args.history_days,
            now=datetime.now(UTC),
        )
        state(
            context,
            run_label("preload", "all", "grown", 1),
            {"processed": args.processed, "coupons": args.coupons, "seconds": preload["seconds"]},
        )
        sizes = {"after_preload": await relations.sizes(engine)}
        grown = GrownTables(database_url, await grown_tables.pool(engine))
        say(f"== preloaded in {preload['seconds']:.0f} s; {len(grown.codes):,} coupons to redeem")
        throughput: dict[str, Any] = {}
        for workload in config.workloads:
            runs: dict[str, list[dict[str, Any]]] = {tables: [] for tables in TABLES}
            for repetition in range(1, config.repetitions + 1):
                for tables in TABLES:
                    run = await measure(
                        context,
                        "worker",
                        workload,
                        config.commands,
                        grown=grown if tables == "grown" else None,
                    )
                    label = run_label("growth", workload, tables, repetition)
                    state(context, label, {key: run[key] for key in RUN_KEYS})
                    runs[tables].append(run)
            throughput[workload] = {"commands": config.commands, **summarize(runs)}
            row = throughput[workload]
            say(
                f"== {workload}: empty {row['empty']['median']:.0f}/s, grown "
                f"{row['grown']['median']:.0f}/s, ratio {row['ratio']:.2f}"
            )
        sizes["after_runs"] = await relations.sizes(engine)
        pruned = await grown_tables.prune(database_url, config.amqp_url, args.retention_days)
        state(context, run_label("prune", "processed_command", "grown", 1), pruned)
        sizes["after_prune"] = await relations.sizes(engine)
        say(f"== prune: {pruned['deleted']:,} rows in {pruned['seconds']:.0f} s")
        return {
            "server_settings": await relations.server_settings(engine),
            "preload": preload,
            "pool": {"coupons": len(grown.codes), "least_stock": grown_tables.POOL_STOCK},
            "throughput": throughput,
            "prune": pruned,
            "sizes": sizes,
        }
    finally:
        await engine.dispose()
        if args.keep:
            say(f"kept the grown database: {database_url}")
        else:
            await drop_database(config.admin_database_url, database_url)


async def run(args: argparse.Namespace, context: Context) -> dict[str, Any]:
    config = context.config
    started_at = datetime.now(UTC)
    started = time.monotonic()
    description = await describe(config)
    figures = await grow_and_measure(args, context)
    return {
        "format": FORMAT,
        "status": "passed",
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
        "command": "python -m benchmarks.growth " + shlex.join(sys.argv[1:]),
        "machine": description,
        "settings": {
            **config.describe(),
            "processed": args.processed,
            "grown_coupons": args.coupons,
            "history_days": args.history_days,
            "retention_days": args.retention_days,
            "target": TARGET,
        },
        **figures,
    }


def write(result: dict[str, Any], record: list[str], directory: Path) -> Path:
    """`growth-<stamp>.json` and its raw record `growth-<stamp>.log`."""
    return write_result(result, record, directory, prefix="growth-")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.growth", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--processed", type=int, default=10_000_000, help="rows (10000000)")
    parser.add_argument("--coupons", type=int, default=1_000_000, help="grown coupons (1000000)")
    parser.add_argument("--history-days", type=float, default=37.0, help="rows spread over (37)")
    parser.add_argument("--retention-days", type=float, default=30.0, help="prune's (30)")
    parser.add_argument("--commands", type=int, default=20_000, help="per run (20000)")
    parser.add_argument("--repetitions", type=int, default=3, help="of each pair (3)")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--keep", action="store_true", help="keep the grown database")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    return parser


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """`make bench`'s configuration for these workloads (worker knobs from WORKER_*)."""
    flags = ["--commands", str(args.commands), "--repetitions", str(args.repetitions)]
    flags += ["--workloads", *args.workloads, "--output-dir", str(args.output_dir)]
    return config_from(build_parser().parse_args(flags))


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    problems = []
    if not 1_000 <= args.processed <= 100_000_000:
        problems.append("--processed must be from 1,000 to 100,000,000")
    if not 100 <= args.coupons <= args.processed:
        problems.append("--coupons must be from 100 to --processed")
    if not 0 < args.retention_days < args.history_days:
        problems.append("--retention-days must be above 0 and below --history-days")
    try:
        config = bench_config(args)
    except ValueError as error:
        problems.append(str(error))
    if problems:
        print(f"growth: {'; '.join(problems)}", file=sys.stderr)  # noqa: T201
        sys.exit(2)
    result, context = run_phase("growth", config, lambda context: run(args, context))
    path = write(result, context.record, args.output_dir)
    context.progress.say(f"\n{result['seconds'] / 60:.0f} min; results in {path}")


if __name__ == "__main__":
    main()
