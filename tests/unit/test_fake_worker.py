"""The plugin's in-memory worker: what it shares with the real one, and its topic routing.
Its behaviour is compared with the worker's by tests/conformance/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import contracts.testing
from contracts.testing.fake import COUPON_ID_NAMESPACE, EVENT_ID_NAMESPACE, topic_matches
from worker.app import outcomes
from worker.domain import model


def test_event_ids_use_the_workers_namespace() -> None:
    assert EVENT_ID_NAMESPACE == outcomes.EVENT_ID_NAMESPACE


def test_coupon_ids_use_the_workers_namespace() -> None:
    """Needs the deterministic coupon ids of the worker (issue 9, item 1)."""
    assert getattr(model, "COUPON_ID_NAMESPACE", None) == COUPON_ID_NAMESPACE


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
