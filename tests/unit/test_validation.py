"""contracts.validation.decode_command: every rejection the contract lists, and its boundaries."""

from __future__ import annotations

import json
from typing import Any

import aio_pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import names
from contracts.amqp import to_amqp
from contracts.commands import MAX_INIT_COUNT, Command, CreateCoupon, GetCoupon, RedeemCoupon
from contracts.messages import command_message
from contracts.validation import (
    MAX_DETAIL_LENGTH,
    InvalidCommand,
    RejectionCode,
    decode_command,
)
from tests.support.contract_rules import expected_error
from tests.support.invalid_inputs import Entry, corpus

CREATE, REDEEM, GET = names.CREATE, names.REDEEM, names.GET


def decode(
    body: bytes | str,
    routing_key: str = CREATE,
    *,
    message_id: str | None = "m-1",
    content_type: str | None = "application/json",
    **properties: Any,
) -> Command:
    raw = body.encode() if isinstance(body, str) else body
    return decode_command(
        routing_key, raw, message_id=message_id, content_type=content_type, **properties
    )


def rejection(body: bytes | str, routing_key: str = CREATE, **properties: Any) -> InvalidCommand:
    with pytest.raises(InvalidCommand) as raised:
        decode(body, routing_key, **properties)
    error = raised.value
    assert error.detail, "every rejection explains itself"
    assert len(error.detail) <= MAX_DETAIL_LENGTH
    return error


LONG_CODE = "Z" * 65
ENTRIES = corpus("T")


def decode_entry(entry: Entry) -> Command:
    """Decode a table entry as the worker would receive it (a get gets no reply_to)."""
    return decode(entry.body, entry.routing_key, **entry.delivered_with())


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry.name for entry in ENTRIES])
def test_every_entry_of_the_invalid_input_table_gets_its_code(entry: Entry) -> None:
    if entry.error is None:
        assert type(decode_entry(entry)).routing_key == entry.routing_key
        return
    with pytest.raises(InvalidCommand) as raised:
        decode_entry(entry)
    assert raised.value.code == entry.error
    assert 0 < len(raised.value.detail) <= MAX_DETAIL_LENGTH, "every rejection explains itself"


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry.name for entry in ENTRIES])
def test_the_table_agrees_with_an_independent_reading_of_the_contract(entry: Entry) -> None:
    """The hand-written table and tests/support/contract_rules.py (which imports nothing of
    `contracts`) are two readings of the contract: they must agree on every entry."""
    assert expected_error(entry.routing_key, entry.body, **entry.delivered_with()) == entry.error


def test_the_detail_does_not_echo_the_input() -> None:
    error = rejection(b'{"code": "' + LONG_CODE.encode() + b'"}', REDEEM)
    assert LONG_CODE not in error.detail
    assert "code" in error.detail
    huge = rejection(b'{"code": "A", "init_count": ' + b"7" * 5000 + b"}")
    assert "7777777777" not in huge.detail


def test_the_detail_names_the_failing_field() -> None:
    assert "init_count" in rejection(b'{"code": "A", "init_count": true}').detail
    assert "discount" in rejection(b'{"code": "A", "init_count": 1, "discount": 5}').detail


# (test id, routing key, message properties, expected x-error, a word the detail must hold)
REFUSED_FOR_PROPERTIES: list[tuple[str, str, dict[str, Any], RejectionCode, str]] = [
    ("unknown-key", "coupon.delete", {}, RejectionCode.UNKNOWN_COMMAND, "coupon.create"),
    ("empty-key", "", {}, RejectionCode.UNKNOWN_COMMAND, "coupon.create"),
    ("huge-key", "x" * 10_000, {}, RejectionCode.UNKNOWN_COMMAND, "coupon.create"),
    ("no-message-id", REDEEM, {"message_id": None}, RejectionCode.MISSING_MESSAGE_ID, "message_id"),
    (
        "empty-message-id",
        REDEEM,
        {"message_id": ""},
        RejectionCode.MISSING_MESSAGE_ID,
        "message_id",
    ),
    ("long-message-id", REDEEM, {"message_id": "m" * 256}, RejectionCode.INVALID_COMMAND, "255"),
    *(
        (f"content-type-{kind}", REDEEM, {"content_type": kind}, unsupported, "content_type")
        for kind, unsupported in (
            ("text/plain", RejectionCode.UNSUPPORTED_CONTENT_TYPE),
            ("application/xml", RejectionCode.UNSUPPORTED_CONTENT_TYPE),
            ("application/octet-stream", RejectionCode.UNSUPPORTED_CONTENT_TYPE),
        )
    ),
    (
        "gzip",
        REDEEM,
        {"content_encoding": "gzip"},
        RejectionCode.UNSUPPORTED_CONTENT_TYPE,
        "content_encoding",
    ),
    ("type-mismatch", REDEEM, {"type_": CREATE}, RejectionCode.INVALID_COMMAND, "type"),
    ("get-without-reply-to", GET, {}, RejectionCode.INVALID_COMMAND, "reply_to"),
]


@pytest.mark.parametrize(
    ("routing_key", "properties", "code", "mentioned"),
    [case[1:] for case in REFUSED_FOR_PROPERTIES],
    ids=[case[0] for case in REFUSED_FOR_PROPERTIES],
)
def test_refused_for_its_properties(
    routing_key: str, properties: dict[str, Any], code: RejectionCode, mentioned: str
) -> None:
    error = rejection(b'{"code": "A"}', routing_key, **properties)
    assert error.code is code
    assert mentioned in error.detail


