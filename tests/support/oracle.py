"""The tests' one model of the coupon rules, written from `shared/contract.md` alone.

The tests judge the worker by this module, so it is kept independent of it: it imports nothing
from `worker` nor from `contracts`. A command goes in as its routing key, `message_id` and
fields (its JSON body); an answer comes out as the outcome's routing key, code, error kind and
`remaining_count`. A test that compares the worker with it compares two readings of the
contract, not the worker with itself. (Whether a command is valid at all is the other oracle's
business: `tests/support/contract_rules.py`.)

One rulebook, `RULES`: per command, whether it is a write (applied once per `message_id`, a
repeat answered as the first time, business errors included) or a read (answered fresh every
time), the answers it may get, and what it does to the coupons. Three ways to use it:

- `answers(history, batch)`: the answers in one known order, as one worker owes them when it
  applies the commands one by one (the pipeline suite, tests/integration/test_pipeline.py);
- `check_outcomes(commands, outcomes, rows)`: a judge for outcomes whose order the test does
  not know (the fault suites' ledger: several workers, crashes, redeliveries). It asks only
  what holds in every order:
  - shape: each answer is one its command may get (`RULES`), about the command's own code,
    an error names the command's routing key, a `coupon.created` the `init_count` sent;
  - creates: per code, exactly one create wins (the row's `init_count` is the winner's) and
    every other one is `AlreadyExists`; no create at all means no row;
  - redeems: no `coupon.redeemed` or `Exhausted` for a code without a row; `Exhausted` only
    for a coupon with nothing left at the end (counts only go down); a redeem sent after the
    test had seen its coupon's `coupon.created` (`established`) is never `DoesNotExist`. When
    every redeem of a coupon is established the figures are exact in any order:
    `min(redeems, init_count)` granted, the rest `Exhausted`, `init_count - granted` left.
    A redeem racing the create of its coupon may legitimately be `DoesNotExist`;
- `CASES`: per command, a worked example written out by hand that gives the command every
  answer it may get. The oracle must agree with it, and so must the worker's pipeline on both
  storages and the client fake (`contracts/testing/fake.py`); tests/unit/test_rulebook.py
  fails for a command of the contract that lacks a handler, a rule here or a case here.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

CREATE, REDEEM, GET = "coupon.create", "coupon.redeem", "coupon.get"
CREATED, REDEEMED, FOUND = "coupon.created", "coupon.redeemed", "coupon.found"
ERROR = "coupon.error"
DOES_NOT_EXIST, ALREADY_EXISTS, EXHAUSTED = "DoesNotExist", "AlreadyExists", "Exhausted"


@dataclass(frozen=True)
class Step:
    """One command sent: its `message_id`, routing key and fields (the JSON body)."""

    message_id: str
    routing_key: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class Answer:
    """What an outcome says, in the terms the rules speak of."""

    routing_key: str
    code: str
    error: str | None = None
    remaining_count: int | None = None

    @property
    def kind(self) -> str:
        return kind_of(self.routing_key, self.error)

    @classmethod
    def of(cls, routing_key: str, body: bytes | str) -> Answer:
        """Read an outcome the worker (or the client fake) published."""
        fields = json.loads(body)
        return cls(routing_key, fields["code"], fields.get("error"), fields.get("remaining_count"))


def kind_of(routing_key: str, error: object) -> str:
    """`created`, `redeemed`, `found`, or the error's name (`Exhausted`, ...)."""
    return str(error) if routing_key == ERROR else routing_key.removeprefix("coupon.")


Coupons = dict[str, int]  # remaining redemptions, by code


def _create(coupons: Coupons, fields: Mapping[str, Any]) -> Answer:
    code, count = fields["code"], fields["init_count"]
    if code in coupons:
        return Answer(ERROR, code, ALREADY_EXISTS)
    coupons[code] = count
    return Answer(CREATED, code, remaining_count=count)


def _redeem(coupons: Coupons, fields: Mapping[str, Any]) -> Answer:
    code = fields["code"]
    left = coupons.get(code)
    if left is None:
        return Answer(ERROR, code, DOES_NOT_EXIST)
    if left == 0:
        return Answer(ERROR, code, EXHAUSTED)
    coupons[code] = left - 1
    return Answer(REDEEMED, code, remaining_count=left - 1)


