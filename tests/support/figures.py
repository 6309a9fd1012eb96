"""The fault suite's figures: printed as one `FIGURES [label] k=v …` line per test, and kept
for the run's result file.

With `RELIABILITY_RESULTS=path` set, the test session writes every figure it stated, and what
the run was (when, on which commit, on what machine, how the tests ended), to that JSON file at
its end (`tests/conftest.py` calls `write_results`). Each `FIGURES` line is also a property of
its test case in pytest's own record of the run (`--junitxml`, which `write_results` requires
and names in the file as `raw_record`): `tests/unit/test_reliability_table.py` rebuilds the
JSON's figures from it and compares, so a figure edited by hand shows. The tables of
docs/reliability.md are rendered from such a file by `python -m tests.support.reliability_table`,
so that every figure they show comes from one stored run: `make reliability` does all of it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pytest

from benchmarks import provenance

RESULTS_VARIABLE: Final = "RELIABILITY_RESULTS"
PROPERTY: Final = "FIGURES"  # the name of the junitxml property holding a test's lines

_figures: dict[str, dict[str, Any]] = {}
_running: list[pytest.Item] = []  # the test now running (for its junitxml properties)
_outcomes: dict[str, str] = {}
_started_at = datetime.now(UTC).isoformat(timespec="seconds")
_started_load = os.getloadavg()[0]
_started_monotonic = time.monotonic()


def _plain(value: object) -> Any:
    return value if isinstance(value, bool | int | float | str) or value is None else str(value)


def line(label: str, figures: dict[str, object]) -> str:
    """The `FIGURES [label] k=v …` line of a test's figures."""
    return provenance.figures_line(label, figures)


def running(item: pytest.Item | None) -> None:
    """The test now running (None between tests): its stated lines go into its record."""
    _running[:] = [] if item is None else [item]


def state(label: str, capsys: pytest.CaptureFixture[str] | None = None, **figures: object) -> str:
    """Print one figures line (visible even with output captured), keep the figures, and
    add the line to the running test's properties (the raw record, `--junitxml`)."""
    _figures[label] = {key: _plain(value) for key, value in figures.items()}
    text = line(label, _figures[label])
    for item in _running:
        item.user_properties.append((PROPERTY, text))
    if capsys is None:
        print(text)  # noqa: T201 - the suite states its figures
    else:
        with capsys.disabled():
            print(f"\n{text}")  # noqa: T201
    return text


def note_outcome(nodeid: str, outcome: str) -> None:
    """How a test ended (for the result file: figures of a failed test are marked so)."""
    if outcome != "passed" or nodeid not in _outcomes:
        _outcomes[nodeid] = outcome


# What the run ran: taken when it starts (the figures belong to this code, not to whatever is
# checked out when it ends).
_commit = provenance.head()
_uncommitted = provenance.uncommitted(())
_uncommitted_code = provenance.uncommitted(provenance.RELIABILITY_CODE)


def write_results(session: pytest.Session) -> Path | None:
    """Write the run's figures to $RELIABILITY_RESULTS, if set and any figures were stated."""
    target = os.environ.get(RESULTS_VARIABLE)
    if not target or not _figures:
        return None
    raw = session.config.getoption("xmlpath", None)
    if not raw:
        raise pytest.UsageError(
            f"{RESULTS_VARIABLE} needs --junitxml: the result file keeps its raw record"
        )
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    failed = sorted(nodeid for nodeid, outcome in _outcomes.items() if outcome != "passed")
    document = {
        "run": {
            "started_at": _started_at,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - _started_monotonic, 1),
            "commit": _commit,
            "uncommitted_changes": _uncommitted,
            "uncommitted_code_under_test": _uncommitted_code,
            "raw_record": os.path.relpath(Path(raw).resolve(), path.resolve().parent),
            "pytest_args": [str(arg) for arg in session.config.invocation_params.args],
            "tests": len(_outcomes),
            "failed": failed,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "load_average_at_start": round(_started_load, 2),
                "load_average_at_end": round(os.getloadavg()[0], 2),
            },
        },
        "figures": _figures,
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return path