def test_too_large_is_checked_before_anything_else() -> None:
    body = b"\xff" * (names.MAX_BODY_BYTES + 1)
    assert rejection(body, "nope", message_id=None).code is RejectionCode.TOO_LARGE


# (test id, routing key, body, message properties, the command it decodes to)
ACCEPTED: list[tuple[str, str, bytes, dict[str, Any], Command]] = [
    *(
        (
            f"content-type-{kind}",
            REDEEM,
            b'{"code": "A"}',
            {"content_type": kind},
            RedeemCoupon(code="A"),
        )
        for kind in (
            None,
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
        )
    ),
    (
        "message-id-of-255",
        REDEEM,
        b'{"code": "A"}',
        {"message_id": "m" * 255},
        RedeemCoupon(code="A"),
    ),
    ("type-equal-to-key", REDEEM, b'{"code": "A"}', {"type_": REDEEM}, RedeemCoupon(code="A")),
    (
        "get-with-reply-to",
        GET,
        b'{"code": "A"}',
        {"reply_to": "amq.rabbitmq.reply-to"},
        GetCoupon(code="A"),
    ),
    *(
        (
            f"count-{count}",
            CREATE,
            json.dumps({"code": "A", "init_count": count}).encode(),
            {},
            CreateCoupon(code="A", init_count=count),
        )
        for count in (1, 2, 999_999_999, MAX_INIT_COUNT)
    ),
    *(
        (
            f"code-{code[:8]}",
            REDEEM,
            json.dumps({"code": code}).encode(),
            {},
            RedeemCoupon(code=code),
        )
        for code in ("A", "z", "0", "-", "_", "Aa-_09", "C" * 64)
    ),
    ("case-kept", REDEEM, b'{"code": "Spring"}', {}, RedeemCoupon(code="Spring")),
]


@pytest.mark.parametrize(
    ("routing_key", "body", "properties", "command"),
    [case[1:] for case in ACCEPTED],
    ids=[case[0] for case in ACCEPTED],
)
def test_accepted(
    routing_key: str, body: bytes, properties: dict[str, Any], command: Command
) -> None:
    decoded = decode(body, routing_key, **properties)
    assert decoded == command and type(decoded) is type(command)


# --- properties ---------------------------------------------------------------------------

ROUTING_KEYS = st.sampled_from([CREATE, REDEEM, GET, "coupon.other", ""]) | st.text(max_size=20)
OPTIONAL_TEXT = st.none() | st.text(max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["code", "init_count", "x"]) | st.text(), children, max_size=4
        )
    ),
    max_leaves=12,
)
bodies = (
    st.binary(max_size=2048)
    | json_values.map(lambda value: json.dumps(value).encode())
    | st.builds(
        lambda code, count: json.dumps({"code": code, "init_count": count}).encode(),
        st.text(max_size=70),
        st.integers() | st.booleans() | st.floats(),
    )
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    routing_key=ROUTING_KEYS,
    body=bodies,
    message_id=OPTIONAL_TEXT,
    content_type=OPTIONAL_TEXT | st.just("application/json"),
    type_=OPTIONAL_TEXT,
    reply_to=OPTIONAL_TEXT,
)
def test_arbitrary_input_is_a_command_or_a_documented_rejection(
    routing_key: str,
    body: bytes,
    message_id: str | None,
    content_type: str | None,
    type_: str | None,
    reply_to: str | None,
) -> None:
    delivered: dict[str, Any] = {
        "message_id": message_id,
        "content_type": content_type,
        "type_": type_,
        "reply_to": reply_to,
    }
    # The independent reading of the contract (tests/support/contract_rules.py) must agree.
    expected = expected_error(routing_key, body, **delivered)
    try:
        command = decode_command(routing_key, body, **delivered)
    except InvalidCommand as error:
        assert isinstance(error.code, RejectionCode)
        assert 0 < len(error.detail) <= MAX_DETAIL_LENGTH
        assert error.code == expected
        return
    assert expected is None
    assert type(command).routing_key == routing_key
    assert 1 <= len(command.code) <= 64


codes = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
commands: st.SearchStrategy[Command] = (
    st.builds(CreateCoupon, code=codes, init_count=st.integers(1, MAX_INIT_COUNT))
    | st.builds(RedeemCoupon, code=codes)
    | st.builds(GetCoupon, code=codes)
)


@settings(max_examples=200, deadline=None)
@given(command=commands, message_id=st.none() | st.uuids().map(str))
def test_valid_commands_round_trip_through_the_message_helpers(
    command: Command, message_id: str | None
) -> None:
    message = command_message(command, message_id=message_id, reply_to="replies")
    assert message.message_id == (message_id or message.message_id)
    assert message.type == message.routing_key == command.routing_key
    assert message.content_type == "application/json" and message.delivery_mode == 2

    amqp = to_amqp(message)
    assert amqp.body == message.body
    assert amqp.message_id == message.message_id
    assert amqp.type == command.routing_key
    assert amqp.delivery_mode is aio_pika.DeliveryMode.PERSISTENT
    decoded = decode_command(
        message.routing_key,
        amqp.body,
        message_id=amqp.message_id,
        content_type=amqp.content_type,
        content_encoding=amqp.content_encoding,
        type_=amqp.type,
        reply_to=amqp.reply_to,
    )
    assert decoded == command
    assert type(decoded) is type(command)
