"""`python -m benchmarks.replicas_table [replicas-<stamp>.json]`: the Replicas section of
docs/performance.md, rendered from a result file of `make bench-replicas` (default: the newest in
benchmarks/results/). `--write docs/performance.md` replaces it between `<!-- replicas:start -->`
and `<!-- replicas:end -->` (`make bench-replicas` does). Like the main tables, it names its
result file and raw record and says "stale since …" once the code under test changed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final

from benchmarks import pages
from benchmarks.config import RESULTS_DIR
from benchmarks.table import DASH, TIMES, _range, freshness, load

START, END = pages.markers("replicas")
NAMES: Final = {"x1": "1 process", "x2": "2 processes"}


def newest(directory: Path = RESULTS_DIR) -> Path:
    """The newest `replicas-<stamp>.json`."""
    return pages.newest("replicas", directory)


def render(result: dict[str, Any]) -> str:
    machine, settings = result["machine"], result["settings"]
    libraries = machine["libraries"]
    per_process = result["worker_settings"]["per_process"]
    knobs = ", ".join(f"{k} {v}" for k, v in per_process.items())
    lines = [
        f"Run of {result['started_at']} ({result['seconds'] / 60:.0f} min), "
        f"`{result['command']}`, from `benchmarks/results/{result['file']}` (raw record: "
        f"`benchmarks/results/{result['raw_record']}`): {machine['cpu_count']} {TIMES} "
        f"{machine['cpu_model']}, load average at start "
        f"{' / '.join(str(v) for v in machine['load_average_at_start'])}; Python "
        f"{machine['python']}, aio-pika {libraries['aio-pika']}, SQLAlchemy "
        f"{libraries['sqlalchemy']}, RabbitMQ {machine['rabbitmq']}, PostgreSQL "
        f"{machine['postgresql']}; each worker process {knobs}; each figure the median of "
        f"{settings['repetitions']} interleaved repetitions (1 process, 2, 1, 2, …), its range "
        f"beside it. {freshness(result).describe()}.",
        "",
        "| workload | commands | 1 process | 2 processes | ratio, 2 to 1 (range of the "
        "repetitions' ratios) | smaller process's share | lock waits, 1 / 2 processes: "
        "samples finding one, waits seen, longest | deadlocks, 1 / 2 | per command: CPU, waiting "
        "for a CPU, 1 / 2 processes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for workload, row in result["throughput"].items():
        one, two = row["x1"], row["x2"]
        lines.append(
            f"| {workload} | {settings['commands']:,} | {one['commands_per_second']:,.0f}/s "
            f"({_range(one['range'])}) | {two['commands_per_second']:,.0f}/s "
            f"({_range(two['range'])}) | **{row['ratio']:.2f}{TIMES}** "
            f"({_range(row['ratio_range'], digits=2)}) | {_share(row['smallest_share'])} | "
            f"{_locks(one)} / {_locks(two)} | {_deadlocks(row)} | {_times(one)} / {_times(two)} |"
        )
    lines += [
        "",
        f"| latency, command → outcome at {settings['latency_rate']:,.0f}/s | 1 process p50 / "
        "p99 / max (p99 range) | 2 processes p50 / p99 / max (p99 range) | p99 ratio | smaller "
        "process's share | lock waits, 1 / 2 processes | deadlocks, 1 / 2 | per command: CPU, "
        "waiting for a CPU, 1 / 2 processes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for workload, row in result["latency"].items():
        one, two = row["x1"], row["x2"]
        lines.append(
            f"| {workload} | {_latency(one)} | {_latency(two)} | {row['p99_ratio']:.2f}{TIMES} | "
            f"{_share(row['smallest_share'])} | {_locks(one)} / {_locks(two)} | "
            f"{_deadlocks(row)} | {_times(one)} / {_times(two)} |"
        )
    lines += ["", _hot(result["hot"]), "", _targets(result["targets"])]
    if settings["quick"]:
        lines.insert(0, "**--quick run: smoke-test counts, not figures to publish.**\n")
    return "\n".join(lines)


def _share(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


def _locks(target: dict[str, Any]) -> str:
    locks = target["locks"]
    return f"{locks['waiting_share']:.0%}, {locks['waits_seen']:,}, {locks['longest_ms']:,.0f} ms"


def _times(target: dict[str, Any]) -> str:
    return f"{target['cpu_ms_per_command']:.2f}, {target['run_queue_ms_per_command']:.2f} ms"


def _deadlocks(row: dict[str, Any]) -> str:
    return f"{row['x1']['locks']['deadlocks']} / {row['x2']['locks']['deadlocks']}"


def _latency(target: dict[str, Any]) -> str:
    return (
        f"{target['p50_ms']:.1f} / {target['p99_ms']:.1f} / {target['max_ms']:.0f} ms "
        f"({_range(target['p99_range'], digits=1)})"
    )


def _hot(hot: dict[str, Any]) -> str:
    def said(met: bool) -> str:
        return "yes" if met else "**NO**"

    return (
        f"The hot coupon shared by both: {hot['commands']:,} redeems of one coupon holding "
        f"{hot['stock']:,}, two processes: **{hot['redeemed']:,} redeemed, {hot['exhausted']:,} "
        f"Exhausted, remaining_count {hot['remaining']}** (exactly the stock redeemed: "
        f"{said(hot['exactly_stock_redeemed'])}); every command one outcome (lost "
        f"{hot['lost']}, doubled {hot['doubled']}, copies {hot['copies']}); deadlocks "
        f"{hot['deadlocks']}; lock waits seen {hot['lock_waits_seen']:,}, longest "
        f"{hot['lock_longest_ms']:,.0f} ms. Who answered what, from the processes' logs (every "
        f"command's id and outcome at DEBUG): the first {hot['answered_1']:,} "
        f"({hot['redeemed_by_1']:,} redeemed, {hot['exhausted_by_1']:,} Exhausted), the second "
        f"{hot['answered_2']:,} ({hot['redeemed_by_2']:,} redeemed, {hot['exhausted_by_2']:,} "
        f"Exhausted); {hot['attributed']:,} commands found in exactly one log "
        f"({hot['attributed_twice']} in both); CPU once consuming {hot['cpu_seconds_1']:.1f} s "
        f"and {hot['cpu_seconds_2']:.1f} s, waiting for a CPU {hot['run_queue_seconds_1']:.1f} s "
        f"and {hot['run_queue_seconds_2']:.1f} s; {hot['commands_per_second']:,.0f} commands/s."
    )


def _targets(targets: dict[str, Any]) -> str:
    met = [w for w, ok in targets["ratios_met"].items() if ok]
    missed = [w for w, ok in targets["ratios_met"].items() if not ok]
    ratio = f"{targets['ratio_at_least']:.2f}{TIMES}"
    parts = [f"reached for {', '.join(met)}" if met else ""]
    parts += [f"**not reached for {', '.join(missed)}**" if missed else ""]
    return (
        f"Against the targets: two processes at least {ratio} one: "
        f"{'; '.join(p for p in parts if p)}. Deadlocks in every run of this phase: "
        f"{targets['deadlocks']} (target 0{'' if targets['deadlocks'] == 0 else ': **missed**'}). "
        f"The hot coupon {DASH} exact counts, one outcome each, no deadlock, both processes at "
        f"work: {'reached' if targets['hot_met'] else '**not reached**'}."
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.replicas_table", description=__doc__
    )
    parser.add_argument("result", nargs="?", type=Path, help="default: the newest replicas-*.json")
    parser.add_argument("--write", type=Path, help="replace the section in this page")
    args = parser.parse_args(argv)
    section = render(load(args.result or newest()))
    if args.write is None:
        print(section)  # noqa: T201
        return
    pages.write_section(args.write, "replicas", section)


if __name__ == "__main__":
    main()
