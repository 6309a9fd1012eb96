"""contracts.validation.decode_command: every rejection the contract lists, and its boundaries."""

from __future__ import annotations

import json
from typing import Any

import aio_pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import names
from contracts.client import to_amqp
from contracts.commands import MAX_INIT_COUNT, Command, CreateCoupon, GetCoupon, RedeemCoupon
from contracts.messages import command_message
from contracts.validation import (
    MAX_DETAIL_LENGTH,
    InvalidCommand,
    RejectionCode,
    decode_command,
)

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

# (test id, routing key, body, expected x-error)
INVALID_BODIES: list[tuple[str, str, bytes, RejectionCode]] = [
    ("not-json", CREATE, b"this is not json", RejectionCode.INVALID_JSON),
    ("truncated-json", CREATE, b'{"code": "A", "init_count": 1', RejectionCode.INVALID_JSON),
    ("empty-body", CREATE, b"", RejectionCode.INVALID_JSON),
    ("json-array", CREATE, b'[{"code": "A", "init_count": 1}]', RejectionCode.INVALID_COMMAND),
    ("json-string", CREATE, b'"coupon"', RejectionCode.INVALID_COMMAND),
    ("json-null", CREATE, b"null", RejectionCode.INVALID_COMMAND),
    ("json-number", REDEEM, b"12", RejectionCode.INVALID_COMMAND),
    ("missing-field", CREATE, b'{"code": "A"}', RejectionCode.INVALID_COMMAND),
    ("missing-code", REDEEM, b"{}", RejectionCode.INVALID_COMMAND),
    (
        "extra-field",
        CREATE,
        b'{"code": "A", "init_count": 1, "discount": 5}',
        RejectionCode.INVALID_COMMAND,
    ),
    (
        "extra-field-redeem",
        REDEEM,
        b'{"code": "A", "init_count": 1}',
        RejectionCode.INVALID_COMMAND,
    ),
    ("boolean-count", CREATE, b'{"code": "A", "init_count": true}', RejectionCode.INVALID_COMMAND),
    ("float-count", CREATE, b'{"code": "A", "init_count": 1.0}', RejectionCode.INVALID_COMMAND),
    ("exponent-count", CREATE, b'{"code": "A", "init_count": 1e3}', RejectionCode.INVALID_COMMAND),
    ("string-count", CREATE, b'{"code": "A", "init_count": "5"}', RejectionCode.INVALID_COMMAND),
    ("negative-count", CREATE, b'{"code": "A", "init_count": -1}', RejectionCode.INVALID_COMMAND),
    ("zero-count", CREATE, b'{"code": "A", "init_count": 0}', RejectionCode.INVALID_COMMAND),
    (
        "count-over-1e9",
        CREATE,
        b'{"code": "A", "init_count": 1000000001}',
        RejectionCode.INVALID_COMMAND,
    ),
    (
        "huge-integer",
        CREATE,
        b'{"code": "A", "init_count": ' + b"9" * 5000 + b"}",
        RejectionCode.INVALID_COMMAND,
    ),
    (
        "huge-negative-integer",
        CREATE,
        b'{"code": "A", "init_count": -' + b"9" * 100 + b"}",
        RejectionCode.INVALID_COMMAND,
    ),
    (
        "too-long-code",
        REDEEM,
        b'{"code": "' + LONG_CODE.encode() + b'"}',
        RejectionCode.INVALID_COMMAND,
    ),
    ("empty-code", REDEEM, b'{"code": ""}', RejectionCode.INVALID_COMMAND),
    ("space-in-code", REDEEM, b'{"code": "A B"}', RejectionCode.INVALID_COMMAND),
    ("slash-in-code", REDEEM, b'{"code": "A/B"}', RejectionCode.INVALID_COMMAND),
    ("non-ascii-code", REDEEM, '{"code": "CAFÉ"}'.encode(), RejectionCode.INVALID_COMMAND),
    ("trailing-newline-code", REDEEM, b'{"code": "ABC\\n"}', RejectionCode.INVALID_COMMAND),
    ("escaped-nul-code", REDEEM, b'{"code": "A\\u0000"}', RejectionCode.INVALID_COMMAND),
    ("number-code", REDEEM, b'{"code": 12}', RejectionCode.INVALID_COMMAND),
    ("null-code", REDEEM, b'{"code": null}', RejectionCode.INVALID_COMMAND),
    ("duplicate-keys", REDEEM, b'{"code": "A", "code": "B"}', RejectionCode.INVALID_JSON),
    ("nan", CREATE, b'{"code": "A", "init_count": NaN}', RejectionCode.INVALID_JSON),
    ("infinity", CREATE, b'{"code": "A", "init_count": Infinity}', RejectionCode.INVALID_JSON),
    ("deep-array", CREATE, b"[" * 60_000 + b"]" * 60_000, RejectionCode.TOO_LARGE),
    ("deep-array-under-limit", CREATE, b"[" * 32_000 + b"]" * 32_000, RejectionCode.INVALID_JSON),
    ("deep-object", REDEEM, b'{"a":' * 10_000 + b"1" + b"}" * 10_000, RejectionCode.INVALID_JSON),
    ("non-utf8", REDEEM, b'{"code": "\xff\xfe"}', RejectionCode.INVALID_JSON),
    ("latin1", REDEEM, '{"code": "CAFÉ"}'.encode("latin-1"), RejectionCode.INVALID_JSON),
    ("utf8-bom", REDEEM, b'\xef\xbb\xbf{"code": "A"}', RejectionCode.INVALID_JSON),
    ("raw-nul-in-string", REDEEM, b'{"code": "A\x00"}', RejectionCode.INVALID_JSON),
    ("nul-bytes-only", REDEEM, b"\x00" * 16, RejectionCode.INVALID_JSON),
    ("nul-after-object", REDEEM, b'{"code": "A"}\x00', RejectionCode.INVALID_JSON),
    ("two-objects", REDEEM, b'{"code": "A"}{"code": "B"}', RejectionCode.INVALID_JSON),
    (
        "oversized",
        REDEEM,
        b'{"code": "A", "pad": "' + b"x" * names.MAX_BODY_BYTES + b'"}',
        RejectionCode.TOO_LARGE,
    ),
]


