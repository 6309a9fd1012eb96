"""`python -m benchmarks.table [RESULT.json]` (or `make bench-table`): the tables of
docs/performance.md, rendered from a result file (default benchmarks/results/latest.json), so
that every figure there comes from a result file. `--write docs/performance.md` replaces them
between `<!-- performance:start -->` and `<!-- performance:end -->` (`make bench` does).

The run line names the result file and its raw record, and says whether the code under test
changed since the run's commit ("stale since …", benchmarks/provenance.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import pages, provenance
from benchmarks.config import RESULTS_DIR

MIB = 1024 * 1024
TIMES = "\N{MULTIPLICATION SIGN}"
DASH = "\N{EN DASH}"
START, END = pages.markers("performance")


def freshness(result: dict[str, Any]) -> provenance.Freshness:
    """Whether the worker and the benchmark are what the run measured."""
    revision = result["machine"]["revision"]
    commit = str(revision.get("commit") or "unknown")[:12]
    return provenance.freshness(
        commit, provenance.BENCHMARK_CODE, dirty_run=bool(revision.get("dirty"))
    )


def _range(bounds: list[float], digits: int = 0) -> str:
    low, high = bounds
    return f"{low:,.{digits}f}{DASH}{high:,.{digits}f}"


def render(result: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """The tables; with `before` (a result file of the previous worker), its throughput and
    ratios stand beside this run's."""
    machine, settings = result["machine"], result["settings"]
    libraries = machine["libraries"]
    knobs = ", ".join(f"{k} {v}" for k, v in settings["worker_knobs_effective"].items())
    record = result.get("raw_record", "(none)")
    lines = [
        f"Run of {result['started_at']} ({result['seconds'] / 60:.0f} min), "
        f"`{result['command']}`, from `benchmarks/results/{result['file']}` (raw record: "
        f"`benchmarks/results/{record}`): "
        f"{machine['cpu_count']} {TIMES} {machine['cpu_model']}, load average at start "
        f"{' / '.join(str(v) for v in machine['load_average_at_start'])}; Python "
        f"{machine['python']}, aio-pika {libraries['aio-pika']}, SQLAlchemy "
        f"{libraries['sqlalchemy']}, RabbitMQ {machine['rabbitmq']}, PostgreSQL "
        f"{machine['postgresql']}; worker {knobs}; each figure the median of "
        f"{settings['repetitions']} interleaved repetitions (ceiling, worker, …), its range "
        f"beside it. {freshness(result).describe()}.",
        "",
        _ceiling_line(result["ceiling"]),
        "",
        "| workload | commands | broker-only ceiling | "
        + ("before: ceiling | before: coupon-worker | " if before else "")
        + "coupon-worker | ratio to ceiling (range of the repetitions' ratios) |",
        "| --- | ---: | ---: | " + ("---: | ---: | " if before else "") + "---: | ---: |",
    ]
    for workload, row in result["throughput"].items():
        earlier = ""
        if before is not None and workload in before["throughput"]:
            old = before["throughput"][workload]
            earlier = (
                f"{old['ceiling']['commands_per_second']:,.0f}/s | "
                f"{old['worker']['commands_per_second']:,.0f}/s "
                f"({old['ratio_to_ceiling']:.2f}{TIMES}) | "
            )
        elif before is not None:
            earlier = "- | - | "
        ceiling, worker = row["ceiling"], row["worker"]
        lines.append(
            f"| {workload} | {row['commands']:,} | {ceiling['commands_per_second']:,.0f}/s "
            f"({_range(ceiling['range'])}) | {earlier}**{worker['commands_per_second']:,.0f}/s**"
            f" ({_range(worker['range'])}) | **{row['ratio_to_ceiling']:.2f}{TIMES}** "
            f"({_range(row['ratio_range'], digits=2)}) |"
        )
    lines += [
        "",
        "| latency, command → outcome | offered | ceiling p50 / p99 / max (p99 range) | "
        "coupon-worker p50 / p99 / max (p99 range) | p99 ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for level, row in result["latency"].items():
        label = "steady rate" if level == "offered" else "half of each one's median maximum"
        lines.append(
            f"| {row['workload']}, {label} | {_offered(row)} | {_latency(row['ceiling'])} | "
            f"{_latency(row['worker'])} | {row['p99_ratio_to_ceiling']:.2f}{TIMES} |"
        )
    memory = result["memory"]
    lines += [
        "",
        f"Worker peak RSS ({memory['workload']}): "
        f"{memory['short']['peak_rss_bytes'] / MIB:.0f} MiB over "
        f"{memory['short']['commands']:,} commands (the highest of the throughput runs), "
        f"{memory['long']['peak_rss_bytes'] / MIB:.0f} MiB over {memory['long']['commands']:,} "
        f"({memory['ratio']:.2f}{TIMES}: {'grows' if memory['grows_with_count'] else 'flat'}).",
    ]
    if settings["quick"]:
        lines.insert(0, "**--quick run: smoke-test counts, not figures to publish.**\n")
    if before is not None:
        lines.append(
            f"\nBefore: `benchmarks/results/{before['file']}` ({before['started_at']}, worker "
            f"revision {str(before['machine']['revision']['commit'])[:10]})."
        )
    return "\n".join(lines)


def _ceiling_line(choice: dict[str, Any]) -> str:
    tried = ", ".join(
        f"{t['loop']} with {t['concurrency']} batch{'es' if t['concurrency'] > 1 else ''} in "
        f"flight {t['commands_per_second']:,.0f}/s"
        for t in choice["tried"]
    )
    chosen = choice["chosen"]
    return (
        f"The broker-only ceiling runs on {chosen['loop']} with {chosen['concurrency']} "
        f"batch{'es' if chosen['concurrency'] > 1 else ''} in flight: the best of the "
        f"configurations tried once each on `{choice['workload']}` ({tried})."
    )


def _offered(row: dict[str, Any]) -> str:
    ceiling, worker = row["ceiling"]["offered_per_second"], row["worker"]["offered_per_second"]
    return f"{ceiling:,.0f}/s" if ceiling == worker else f"{ceiling:,.0f} / {worker:,.0f}/s"


def _latency(run: dict[str, Any]) -> str:
    figures = run["latency"]
    return (
        f"{figures['p50_ms']:.1f} / {figures['p99_ms']:.1f} / {figures['max_ms']:.0f} ms "
        f"({_range(figures['p99_ms_range'], digits=1)})"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.table", description=__doc__)
    parser.add_argument("result", nargs="?", type=Path, default=RESULTS_DIR / "latest.json")
    parser.add_argument("--before", type=Path, help="a result file of the previous worker")
    parser.add_argument("--write", type=Path, help="replace the tables in this page")
    args = parser.parse_args(argv)
    result = load(args.result)
    before = load(args.before) if args.before else None
    tables = render(result, before)
    if args.write is None:
        print(tables)  # noqa: T201
        return
    pages.write_section(args.write, "performance", tables)


def load(path: Path) -> dict[str, Any]:
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        sys.exit(f"cannot read {path}: {error}")
    if not isinstance(result, dict) or result.get("status") != "passed":
        sys.exit(f"{path} is not the result file of a passed benchmark run")
    return result


if __name__ == "__main__":
    main()
