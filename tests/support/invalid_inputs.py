"""The one table of invalid input: everything contract v1 calls invalid, the hostile bodies a
parser meets in the wild, and the boundary cases that are valid. Each entry states the `x-error`
the contract expects, or None for a valid command that must be processed.

Used by the unit tests of `contracts.validation` (tests/unit/test_validation.py), the end-to-end
test of invalid commands (tests/e2e/test_invalid_commands.py) and the bad-input fault test
(tests/faults/test_bad_input.py); tests/unit/test_validation.py also holds every entry to the
independent reading of the contract in `tests/support/contract_rules.py`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from contracts import names

MAX: Final = names.MAX_BODY_BYTES


@dataclass(frozen=True)
class Entry:
    name: str
    routing_key: str
    body: bytes
    error: str | None  # expected x-error; None: a valid command, processed
    properties: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = names.JSON_CONTENT_TYPE
    without_message_id: bool = False

    def delivered_with(self) -> dict[str, Any]:
        """Its message properties, as keyword arguments of `contracts.validation.decode_command`
        and `tests.support.contract_rules.expected_error` (a get has no reply_to)."""
        return {
            "message_id": None if self.without_message_id else "m-1",
            "content_type": self.content_type,
            "content_encoding": self.properties.get("content_encoding"),
            "type_": self.properties.get("type"),
        }


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def _padded(body: bytes, size: int) -> bytes:
    """`body` with JSON whitespace appended up to exactly `size` bytes."""
    assert len(body) <= size
    return body + b" " * (size - len(body))


CREATE, REDEEM, GET = names.CREATE, names.REDEEM, names.GET
BAD_JSON, BAD_COMMAND = "InvalidJson", "InvalidCommand"


def corpus(tag: str) -> list[Entry]:
    """The entries; valid ones use codes starting with `tag` so that they do not collide."""
    ok_code = f"{tag}-ok"
    entries = [
        # Not JSON, or not an object.
        Entry("empty body", CREATE, b"", BAD_JSON),
        Entry("not json", CREATE, b"not json", BAD_JSON),
        Entry("truncated object", CREATE, b'{"code": "A", "init_count": 1', BAD_JSON),
        Entry("single quotes", REDEEM, b"{'code': 'A'}", BAD_JSON),
        Entry("trailing comma", REDEEM, b'{"code": "A",}', BAD_JSON),
        Entry("two documents", REDEEM, b'{"code": "A"} {"code": "B"}', BAD_JSON),
        Entry("array", REDEEM, b'[{"code": "A"}]', BAD_COMMAND),
        Entry("string", REDEEM, b'"A"', BAD_COMMAND),
        Entry("number", REDEEM, b"42", BAD_COMMAND),
        Entry("null", REDEEM, b"null", BAD_COMMAND),
        Entry("true", REDEEM, b"true", BAD_COMMAND),
        Entry("NUL bytes only", REDEEM, b"\x00" * 16, BAD_JSON),
        Entry("deep nesting, unclosed, over the limit", REDEEM, b"[" * 100_000, "TooLarge"),
        Entry(
            "deep nesting, closed, over the limit",
            CREATE,
            b"[" * 40_000 + b"]" * 40_000,
            "TooLarge",
        ),
        Entry("deep nesting, unclosed", REDEEM, b"[" * 60_000, BAD_JSON),
        Entry("deep nesting, closed", REDEEM, b"[" * 30_000 + b"]" * 30_000, BAD_JSON),
        Entry(
            "deep nesting inside a field",
            CREATE,
            b'{"code": ' + b"[" * 20_000 + b"]" * 20_000 + b', "init_count": 1}',
            BAD_JSON,
        ),
        Entry("deep objects", REDEEM, b'{"a":' * 10_000 + b"1" + b"}" * 10_000, BAD_JSON),
        # Numbers.
        Entry(
            "huge integer",
            CREATE,
            b'{"code": "HUGE", "init_count": 1' + b"0" * 5000 + b"}",
            BAD_COMMAND,
        ),
        Entry(
            "huge negative integer",
            CREATE,
            b'{"code": "H", "init_count": -' + b"9" * 5000 + b"}",
            BAD_COMMAND,
        ),
        Entry("huge bare integer", REDEEM, b"1" + b"0" * 5000, BAD_COMMAND),
        Entry("huge float", CREATE, b'{"code": "H", "init_count": 1e999999}', BAD_COMMAND),
        Entry("NaN", CREATE, b'{"code": "N", "init_count": NaN}', BAD_JSON),
        Entry("Infinity", CREATE, b'{"code": "N", "init_count": Infinity}', BAD_JSON),
        Entry("-Infinity", CREATE, b'{"code": "N", "init_count": -Infinity}', BAD_JSON),
        Entry("init_count 0", CREATE, _json({"code": "Z", "init_count": 0}), BAD_COMMAND),
        Entry("init_count -1", CREATE, _json({"code": "Z", "init_count": -1}), BAD_COMMAND),
        Entry(
            "init_count over a billion",
            CREATE,
            _json({"code": "Z", "init_count": 1_000_000_001}),
            BAD_COMMAND,
        ),
        Entry("init_count true", CREATE, _json({"code": "Z", "init_count": True}), BAD_COMMAND),
        Entry("init_count 1.0", CREATE, _json({"code": "Z", "init_count": 1.0}), BAD_COMMAND),
        Entry("init_count 1e3", CREATE, b'{"code": "Z", "init_count": 1e3}', BAD_COMMAND),
        Entry("init_count string", CREATE, _json({"code": "Z", "init_count": "5"}), BAD_COMMAND),
        Entry("init_count null", CREATE, _json({"code": "Z", "init_count": None}), BAD_COMMAND),
        # Keys.
        Entry("duplicate keys", REDEEM, b'{"code": "A", "code": "B"}', BAD_JSON),
        Entry(
            "duplicate keys, same value",
            CREATE,
            b'{"code": "A", "init_count": 1, "init_count": 1}',
            BAD_JSON,
        ),
        Entry("missing code", REDEEM, b"{}", BAD_COMMAND),
        Entry("missing init_count", CREATE, _json({"code": "Z"}), BAD_COMMAND),
        Entry("unknown field", REDEEM, _json({"code": "A", "admin": True}), BAD_COMMAND),
        Entry("init_count on a redeem", REDEEM, _json({"code": "A", "init_count": 1}), BAD_COMMAND),
        Entry(
            "unknown field on create",
            CREATE,
            _json({"code": "Z", "init_count": 1, "x": 1}),
            BAD_COMMAND,
        ),
        # Codes.
        Entry("empty code", REDEEM, _json({"code": ""}), BAD_COMMAND),
        Entry("code of 65 characters", REDEEM, _json({"code": "A" * 65}), BAD_COMMAND),
        Entry("code with a space", REDEEM, _json({"code": "A B"}), BAD_COMMAND),
        Entry("code with a dot", REDEEM, _json({"code": "A.B"}), BAD_COMMAND),
        Entry("code with a slash", REDEEM, _json({"code": "A/B"}), BAD_COMMAND),
        Entry("code with a newline", REDEEM, _json({"code": "A\nB"}), BAD_COMMAND),
        Entry("code with a trailing newline", REDEEM, _json({"code": "A\n"}), BAD_COMMAND),
        Entry("code not a string", REDEEM, _json({"code": 12}), BAD_COMMAND),
        Entry("code null", REDEEM, _json({"code": None}), BAD_COMMAND),
        Entry("code a list", REDEEM, _json({"code": ["A"]}), BAD_COMMAND),
        Entry("escaped NUL in code", REDEEM, b'{"code": "A\\u0000B"}', BAD_COMMAND),
        Entry("raw NUL byte in code", REDEEM, b'{"code": "A\x00B"}', BAD_JSON),
        Entry("NUL byte after the object", REDEEM, b'{"code": "A"}\x00', BAD_JSON),
        Entry("lone surrogate escaped", REDEEM, b'{"code": "\\ud800"}', BAD_COMMAND),
        Entry("non-ASCII letters", REDEEM, _json({"code": "CAFÉ"}), BAD_COMMAND),
        Entry("fullwidth digits", REDEEM, _json({"code": "\uff11\uff12\uff13"}), BAD_COMMAND),
        Entry(
            "SQL injection, drop",
            CREATE,
            _json({"code": "'); DROP TABLE coupon;--", "init_count": 1}),
            BAD_COMMAND,
        ),
        Entry("SQL injection, or", REDEEM, _json({"code": "' OR '1'='1"}), BAD_COMMAND),
        # Encodings.
        Entry("non-UTF-8 byte", REDEEM, b'{"code": "\xff"}', BAD_JSON),
        Entry("Latin-1 text", REDEEM, '{"code": "café"}'.encode("latin-1"), BAD_JSON),
        Entry("overlong UTF-8", REDEEM, b'{"code": "\xc0\xafA"}', BAD_JSON),
        Entry("UTF-16 with BOM", REDEEM, '{"code": "A"}'.encode("utf-16"), BAD_JSON),
        Entry("UTF-8 BOM", REDEEM, b"\xef\xbb\xbf" + _json({"code": "A"}), BAD_JSON),
        # Size.
        Entry(
            "body one byte over 64 KiB",
            REDEEM,
            _padded(_json({"code": ok_code}), MAX + 1),
            "TooLarge",
        ),
        Entry("body of 1 MiB", REDEEM, b" " * (1024 * 1024), "TooLarge"),
        Entry(
            "object over the limit",
            REDEEM,
            _json({"code": "A", "pad": "x" * MAX}),
            "TooLarge",
        ),
        # Properties.
        Entry(
            "wrong content type",
            REDEEM,
            _json({"code": ok_code}),
            "UnsupportedContentType",
            content_type="text/plain",
        ),
        Entry(
            "xml content type",
            REDEEM,
            b"<code>A</code>",
            "UnsupportedContentType",
            content_type="application/xml",
        ),
        Entry(
            "gzip content encoding",
            REDEEM,
            _json({"code": ok_code}),
            "UnsupportedContentType",
            properties={"content_encoding": "gzip"},
        ),
        Entry("unknown routing key", "coupon.delete", _json({"code": ok_code}), "UnknownCommand"),
        Entry(
            "routing key in capitals",
            "coupon.CREATE",
            _json({"code": "Z", "init_count": 1}),
            "UnknownCommand",
        ),
        Entry(
            "missing message_id",
            REDEEM,
            _json({"code": ok_code}),
            "MissingMessageId",
            without_message_id=True,
        ),
        Entry(
            "type property mismatch",
            CREATE,
            _json({"code": "Z", "init_count": 1}),
            BAD_COMMAND,
            properties={"type": REDEEM},
        ),
        Entry("get without reply_to", GET, _json({"code": ok_code}), BAD_COMMAND),
        Entry(
            "gzip content encoding, plain body",
            REDEEM,
            b"\x1f\x8b not really gzip",
            "UnsupportedContentType",
            properties={"content_encoding": "gzip"},
        ),
        # Boundary cases that are valid and must be processed.
        Entry(
            "create at the boundaries",
            CREATE,
            _json({"code": ok_code, "init_count": 1_000_000_000}),
            None,
        ),
        Entry(
            "code of 64 characters",
            CREATE,
            _json({"code": f"{tag}-".ljust(64, "x"), "init_count": 1}),
            None,
        ),
        Entry("body of exactly 64 KiB", REDEEM, _padded(_json({"code": ok_code}), MAX), None),
        Entry(
            "content type with parameters",
            REDEEM,
            _json({"code": ok_code}),
            None,
            content_type="application/json; charset=utf-8",
        ),
        Entry(
            "type property equal to the routing key",
            REDEEM,
            _json({"code": ok_code}),
            None,
            properties={"type": REDEEM},
        ),
        Entry(
            "unicode escapes of ASCII",
            REDEEM,
            _json({"code": ok_code}).replace(b"-", b"\\u002d"),
            None,
        ),
        Entry(
            "whitespace around and between the fields",
            CREATE,
            b' \n{ "init_count" : 3 , "code" : "' + f"{tag}-ws".encode() + b'" }\n ',
            None,
        ),
    ]
    return entries
