"""docs/performance.md's slow-link and soak sections are the rendering of each phase's newest
stored result file (benchmarks/phase_tables.py), freshness included: a figure edited on the
page, or a stored run whose code has changed since while the page still calls it fresh, fails
here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import pages, phase_tables, slow_link, soak

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs/performance.md"


@pytest.mark.parametrize("name", [phase_tables.SLOW_LINK, phase_tables.SOAK])
def test_the_page_section_is_the_rendering_of_the_newest_result(name: str) -> None:
    assert phase_tables.section(name) in PAGE.read_text(), (
        f"docs/performance.md's {name} section differs from the rendering of "
        f"{pages.newest(name).name}: python -m benchmarks.phase_tables --write "
        "docs/performance.md"
    )


def test_a_changed_figure_changes_the_rendering(tmp_path: Path) -> None:
    source = pages.newest(phase_tables.SLOW_LINK)
    result = json.loads(source.read_text())
    result["p99_ms"] = result["p99_ms"] + 1
    (tmp_path / source.name).write_text(json.dumps(result))
    edited = phase_tables.section(phase_tables.SLOW_LINK, tmp_path)
    assert edited != phase_tables.section(phase_tables.SLOW_LINK)
    assert f"| command → outcome p99 | {result['p99_ms']} ms" in edited


def test_the_newest_file_is_taken_and_before_files_are_not(tmp_path: Path) -> None:
    for stem in ("soak-20261201T000000Z", "soak-20261203T000000Z", "soak-20261204T000000Z-before"):
        (tmp_path / f"{stem}.json").write_text("{}")
    assert pages.newest(phase_tables.SOAK, tmp_path).stem == "soak-20261203T000000Z"


def test_a_soak_that_grew_says_so() -> None:
    rows = [
        {"commands": n, "rss_mib": rss, "rate_since_last": 1000}
        for n, rss in ((20_000, 90.0), (100_000, 95.0), (200_000, 100.0))
    ]
    result = {"finished": "t", "commands": 200_000, "wave": 10_000, "rows": rows}
    result["rss_growth_from_20000"] = round(100.0 / 90.0, 3)
    rendered = phase_tables.render_soak(result, "x.json")
    assert "1.11\N{MULTIPLICATION SIGN} from 20,000" in rendered
    assert "growing: more than 10 %" in rendered


@pytest.mark.parametrize("name", [phase_tables.SLOW_LINK, phase_tables.SOAK])
def test_the_stored_figures_are_rebuilt_from_the_raw_record(name: str) -> None:
    """The newest result file's figures are what its kept raw record (every probe's and
    command's latency; every RSS reading) gives: a figure edited in the JSON fails here."""
    path = pages.newest(name)
    result = json.loads(path.read_text())
    assert result.get("raw_record"), f"{path.name} keeps no raw record beside it"
    record = (path.parent / result["raw_record"]).read_text().splitlines()
    if name == phase_tables.SLOW_LINK:
        rebuilt = slow_link.rebuild(record, result["delay_each_way_ms"])
    else:
        rebuilt = soak.rebuild(record)
    assert rebuilt == {key: result[key] for key in rebuilt}


def test_a_record_without_latencies_is_refused() -> None:
    with pytest.raises(ValueError, match="no probe or no command"):
        slow_link.rebuild(["FIGURES [probe] ms=10.5"], 5.0)
    with pytest.raises(ValueError, match="20,000"):
        soak.rebuild(
            ["FIGURES [soak] commands=10000 rss_mib=90.0 seconds=5.0 rate_since_last=2000"]
        )
