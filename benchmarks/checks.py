"""Exactly one effect per command, judged from what came out (outcomes, dead letters) and what
the database holds, never from the worker's word. A failed check fails the benchmark."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.database import DatabaseState
from benchmarks.observer import Arrival
from benchmarks.workloads import Plan
from contracts import names

SHOWN = 5  # examples per problem in a failure message


@dataclass
class Verdict:
    figures: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def fail(self, what: str, examples: Sequence[object] = ()) -> None:
        shown = ", ".join(str(example) for example in list(examples)[:SHOWN])
        self.problems.append(f"{what}: {shown}" if shown else what)

    def report(self, found: Sequence[object], what: str) -> None:
        """A problem if anything was `found`: how many, what, and the first few."""
        if found:
            self.fail(f"{len(found)} {what}", found)

    def describe(self) -> dict[str, Any]:
        return {"passed": self.passed, **self.figures, "problems": self.problems}


def check_outcomes(plan: Plan, arrivals: Sequence[Arrival], verdict: Verdict) -> None:
    """One outcome per command, of the expected type, and no copies (nothing in a benchmark
    run is redelivered, so a copy means something went wrong even if the contract allows it)."""
    outcome_ids: dict[str, set[str]] = defaultdict(set)
    types: dict[str, set[str]] = defaultdict(set)
    copies = 0
    for arrival in arrivals:
        ids = outcome_ids[arrival.command_id]
        if arrival.outcome_id in ids or (ids and arrival.outcome_type == "coupon.invalid"):
            copies += 1  # (replies to invalid commands carry no stable message_id)
        ids.add(arrival.outcome_id)
        types[arrival.command_id].add(arrival.outcome_type)
    unknown = [command for command in outcome_ids if command not in plan.expected]
    lost = [command for command in plan.expected if command not in outcome_ids]
    doubled = [
        command
        for command, ids in outcome_ids.items()
        if len(ids) > 1 and plan.expected.get(command) != "coupon.invalid"
    ]
    exhausted = _exhausted(plan, arrivals)
    wrong = [
        (command, sorted(types[command]), expected)
        for command, expected in plan.expected.items()
        if command in types and types[command] != {expected} and command not in exhausted
    ]
    verdict.figures.update(
        commands=len(plan), outcomes=len(arrivals), lost=len(lost), doubled=len(doubled)
    )
    verdict.figures["copies"] = copies
    if plan.shortfall:
        verdict.figures["exhausted"] = len(exhausted)
        if len(exhausted) != plan.shortfall:
            verdict.fail(
                f"{len(exhausted)} redeems Exhausted, where the coupon held exactly "
                f"{plan.shortfall} fewer than were sent (an oversell, or a lost redeem)"
            )
    verdict.report(unknown, "outcomes for commands never sent")
    verdict.report(lost, "commands LOST (no outcome)")
    verdict.report(doubled, "commands DOUBLED (several distinct outcomes)")
    verdict.report(wrong, "commands with an unexpected outcome")
    if copies:
        verdict.fail(f"{copies} outcomes published more than once")


def _exhausted(plan: Plan, arrivals: Sequence[Arrival]) -> set[str]:
    """The redeems that may run out (`Plan.may_run_out`) and were answered Exhausted."""
    return {
        arrival.command_id
        for arrival in arrivals
        if arrival.command_id in plan.may_run_out
        and arrival.outcome_type == names.ERROR
        and json.loads(arrival.body).get("error") == "Exhausted"
    }


def check_database(plan: Plan, state: DatabaseState, verdict: Verdict) -> None:
    """Counters moved by exactly the redeems sent (to zero where more were sent than a coupon
    held), every create stored once, invalid commands changed nothing, and one
    processed_command row per write (an Exhausted redeem's too)."""
    coupons = state.coupons
    drift = []
    for code, init in plan.preseed.items():
        row = coupons.get(code)
        expected = init - min(plan.redeems[code], init)  # never below zero: no oversell
        if row is None or row.init_count != init or row.remaining_count != expected:
            drift.append((code, row, f"expected remaining {expected}"))
    for code, init in plan.created.items():
        row = coupons.get(code)
        if row is None or row.init_count != init or row.remaining_count != init:
            drift.append((code, row, f"expected {init}/{init}"))
    strangers = sorted(set(coupons) - set(plan.preseed) - set(plan.created))
    processed = Counter(state.processed)
    repeated = [message_id for message_id, n in processed.items() if n > 1]
    unrecorded = sorted(plan.writes - processed.keys())
    foreign = sorted(processed.keys() - plan.writes - plan.reads)
    redeemed = sum(
        plan.preseed[code] - coupons[code].remaining_count
        for code in plan.preseed
        if code in coupons
    )
    if plan.shortfall:  # what the coupons that ran out still hold: 0, never below
        verdict.figures["remaining"] = sum(
            coupons[code].remaining_count for code in plan.preseed if code in coupons
        )
    verdict.figures.update(
        coupon_rows=len(coupons),
        redeemed_in_database=redeemed,
        redeems_sent=sum(plan.redeems.values()),
        processed_rows=len(state.processed),
        writes_sent=len(plan.writes),
    )
    verdict.report(drift, "coupons whose counts do not match the commands sent")
    verdict.report(strangers, "coupons nobody created")
    verdict.report(repeated, "commands recorded twice")
    verdict.report(unrecorded, "applied commands without a processed_command row")
    verdict.report(foreign, "processed_command rows for no command sent")


def check_queues(plan: Plan, left: int, dead_letters: int, verdict: Verdict) -> None:
    verdict.figures.update(left_in_queue=left, dead_letters=dead_letters)
    if left:
        verdict.fail(f"{left} commands left in the worker queue")
    if dead_letters != len(plan.invalid):
        verdict.fail(f"{dead_letters} dead letters for {len(plan.invalid)} invalid commands")
