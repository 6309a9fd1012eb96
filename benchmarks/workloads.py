"""The four workloads as lists of command messages, with what each command must lead to.

A plan is built from a seed, so the ceiling and the worker get the same commands, byte for byte
but for the `reply_to` queue name (same length). Every command has one expected outcome type,
which makes the exactly-once checks exact: redeems only target preseeded coupons that hold
enough for every redeem sent (the hot coupon exactly as many), creates use distinct new codes.
The one exception is asked for by name: a hot coupon that holds fewer (`hot_stock`), whose
surplus redeems must come back Exhausted, how many exactly but not which (`Plan.may_run_out`).
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from contracts import names
from contracts.commands import CreateCoupon, GetCoupon, RedeemCoupon
from contracts.messages import CommandMessage, command_message

PRESEED_COUNT = 1_000_000_000  # the contract's most: no preseeded coupon runs out in a run
HOT_CODE = "bench-hot"
# Mixed: 70 % redeem, 20 % create, 9 % get (with reply_to), 1 % invalid (with reply_to).
MIXED_SHARES = (("redeem", 0.70), ("create", 0.20), ("get", 0.09), ("invalid", 0.01))
INVALID_BODIES = (
    b'{"code": "bench-invalid", "init_count": ',  # not JSON: InvalidJson
    b'{"code": "bench-invalid", "init_count": 0}',  # fails the field rules: InvalidCommand
)


@dataclass
class Plan:
    workload: str
    messages: list[CommandMessage] = field(default_factory=list)
    expected: dict[str, str] = field(default_factory=dict)  # message_id → outcome type
    preseed: dict[str, int] = field(default_factory=dict)  # code → init_count, before the run
    created: dict[str, int] = field(default_factory=dict)  # code → init_count, by creates
    redeems: Counter[str] = field(default_factory=Counter)  # code → redeems sent
    writes: set[str] = field(default_factory=set)  # message ids the worker must record
    reads: set[str] = field(default_factory=set)  # gets: answered, may or may not be recorded
    invalid: set[str] = field(default_factory=set)  # must be dead-lettered, change nothing
    may_run_out: set[str] = field(default_factory=set)  # redeems that may come back Exhausted

    def __len__(self) -> int:
        return len(self.messages)

    @property
    def shortfall(self) -> int:
        """Redeems sent beyond what their coupons hold: exactly this many must be Exhausted."""
        return sum(max(n - self.preseed.get(code, n), 0) for code, n in self.redeems.items())


def build_plan(
    workload: str,
    size: int,
    *,
    seed: int,
    coupons: int,
    reply_to: str,
    tag: str = "",
    hot_stock: int | None = None,
    codes: Sequence[str] = (),
) -> Plan:
    """`size` commands of `workload`; `tag` keeps created codes apart between plans that share
    a database (the growth phase's runs over its grown tables); `hot_stock`: what the hot
    coupon of `redeem-hot` holds, if not exactly `size` (fewer: the rest must come back
    Exhausted); `codes`: coupons that exist already, which redeems and gets pick from instead
    of `coupons` preseeded ones (the caller then sets `plan.preseed` to what they hold)."""
    if hot_stock is not None and (workload != "redeem-hot" or not 1 <= hot_stock <= size):
        raise ValueError("hot_stock: a redeem-hot plan's coupon, from 1 to the redeems sent")
    rng = random.Random(f"{seed}-{workload}-{size}-{tag}")
    plan = Plan(workload)
    preseeded = codes or [f"bench-{i:05d}" for i in range(coupons)]
    if workload in ("redeem", "mixed"):
        plan.preseed = dict.fromkeys(preseeded, PRESEED_COUNT)
    elif workload == "redeem-hot":
        plan.preseed = {HOT_CODE: size if hot_stock is None else hot_stock}
    for index in range(size):
        kind = _kind(workload, rng)
        message_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if kind == "create":
            code = f"bench-new{tag}-{index:07d}"
            count = rng.randint(1, 1_000)
            message = command_message(
                CreateCoupon(code=code, init_count=count), message_id=message_id
            )
            plan.created[code] = count
            _expect(plan, message, names.CREATED, plan.writes)
        elif kind == "redeem":
            code = HOT_CODE if workload == "redeem-hot" else rng.choice(preseeded)
            message = command_message(RedeemCoupon(code=code), message_id=message_id)
            plan.redeems[code] += 1
            _expect(plan, message, names.REDEEMED, plan.writes)
        elif kind == "get":
            get = GetCoupon(code=rng.choice(preseeded))
            message = command_message(get, message_id=message_id, reply_to=reply_to)
            _expect(plan, message, names.FOUND, plan.reads)
        else:
            message = CommandMessage(
                routing_key=names.CREATE,
                body=INVALID_BODIES[index % len(INVALID_BODIES)],
                message_id=message_id,
                reply_to=reply_to,
            )
            _expect(plan, message, names.INVALID, plan.invalid)
    if plan.shortfall:  # any of the hot coupon's redeems may be one too many
        plan.may_run_out = set(plan.writes)
    return plan


def _kind(workload: str, rng: random.Random) -> str:
    if workload == "create":
        return "create"
    if workload in ("redeem", "redeem-hot"):
        return "redeem"
    if workload != "mixed":
        raise ValueError(f"unknown workload {workload!r}")
    draw = rng.random()
    for kind, share in MIXED_SHARES:
        if draw < share:
            return kind
        draw -= share
    return MIXED_SHARES[0][0]


def _expect(plan: Plan, message: CommandMessage, outcome: str, group: set[str]) -> None:
    plan.messages.append(message)
    plan.expected[message.message_id] = outcome
    group.add(message.message_id)
