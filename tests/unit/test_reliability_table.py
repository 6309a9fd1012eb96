"""The README's Reliability table is the rendering of the stored fault-suite run, nothing else."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.reliability_table import DEFAULT_RESULTS, END, START, render

ROOT = Path(__file__).resolve().parents[2]


def stored_run() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((ROOT / DEFAULT_RESULTS).read_text())
    return document


def test_the_readme_table_is_rendered_from_the_stored_run() -> None:
    rendered = render(stored_run(), str(DEFAULT_RESULTS))
    readme = (ROOT / "README.md").read_text()
    assert f"{START}\n{rendered}\n{END}" in readme, (
        "README.md's Reliability table differs from tests/results/reliability.json: "
        "run `make reliability` (or render it: python -m tests.support.reliability_table "
        "--write README.md)"
    )


def test_a_figure_the_run_did_not_state_stops_the_rendering() -> None:
    document = copy.deepcopy(stored_run())
    del document["figures"]["crash anywhere"]["kills"]
    with pytest.raises(SystemExit, match="kills"):
        render(document, str(DEFAULT_RESULTS))
