"""What each command's outcome must be, worked out from the commands alone (contract v1).

The ledger's other checks make sure every command got one outcome and that the database agrees
with the events. This module checks that the outcome is the *right* one, from an independent
model of the coupon rules, so that a wrong `Exhausted` or `DoesNotExist` cannot pass as "an
outcome arrived":

- shape: a `coupon.create` is answered `coupon.created` (with its own code and `init_count`) or
  `AlreadyExists`; a `coupon.redeem` `coupon.redeemed` or `DoesNotExist` / `Exhausted`; an error
  names the command's routing key and code;
- creates: per code, exactly one create wins (the row's `init_count` is the winner's, as sent)
  and every other create of that code is `AlreadyExists`; no create at all means no row;
- redeems: no `coupon.redeemed` or `Exhausted` for a code without a row; `Exhausted` only for a
  coupon with nothing left at the end (counts only go down); and a redeem sent after the test
  had seen its coupon's `coupon.created` (`established`) is never `DoesNotExist`. When every
  redeem of a coupon is established, the model knows the exact figures without any ordering:
  `min(redeems, init_count)` granted, the rest `Exhausted`, and a final count of
  `init_count - granted`, which the database must hold.

Commands whose order the contract leaves open (a redeem racing the create of its coupon) may
legitimately be `DoesNotExist`; the model asks nothing of them beyond the shape.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

CREATE, REDEEM = "coupon.create", "coupon.redeem"
CREATED, REDEEMED, ERROR = "coupon.created", "coupon.redeemed", "coupon.error"


class CommandSent(Protocol):
    @property
    def message_id(self) -> str: ...

    @property
    def routing_key(self) -> str: ...

    @property
    def body(self) -> bytes: ...

    @property
    def established(self) -> bool: ...


class OutcomeSeen(Protocol):
    @property
    def routing_key(self) -> str: ...

    @property
    def body(self) -> bytes: ...


class CouponRow(Protocol):
    @property
    def code(self) -> str: ...

    @property
    def init_count(self) -> int: ...

    @property
    def remaining_count(self) -> int: ...


@dataclass
class CodeTally:
    """One coupon code's commands and what they were answered."""

    creates: list[tuple[CommandSent, str, dict[str, Any]]] = field(default_factory=list)
    redeems: list[tuple[CommandSent, str, dict[str, Any]]] = field(default_factory=list)


def kind(routing_key: str, body: dict[str, Any]) -> str:
    """`created`, `redeemed`, or the error's name (`Exhausted`, …)."""
    if routing_key == ERROR:
        return str(body.get("error"))
    return routing_key.removeprefix("coupon.")


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def check_outcomes(
    commands: Iterable[CommandSent],
    outcome_of: Mapping[str, OutcomeSeen],
    coupon_rows: Iterable[CouponRow],
) -> list[str]:
    """Every way the outcomes differ from the model; empty when each one is right."""
    problems: list[str] = []
    tallies: dict[str, CodeTally] = defaultdict(CodeTally)
    for command in commands:
        outcome = outcome_of.get(command.message_id)
        sent = _parse(command.body)
        if outcome is None or sent is None or command.routing_key not in (CREATE, REDEEM):
            continue  # no outcome (the ledger reports it lost) or not a coupon write
        body = _parse(outcome.body)
        if body is None:
            problems.append(f"{command.message_id}: outcome body is not a JSON object")
            continue
        answer = kind(outcome.routing_key, body)
        shape = _shape_problem(command, sent, outcome.routing_key, body, answer)
        if shape:
            problems.append(
                f"{command.message_id} ({command.routing_key} {sent.get('code')!r}): {shape}"
            )
            continue
        tally = tallies[str(sent["code"])]
        (tally.creates if command.routing_key == CREATE else tally.redeems).append(
            (command, answer, sent)
        )
    rows = {row.code: row for row in coupon_rows}
    for code, tally in tallies.items():
        problems += _code_problems(code, tally, rows.get(code))
    return problems


def _shape_problem(
    command: CommandSent, sent: dict[str, Any], routing_key: str, body: dict[str, Any], answer: str
) -> str | None:
    allowed = {
        CREATE: {"created", "AlreadyExists"},
        REDEEM: {"redeemed", "DoesNotExist", "Exhausted"},
    }
    if answer not in allowed[command.routing_key]:
        return f"answered {answer}, which a {command.routing_key} cannot be"
    if body.get("code") != sent.get("code"):
        return f"answered for code {body.get('code')!r}"
    if routing_key == ERROR and body.get("command") != command.routing_key:
        return f"error names command {body.get('command')!r}"
    if answer == "created" and body.get("init_count") != sent.get("init_count"):
        return f"created with init_count {body.get('init_count')}, sent {sent.get('init_count')}"
    return None


def _code_problems(code: str, tally: CodeTally, row: CouponRow | None) -> list[str]:
    problems: list[str] = []
    won = [sent for _, answer, sent in tally.creates if answer == "created"]
    answers = [answer for _, answer, _ in tally.redeems]
    if row is None:
        if tally.creates:
            problems.append(f"{code!r}: {len(tally.creates)} creates answered, but no row")
        if any(answer != "DoesNotExist" for answer in answers):
            problems.append(
                f"{code!r} has no row, yet redeems were answered {sorted(set(answers))}"
            )
        return problems
    if tally.creates:
        if len(won) != 1:
            problems.append(f"{code!r}: {len(won)} of {len(tally.creates)} creates won, not 1")
        elif won[0]["init_count"] != row.init_count:
            problems.append(
                f"{code!r}: row init_count {row.init_count}, the winning create sent "
                f"{won[0]['init_count']}"
            )
    exhausted = answers.count("Exhausted")
    granted = answers.count("redeemed")
    if exhausted and row.remaining_count > 0:
        problems.append(
            f"{code!r}: {exhausted} wrong Exhausted, the coupon still has {row.remaining_count}"
        )
    wrongly_missing = sum(
        1
        for command, answer, _ in tally.redeems
        if command.established and answer == "DoesNotExist"
    )
    if wrongly_missing:
        problems.append(
            f"{code!r}: {wrongly_missing} wrong DoesNotExist for redeems sent after its "
            "coupon.created had arrived"
        )
    if tally.redeems and all(command.established for command, _, _ in tally.redeems):
        expected = min(len(tally.redeems), row.init_count)
        if granted != expected or exhausted != len(tally.redeems) - expected:
            problems.append(
                f"{code!r}: {len(tally.redeems)} redeems of {row.init_count} must give "
                f"{expected} redeemed and {len(tally.redeems) - expected} Exhausted; got "
                f"{granted} and {exhausted}"
            )
        if row.remaining_count != row.init_count - expected:
            problems.append(
                f"{code!r}: remaining_count {row.remaining_count}, expected "
                f"{row.init_count} - {expected} granted"
            )
    return problems
