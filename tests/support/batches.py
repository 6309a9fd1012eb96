"""Batches of commands for property tests, and an oracle written from the contract.

The property: a batch applied at once (set-based: one lock-and-load, the handlers in memory,
one statement per kind of change) has exactly the outcomes of applying its commands one by one
in batch order. `expected_outcomes` states the contract's rules independently of the worker's
code (a second opinion on the kinds and counts), and `one_by_one` gives the reference run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from hypothesis import strategies as st

from contracts.commands import Command, CreateCoupon, GetCoupon, RedeemCoupon
from worker.app.outcomes import Outcome
from worker.app.pipeline import Envelope, Pipeline

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

_codes = st.sampled_from(["A", "B", "C"])
_commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(CreateCoupon, code=_codes, init_count=st.integers(1, 3)),
    st.builds(RedeemCoupon, code=_codes),
    st.builds(RedeemCoupon, code=_codes),  # redeems twice as likely: hot coupons run out
    st.builds(GetCoupon, code=_codes),
)
# A small pool of message ids, so that duplicates (redeliveries) occur in and across batches.
envelopes = st.builds(
    Envelope, message_id=st.sampled_from([f"m{i}" for i in range(12)]), command=_commands
)
batches = st.lists(envelopes, min_size=1, max_size=30)


@dataclass(frozen=True)
class Expected:
    routing_key: str
    error: str | None = None
    remaining_count: int | None = None


def expected_outcomes(history: Sequence[Envelope], batch: Sequence[Envelope]) -> list[Expected]:
    """The contract's answer to `batch` after `history`: one effect per message_id of a write
    (its later copies get the first outcome), `coupon.get` answered fresh every time."""
    remaining: dict[str, int] = {}
    answered: dict[str, Expected] = {}
    result: list[Expected] = []
    for envelope in [*history, *batch]:
        command, message_id = envelope.command, envelope.message_id
        if isinstance(command, GetCoupon):
            left = remaining.get(command.code)
            answer = (
                Expected("coupon.found", remaining_count=left)
                if left is not None
                else Expected("coupon.error", "DoesNotExist")
            )
        elif message_id in answered:
            answer = answered[message_id]
        elif isinstance(command, CreateCoupon):
            if command.code in remaining:
                answer = Expected("coupon.error", "AlreadyExists")
            else:
                remaining[command.code] = command.init_count
                answer = Expected("coupon.created", remaining_count=command.init_count)
        else:
            left = remaining.get(command.code)
            if left is None:
                answer = Expected("coupon.error", "DoesNotExist")
            elif left == 0:
                answer = Expected("coupon.error", "Exhausted")
            else:
                remaining[command.code] = left - 1
                answer = Expected("coupon.redeemed", remaining_count=left - 1)
        if not command.is_read:
            answered.setdefault(message_id, answer)
        result.append(answer)
    return result[len(history) :]


def observed(outcome: Outcome) -> Expected:
    body = json.loads(outcome.body)
    return Expected(outcome.routing_key, body.get("error"), body.get("remaining_count"))


async def one_by_one(pipeline: Pipeline, batch: Sequence[Envelope]) -> list[Outcome]:
    return [outcome for envelope in batch for outcome in await pipeline.process([envelope])]


def wire(outcomes: Sequence[Outcome]) -> list[tuple[str, str, str, bytes]]:
    """What a consumer sees of each outcome: byte for byte, with the event's message_id."""
    return [(o.command_message_id, o.event_message_id, o.routing_key, o.body) for o in outcomes]
