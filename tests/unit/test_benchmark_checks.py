"""The benchmark's judge must catch a lost or a doubled command: its checks, fed by hand."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks import checks, timing
from benchmarks.database import CouponRow, DatabaseState
from benchmarks.observer import Arrival
from benchmarks.workloads import HOT_CODE, Plan, build_plan
from contracts import names


def mixed_plan(size: int = 400) -> Plan:
    return build_plan("mixed", size, seed=7, coupons=20, reply_to="bench-replies")


def faithful_arrivals(plan: Plan) -> list[Arrival]:
    """One outcome per command, of the expected type, as a correct worker publishes them."""
    return [
        Arrival(
            at=float(index),
            command_id=message.message_id,
            outcome_id=f"event-{message.message_id}",
            outcome_type=plan.expected[message.message_id],
            channel="reply" if message.reply_to else "event",
            body=b"{}",
        )
        for index, message in enumerate(plan.messages)
    ]


def faithful_state(plan: Plan) -> DatabaseState:
    coupons = {
        code: CouponRow(init, init - plan.redeems[code]) for code, init in plan.preseed.items()
    }
    coupons.update({code: CouponRow(init, init) for code, init in plan.created.items()})
    return DatabaseState(coupons, sorted(plan.writes))


def verdict_of(plan: Plan, arrivals: list[Arrival], state: DatabaseState) -> checks.Verdict:
    verdict = checks.Verdict()
    checks.check_outcomes(plan, arrivals, verdict)
    checks.check_database(plan, state, verdict)
    checks.check_queues(plan, 0, len(plan.invalid), verdict)
    return verdict


def test_a_faithful_run_passes() -> None:
    plan = mixed_plan()
    verdict = verdict_of(plan, faithful_arrivals(plan), faithful_state(plan))
    assert verdict.passed, verdict.problems
    assert verdict.figures["lost"] == verdict.figures["doubled"] == verdict.figures["copies"] == 0


def test_a_lost_outcome_fails() -> None:
    plan = mixed_plan()
    arrivals = faithful_arrivals(plan)
    missing = arrivals.pop(10)
    verdict = verdict_of(plan, arrivals, faithful_state(plan))
    assert not verdict.passed
    assert any("LOST" in problem and missing.command_id in problem for problem in verdict.problems)


def test_two_distinct_outcomes_for_one_command_fail_as_doubled() -> None:
    plan = build_plan("redeem", 50, seed=1, coupons=5, reply_to="r")
    arrivals = faithful_arrivals(plan)
    arrivals.append(dataclasses.replace(arrivals[3], outcome_id="another-event-id"))
    verdict = verdict_of(plan, arrivals, faithful_state(plan))
    assert any("DOUBLED" in problem for problem in verdict.problems)


def test_a_copy_of_an_outcome_fails() -> None:
    plan = build_plan("create", 50, seed=1, coupons=5, reply_to="r")
    arrivals = faithful_arrivals(plan)
    arrivals.append(arrivals[0])
    verdict = verdict_of(plan, arrivals, faithful_state(plan))
    assert verdict.figures["copies"] == 1
    assert not verdict.passed


def test_an_outcome_of_the_wrong_type_fails() -> None:
    plan = build_plan("redeem-hot", 50, seed=1, coupons=5, reply_to="r")
    arrivals = faithful_arrivals(plan)
    arrivals[-1] = dataclasses.replace(arrivals[-1], outcome_type=names.ERROR)
    verdict = verdict_of(plan, arrivals, faithful_state(plan))
    assert any("unexpected outcome" in problem for problem in verdict.problems)


def test_a_redeem_applied_twice_in_the_database_fails() -> None:
    plan = build_plan("redeem", 50, seed=1, coupons=5, reply_to="r")
    state = faithful_state(plan)
    code = next(iter(plan.redeems))
    row = state.coupons[code]
    state.coupons[code] = CouponRow(row.init_count, row.remaining_count - 1)
    verdict = verdict_of(plan, faithful_arrivals(plan), state)
    assert any("counts do not match" in problem for problem in verdict.problems)


@pytest.mark.parametrize("fault", ["missing row", "repeated row", "foreign row", "stranger"])
def test_processed_rows_and_coupons_must_match_what_was_sent(fault: str) -> None:
    plan = mixed_plan()
    state = faithful_state(plan)
    processed = list(state.processed)
    coupons = dict(state.coupons)
    if fault == "missing row":
        processed.pop()
    elif fault == "repeated row":
        processed.append(processed[0])
    elif fault == "foreign row":
        processed.append("never-sent")
    else:
        coupons["bench-invalid"] = CouponRow(1, 1)
    verdict = verdict_of(plan, faithful_arrivals(plan), DatabaseState(coupons, processed))
    assert len(verdict.problems) == 1, verdict.problems


def test_every_invalid_command_needs_its_dead_letter() -> None:
    plan = mixed_plan(2_000)
    assert plan.invalid
    verdict = checks.Verdict()
    checks.check_queues(plan, 0, len(plan.invalid) - 1, verdict)
    assert not verdict.passed


def test_the_mixed_plan_has_the_shares_asked_for() -> None:
    plan = mixed_plan(10_000)
    shares = {
        "redeem": sum(plan.redeems.values()),
        "create": len(plan.created),
        "get": len(plan.reads),
        "invalid": len(plan.invalid),
    }
    assert shares["redeem"] + shares["create"] + shares["get"] + shares["invalid"] == 10_000
    for kind, expected in (("redeem", 0.70), ("create", 0.20), ("get", 0.09), ("invalid", 0.01)):
        assert abs(shares[kind] / 10_000 - expected) < 0.015, (kind, shares)
    replied = {m.message_id for m in plan.messages if m.reply_to}
    assert replied == plan.reads | plan.invalid


def test_the_same_seed_gives_the_same_commands() -> None:
    first = build_plan("mixed", 300, seed=3, coupons=10, reply_to="a-replies")
    second = build_plan("mixed", 300, seed=3, coupons=10, reply_to="b-replies")
    assert [(m.message_id, m.body) for m in first.messages] == [
        (m.message_id, m.body) for m in second.messages
    ]


def test_throughput_and_latency_figures() -> None:
    arrivals = [
        Arrival(1.0 + i / 100, f"c{i}", f"e{i}", names.CREATED, "event", b"") for i in range(101)
    ]
    assert timing.throughput(arrivals) == {"seconds": 1.0, "commands_per_second": 100.0}
    samples = [float(value) for value in range(1, 101)]
    assert timing.percentile(samples, 0.50) == 50.0
    assert timing.percentile(samples, 0.99) == 99.0


def short_hot_plan(size: int = 200, stock: int = 150) -> Plan:
    """The replicas phase's shared hot coupon: more redeems sent than it holds."""
    return build_plan("redeem-hot", size, seed=5, coupons=5, reply_to="r", hot_stock=stock)


