"""The oracle's judge of outcomes in an unknown order (`tests.support.oracle.check_outcomes`,
the fault suites' ledger uses it) catches wrong answers and lets the right ones pass."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.support.oracle import check_outcomes


@dataclass
class Sent:
    message_id: str
    routing_key: str
    body: bytes
    established: bool = True


@dataclass(frozen=True)
class Seen:
    routing_key: str
    body: bytes


@dataclass(frozen=True)
class Row:
    code: str
    init_count: int
    remaining_count: int


def create(n: int, code: str, count: int) -> Sent:
    return Sent(f"c{n}", "coupon.create", json.dumps({"code": code, "init_count": count}).encode())


def redeem(n: int, code: str, established: bool = True) -> Sent:
    return Sent(f"r{n}", "coupon.redeem", json.dumps({"code": code}).encode(), established)


def created(code: str, count: int) -> Seen:
    body = {"id": "x", "code": code, "init_count": count, "remaining_count": count}
    return Seen("coupon.created", json.dumps(body).encode())


def redeemed(code: str, left: int) -> Seen:
    return Seen(
        "coupon.redeemed", json.dumps({"id": "x", "code": code, "remaining_count": left}).encode()
    )


def error(kind: str, code: str, command: str = "coupon.redeem") -> Seen:
    body = {"error": kind, "detail": "-", "command": command, "code": code}
    return Seen("coupon.error", json.dumps(body).encode())


def judge(commands: list[Sent], outcomes: list[Seen], rows: list[Row]) -> list[str]:
    by_id = {c.message_id: o for c, o in zip(commands, outcomes, strict=True)}
    return check_outcomes(commands, by_id, rows)


RIGHT = (
    [create(0, "A", 2), create(1, "A", 9), redeem(0, "A"), redeem(1, "A"), redeem(2, "A")],
    [
        created("A", 2),
        error("AlreadyExists", "A", "coupon.create"),
        redeemed("A", 1),
        redeemed("A", 0),
        error("Exhausted", "A"),
    ],
    [Row("A", 2, 0)],
)


def test_right_outcomes_pass() -> None:
    assert judge(*RIGHT) == []


@pytest.mark.parametrize(
    ("commands", "outcomes", "rows", "found"),
    [
        # Exhausted while one is left (and so one redeem too few granted).
        (
            [redeem(0, "A"), redeem(1, "A")],
            [redeemed("A", 1), error("Exhausted", "A")],
            [Row("A", 3, 2)],
            "wrong Exhausted",
        ),
        # DoesNotExist for a coupon the test had seen created.
        ([redeem(0, "A")], [error("DoesNotExist", "A")], [Row("A", 3, 3)], "wrong DoesNotExist"),
        # One extra redeem granted: the count is right for the events, not for the commands.
        (
            [redeem(0, "A"), redeem(1, "A")],
            [redeemed("A", 0), redeemed("A", 0)],
            [Row("A", 1, 0)],
            "must give 1 redeemed",
        ),
        # An outcome about another coupon.
        ([redeem(0, "A")], [redeemed("B", 0)], [Row("A", 1, 1)], "for code 'B'"),
        # A create answered as if it were a redeem.
        ([create(0, "A", 1)], [error("Exhausted", "A")], [Row("A", 1, 1)], "cannot be"),
        # Two creates of one code both won.
        (
            [create(0, "A", 1), create(1, "A", 1)],
            [created("A", 1), created("A", 1)],
            [Row("A", 1, 1)],
            "2 of 2 creates won",
        ),
        # Redeemed with no coupon at all.
        ([redeem(0, "A", False)], [redeemed("A", 0)], [], "has no row"),
    ],
)
def test_wrong_outcomes_are_found(
    commands: list[Sent], outcomes: list[Seen], rows: list[Row], found: str
) -> None:
    problems = judge(commands, outcomes, rows)
    assert any(found in problem for problem in problems), problems


def test_a_redeem_racing_its_create_may_find_nothing() -> None:
    commands = [create(0, "A", 1), redeem(0, "A", established=False)]
    assert judge(commands, [created("A", 1), error("DoesNotExist", "A")], [Row("A", 1, 1)]) == []
