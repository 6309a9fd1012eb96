"""Names of coupon-contracts 1.0 kept for one release: each use warns (DeprecationWarning) and
still does what it did; none is kept as a silent equal of its replacement."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import pytest

from contracts import CouponCreated, RedeemCoupon, read_event
from contracts.messages import command_message
from contracts.testing.backends import MemoryBackend

OLD_NAMES = [
    ("contracts", "parse_event", "contracts.read_event"),
    ("contracts.client", "read_outcome", "contracts.amqp.received"),
    ("contracts.client", "to_amqp", "contracts.amqp.to_amqp"),
    ("contracts.subscription", "Subscription", "contracts.client.AmqpSubscription"),
    ("contracts.subscription", "read_outcome", "contracts.amqp.received"),
    ("contracts.subscription", "to_amqp", "contracts.amqp.to_amqp"),
    ("contracts.replay", "to_recorded", "contracts.amqp.to_recorded"),
    ("contracts.replay", "to_message", "contracts.amqp.to_message"),
    ("contracts.testing.memory", "received_of", "RecordedMessage.received"),
    ("contracts.testing.memory", "Unroutable", "contracts.CommandUnroutable"),
    ("contracts.validation", "bounded", "contracts.validation.truncated"),
]


@pytest.mark.parametrize(("module", "old", "new"), OLD_NAMES)
def test_an_old_module_name_warns_and_names_its_replacement(
    module: str, old: str, new: str
) -> None:
    imported = importlib.import_module(module)
    assert old not in getattr(imported, "__all__", [])
    with pytest.deprecated_call(match=rf"{module}\.{old} is deprecated.*use {new}"):
        value = getattr(imported, old)
    assert value is not None


def test_unknown_names_are_still_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        importlib.import_module("contracts.client").nothing_here  # noqa: B018


def test_old_helpers_still_work_while_warning() -> None:
    with pytest.deprecated_call():
        from contracts import parse_event
    body = b'{"id": "6f7c4f0e-2b8a-4d7e-9a51-3c0d8e6b1f42", "code": "X", "init_count": 1, '
    body += b'"remaining_count": 1}'
    with pytest.deprecated_call():
        assert parse_event("coupon.created", body) == read_event("coupon.created", body)
    with pytest.deprecated_call():
        from contracts.validation import bounded
    assert bounded("x" * 10, 5) == "xx..."


async def test_old_client_verbs_warn_and_still_work() -> None:
    backend = MemoryBackend()
    client = backend.client
    try:
        with pytest.deprecated_call(match=r"create\(\.\.\., wait=False\)"):
            message_id = await client.create("OLD", 2, wait=False)
        assert isinstance(message_id, str)
        with pytest.deprecated_call(match=r"request\(command\)"):
            received = await client.request(RedeemCoupon(code="OLD"))
        assert received.routing_key == "coupon.redeemed"
        with pytest.deprecated_call(match=r"publish\(message\)"):
            await client.publish(command_message(RedeemCoupon(code="OLD")))
        with pytest.deprecated_call(match=r"redeem\(\.\.\., wait=False\)"):
            await client.redeem("OLD", wait=False)
        again = await client.create("OLD", 2, message_id=message_id)
        assert isinstance(again, CouponCreated)  # the same message_id: the stored outcome
    finally:
        await backend.aclose()


async def test_coupon_client_connect_warns() -> None:
    from contracts.client import CouponClient

    connect: Callable[..., Any] = CouponClient.connect  # type: ignore[attr-defined]
    with (
        pytest.deprecated_call(match=r"CouponClient\.connect is deprecated"),
        pytest.raises(OSError),  # nothing listens there: the warning came first
    ):
        await connect("amqp://guest:guest@127.0.0.1:1/")
