"""docs/reliability.md's tables are the rendering of the stored fault-suite run, nothing else;
the run's figures are those of its raw record; and a table says when the code changed since."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ElementTree
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from benchmarks import provenance
from tests.support.figures import PROPERTY, line
from tests.support.reliability_table import (
    CLUSTER_END,
    CLUSTER_START,
    DEFAULT_RESULTS,
    END,
    START,
    render,
    render_cluster,
    replace_blocks,
)

ROOT = Path(__file__).resolve().parents[2]
PAGE = "docs/reliability.md"
RENDER = "run `make reliability` (or render: python -m tests.support.reliability_table --write "


def stored_run() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((ROOT / DEFAULT_RESULTS).read_text())
    return document


def raw_record(document: dict[str, Any]) -> ElementTree.Element:
    """pytest's own record of the run (--junitxml), named by the result file."""
    path = (ROOT / DEFAULT_RESULTS).parent / document["run"]["raw_record"]
    return ElementTree.parse(path).getroot()


def stated_lines(record: ElementTree.Element) -> dict[str, str]:
    """label → the last `FIGURES [label] …` line the run's tests stated."""
    lines: dict[str, str] = {}
    for prop in record.iter("property"):
        if prop.get("name") == PROPERTY:
            text = prop.get("value", "")
            lines[text.removeprefix("FIGURES [").partition("] ")[0]] = text
    return lines


def test_the_page_tables_are_rendered_from_the_stored_run() -> None:
    page = (ROOT / PAGE).read_text()
    document = stored_run()
    for start, end, table in (
        (START, END, render(document, str(DEFAULT_RESULTS))),
        (CLUSTER_START, CLUSTER_END, render_cluster(document, str(DEFAULT_RESULTS))),
    ):
        assert f"{start}\n{table}\n{end}" in page, (
            f"{PAGE}'s table between {start} and {end} differs from its rendering of "
            f"{DEFAULT_RESULTS} (figures, or freshness): {RENDER}{PAGE})"
        )
    assert replace_blocks(page, document, str(DEFAULT_RESULTS)) == page


def test_the_stored_figures_are_those_of_the_raw_record() -> None:
    """Rebuilt from pytest's record of the run: every label, every figure, as stated."""
    document = stored_run()
    record = raw_record(document)
    stated = stated_lines(record)
    stored = {label: line(label, figures) for label, figures in document["figures"].items()}
    assert set(stored) == set(stated), (set(stored) ^ set(stated), "labels differ")
    differing = {label: (stored[label], stated[label]) for label in stored}
    differing = {k: v for k, v in differing.items() if v[0] != v[1]}
    assert not differing, f"figures differ from the raw record (stored, stated): {differing}"
    suite = record if record.tag == "testsuite" else next(record.iter("testsuite"))
    cases = list(suite.iter("testcase"))
    run = document["run"]
    assert len(cases) == run["tests"]
    not_passed = [c for c in cases if any(c.find(t) is not None for t in ("failure", "error"))]
    assert len(not_passed) <= len(run["failed"])
    began = datetime.fromisoformat(suite.get("timestamp", ""))
    assert abs((began - datetime.fromisoformat(run["started_at"])).total_seconds()) < 120
    assert abs(float(suite.get("time", "0")) - run["seconds"]) < 120


def test_a_table_says_stale_when_the_code_under_test_changed_since_its_commit() -> None:
    document = copy.deepcopy(stored_run())
    fresh = provenance.freshness(document["run"]["commit"], provenance.RELIABILITY_CODE)
    rendered = render(document, str(DEFAULT_RESULTS))
    assert ("stale since" in rendered) is not fresh.fresh
    # A commit before this suite's own changes: the code under test differs from HEAD's.
    document["run"]["commit"] = "bcfdc11"
    document["run"]["uncommitted_code_under_test"] = False
    assert "**stale since `bcfdc11`**" in render(document, str(DEFAULT_RESULTS))
    assert "**stale since `bcfdc11`**" in render_cluster(document, str(DEFAULT_RESULTS))
    assert "the code under test is unchanged" not in (ROOT / PAGE).read_text() or fresh.fresh


def test_a_figure_the_run_did_not_state_stops_the_rendering() -> None:
    document = copy.deepcopy(stored_run())
    del document["figures"]["crash anywhere"]["kills"]
    with pytest.raises(SystemExit, match="kills"):
        render(document, str(DEFAULT_RESULTS))
    del document["figures"]["cluster: worker's node stopped"]["worker_node_after"]
    with pytest.raises(SystemExit, match="worker_node_after"):
        render_cluster(document, str(DEFAULT_RESULTS))


# The FIGURES lines of tests/faults/test_resource_alarms.py from its first runs (against the
# worker at bf7c0d5, where the 90 s cases failed: their lines show how), until the stored run
# holds figures of its own for these labels.
RESOURCE_ALARM_LINES = Path("tests/results/resource-alarms-first-runs-bf7c0d5.txt")


def stated(line: str) -> tuple[str, dict[str, Any]]:
    """(label, figures) of a `FIGURES [label] k=v …` line, the values as the result file
    keeps them."""
    label, _, pairs = line.removeprefix("FIGURES [").partition("] ")
    figures: dict[str, Any] = {}
    for pair in pairs.split(" "):
        key, _, text = pair.partition("=")
        value: Any = text
        if text in ("True", "False", "None"):
            value = {"True": True, "False": False, "None": None}[text]
        else:
            for kind in (int, float):
                try:
                    value = kind(text)
                    break
                except ValueError:
                    continue
        figures[key] = value
    return label, figures


def test_the_alarm_and_closed_connection_rows_render_from_the_figures_their_test_states() -> None:
    document = copy.deepcopy(stored_run())
    lines = (ROOT / RESOURCE_ALARM_LINES).read_text().splitlines()
    document["figures"].update(stated(line) for line in lines if line)
    rendered = render(document, str(DEFAULT_RESULTS))
    rows = {row.split(" | ")[0]: row for row in rendered.splitlines() if row.startswith("| ")}
    alarms = rows["| 12. Resource alarms"]
    assert "memory: held 11.2 / 91.0 s" in alarms and "disk: held 11.2 / 91.6 s" in alarms
    assert "all answered 2.8 / None s after the clear" in alarms
    assert "**0 / 6,000 lost" in alarms  # a failed case shows in the row, as it was stated
    closed = rows["| 13. Connections closed under the worker"]
    assert "consuming connection (`coupon-worker`) closed: resumed 0.1 s after" in closed
    assert "publishing connection (`coupon-worker`) closed" in closed
