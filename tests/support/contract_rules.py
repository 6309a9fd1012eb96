"""The contract's rules for a valid command, written again from `shared/contract.md` alone.

An oracle for the tests, deliberately independent of the worker: it imports nothing from
`contracts` (not the models, not `contracts.validation`), so a test that compares the worker's
`x-error` with `expected_error(...)` compares two separate readings of the contract, not the
worker with itself.

What the contract says, and the one thing it leaves open:

- A body over 64 KiB is `TooLarge`; a missing `message_id` is `MissingMessageId`; a routing key
  other than `coupon.create`, `coupon.redeem` and `coupon.get` is `UnknownCommand`; a `type`
  that differs from the routing key, and a `coupon.get` without `reply_to`, are
  `InvalidCommand`; a content type other than JSON (or a content encoding) is
  `UnsupportedContentType`. An absent content type is read as JSON.
- The body must be JSON (UTF-8, no `NaN`/`Infinity`, no duplicate keys, no BOM, nesting a parser
  can hold) — else `InvalidJson` — and an object with exactly the command's fields — else
  `InvalidCommand`: `code` 1-64 ASCII letters, digits, `-`, `_`; `init_count` an integer (not a
  boolean, not a float such as `1.0` or `1e3`) from 1 to 1,000,000,000.
- Precedence, which the contract does not state: the size first (nothing else is read from an
  oversized message), then the properties in the order above, then the body.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

MAX_BODY: Final = 64 * 1024
MAX_COUNT: Final = 1_000_000_000
FIELDS: Final = {
    "coupon.create": frozenset({"code", "init_count"}),
    "coupon.redeem": frozenset({"code"}),
    "coupon.get": frozenset({"code"}),
}
_CODE = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
_JSON_MEDIA_TYPE = "application/json"


class _NotJson(Exception):
    pass


class _Unreadable:
    """An integer literal too long to be any count (it stands in for the number)."""


def expected_error(
    routing_key: str,
    body: bytes,
    *,
    message_id: str | None = "m",
    content_type: str | None = _JSON_MEDIA_TYPE,
    content_encoding: str | None = None,
    type_: str | None = None,
    reply_to: str | None = None,
) -> str | None:
    """The `x-error` the contract calls for, or None for a valid command."""
    if len(body) > MAX_BODY:
        return "TooLarge"
    if not message_id:
        return "MissingMessageId"
    fields = FIELDS.get(routing_key)
    if fields is None:
        return "UnknownCommand"
    if type_ and type_ != routing_key:
        return "InvalidCommand"
    media_type = (content_type or _JSON_MEDIA_TYPE).split(";")[0].strip().lower()
    if media_type != _JSON_MEDIA_TYPE or content_encoding not in (None, "", "identity"):
        return "UnsupportedContentType"
    if routing_key == "coupon.get" and not reply_to:
        return "InvalidCommand"
    try:
        value = _strict_json(body)
    except _NotJson:
        return "InvalidJson"
    return None if _valid_fields(value, fields) else "InvalidCommand"


def _strict_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _NotJson from None

    def no_constants(name: str) -> Any:
        raise _NotJson(name)

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            raise _NotJson("duplicate key")
        return dict(pairs)

    def integer(literal: str) -> int | _Unreadable:
        return int(literal) if len(literal) <= 20 else _Unreadable()

    try:
        return json.loads(
            text, parse_constant=no_constants, object_pairs_hook=unique_keys, parse_int=integer
        )
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise _NotJson from None


def _valid_fields(value: Any, fields: frozenset[str]) -> bool:
    if not isinstance(value, dict) or set(value) != fields:
        return False
    code = value["code"]
    if not isinstance(code, str) or _CODE.fullmatch(code) is None:
        return False
    if "init_count" in fields:
        count = value["init_count"]
        return type(count) is int and 1 <= count <= MAX_COUNT
    return True
