"""The contract as an AsyncAPI 3.0 document, generated from the models (needs only pydantic).

Described from the worker's side: it *receives* commands on `coupon.commands` and *sends*
outcomes on `coupon.events`, replies to a command's `reply_to`, and dead letters to
`coupon.dead`. AMQP properties that the contract relies on (`message_id`, `correlation_id`,
`reply_to`, `type`, `content_type`) are listed as message headers, beside the real AMQP headers
(`causation_id`, `x-error`, `x-error-detail`). `python -m contracts.asyncapi` or
`coupon-worker asyncapi` prints it; `docs/asyncapi.json` is the committed copy.

Over 250 lines for a reason: most of it is the document's own text (channels, operations,
message descriptions), one function per part, generated from the models.
"""

from __future__ import annotations

import json
from typing import Any, Final

from pydantic import BaseModel

from contracts import names
from contracts.commands import COMMANDS, Command
from contracts.events import EVENTS, Event, InvalidCommandReply

AMQP_BINDING_VERSION: Final = "0.3.0"
REPLY_TO: Final = "$message.header#/reply_to"
CORRELATION: Final = {
    "description": "The command's correlation_id (its message_id when it has none), copied "
    "onto its outcome and replies.",
    "location": "$message.header#/correlation_id",
}
INVALID_ERRORS: Final = (
    "InvalidJson",
    "InvalidCommand",
    "UnknownCommand",
    "MissingMessageId",
    "TooLarge",
    "UnsupportedContentType",
)


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _exchange(name: str, kind: str) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "routingKey",
            "exchange": {"name": name, "type": kind, "durable": True, "autoDelete": False},
            "bindingVersion": AMQP_BINDING_VERSION,
        }
    }


