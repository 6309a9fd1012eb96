"""docs/performance.md's Replicas section is the rendering of the newest stored result of `make
bench-replicas`; that result's figures are those its raw record (the run's FIGURES lines) gives;
and the section says when the code measured changed since."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from benchmarks import provenance, replicas_record
from benchmarks.replicas_runner import answered_by
from benchmarks.replicas_table import END, START, newest, render

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs/performance.md"


def stored() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(newest().read_text())
    return result


def rebuilt(result: dict[str, Any]) -> dict[str, Any]:
    lines = (newest().parent / str(result["raw_record"])).read_text().splitlines()
    return replicas_record.rebuild(lines, result["settings"]["hot_stock"])


def test_the_stored_result_names_itself() -> None:
    result = stored()
    assert result["file"] == newest().name and result["status"] == "passed"


def test_the_stored_figures_are_rebuilt_from_the_raw_record() -> None:
    result = stored()
    assert rebuilt(result) == replicas_record.headline(result), (
        f"{result['file']}'s figures differ from its raw record ({result['raw_record']}): "
        "run `make bench-replicas` again"
    )


def test_a_figure_edited_by_hand_no_longer_matches_the_raw_record() -> None:
    result = copy.deepcopy(stored())
    row = next(iter(result["throughput"].values()))
    row["x2"]["commands_per_second"] += 1
    assert rebuilt(result) != replicas_record.headline(result)
    result = copy.deepcopy(stored())
    result["hot"]["exhausted"] -= 1
    assert rebuilt(result) != replicas_record.headline(result)


def test_the_page_is_the_rendering_of_the_stored_result() -> None:
    assert f"{START}\n{render(stored())}\n{END}" in PAGE.read_text(), (
        "docs/performance.md's Replicas section differs from the rendering of the newest "
        "benchmarks/results/replicas-*.json (figures, or freshness): run `make bench-replicas`, "
        "or render: python -m benchmarks.replicas_table --write docs/performance.md"
    )


def test_the_section_says_stale_when_the_code_measured_changed() -> None:
    result = copy.deepcopy(stored())
    result["machine"]["revision"] = {"commit": "bcfdc11", "dirty": False}
    assert provenance.freshness("bcfdc11", provenance.BENCHMARK_CODE).fresh is False
    assert "**stale since `bcfdc11`**" in render(result)


def test_the_section_says_which_targets_were_missed() -> None:
    result = copy.deepcopy(stored())
    workload = next(iter(result["throughput"]))
    result["targets"]["ratios_met"][workload] = False
    result["targets"]["deadlocks"] = 2
    result["targets"]["hot_met"] = False
    text = render(result)
    assert f"**not reached for {workload}" in text
    assert "2 (target 0: **missed**)" in text
    assert "both processes at work: **not reached**" in text


def test_targets_follow_from_the_figures() -> None:
    result = copy.deepcopy(replicas_record.headline(stored()))
    workload = next(iter(result["throughput"]))
    result["throughput"][workload]["ratio"] = replicas_record.RATIO_TARGET - 0.01
    result["latency"][workload]["x2"]["locks"]["deadlocks"] += 1
    result["hot"]["each_replica_worked"] = False
    targets = replicas_record.targets(result)
    assert targets["ratios_met"][workload] is False
    assert targets["deadlocks"] == stored()["targets"]["deadlocks"] + 1
    assert targets["hot_met"] is False


def test_a_workers_log_says_what_it_answered(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    lines = [
        {"event": "worker_ready", "prefetch": 500},
        {"event": "batch_answered", "count": 3},
        {"event": "command_processed", "message_id": "a", "outcome": "coupon.redeemed"},
        {"event": "command_processed", "message_id": "b", "outcome": "coupon.error"},
        {"event": "command_dead_lettered", "message_id": "c"},
        {"event": "batch_answered", "count": 2},
    ]
    log.write_text("not json\n" + "\n".join(json.dumps(line) for line in lines) + "\n{broken\n")
    assert answered_by(log) == {
        "answered": 6,
        "outcomes": {"a": "coupon.redeemed", "b": "coupon.error"},
    }
