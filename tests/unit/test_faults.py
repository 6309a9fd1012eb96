"""WORKER_FAULT_PLAN: parsed strictly, off by default, and harmless to real coupons."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from worker.settings import Settings
from worker.testing.faults import (
    NO_FAULTS,
    Fault,
    FaultAction,
    FaultPlan,
    FaultPoint,
    InjectedFault,
)


def test_a_plan_lists_its_faults_in_order() -> None:
    plan = FaultPlan.parse("after_commit:crash:fault-a, handle:raise:fault-poison,")
    assert plan.faults == (
        Fault(FaultPoint.AFTER_COMMIT, FaultAction.CRASH, "fault-a"),
        Fault(FaultPoint.HANDLE, FaultAction.RAISE, "fault-poison"),
    )
    assert plan


@pytest.mark.parametrize("point", list(FaultPoint))
@pytest.mark.parametrize("action", list(FaultAction))
def test_every_point_and_action_is_accepted(point: FaultPoint, action: FaultAction) -> None:
    [fault] = FaultPlan.parse(f"{point}:{action}:fault-x").faults
    assert (fault.point, fault.action, fault.code) == (point, action, "fault-x")


def test_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKER_FAULT_PLAN", raising=False)
    assert Settings().fault_plan == ""
    assert not FaultPlan.parse(Settings().fault_plan)
    assert not FaultPlan.parse(" , ,")
    assert not NO_FAULTS
    for point in FaultPoint:
        NO_FAULTS.hit(point, ["fault-a", "anything"])  # never raises


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("bogus", "point:action:code"),
        ("handle:raise", "point:action:code"),
        ("handle", "point:action:code"),
        ("nowhere:raise:fault-a", "point:action:code"),
        ("HANDLE:raise:fault-a", "point:action:code"),
        ("handle:explode:fault-a", "point:action:code"),
        ("handle:raise:SPRING", "fault-"),
        ("handle:raise:", "fault-"),
        ("handle:raise:FAULT-a", "fault-"),
        ("handle:raise:xfault-a", "fault-"),
        ("handle:raise:fault-a,after_commit:crash:real-coupon", "fault-"),
    ],
)
def test_malformed_plans_are_rejected_clearly(spec: str, says: str) -> None:
    with pytest.raises(ValueError) as raised:
        FaultPlan.parse(spec)
    assert says in str(raised.value)


def test_raise_fires_only_at_its_point_for_its_code() -> None:
    plan = FaultPlan.parse("before_commit:raise:fault-b")
    plan.hit(FaultPoint.HANDLE, ["fault-b"])
    plan.hit(FaultPoint.BEFORE_COMMIT, ["fault-a", "SPRING"])
    with pytest.raises(InjectedFault, match="fault-b"):
        plan.hit(FaultPoint.BEFORE_COMMIT, ["fault-a", "fault-b"])


def test_crash_kills_the_process_without_cleanup() -> None:
    probe = (
        "from worker.testing.faults import FaultPlan, FaultPoint\n"
        "plan = FaultPlan.parse('after_publish:crash:fault-z')\n"
        "plan.hit(FaultPoint.AFTER_PUBLISH, ['fault-y'])\n"
        "print('survived unrelated code', flush=True)\n"
        "plan.hit(FaultPoint.AFTER_PUBLISH, ['fault-z'])\n"
        "print('survived the crash', flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == -signal.SIGKILL
    assert result.stdout.splitlines() == ["survived unrelated code"]
