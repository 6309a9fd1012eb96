"""The AsyncAPI document: valid AsyncAPI 3.0, describing the contract, and committed fresh."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from contracts import names
from contracts.commands import COMMANDS
from worker.entrypoints.asyncapi import asyncapi_document, render

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "asyncapi.json"
SCHEMA = Path(__file__).with_name("asyncapi") / "asyncapi-3.0.0.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))


def test_the_document_is_valid_asyncapi_3(validator: jsonschema.Draft7Validator) -> None:
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(asyncapi_document())
    ]
    assert errors == []


def test_the_validation_would_catch_a_broken_document(
    validator: jsonschema.Draft7Validator,
) -> None:
    document = asyncapi_document()
    document["operations"]["receiveCreateCoupon"]["action"] = "consume"
    assert not validator.is_valid(document)


def test_the_committed_copy_is_current() -> None:
    assert COMMITTED.read_text() == render(), (
        "docs/asyncapi.json is stale: regenerate it with "
        "`uv run coupon-worker asyncapi > docs/asyncapi.json`"
    )


def test_it_describes_the_contract() -> None:
    document: dict[str, Any] = asyncapi_document()
    channels, operations = document["channels"], document["operations"]
    messages = document["components"]["messages"]
    assert {channels[cls.__name__]["address"] for cls in COMMANDS.values()} == set(COMMANDS)
    create = messages["CreateCoupon"]
    assert create["headers"]["required"] == ["message_id"]
    assert create["correlationId"]["location"] == "$message.header#/correlation_id"
    assert document["components"]["schemas"]["CreateCoupon"]["additionalProperties"] is False
    get = operations["receiveGetCoupon"]
    assert get["reply"]["address"]["location"] == "$message.header#/reply_to"
    assert {m["$ref"].rsplit("/", 1)[1] for m in get["reply"]["messages"]} == {
        "CouponFound",
        "CouponError",
        "InvalidCommandReply",
    }
    assert {
        channels[f"{n}Event"]["address"] for n in ("CouponCreated", "CouponRedeemed", "CouponError")
    } == {
        names.CREATED,
        names.REDEEMED,
        names.ERROR,
    }
    dead = messages["DeadLetter"]["headers"]["properties"]
    assert {"InvalidJson", "ProcessingFailed"} <= set(dead[names.ERROR_HEADER]["enum"])
    assert names.ERROR_DETAIL_HEADER in dead
