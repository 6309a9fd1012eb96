"""`python -m benchmarks --quick`, end to end: the worker and the ceiling as processes, every
workload, a valid result file and its raw record, every exactly-once check passed, and a floor:
each workload's worker at least `FLOOR` (0.5) of the broker-only ceiling (medians of the
interleaved repetitions), so a many-fold slowdown fails CI. Finer figures come from `make
bench` (the machine is shared). Deselect with `-m "not bench"`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import record
from benchmarks.config import FLOOR, WORKLOAD_NAMES
from tests.support.services import Services

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1200)]


def run_module(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=1100,
        check=False,
    )


def assert_run_checked(run: dict[str, Any], target: str, commands: int) -> None:
    assert run["target"] == target
    assert run["commands"] == commands
    assert run["checks"]["passed"] is True, run["checks"]
    assert run["checks"]["lost"] == run["checks"]["doubled"] == run["checks"]["copies"] == 0
    assert run["checks"]["outcomes"] == commands
    assert run["commands_per_second"] > 0  # it measured something (the floor is per workload)
    if target == "worker":
        assert run["checks"]["processed_rows"] == run["checks"]["writes_sent"]
        assert run["checks"]["redeemed_in_database"] == run["checks"]["redeems_sent"]
        assert run["peak_rss_bytes"] > 0


def test_quick_benchmark_writes_a_valid_result(services: Services, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
        "AMQP_URL": services.amqp_url,
        "DATABASE_URL": services.database_url,
    }
    ran = run_module("benchmarks", "--quick", f"--output-dir={tmp_path}", env=env)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-5000:]
    assert "FAILED" not in ran.stderr

    written = sorted(path.name for path in tmp_path.iterdir())
    assert len(written) == 3 and "latest.json" in written, written
    stamped = next(path for path in tmp_path.glob("2*.json"))
    result = json.loads(stamped.read_text())
    raw = (tmp_path / result["raw_record"]).read_text().splitlines()
    assert record.rebuild(raw, result["memory"]["workload"]) == record.headline(result)
    assert json.loads((tmp_path / "latest.json").read_text()) == result
    assert result["status"] == "passed" and result["file"] == stamped.name
    assert result["settings"]["quick"] is True
    commands = result["settings"]["commands"]

    for key in ("cpu_count", "cpu_model", "load_average_at_start", "python", "rabbitmq"):
        assert result["machine"][key], key
    assert result["machine"]["postgresql"] and result["machine"]["libraries"]["aio-pika"]

    repetitions = result["settings"]["repetitions"]
    assert repetitions >= 3
    tried = result["ceiling"]["tried"]
    assert {(t["loop"], t["concurrency"]) for t in tried} >= {("uvloop", 2), ("asyncio", 1)}
    best = max(tried, key=lambda t: t["commands_per_second"])
    assert result["ceiling"]["chosen"] == {k: best[k] for k in ("loop", "concurrency")}
    assert set(result["throughput"]) == set(WORKLOAD_NAMES)
    for workload, row in result["throughput"].items():
        for target in ("ceiling", "worker"):
            assert len(row[target]["runs"]) == repetitions
            for run in row[target]["runs"]:
                assert_run_checked(run, target, commands)
            low, high = row[target]["range"]
            assert low <= row[target]["commands_per_second"] <= high
        for run in row["ceiling"]["runs"]:
            assert run["ceiling"] == result["ceiling"]["chosen"]
        # The floor: a worker many times slower than the broker alone fails CI.
        assert row["ratio_to_ceiling"] >= FLOOR, (workload, row["ratio_to_ceiling"])
    mixed = result["throughput"]["mixed"]["worker"]["runs"][0]["checks"]
    assert mixed["dead_letters"] > 0  # its 1 % invalid commands were dead-lettered, each once

    for level in ("offered", "half_max"):
        for target in ("ceiling", "worker"):
            row = result["latency"][level][target]
            assert len(row["runs"]) == repetitions
            for run in row["runs"]:
                assert_run_checked(run, target, run["commands"])
                assert run["latency"]["samples"] > 0
            figures = row["latency"]
            assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert result["latency"]["offered"]["worker"]["offered_per_second"] == 200.0

    memory = result["memory"]
    assert memory["long"]["commands"] > memory["short"]["commands"] == commands
    assert_run_checked(memory["long_run"], "worker", memory["long"]["commands"])
    assert memory["ratio"] > 0 and isinstance(memory["grows_with_count"], bool)

    table = run_module("benchmarks.table", str(stamped), env=env)
    assert table.returncode == 0, table.stderr
    for workload in WORKLOAD_NAMES:
        assert f"| {workload} |" in table.stdout
