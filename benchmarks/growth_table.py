"""`python -m benchmarks.growth_table [RESULT.json]`: the growth section of docs/performance.md,
rendered from a growth result file (default: the newest `benchmarks/results/growth-*.json`);
`--write docs/performance.md` replaces it between `<!-- growth:start -->` and
`<!-- growth:end -->` (`make bench-growth` does). The run line says whether the code under test
changed since the run's commit, as the performance tables do (benchmarks/provenance.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import pages
from benchmarks.config import RESULTS_DIR
from benchmarks.table import MIB, TIMES, _range, freshness

START, END = pages.markers("growth")
MOMENTS = ("after_preload", "after_runs", "after_prune")


def newest(directory: Path = RESULTS_DIR) -> Path:
    """The newest `growth-<stamp>.json`."""
    return pages.newest("growth", directory)


def render(result: dict[str, Any]) -> str:
    machine, settings, server = result["machine"], result["settings"], result["server_settings"]
    preload, prune = result["preload"], result["prune"]
    steps = ", ".join(f"{name} {seconds:,.0f} s" for name, seconds in preload["steps"].items())
    target = settings["target"]
    lines = [
        f"Run of {result['started_at']} ({result['seconds'] / 60:.0f} min), "
        f"`{result['command']}`, from `benchmarks/results/{result['file']}` (raw record: "
        f"`benchmarks/results/{result['raw_record']}`): {machine['cpu_count']} {TIMES} "
        f"{machine['cpu_model']}, load average at start "
        f"{' / '.join(str(v) for v in machine['load_average_at_start'])}; PostgreSQL "
        f"{machine['postgresql']} with shared_buffers {server['shared_buffers']}, autovacuum "
        f"{server['autovacuum']}; worker defaults; each figure the median of "
        f"{settings['repetitions']} interleaved repetitions (empty, grown, …), its range beside "
        f"it. {freshness(result).describe()}.",
        "",
        f"Grown tables: {settings['processed']:,} `processed_command` rows over "
        f"{settings['history_days']:g} days and {settings['grown_coupons']:,} coupons, made in "
        f"{preload['seconds'] / 60:.1f} min ({steps}); the grown runs redeem and get coupons "
        f"drawn uniformly from the {result['pool']['coupons']:,} of them that hold "
        f"{result['pool']['least_stock']} or more, the empty runs from 1,000 preseeded ones.",
        "",
        "| workload | commands | empty tables | grown tables | grown / empty (range of the "
        f"repetitions' ratios) | target {target:g}{TIMES} |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for workload, row in result["throughput"].items():
        empty, grown = row["empty"], row["grown"]
        lines.append(
            f"| {workload} | {row['commands']:,} | {empty['median']:,.0f}/s "
            f"({_range(empty['range'])}) | {grown['median']:,.0f}/s ({_range(grown['range'])}) "
            f"| **{row['ratio']:.3f}{TIMES}** ({_range(row['ratio_range'], digits=2)}) | "
            f"{'met' if row['meets_target'] else '**not met**'} |"
        )
    lines += ["", *_sizes(result["sizes"]), ""]
    deleted_share = prune["deleted"] / settings["processed"]
    lines.append(
        f"`coupon-worker prune --older-than-days {prune['older_than_days']:g}` on the grown "
        f"tables after the runs: {prune['deleted']:,} rows deleted ({deleted_share:.0%} of the "
        f"preloaded ones) in {prune['seconds']:,.1f} s ({prune['rows_per_second']:,}/s)."
    )
    return "\n".join(lines)


def _sizes(sizes: dict[str, Any]) -> list[str]:
    lines = [
        "| relation | after the preload | after the runs | after the prune |",
        "| --- | ---: | ---: | ---: |",
    ]
    for table in sizes[MOMENTS[0]]:
        at = [sizes[moment][table] for moment in MOMENTS]
        lines.append(f"| `{table}` rows | " + " | ".join(f"{s['rows']:,}" for s in at) + " |")
        for key, what in (("total", "total"), ("heap", "heap"), ("indexes", "all indexes")):
            cells = " | ".join(_mib(s[key]) for s in at)
            lines.append(f"| `{table}` {what} | {cells} |")
        for index in at[0]["index"]:
            cells = " | ".join(_index(s["index"][index]) for s in at)
            lines.append(f"| index `{index}` | {cells} |")
        dead = " | ".join(
            f"{s['n_dead_tup']:,} dead, {s['n_tup_hot_upd']:,} of {s['n_tup_upd']:,} updates HOT"
            for s in at
        )
        lines.append(f"| `{table}` dead tuples, updates | {dead} |")
    return [*lines, "", "(Sizes in MiB; an index's average leaf density from pgstattuple.)"]


def _mib(size: int) -> str:
    return f"{size / MIB:,.1f}"


def _index(entry: dict[str, Any]) -> str:
    density = entry.get("avg_leaf_density")
    return _mib(entry["bytes"]) + (f" ({density:.0f} % full)" if density is not None else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.growth_table", description=__doc__)
    parser.add_argument("result", nargs="?", type=Path, help="default: the newest growth-*.json")
    parser.add_argument("--write", type=Path, help="replace the section in this page")
    args = parser.parse_args(argv)
    path = args.result or newest()
    result = json.loads(path.read_text())
    if result.get("status") != "passed":
        sys.exit(f"{path} is not the result file of a passed growth run")
    section = render(result)
    if args.write is None:
        print(section)  # noqa: T201
        return
    pages.write_section(args.write, "growth", section)


if __name__ == "__main__":
    main()
