"""The plugin's in-memory worker: what it shares with the real one, and its topic routing.
Its behaviour is compared with the worker's by tests/conformance/."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path

import pytest

import contracts.testing
from contracts import identity
from contracts.commands import CreateCoupon
from contracts.events import CouponCreated
from contracts.testing.fake import topic_matches
from worker.app.outcomes import Outcome
from worker.domain import handlers
from worker.domain.working_set import WorkingSet


def test_the_worker_derives_its_ids_from_the_contracts_definition() -> None:
    """The fake imports `contracts.identity` too: both give the same ids by construction."""
    outcome = Outcome(
        command_message_id="m-1",
        command="coupon.create",
        routing_key="coupon.created",
        body=b"{}",
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    assert outcome.event_message_id == identity.event_message_id("m-1")
    created = handlers.create_coupon(CreateCoupon(code="A", init_count=1), WorkingSet({}), "m-1")
    assert isinstance(created, CouponCreated)
    assert created.id == identity.coupon_id("m-1")


def test_the_derived_ids_are_pinned() -> None:
    """Changing a namespace changes every id a replay produces, and every golden file."""
    assert identity.event_message_id("m-1") == "83f02886-6cfc-5799-90eb-da14a507cef1"
    assert str(identity.coupon_id("m-1")) == "745f84e7-d4c8-5a0a-88c5-0ac516158982"


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("coupon.*", "coupon.create", True),
        ("coupon.*", "coupon.a.b", False),
        ("coupon.*", "coupon", False),
        ("coupon.#", "coupon", True),
        ("coupon.#", "coupon.a.b", True),
        ("#", "anything.at.all", True),
        ("*.created", "coupon.created", True),
        ("#.created", "a.b.created", True),
        ("coupon.created", "coupon.redeemed", False),
    ],
)
def test_topic_matching_follows_amqp(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


def test_the_testing_package_never_imports_the_worker() -> None:
    folder = Path(contracts.testing.__file__).parent
    for module in folder.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not [n for n in names if n.split(".")[0] in ("worker", "tests")], module
