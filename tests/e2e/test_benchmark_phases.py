"""`python -m benchmarks.slow_link` (`make bench-slow-link`) and `python -m benchmarks.soak`
(`make bench-soak`), end to end with small counts: each run writes its result file and, beside
it, the raw record its figures are rebuilt from; the soak's every command answered. Figures, not
speed, are checked. Deselect with `-m "not bench"`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import slow_link, soak
from tests.support.services import Services

pytestmark = [pytest.mark.bench, pytest.mark.timeout(600)]


def run_phase(module: str, services: Services, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
        "AMQP_URL": services.amqp_url,
        "DATABASE_URL": services.database_url,
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )


def stored(directory: Path, prefix: str) -> tuple[dict[str, Any], list[str]]:
    """The one result file the run wrote, and its raw record."""
    (path,) = directory.glob(f"{prefix}-*.json")
    result = json.loads(path.read_text())
    assert result["raw_record"] == path.with_suffix(".log").name
    return result, (directory / result["raw_record"]).read_text().splitlines()


def test_the_slow_link_keeps_every_latency_it_reports(services: Services, tmp_path: Path) -> None:
    ran = run_phase(
        "benchmarks.slow_link", services, "--seconds=2", "--rate=20", f"--output-dir={tmp_path}"
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    result, record = stored(tmp_path, "slow-link")
    assert result["commands"] == 40  # 2 s at 20/s, the warm-up left out
    assert result["probe_round_trips"] == slow_link.PROBES
    assert sum(line.startswith("FIGURES [command] ") for line in record) == 40
    # Nothing is faster than the proxy's delay there and back.
    assert result["probe_p50_ms"] >= 2 * result["delay_each_way_ms"]
    assert result["p50_ms"] >= result["probe_p50_ms"]
    rebuilt = slow_link.rebuild(record, result["delay_each_way_ms"])
    assert rebuilt == {key: result[key] for key in rebuilt}


def test_the_soak_answers_every_command_and_keeps_its_readings(
    services: Services, tmp_path: Path
) -> None:
    ran = run_phase("benchmarks.soak", services, "--commands=20000", f"--output-dir={tmp_path}")
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    result, record = stored(tmp_path, "soak")
    # Two waves of 10,000: 1 % invalid bodies get no event, duplicates count once.
    assert 19_500 <= result["events"] <= 19_900
    assert [row["commands"] for row in result["rows"]] == [10_000, 20_000]
    assert all(row["rss_mib"] > 10 for row in result["rows"])
    assert soak.rebuild(record) == {key: result[key] for key in ("rows", "rss_growth_from_20000")}