def _get(coupons: Coupons, fields: Mapping[str, Any]) -> Answer:
    code = fields["code"]
    left = coupons.get(code)
    if left is None:
        return Answer(ERROR, code, DOES_NOT_EXIST)
    return Answer(FOUND, code, remaining_count=left)


@dataclass(frozen=True)
class Rule:
    """One command's rules."""

    writes: bool  # applied once per message_id (a repeat gets the first answer); else a read
    answers: frozenset[str]  # the kinds of answer it may get (see `Answer.kind`)
    apply: Callable[[Coupons, Mapping[str, Any]], Answer]  # its effect on the coupons


RULES: Final[Mapping[str, Rule]] = {
    CREATE: Rule(True, frozenset({"created", ALREADY_EXISTS}), _create),
    REDEEM: Rule(True, frozenset({"redeemed", DOES_NOT_EXIST, EXHAUSTED}), _redeem),
    GET: Rule(False, frozenset({"found", DOES_NOT_EXIST}), _get),
}


def answers(history: Sequence[Step], batch: Sequence[Step]) -> list[Answer]:
    """The answers to `batch` after `history`, the commands applied one by one in order."""
    coupons: Coupons = {}
    first: dict[str, Answer] = {}  # a write's answer, by message_id

    def answer(step: Step) -> Answer:
        rule = RULES[step.routing_key]
        if not rule.writes:
            return rule.apply(coupons, step.fields)
        if step.message_id not in first:
            first[step.message_id] = rule.apply(coupons, step.fields)
        return first[step.message_id]

    for step in history:
        answer(step)
    return [answer(step) for step in batch]


def _step(message_id: str, routing_key: str, code: str, **fields: Any) -> Step:
    return Step(message_id, routing_key, {"code": code, **fields})


# Per command, from an empty store: each step and the answer it must get. A message_id seen
# twice is the same command delivered again.
CASES: Final[Mapping[str, Sequence[tuple[Step, Answer]]]] = {
    CREATE: (
        (_step("c1", CREATE, "A", init_count=2), Answer(CREATED, "A", remaining_count=2)),
        (_step("c2", CREATE, "A", init_count=5), Answer(ERROR, "A", ALREADY_EXISTS)),
        (_step("c1", CREATE, "A", init_count=2), Answer(CREATED, "A", remaining_count=2)),
        (_step("c3", CREATE, "B", init_count=1), Answer(CREATED, "B", remaining_count=1)),
    ),
    REDEEM: (
        (_step("r0", REDEEM, "A"), Answer(ERROR, "A", DOES_NOT_EXIST)),
        (_step("c1", CREATE, "A", init_count=1), Answer(CREATED, "A", remaining_count=1)),
        (_step("r1", REDEEM, "A"), Answer(REDEEMED, "A", remaining_count=0)),
        (_step("r2", REDEEM, "A"), Answer(ERROR, "A", EXHAUSTED)),
        (_step("r1", REDEEM, "A"), Answer(REDEEMED, "A", remaining_count=0)),
        # The first answer stands, a business error too, though the coupon exists by now.
        (_step("r0", REDEEM, "A"), Answer(ERROR, "A", DOES_NOT_EXIST)),
    ),
    GET: (
        (_step("g1", GET, "A"), Answer(ERROR, "A", DOES_NOT_EXIST)),
        (_step("c1", CREATE, "A", init_count=2), Answer(CREATED, "A", remaining_count=2)),
        # A read is answered fresh, its message_id seen before or not.
        (_step("g1", GET, "A"), Answer(FOUND, "A", remaining_count=2)),
        (_step("r1", REDEEM, "A"), Answer(REDEEMED, "A", remaining_count=1)),
        (_step("g2", GET, "A"), Answer(FOUND, "A", remaining_count=1)),
    ),
}


# --- outcomes in an unknown order -------------------------------------------------------------


class CommandSent(Protocol):
    """A command as the ledger sent it; `established`: sent after its coupon's `created` came."""

    @property
    def message_id(self) -> str: ...

    @property
    def routing_key(self) -> str: ...

    @property
    def body(self) -> bytes: ...

    @property
    def established(self) -> bool: ...


class OutcomeSeen(Protocol):
    """An outcome event as received."""

    @property
    def routing_key(self) -> str: ...

    @property
    def body(self) -> bytes: ...


