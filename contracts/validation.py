"""Decoding an incoming command exactly as the contract's "Invalid commands" section says.

Every refusal is an `InvalidCommand` with a short `code` (the `x-error` header) and a
human-readable `detail` (the `x-error-detail` header). The detail never echoes the input back
beyond short, bounded excerpts, so a hostile body cannot blow up logs or headers.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Final

from pydantic import ValidationError

from contracts import names
from contracts.commands import COMMANDS, Command
from contracts.deprecation import renamed

MAX_MESSAGE_ID_LENGTH: Final = 255
MAX_DETAIL_LENGTH: Final = 500
# Longer integer literals cannot be valid counts; refusing them early also keeps
# Python's int-parsing cost (quadratic in the number of digits) out of reach.
_MAX_INT_DIGITS: Final = 32


class RejectionCode(StrEnum):
    INVALID_JSON = "InvalidJson"
    INVALID_COMMAND = "InvalidCommand"
    UNKNOWN_COMMAND = "UnknownCommand"
    MISSING_MESSAGE_ID = "MissingMessageId"
    TOO_LARGE = "TooLarge"
    UNSUPPORTED_CONTENT_TYPE = "UnsupportedContentType"


class InvalidCommand(Exception):
    """The command cannot be processed as sent; it must be dead-lettered, never retried."""

    def __init__(self, code: RejectionCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = truncated(detail)


def truncated(text: str, limit: int = MAX_DETAIL_LENGTH) -> str:
    """`text` cut to at most `limit` characters (ending in "..." when cut)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decode_command(
    routing_key: str,
    body: bytes,
    *,
    message_id: str | None,
    content_type: str | None,
    content_encoding: str | None = None,
    type_: str | None = None,
    reply_to: str | None = None,
) -> Command:
    """Turn a delivered message into a `Command`, or raise `InvalidCommand`."""
    if len(body) > names.MAX_BODY_BYTES:
        raise InvalidCommand(
            RejectionCode.TOO_LARGE,
            f"body is {len(body)} bytes; the limit is {names.MAX_BODY_BYTES}",
        )
    if not message_id:
        raise InvalidCommand(
            RejectionCode.MISSING_MESSAGE_ID,
            "message_id is required: it is the command's idempotency key",
        )
    if len(message_id) > MAX_MESSAGE_ID_LENGTH:
        raise InvalidCommand(
            RejectionCode.INVALID_COMMAND,
            f"message_id is longer than {MAX_MESSAGE_ID_LENGTH} characters",
        )
    command_type = COMMANDS.get(routing_key)
    if command_type is None:
        raise InvalidCommand(
            RejectionCode.UNKNOWN_COMMAND,
            f"unknown command {routing_key[:80]!r}; expected one of "
            + ", ".join(names.COMMAND_ROUTING_KEYS),
        )
    if type_ and type_ != routing_key:
        raise InvalidCommand(
            RejectionCode.INVALID_COMMAND,
            f"type property {type_[:80]!r} does not match routing key {routing_key!r}",
        )
    _check_content_type(content_type, content_encoding)
    if command_type.needs_reply_to and not reply_to:
        raise InvalidCommand(
            RejectionCode.INVALID_COMMAND,
            f"{routing_key} is answered only on reply_to, which is missing",
        )
    payload = parse_json_object(body)
    try:
        return command_type.model_validate(payload)
    except ValidationError as exc:
        raise InvalidCommand(RejectionCode.INVALID_COMMAND, describe(exc)) from None


def _check_content_type(content_type: str | None, content_encoding: str | None) -> None:
    # An absent content type is read as JSON; any other must be JSON (parameters allowed).
    media_type = (content_type or names.JSON_CONTENT_TYPE).split(";", 1)[0].strip().lower()
    if media_type != names.JSON_CONTENT_TYPE:
        raise InvalidCommand(
            RejectionCode.UNSUPPORTED_CONTENT_TYPE,
            f"content_type {content_type[:80]!r} is not {names.JSON_CONTENT_TYPE}"
            if content_type
            else "unsupported content type",
        )
    if content_encoding and content_encoding.lower() not in ("identity", "utf-8", "utf8"):
        raise InvalidCommand(
            RejectionCode.UNSUPPORTED_CONTENT_TYPE,
            f"content_encoding {content_encoding[:80]!r} is not supported",
        )


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, an object at the top."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJson(f"body is not UTF-8 (byte {exc.start})") from None
    try:
        payload = _STRICT_JSON.decode(text)
    except _OutOfRangeInteger as exc:
        raise InvalidCommand(RejectionCode.INVALID_COMMAND, str(exc)) from None
    except InvalidCommand:
        raise
    except RecursionError:
        raise InvalidJson("body is nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise InvalidJson(f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidCommand(
            RejectionCode.INVALID_COMMAND,
            f"body must be a JSON object, not {_json_kind(payload)}",
        )
    return payload


def describe(exc: ValidationError) -> str:
    """One line per failing field, without echoing the input."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "body"
        parts.append(f"{truncated(location, 80)}: {error['msg']}")
    return "; ".join(parts)


def InvalidJson(detail: str) -> InvalidCommand:
    return InvalidCommand(RejectionCode.INVALID_JSON, detail)


class _OutOfRangeInteger(ValueError):
    pass


def _bounded_int(literal: str) -> int:
    if len(literal.lstrip("-")) > _MAX_INT_DIGITS:
        raise _OutOfRangeInteger(f"integer with {len(literal)} digits is out of range")
    return int(literal)


def _reject_constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not valid JSON")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidJson(f"duplicate key {truncated(key, 80)!r}")
        result[key] = value
    return result


# One decoder for every body (json.loads with hooks builds a new one per call).
_STRICT_JSON: Final = json.JSONDecoder(
    object_pairs_hook=_reject_duplicate_keys,
    parse_constant=_reject_constant,
    parse_int=_bounded_int,
)


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


__getattr__ = renamed(__name__, {"bounded": ("contracts.validation.truncated", lambda: truncated)})
