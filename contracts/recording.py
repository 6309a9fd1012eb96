"""The recording format: AMQP messages as JSON lines, version 1 (pydantic only).

One message per line, UTF-8, as `coupon-worker record` writes it and `coupon-worker replay` and
the pytest plugin's `coupon_replay` read it:

    {"v": 1, "exchange": "coupon.commands", "routing_key": "coupon.create",
     "properties": {"message_id": "…", "content_type": "application/json", "delivery_mode": 2},
     "headers": {}, "body": "{\\"code\\":\\"X\\",\\"init_count\\":3}", "body_encoding": "utf-8"}

- `v`: the format version; a reader refuses a line of a version it does not know.
- `exchange`, `routing_key`: where the message was published (as recorded, prefix included).
- `properties`: every AMQP basic property that was set (`content_type`, `content_encoding`,
  `delivery_mode`, `priority`, `correlation_id`, `reply_to`, `expiration`, `message_id`,
  `timestamp` as ISO 8601, `type`, `user_id`, `app_id`); absent ones are left out.
- `headers`: the header table. Values JSON cannot hold are tagged objects with one key:
  `{"$bytes": base64}`, `{"$datetime": ISO 8601}`, `{"$decimal": "1.50"}`.
- `body`: the body as text when it is UTF-8 (`body_encoding` `utf-8`), else base64
  (`body_encoding` `base64`); bytes are reproduced exactly either way.

Unknown keys are refused rather than dropped, so that a misspelt or newer field is noticed. Blank
lines and lines starting with `#` are ignored. A line is at most `MAX_LINE_BYTES`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.messages import CommandMessage
from contracts.received import ReceivedEvent, read_received
from contracts.validation import describe, truncated

FORMAT_VERSION: Final = 1
MAX_LINE_BYTES: Final = 1024 * 1024


class RecordedProperties(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    content_type: str | None = None
    content_encoding: str | None = None
    delivery_mode: int | None = Field(default=None, ge=1, le=2)
    priority: int | None = Field(default=None, ge=0, le=255)
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: datetime | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None


class RecordedMessage(BaseModel):
    """One recorded message. Build it with `RecordedMessage.of(...)` from raw bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = FORMAT_VERSION
    exchange: str
    routing_key: str
    properties: RecordedProperties = RecordedProperties()
    headers: dict[str, Any] = Field(default_factory=dict)
    body: str
    body_encoding: Literal["utf-8", "base64"] = "utf-8"

    @classmethod
    def of(
        cls,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Mapping[str, Any] | RecordedProperties | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> RecordedMessage:
        encoding: Literal["utf-8", "base64"] = "utf-8"
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(body).decode("ascii"), "base64"
        if not isinstance(properties, RecordedProperties):
            properties = RecordedProperties.model_validate(dict(properties or {}))
        return cls(
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            headers={key: encode_header(value) for key, value in (headers or {}).items()},
            body=text,
            body_encoding=encoding,
        )

    @classmethod
    def of_command(cls, message: CommandMessage, exchange: str) -> RecordedMessage:
        properties = {
            "content_type": message.content_type,
            "delivery_mode": message.delivery_mode,
            "correlation_id": message.correlation_id,
            "reply_to": message.reply_to,
            "message_id": message.message_id,
            "type": message.type,
        }
        return cls.of(exchange, message.routing_key, message.body, properties, message.headers)

    def body_bytes(self) -> bytes:
        if self.body_encoding == "base64":
            return base64.b64decode(self.body, validate=True)
        return self.body.encode("utf-8")

    def header_values(self) -> dict[str, Any]:
        """The headers with tagged values decoded (bytes, datetime, Decimal)."""
        return {key: decode_header(value) for key, value in self.headers.items()}

    def with_properties(self, **changes: Any) -> RecordedMessage:
        properties = self.properties.model_copy(update=changes)
        return self.model_copy(update={"properties": properties})

    def to_line(self) -> str:
        """One line of the recording (no newline)."""
        return self.model_dump_json(exclude_none=True)

    def received(self, redelivered: bool = False) -> ReceivedEvent:
        """This message read as an event or reply (never raises; see `ReceivedEvent`)."""
        p = self.properties
        return read_received(
            p.type or self.routing_key,
            self.body_bytes(),
            message_id=p.message_id,
            correlation_id=p.correlation_id,
            headers=self.header_values(),
            redelivered=redelivered,
            timestamp=p.timestamp,
        )


@dataclass(frozen=True, slots=True)
class RecordedLine:
    line_number: int
    message: RecordedMessage


@dataclass(frozen=True, slots=True)
class BadLine:
    line_number: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line_number}: {self.reason}"


class BadRecording(ValueError):
    """A recording with a line that cannot be read, and `strict` reading was asked for."""

    def __init__(self, bad: BadLine) -> None:
        super().__init__(str(bad))
        self.bad = bad


def read_lines(lines: Iterable[str | bytes]) -> Iterator[RecordedLine | BadLine]:
    """Every message line, or the reason it cannot be read; never raises on content."""
    for number, raw in enumerate(lines, start=1):
        if len(raw) > MAX_LINE_BYTES:
            yield BadLine(number, f"line is longer than {MAX_LINE_BYTES} bytes")
            continue
        try:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as error:
            yield BadLine(number, f"not UTF-8 (byte {error.start})")
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            message = RecordedMessage.model_validate_json(stripped)
            message.body_bytes()
        except ValidationError as error:
            yield BadLine(number, truncated(describe(error), 300))
            continue
        except (binascii.Error, ValueError) as error:
            yield BadLine(number, f"body is not valid base64: {truncated(str(error), 120)}")
            continue
        yield RecordedLine(number, message)


def read_messages(lines: Iterable[str | bytes]) -> list[RecordedMessage]:
    """Every message, or `BadRecording` naming the first line that cannot be read."""
    messages = []
    for item in read_lines(lines):
        if isinstance(item, BadLine):
            raise BadRecording(item)
        messages.append(item.message)
    return messages


_TAGS: Final = ("$bytes", "$datetime", "$decimal")


def encode_header(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, Mapping):
        return {str(key): encode_header(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [encode_header(item) for item in value]
    return value


def decode_header(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            [(tag, item)] = value.items()
            if tag in _TAGS and isinstance(item, str):
                if tag == "$bytes":
                    return base64.b64decode(item)
                if tag == "$datetime":
                    return datetime.fromisoformat(item)
                return Decimal(item)
        return {key: decode_header(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_header(item) for item in value]
    return value
