"""docs/reliability.md's table is the rendering of the stored fault-suite run, nothing else."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.reliability_table import DEFAULT_RESULTS, END, START, render

ROOT = Path(__file__).resolve().parents[2]
PAGE = "docs/reliability.md"


def stored_run() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((ROOT / DEFAULT_RESULTS).read_text())
    return document


def test_the_readme_table_is_rendered_from_the_stored_run() -> None:
    rendered = render(stored_run(), str(DEFAULT_RESULTS))
    readme = (ROOT / PAGE).read_text()
    assert f"{START}\n{rendered}\n{END}" in readme, (
        "docs/reliability.md's Reliability table differs from tests/results/reliability.json: "
        "run `make reliability` (or render it: python -m tests.support.reliability_table "
        "--write docs/reliability.md)"
    )


def test_a_figure_the_run_did_not_state_stops_the_rendering() -> None:
    document = copy.deepcopy(stored_run())
    del document["figures"]["crash anywhere"]["kills"]
    with pytest.raises(SystemExit, match="kills"):
        render(document, str(DEFAULT_RESULTS))


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