class CouponRow(Protocol):
    """A coupon row as the database holds it at the end."""

    @property
    def code(self) -> str: ...

    @property
    def init_count(self) -> int: ...

    @property
    def remaining_count(self) -> int: ...


Judged = tuple[CommandSent, str, dict[str, Any]]  # a command, the kind it was answered, its fields
Tally = dict[str, list[Judged]]  # one code's writes, by routing key


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
    """Every way the writes' outcomes differ from the model; empty when each one is right."""
    problems: list[str] = []
    tallies: dict[str, Tally] = defaultdict(lambda: defaultdict(list))
    for command in commands:
        outcome = outcome_of.get(command.message_id)
        sent = _parse(command.body)
        rule = RULES.get(command.routing_key)
        if outcome is None or sent is None or rule is None or not rule.writes:
            continue  # no outcome (the ledger reports it lost), or not a coupon write
        body = _parse(outcome.body)
        if body is None:
            problems.append(f"{command.message_id}: outcome body is not a JSON object")
            continue
        kind = kind_of(outcome.routing_key, body.get("error"))
        shape = _shape_problem(command, rule, sent, outcome.routing_key, body, kind)
        if shape:
            problems.append(
                f"{command.message_id} ({command.routing_key} {sent.get('code')!r}): {shape}"
            )
            continue
        tallies[str(sent["code"])][command.routing_key].append((command, kind, sent))
    rows = {row.code: row for row in coupon_rows}
    for code, tally in tallies.items():
        problems += _code_problems(code, tally, rows.get(code))
    return problems


def _shape_problem(
    command: CommandSent,
    rule: Rule,
    sent: dict[str, Any],
    routing_key: str,
    body: dict[str, Any],
    kind: str,
) -> str | None:
    if kind not in rule.answers:
        return f"answered {kind}, which a {command.routing_key} cannot be"
    if body.get("code") != sent.get("code"):
        return f"answered for code {body.get('code')!r}"
    if routing_key == ERROR and body.get("command") != command.routing_key:
        return f"error names command {body.get('command')!r}"
    if kind == "created" and body.get("init_count") != sent.get("init_count"):
        return f"created with init_count {body.get('init_count')}, sent {sent.get('init_count')}"
    return None


def _code_problems(code: str, tally: Tally, row: CouponRow | None) -> list[str]:
    problems: list[str] = []
    creates, redeems = tally.get(CREATE, []), tally.get(REDEEM, [])
    won = [sent for _, kind, sent in creates if kind == "created"]
    kinds = [kind for _, kind, _ in redeems]
    if row is None:
        if creates:
            problems.append(f"{code!r}: {len(creates)} creates answered, but no row")
        if any(kind != DOES_NOT_EXIST for kind in kinds):
            problems.append(f"{code!r} has no row, yet redeems were answered {sorted(set(kinds))}")
        return problems
    if creates:
        if len(won) != 1:
            problems.append(f"{code!r}: {len(won)} of {len(creates)} creates won, not 1")
        elif won[0]["init_count"] != row.init_count:
            problems.append(
                f"{code!r}: row init_count {row.init_count}, the winning create sent "
                f"{won[0]['init_count']}"
            )
    exhausted = kinds.count(EXHAUSTED)
    granted = kinds.count("redeemed")
    if exhausted and row.remaining_count > 0:
        problems.append(
            f"{code!r}: {exhausted} wrong Exhausted, the coupon still has {row.remaining_count}"
        )
    wrongly_missing = sum(
        1 for command, kind, _ in redeems if command.established and kind == DOES_NOT_EXIST
    )
    if wrongly_missing:
        problems.append(
            f"{code!r}: {wrongly_missing} wrong DoesNotExist for redeems sent after its "
            "coupon.created had arrived"
        )
    if redeems and all(command.established for command, _, _ in redeems):
        expected = min(len(redeems), row.init_count)
        if granted != expected or exhausted != len(redeems) - expected:
            problems.append(
                f"{code!r}: {len(redeems)} redeems of {row.init_count} must give "
                f"{expected} redeemed and {len(redeems) - expected} Exhausted; got "
                f"{granted} and {exhausted}"
            )
        if row.remaining_count != row.init_count - expected:
            problems.append(
                f"{code!r}: remaining_count {row.remaining_count}, expected "
                f"{row.init_count} - {expected} granted"
            )
    return problems