class _Document:
    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}

    def schema_ref(self, model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            self.schemas[name] = definition
        self.schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    def message(self, name: str, body: dict[str, Any]) -> dict[str, str]:
        self.messages[name] = body
        return {"$ref": f"#/components/messages/{name}"}


def _command_message(doc: _Document, command: type[Command]) -> dict[str, str]:
    reply = "required: the outcome is sent only there" if command.needs_reply_to else "optional"
    headers = {
        "type": "object",
        "required": ["message_id"],
        "properties": {
            "message_id": _string(
                "AMQP property, required: the idempotency key of the command (a UUID is "
                "recommended). A command sent again with the same message_id changes nothing "
                "more and is answered with the same outcome."
            ),
            "correlation_id": _string("AMQP property, optional; copied onto the outcome."),
            "reply_to": _string(
                f"AMQP property, {reply}: a queue on the default exchange; direct reply-to "
                f"({names.DIRECT_REPLY_TO}) works."
            ),
            "type": _string(
                "AMQP property, optional; must equal the routing key.", const=command.routing_key
            ),
            "content_type": _string("AMQP property.", const=names.JSON_CONTENT_TYPE),
        },
    }
    return doc.message(
        command.__name__,
        {
            "name": command.__name__,
            "title": command.routing_key,
            "summary": (command.__doc__ or "").strip(),
            "contentType": names.JSON_CONTENT_TYPE,
            "headers": headers,
            "payload": doc.schema_ref(command),
            "correlationId": CORRELATION,
            "bindings": {
                "amqp": {"messageType": command.routing_key, "bindingVersion": AMQP_BINDING_VERSION}
            },
        },
    )


def _outcome_headers(routing_key: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["message_id", "correlation_id", "type", names.CAUSATION_ID_HEADER],
        "properties": {
            "message_id": _string(
                "AMQP property: the same every time one command's outcome is published "
                "(UUID v5 of the command's message_id); de-duplicate by it."
            ),
            "correlation_id": _string("AMQP property: the command's."),
            "type": _string("AMQP property: the event name.", const=routing_key),
            "content_type": _string("AMQP property.", const=names.JSON_CONTENT_TYPE),
            "timestamp": {"type": "integer", "description": "AMQP property: when it was decided."},
            names.CAUSATION_ID_HEADER: _string("AMQP header: the command's message_id."),
        },
    }


def _event_message(
    doc: _Document, event: type[Event] | type[InvalidCommandReply], key: str
) -> dict[str, str]:
    return doc.message(
        event.__name__,
        {
            "name": event.__name__,
            "title": key,
            "summary": (event.__doc__ or f"The outcome {key}.").strip(),
            "contentType": names.JSON_CONTENT_TYPE,
            "headers": _outcome_headers(key),
            "payload": doc.schema_ref(event),
            "correlationId": CORRELATION,
            "bindings": {"amqp": {"messageType": key, "bindingVersion": AMQP_BINDING_VERSION}},
        },
    )


def _dead_letter_message(doc: _Document) -> dict[str, str]:
    return doc.message(
        "DeadLetter",
        {
            "name": "DeadLetter",
            "title": "a dead-lettered command",
            "summary": "A command that could not be processed, with its original body and "
            "properties and the reason. Invalid ones carry x-error and x-error-detail; one that "
            "failed repeatedly has x-error ProcessingFailed; one the broker dead-lettered at the "
            "delivery limit carries RabbitMQ's x-death instead.",
            "headers": {
                "type": "object",
                "properties": {
                    names.ERROR_HEADER: _string(
                        "AMQP header: why.", enum=[*INVALID_ERRORS, "ProcessingFailed"]
                    ),
                    names.ERROR_DETAIL_HEADER: _string("AMQP header: a human-readable reason."),
                    "x-dead-lettered-at": {
                        "type": "integer",
                        "description": "AMQP header (timestamp): when the worker dead-lettered it.",
                    },
                    "x-death": {"type": "array", "description": "Set by RabbitMQ."},
                },
            },
            "payload": {"description": "The command's body, exactly as it was sent."},
        },
    )


def asyncapi_document() -> dict[str, Any]:
    doc = _Document()
    commands_binding = _exchange(names.Topology().commands_exchange, "topic")
    events_binding = _exchange(names.Topology().events_exchange, "topic")
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    replies = {cls.__name__: _event_message(doc, cls, key) for key, cls in EVENTS.items()}
    replies["InvalidCommandReply"] = _event_message(doc, InvalidCommandReply, names.INVALID)
    channels["replies"] = {
        "address": None,
        "title": "reply_to",
        "description": "The queue named by a command's reply_to, on the default exchange. The "
        "outcome is sent there with the same body and properties as the event; a command that "
        "could not be processed as sent is answered with InvalidCommandReply (type "
        f"{names.INVALID}).",
        "messages": replies,
    }
    for key, command in COMMANDS.items():
        name = command.__name__
        channels[name] = {
            "address": key,
            "title": f"{names.Topology().commands_exchange} / {key}",
            "messages": {name: _command_message(doc, command)},
            "bindings": commands_binding,
        }
        outcomes = [names.FOUND, names.ERROR] if command.needs_reply_to else _outcomes_of(key)
        operations[f"receive{name}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": (command.__doc__ or "").strip(),
            "messages": [{"$ref": f"#/channels/{name}/messages/{name}"}],
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
            "reply": {
                "address": {"location": REPLY_TO, "description": "the command's reply_to"},
                "channel": {"$ref": "#/channels/replies"},
                "messages": [
                    {"$ref": f"#/channels/replies/messages/{EVENTS[o].__name__}"} for o in outcomes
                ]
                + [{"$ref": "#/channels/replies/messages/InvalidCommandReply"}],
            },
        }
    for key, event in EVENTS.items():
        if key == names.FOUND:
            continue  # a reply only, never on the events exchange
        name = event.__name__
        channels[f"{name}Event"] = {
            "address": key,
            "title": f"{names.Topology().events_exchange} / {key}",
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": events_binding,
        }
        operations[f"send{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}Event"},
            "messages": [{"$ref": f"#/channels/{name}Event/messages/{name}"}],
        }
    channels["DeadLetter"] = {
        "address": "{routingKey}",
        "title": f"{names.Topology().dead_exchange} → {names.Topology().dead_queue}",
        "parameters": {"routingKey": {"description": "the command's routing key"}},
        "messages": {"DeadLetter": _dead_letter_message(doc)},
        "bindings": _exchange(names.Topology().dead_exchange, "fanout"),
    }
    operations["sendDeadLetter"] = {
        "action": "send",
        "channel": {"$ref": "#/channels/DeadLetter"},
        "messages": [{"$ref": "#/channels/DeadLetter/messages/DeadLetter"}],
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Coupon worker",
            "version": names.CONTRACT_VERSION,
            "description": "Commands to create, redeem and read coupons, and their outcomes, "
            "over RabbitMQ. Every name can carry a deployment's prefix (WORKER_NAME_PREFIX). "
            "See docs/contract.md for the guarantees.",
        },
        "defaultContentType": names.JSON_CONTENT_TYPE,
        "servers": {
            "rabbitmq": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "RabbitMQ 3.10 or newer (quorum queues, at-least-once dead "
                "lettering).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": doc.messages, "schemas": doc.schemas},
    }


def _outcomes_of(command_key: str) -> list[str]:
    return {
        names.CREATE: [names.CREATED, names.ERROR],
        names.REDEEM: [names.REDEEMED, names.ERROR],
    }[command_key]


def render() -> str:
    return json.dumps(asyncapi_document(), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    print(render(), end="")  # noqa: T201 - this is the output


if __name__ == "__main__":
    main()
