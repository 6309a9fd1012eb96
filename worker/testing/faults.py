"""Fault injection for the fault-test suite: crash or fail at the exact worst points.

Off unless `WORKER_FAULT_PLAN` is set, and even then it can only ever touch coupons whose code
starts with `fault-`, so a stray variable in production cannot hurt real coupons. A worker
with a plan logs a warning at start-up.

Plan syntax: comma-separated `point:action:code`, e.g.
`after_commit:crash:fault-a,handle:raise:fault-poison`.
The points are reached through the decorators of `worker.testing.injection`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

SAFE_CODE_PREFIX: Final = "fault-"


class FaultPoint(StrEnum):
    HANDLE = "handle"  # while the command's handler runs, inside the transaction
    BEFORE_COMMIT = "before_commit"  # effects written, transaction not yet committed
    AFTER_COMMIT = "after_commit"  # committed, outcome not yet published
    AFTER_PUBLISH = "after_publish"  # outcome confirmed by the broker, command not yet acked


class FaultAction(StrEnum):
    CRASH = "crash"  # SIGKILL this process: no cleanup, no goodbye to the broker
    RAISE = "raise"  # an unexpected exception


class InjectedFault(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Fault:
    point: FaultPoint
    action: FaultAction
    code: str


class FaultPlan:
    def __init__(self, faults: Iterable[Fault] = ()) -> None:
        self.faults = tuple(faults)

    @classmethod
    def parse(cls, spec: str) -> FaultPlan:
        faults = []
        for item in filter(None, (part.strip() for part in spec.split(","))):
            try:
                point, action, code = item.split(":", 2)
                fault = Fault(FaultPoint(point), FaultAction(action), code)
            except ValueError:
                raise ValueError(f"bad fault {item!r}: expected point:action:code") from None
            if not code.startswith(SAFE_CODE_PREFIX):
                raise ValueError(f"fault codes must start with {SAFE_CODE_PREFIX!r}: {code!r}")
            faults.append(fault)
        return cls(faults)

    def __bool__(self) -> bool:
        return bool(self.faults)

    def hit(self, point: FaultPoint, codes: Iterable[str]) -> None:
        if not self.faults:
            return
        present = set(codes)
        for fault in self.faults:
            if fault.point is point and fault.code in present:
                if fault.action is FaultAction.CRASH:
                    os.kill(os.getpid(), signal.SIGKILL)
                raise InjectedFault(f"injected fault at {point} for {fault.code}")


NO_FAULTS: Final = FaultPlan()
