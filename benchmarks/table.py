"""`python -m benchmarks.table [RESULT.json]` (or `make bench-table`): the tables of
docs/performance.md, rendered from a result file (default benchmarks/results/latest.json), so
that every figure in the docs comes from a result file."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.config import RESULTS_DIR

MIB = 1024 * 1024
TIMES = "\N{MULTIPLICATION SIGN}"


def render(result: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    """The tables; with `before` (a result file of the previous worker), its throughput and
    ratios stand beside this run's."""
    machine, settings = result["machine"], result["settings"]
    libraries = machine["libraries"]
    knobs = ", ".join(f"{k} {v}" for k, v in settings["worker_knobs_effective"].items())
    lines = [
        f"Run of {result['started_at']} ({result['seconds'] / 60:.0f} min), "
        f"`{result['command']}`, from `benchmarks/results/{result['file']}`: "
        f"{machine['cpu_count']} {TIMES} {machine['cpu_model']}, load average at start "
        f"{' / '.join(str(v) for v in machine['load_average_at_start'])}; Python "
        f"{machine['python']}, aio-pika {libraries['aio-pika']}, SQLAlchemy "
        f"{libraries['sqlalchemy']}, RabbitMQ {machine['rabbitmq']}, PostgreSQL "
        f"{machine['postgresql']}; worker {knobs}.",
        "",
        "| workload | commands | broker-only ceiling | "
        + ("before: ceiling | before: coupon-worker | " if before else "")
        + "coupon-worker | ratio to ceiling |",
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
        lines.append(
            f"| {workload} | {row['commands']:,} | {row['ceiling']['commands_per_second']:,.0f}/s "
            f"| {earlier}**{row['worker']['commands_per_second']:,.0f}/s** | "
            f"**{row['ratio_to_ceiling']:.2f}{TIMES}** |"
        )
    lines += [
        "",
        "| latency, command → outcome | offered | ceiling p50 / p99 / max | "
        "coupon-worker p50 / p99 / max | p99 ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for level, row in result["latency"].items():
        label = "steady rate" if level == "offered" else "half of each one's maximum"
        lines.append(
            f"| {row['workload']}, {label} | {_offered(row)} | {_latency(row['ceiling'])} | "
            f"{_latency(row['worker'])} | {row['p99_ratio_to_ceiling']:.2f}{TIMES} |"
        )
    memory = result["memory"]
    lines += [
        "",
        f"Worker peak RSS ({memory['workload']}): "
        f"{memory['short']['peak_rss_bytes'] / MIB:.0f} MiB over "
        f"{memory['short']['commands']:,} commands, {memory['long']['peak_rss_bytes'] / MIB:.0f} "
        f"MiB over {memory['long']['commands']:,} ({memory['ratio']:.2f}{TIMES}: "
        f"{'grows' if memory['grows_with_count'] else 'flat'}).",
    ]
    if settings["quick"]:
        lines.insert(0, "**--quick run: smoke-test counts, not figures to publish.**\n")
    if before is not None:
        lines.append(
            f"\nBefore: `benchmarks/results/{before['file']}` ({before['started_at']}, worker "
            f"revision {str(before['machine']['revision']['commit'])[:10]})."
        )
    return "\n".join(lines)


def _offered(row: dict[str, Any]) -> str:
    ceiling, worker = row["ceiling"]["offered_per_second"], row["worker"]["offered_per_second"]
    return f"{ceiling:,.0f}/s" if ceiling == worker else f"{ceiling:,.0f} / {worker:,.0f}/s"


def _latency(run: dict[str, Any]) -> str:
    figures = run["latency"]
    return f"{figures['p50_ms']:.1f} / {figures['p99_ms']:.1f} / {figures['max_ms']:.0f} ms"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.table", description=__doc__)
    parser.add_argument("result", nargs="?", type=Path, default=RESULTS_DIR / "latest.json")
    parser.add_argument("--before", type=Path, help="a result file of the previous worker")
    args = parser.parse_args(argv)
    result = load(args.result)
    before = load(args.before) if args.before else None
    print(render(result, before))  # noqa: T201


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
