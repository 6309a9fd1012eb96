"""`python -m benchmarks --quick`, end to end: the worker and the ceiling as processes, every
workload, a valid result file, every exactly-once check passed. No speed is asserted here
(the machine is shared; figures come from `make bench`). Deselect with `-m "not bench"`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.config import WORKLOAD_NAMES
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
    assert run["commands_per_second"] > 0  # it measured something (no bound on how much)
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
    assert len(written) == 2 and "latest.json" in written, written
    stamped = next(path for path in tmp_path.iterdir() if path.name != "latest.json")
    result = json.loads(stamped.read_text())
    assert json.loads((tmp_path / "latest.json").read_text()) == result
    assert result["status"] == "passed" and result["file"] == stamped.name
    assert result["settings"]["quick"] is True
    commands = result["settings"]["commands"]

    for key in ("cpu_count", "cpu_model", "load_average_at_start", "python", "rabbitmq"):
        assert result["machine"][key], key
    assert result["machine"]["postgresql"] and result["machine"]["libraries"]["aio-pika"]

    assert set(result["throughput"]) == set(WORKLOAD_NAMES)
    for row in result["throughput"].values():
        assert_run_checked(row["ceiling"], "ceiling", commands)
        assert_run_checked(row["worker"], "worker", commands)
        assert row["ratio_to_ceiling"] > 0
    mixed = result["throughput"]["mixed"]["worker"]["checks"]
    assert mixed["dead_letters"] > 0  # its 1 % invalid commands were dead-lettered, each once

    for level in ("offered", "half_max"):
        for target in ("ceiling", "worker"):
            run = result["latency"][level][target]
            assert_run_checked(run, target, run["commands"])
            figures = run["latency"]
            assert figures["samples"] > 0
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
