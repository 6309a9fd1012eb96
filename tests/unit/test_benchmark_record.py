"""docs/performance.md's tables are the rendering of the stored benchmark result; the result's
figures are those its raw record (the run's FIGURES lines) gives; and the tables say when the
code measured changed since."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from benchmarks import provenance, record
from benchmarks.config import RESULTS_DIR
from benchmarks.table import END, START, freshness, render

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs/performance.md"
LATEST = RESULTS_DIR / "latest.json"


def stored() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(LATEST.read_text())
    return result


def raw_lines(result: dict[str, Any]) -> list[str]:
    return (RESULTS_DIR / str(result["raw_record"])).read_text().splitlines()


def test_latest_is_the_stamped_result_file_it_names() -> None:
    result = stored()
    assert json.loads((RESULTS_DIR / result["file"]).read_text()) == result


def test_the_stored_figures_are_rebuilt_from_the_raw_record() -> None:
    result = stored()
    rebuilt = record.rebuild(raw_lines(result), result["memory"]["workload"])
    assert rebuilt == record.headline(result), (
        "benchmarks/results/latest.json's figures differ from its raw record "
        f"({result['raw_record']}): run `make bench` again"
    )


def test_a_figure_edited_by_hand_no_longer_matches_the_raw_record() -> None:
    result = copy.deepcopy(stored())
    row = next(iter(result["throughput"].values()))
    row["worker"]["commands_per_second"] += 1
    rebuilt = record.rebuild(raw_lines(result), result["memory"]["workload"])
    assert rebuilt != record.headline(result)


def test_the_page_is_the_rendering_of_the_stored_result() -> None:
    rendered = render(stored())
    assert f"{START}\n{rendered}\n{END}" in PAGE.read_text(), (
        "docs/performance.md's tables differ from the rendering of benchmarks/results/"
        "latest.json (figures, or freshness): run `make bench`, or render: python -m "
        "benchmarks.table benchmarks/results/latest.json --write docs/performance.md"
    )


def test_the_tables_say_stale_when_the_code_measured_changed() -> None:
    result = copy.deepcopy(stored())
    fresh = freshness(result)
    assert ("stale since" in render(result)) is not fresh.fresh
    result["machine"]["revision"] = {"commit": "bcfdc11", "dirty": False}
    assert provenance.freshness("bcfdc11", provenance.BENCHMARK_CODE).fresh is False
    assert "**stale since `bcfdc11`**" in render(result)
    result["machine"]["revision"] = {"commit": result["file"], "dirty": True}
    assert "had uncommitted changes" in render(result)
