"""The slow-link and soak sections of docs/performance.md, rendered from the newest result file
of each phase (`benchmarks/results/slow-link-<time>.json`, `soak-<time>.json`) between their
markers; `make bench-slow-link` and `make bench-soak` write them, and
tests/unit/test_phase_tables.py checks that the page is their rendering.

    python -m benchmarks.phase_tables --write docs/performance.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from benchmarks import pages, provenance
from benchmarks.config import RESULTS_DIR

SLOW_LINK: Final = "slow-link"
SOAK: Final = "soak"
FLAT: Final = 1.10  # RSS within 10 % counts as flat (issue 22's target)
TIMES: Final = "\N{MULTIPLICATION SIGN}"


def provenance_phrase(result: dict[str, Any]) -> str:
    """The run's commit and whether the code it measured changed since."""
    commit = result.get("commit")
    if not commit:
        return "the file does not name its commit (written before results carried it)"
    fresh = provenance.freshness(
        str(commit),
        provenance.BENCHMARK_CODE,
        dirty_run=bool(result.get("uncommitted_code_under_test")),
    )
    return f"commit `{commit}`; {fresh.describe()}"


def raw_record(result: dict[str, Any], source: str) -> str:
    """` (raw record: <its .log>)` when the run kept one beside its result file."""
    kept = result.get("raw_record")
    return f" (raw record: `{source.rsplit('/', 1)[0]}/{kept}`)" if kept else ""


def render_slow_link(result: dict[str, Any], source: str) -> str:
    load = result.get("load_average")
    measured = result.get("probe_p50_ms")
    lines = [
        f"Run finished {result['finished']}, from `{source}`{raw_record(result, source)}; "
        f"{provenance_phrase(result)}"
        + (f"; load average {' / '.join(str(v) for v in load)}" if load else "")
        + ".",
        "",
        "| measure | figure | target |",
        "| --- | ---: | ---: |",
        f"| delay each way (nominal round trip) | {result['delay_each_way_ms']:g} ms "
        f"({2 * result['delay_each_way_ms']:g} ms) | |",
    ]
    if measured is not None:
        lines.append(
            f"| one round trip through the proxy, measured ({result['probe_round_trips']} "
            f"`SELECT 1`), p50 / p99 | {measured} / {result['probe_p99_ms']} ms | |"
        )
    lines += [
        f"| lone creates at {result['offered_per_second']:g}/s, timed | {result['commands']:,} | |",
        f"| command → outcome p50 | {result['p50_ms']} ms ({result['p50_round_trips']} nominal"
        + (f", {result['p50_measured_round_trips']} measured" if measured is not None else "")
        + " round trips) | ≤ 45 ms (4) |",
        f"| command → outcome p99 | {result['p99_ms']} ms ({result['p99_round_trips']} nominal"
        + (f", {result['p99_measured_round_trips']} measured" if measured is not None else "")
        + " round trips) | ≤ 70 ms (6) |",
        f"| max | {result['max_ms']} ms | |",
    ]
    return "\n".join(lines)


def render_soak(result: dict[str, Any], source: str) -> str:
    growth = result["rss_growth_from_20000"]
    rows = [r for r in result["rows"] if r["commands"] == 20_000 or r["commands"] % 100_000 == 0]
    lines = [
        f"Run finished {result['finished']}, from `{source}`{raw_record(result, source)}; "
        f"{provenance_phrase(result)}. "
        f"{result['commands']:,} commands in waves of {result['wave']:,}; RSS "
        f"{growth:.2f}{TIMES} from 20,000 to {result['commands']:,} commands "
        f"({'flat: within 10 %' if growth <= FLAT else 'growing: more than 10 %'}).",
        "",
        "| commands | worker RSS | commands/s since the row before |",
        "| ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['commands']:,} | {r['rss_mib']:.1f} MiB | {r['rate_since_last']:,} |" for r in rows
    ]
    return "\n".join(lines)


RENDERERS: Final[dict[str, Callable[[dict[str, Any], str], str]]] = {
    SLOW_LINK: render_slow_link,
    SOAK: render_soak,
}


def body(name: str, directory: Path = RESULTS_DIR) -> str:
    """The rendering of the phase's newest result file."""
    path = pages.newest(name, directory)
    return RENDERERS[name](json.loads(path.read_text()), f"benchmarks/results/{path.name}")


def section(name: str, directory: Path = RESULTS_DIR) -> str:
    """`body`, between the phase's markers, as the page holds it."""
    start, end = pages.markers(name)
    return f"{start}\n{body(name, directory)}\n{end}"


def write(page: Path, names: tuple[str, ...] = (SLOW_LINK, SOAK)) -> None:
    for name in names:
        pages.write_section(page, name, body(name))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.phase_tables", description=__doc__)
    parser.add_argument("--write", type=Path, help="replace the sections in this page")
    parser.add_argument("--only", choices=sorted(RENDERERS), help="one phase's section")
    args = parser.parse_args(argv)
    names = (args.only,) if args.only else (SLOW_LINK, SOAK)
    if args.write is None:
        sys.stdout.write("\n\n".join(section(name) for name in names) + "\n")
        return
    write(args.write, names)


if __name__ == "__main__":
    main()
