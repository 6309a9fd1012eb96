"""`python -m benchmarks.replicas --quick --workloads redeem-hot`, end to end: one worker process
against two on one queue, a valid result file whose figures its raw record rebuilds, and the hot
coupon shared by the two exactly right (every redeem one outcome, exactly the stock redeemed,
the rest Exhausted, each process answering part of them, each command in one process's log).
It asserts no speed (`make bench-replicas` measures). Deselect with `-m "not bench"`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benchmarks import replicas_record
from tests.e2e.test_benchmark import run_module
from tests.support.services import Services

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1200)]


def test_quick_replicas_benchmark_writes_a_valid_result(services: Services, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
        "AMQP_URL": services.amqp_url,
        "DATABASE_URL": services.database_url,
    }
    ran = run_module(
        "benchmarks.replicas",
        "--quick",
        "--workloads",
        "redeem-hot",
        # Several seconds of work, so that the second process is consuming long before the
        # first could have answered everything, however slowly the second one starts.
        "--hot-commands=8000",
        "--hot-stock=6000",
        f"--output-dir={tmp_path}",
        env=env,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-5000:]

    stamped = next(tmp_path.glob("replicas-*.json"))
    result = json.loads(stamped.read_text())
    raw = (tmp_path / result["raw_record"]).read_text().splitlines()
    stock = result["settings"]["hot_stock"]
    assert replicas_record.rebuild(raw, stock) == replicas_record.headline(result)
    assert result["machine"]["revision"]["commit"] and result["machine"]["cpu_count"]

    row = result["throughput"]["redeem-hot"]
    for target, processes in (("x1", 1), ("x2", 2)):
        runs = row["runs"][target]
        assert len(runs) == result["settings"]["repetitions"]
        for run in runs:
            assert run["checks"]["passed"] is True and run["checks"]["lost"] == 0
            assert len(run["processes"]) == processes
            assert {"lock_samples", "lock_waits_seen", "deadlocks"} <= set(run["watched"])
            answered = run["answered"]
            assert len(answered) == processes and sum(answered) == run["commands"]
    assert row["smallest_share"] is not None

    hot = result["hot"]
    assert hot["stock"] == stock < hot["commands"]
    assert hot["redeemed"] == stock and hot["exhausted"] == hot["commands"] - stock
    assert hot["remaining"] == 0 and hot["lost"] == hot["doubled"] == hot["copies"] == 0
    assert hot["attributed"] == hot["commands"] and hot["attributed_twice"] == 0
    assert hot["answered_1"] > 0 and hot["answered_2"] > 0
    assert hot["redeemed_by_1"] + hot["redeemed_by_2"] == stock
    assert hot["exactly_stock_redeemed"] and hot["each_replica_worked"]
