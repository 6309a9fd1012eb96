"""The recording format (contracts/recording.py): lossless, versioned, line-numbered errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from contracts import CreateCoupon, command_message
from contracts.recording import (
    MAX_LINE_BYTES,
    BadLine,
    BadRecording,
    RecordedLine,
    RecordedMessage,
    read_lines,
    read_messages,
)

WHEN = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)


def test_a_message_survives_a_line_byte_for_byte() -> None:
    headers = {
        "s": "text",
        "i": 7,
        "f": 1.5,
        "b": True,
        "n": None,
        "raw": b"\x00\xff",
        "d": Decimal("1.50"),
        "t": WHEN,
        "nested": {"list": [b"\x01", {"deep": WHEN}]},
    }
    body = bytes(range(256))
    message = RecordedMessage.of(
        "coupon.commands",
        "coupon.create",
        body,
        {"message_id": "m-1", "timestamp": WHEN, "priority": 4, "delivery_mode": 2},
        headers,
    )
    line = message.to_line()
    assert "\n" not in line
    [read] = read_messages([line])
    assert read == message
    assert read.body_bytes() == body and read.body_encoding == "base64"
    assert read.header_values() == headers
    assert read.properties.timestamp == WHEN
    # Absent properties are left out of the line.
    assert "reply_to" not in json.loads(line)["properties"]


def test_a_utf8_body_is_kept_as_text() -> None:
    message = RecordedMessage.of_command(
        command_message(CreateCoupon(code="X", init_count=1), message_id="m"), "coupon.commands"
    )
    loaded = json.loads(message.to_line())
    assert loaded["v"] == 1 and loaded["body_encoding"] == "utf-8"
    assert json.loads(loaded["body"]) == {"code": "X", "init_count": 1}
    assert loaded["properties"]["type"] == "coupon.create"


def test_bad_lines_are_reported_with_their_number_and_reading_goes_on() -> None:
    good = RecordedMessage.of("e", "coupon.redeem", b"{}", {"message_id": "ok"}).to_line()
    lines: list[str | bytes] = [
        good,
        "{not json",
        json.dumps({"v": 2, "exchange": "e", "routing_key": "k", "body": ""}),
        json.dumps({"v": 1, "exchange": "e", "routing_key": "k", "body": "", "surprise": 1}),
        json.dumps(
            {"v": 1, "exchange": "e", "routing_key": "k", "body": "%%", "body_encoding": "base64"}
        ),
        b"\xff\xfe",
        "",
        "# comment",
        "x" * (MAX_LINE_BYTES + 1),
        good,
    ]
    items = list(read_lines(lines))
    assert [type(item) for item in items] == [RecordedLine] + [BadLine] * 6 + [RecordedLine]
    bad = [item for item in items if isinstance(item, BadLine)]
    assert [b.line_number for b in bad] == [2, 3, 4, 5, 6, 9]
    assert "v" in bad[1].reason and "surprise" in bad[2].reason and "base64" in bad[3].reason
    assert "UTF-8" in bad[4].reason and "longer" in bad[5].reason
    assert [item.line_number for item in items if isinstance(item, RecordedLine)] == [1, 10]
    with pytest.raises(BadRecording, match="line 2"):
        read_messages(lines)


def test_with_properties_changes_only_what_it_names() -> None:
    message = RecordedMessage.of("e", "k", b"{}", {"message_id": "a", "correlation_id": "c"})
    changed = message.with_properties(message_id="b")
    assert (changed.properties.message_id, changed.properties.correlation_id) == ("b", "c")
    assert message.properties.message_id == "a"