def short_hot_arrivals(plan: Plan, exhausted: int) -> list[Arrival]:
    """Redeemed until the coupon ran out, then Exhausted: the last `exhausted` commands."""
    arrivals = faithful_arrivals(plan)
    for index in range(len(arrivals) - exhausted, len(arrivals)):
        arrivals[index] = dataclasses.replace(
            arrivals[index], outcome_type=names.ERROR, body=b'{"error": "Exhausted"}'
        )
    return arrivals


def short_hot_state(plan: Plan, remaining: int = 0) -> DatabaseState:
    state = faithful_state(plan)
    return DatabaseState({HOT_CODE: CouponRow(plan.preseed[HOT_CODE], remaining)}, state.processed)


def test_a_hot_coupon_holding_fewer_than_sent_runs_out_exactly() -> None:
    plan = short_hot_plan()
    assert plan.shortfall == 50 and plan.may_run_out == plan.writes
    verdict = verdict_of(plan, short_hot_arrivals(plan, 50), short_hot_state(plan))
    assert verdict.passed, verdict.problems
    assert verdict.figures["exhausted"] == 50 and verdict.figures["remaining"] == 0
    assert verdict.figures["redeemed_in_database"] == 150


@pytest.mark.parametrize("exhausted", [49, 51])
def test_an_oversell_or_a_missed_redeem_of_the_hot_coupon_fails(exhausted: int) -> None:
    plan = short_hot_plan()
    verdict = verdict_of(plan, short_hot_arrivals(plan, exhausted), short_hot_state(plan))
    assert any("Exhausted, where the coupon held" in problem for problem in verdict.problems)


def test_the_hot_coupon_left_with_stock_or_below_zero_fails() -> None:
    plan = short_hot_plan()
    for remaining in (1, -1):
        state = short_hot_state(plan, remaining)
        verdict = verdict_of(plan, short_hot_arrivals(plan, 50), state)
        assert any("counts do not match" in problem for problem in verdict.problems)


def test_only_exhausted_counts_as_running_out() -> None:
    plan = short_hot_plan()
    arrivals = short_hot_arrivals(plan, 50)
    arrivals[-1] = dataclasses.replace(arrivals[-1], body=b'{"error": "DoesNotExist"}')
    verdict = verdict_of(plan, arrivals, short_hot_state(plan))
    assert any("unexpected outcome" in problem for problem in verdict.problems)


def test_a_plan_with_enough_stock_may_not_run_out() -> None:
    plan = build_plan("redeem-hot", 50, seed=1, coupons=5, reply_to="r")
    assert plan.shortfall == 0 and not plan.may_run_out
    with pytest.raises(ValueError, match="hot_stock"):
        build_plan("redeem", 50, seed=1, coupons=5, reply_to="r", hot_stock=10)


def test_throughput_counted_from_a_moment() -> None:
    arrivals = [
        Arrival(1.0 + i / 100, f"c{i}", f"e{i}", names.CREATED, "event", b"") for i in range(101)
    ]
    assert timing.throughput(arrivals, since=1.5) == {"seconds": 0.5, "commands_per_second": 100.0}