@pytest.mark.parametrize(
    ("routing_key", "body", "code"),
    [case[1:] for case in INVALID_BODIES],
    ids=[case[0] for case in INVALID_BODIES],
)
def test_invalid_bodies_are_rejected_with_their_code(
    routing_key: str, body: bytes, code: RejectionCode
) -> None:
    assert rejection(body, routing_key).code is code


def test_the_detail_does_not_echo_the_input() -> None:
    error = rejection(b'{"code": "' + LONG_CODE.encode() + b'"}', REDEEM)
    assert LONG_CODE not in error.detail
    assert "code" in error.detail
    huge = rejection(b'{"code": "A", "init_count": ' + b"7" * 5000 + b"}")
    assert "7777777777" not in huge.detail


def test_the_detail_names_the_failing_field() -> None:
    assert "init_count" in rejection(b'{"code": "A", "init_count": true}').detail
    assert "discount" in rejection(b'{"code": "A", "init_count": 1, "discount": 5}').detail


def test_unknown_routing_key() -> None:
    error = rejection(b'{"code": "A"}', "coupon.delete")
    assert error.code is RejectionCode.UNKNOWN_COMMAND
    assert "coupon.create" in error.detail
    assert rejection(b"{}", "").code is RejectionCode.UNKNOWN_COMMAND
    assert rejection(b"{}", "x" * 10_000).code is RejectionCode.UNKNOWN_COMMAND


@pytest.mark.parametrize("message_id", [None, ""])
def test_missing_message_id(message_id: str | None) -> None:
    error = rejection(b'{"code": "A"}', REDEEM, message_id=message_id)
    assert error.code is RejectionCode.MISSING_MESSAGE_ID


def test_overlong_message_id() -> None:
    error = rejection(b'{"code": "A"}', REDEEM, message_id="m" * 256)
    assert error.code is RejectionCode.INVALID_COMMAND
    assert decode(b'{"code": "A"}', REDEEM, message_id="m" * 255) == RedeemCoupon(code="A")


def test_too_large_is_checked_before_anything_else() -> None:
    body = b"\xff" * (names.MAX_BODY_BYTES + 1)
    assert rejection(body, "nope", message_id=None).code is RejectionCode.TOO_LARGE


@pytest.mark.parametrize(
    ("content_type", "content_encoding"),
    [
        ("text/plain", None),
        ("application/xml", None),
        ("application/octet-stream", None),
        ("application/json", "gzip"),
    ],
)
def test_unsupported_content_type(content_type: str, content_encoding: str | None) -> None:
    error = rejection(
        b'{"code": "A"}', REDEEM, content_type=content_type, content_encoding=content_encoding
    )
    assert error.code is RejectionCode.UNSUPPORTED_CONTENT_TYPE


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "application/json; charset=utf-8", "Application/JSON"],
)
def test_json_content_types_and_an_absent_one_are_accepted(content_type: str | None) -> None:
    assert decode(b'{"code": "A"}', REDEEM, content_type=content_type) == RedeemCoupon(code="A")


def test_type_property_must_match_the_routing_key() -> None:
    error = rejection(b'{"code": "A"}', REDEEM, type_=CREATE)
    assert error.code is RejectionCode.INVALID_COMMAND
    assert "type" in error.detail
    assert decode(b'{"code": "A"}', REDEEM, type_=REDEEM) == RedeemCoupon(code="A")


def test_get_needs_reply_to() -> None:
    error = rejection(b'{"code": "A"}', GET)
    assert error.code is RejectionCode.INVALID_COMMAND
    assert "reply_to" in error.detail
    assert decode(b'{"code": "A"}', GET, reply_to="amq.rabbitmq.reply-to") == GetCoupon(code="A")


@pytest.mark.parametrize("count", [1, 2, 999_999_999, MAX_INIT_COUNT])
def test_counts_at_the_boundaries_are_accepted(count: int) -> None:
    body = json.dumps({"code": "A", "init_count": count})
    assert decode(body) == CreateCoupon(code="A", init_count=count)


@pytest.mark.parametrize("code", ["A", "z", "0", "-", "_", "Aa-_09", "C" * 64])
def test_codes_at_the_boundaries_are_accepted(code: str) -> None:
    assert decode(json.dumps({"code": code}), REDEEM) == RedeemCoupon(code=code)


def test_codes_are_case_sensitive_and_kept_verbatim() -> None:
    assert decode(b'{"code": "Spring"}', REDEEM).code == "Spring"
    assert decode(b' \n{ "init_count" : 3 , "code" : "x" }\n ') == CreateCoupon(
        code="x", init_count=3
    )


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


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
    try:
        command = decode_command(
            routing_key,
            body,
            message_id=message_id,
            content_type=content_type,
            type_=type_,
            reply_to=reply_to,
        )
    except InvalidCommand as error:
        assert isinstance(error.code, RejectionCode)
        assert 0 < len(error.detail) <= MAX_DETAIL_LENGTH
        return
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
