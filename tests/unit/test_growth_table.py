"""docs/performance.md's growth section is the rendering of the newest stored growth result; that
result's figures are the ones its raw record (the run's FIGURES lines) gives; and the section
says when the code measured changed since, or when a workload missed the target."""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks import record
from benchmarks.growth import TABLES, summarize
from benchmarks.growth_table import END, START, newest, render
from benchmarks.table import DASH, TIMES

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs/performance.md"


def stored() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(newest().read_text())
    return result


def figures(row: dict[str, Any]) -> dict[str, Any]:
    """A workload's stated figures, without the per-run detail."""
    out = {key: row[key] for key in ("ratio", "ratio_range", "meets_target")}
    return out | {tables: {k: row[tables][k] for k in ("median", "range")} for tables in TABLES}


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The figures the section states."""
    out: dict[str, Any] = {"preload seconds": result["preload"]["seconds"]}
    out |= {workload: figures(row) for workload, row in result["throughput"].items()}
    out["prune"] = {key: result["prune"][key] for key in ("deleted", "seconds")}
    return out


def rebuild(lines: list[str]) -> dict[str, Any]:
    """`headline`, from the raw record alone, with the phase's own summary."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: {t: [] for t in TABLES})
    out: dict[str, Any] = {}
    for words, stated in record.runs(lines):
        phase, workload, tables = words[:3]
        if phase == "preload":
            out["preload seconds"] = stated["seconds"]
        elif phase == "growth":
            runs[workload][tables].append(stated)
        elif phase == "prune":
            out["prune"] = {key: stated[key] for key in ("deleted", "seconds")}
    return out | {workload: figures(summarize(by_tables)) for workload, by_tables in runs.items()}


def raw_lines(result: dict[str, Any]) -> list[str]:
    return (newest().parent / str(result["raw_record"])).read_text().splitlines()


def test_the_stored_figures_are_rebuilt_from_the_raw_record() -> None:
    result = stored()
    assert rebuild(raw_lines(result)) == headline(result), (
        f"{result['file']}'s figures differ from its raw record ({result['raw_record']})"
    )


def test_a_figure_edited_by_hand_no_longer_matches_the_raw_record() -> None:
    result = copy.deepcopy(stored())
    next(iter(result["throughput"].values()))["grown"]["median"] += 1
    assert rebuild(raw_lines(result)) != headline(result)


def test_the_page_is_the_rendering_of_the_newest_growth_result() -> None:
    assert f"{START}\n{render(stored())}\n{END}" in PAGE.read_text(), (
        "docs/performance.md's growth section differs from the rendering of the newest "
        "benchmarks/results/growth-*.json: python -m benchmarks.growth_table --write "
        "docs/performance.md"
    )


def test_the_section_says_stale_when_the_code_measured_changed() -> None:
    result = copy.deepcopy(stored())
    result["machine"]["revision"] = {"commit": "bcfdc11", "dirty": False}
    assert "**stale since `bcfdc11`**" in render(result)
    result["machine"]["revision"] = {"commit": result["file"], "dirty": True}
    assert "had uncommitted changes" in render(result)


def test_a_workload_under_the_target_is_shown_as_such() -> None:
    result = copy.deepcopy(stored())
    runs = {
        "empty": [{"commands_per_second": rate} for rate in (1000.0, 1100.0, 900.0)],
        "grown": [{"commands_per_second": rate} for rate in (800.0, 990.0, 850.0)],
    }
    row = summarize(runs)
    assert (row["ratio"], row["ratio_range"], row["meets_target"]) == (0.85, [0.8, 0.944], False)
    result["throughput"] = {"redeem": {"commands": 3, **row}}
    expected = (
        f"| redeem | 3 | 1,000/s (900{DASH}1,100) | 850/s (800{DASH}990) | **0.850{TIMES}** "
        f"(0.80{DASH}0.94) | **not met** |"
    )
    assert expected in render(result)
