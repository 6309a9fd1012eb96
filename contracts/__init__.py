"""The coupon worker's wire contract (v1.1) as frozen Pydantic models: the models tier.

Imports nothing but pydantic, so a client service can depend on it without the worker. Three
tiers, each with its own `__all__`:

- `contracts` (this module): commands, events, the errors a request can end in, names on the
  wire, and `read_event(routing_key, body)`, which never raises;
- `contracts.client` (the `client` extra, aio-pika): the `CouponClient` Protocol, its RabbitMQ
  implementation and `connect`;
- `contracts.testing` (the `testing` extra): the pytest plugin, golden files, replay.
"""

from contracts import names
from contracts.commands import COMMANDS, Command, CreateCoupon, GetCoupon, RedeemCoupon
from contracts.deprecation import renamed
from contracts.errors import (
    AlreadyExists,
    CommandFailed,
    CommandRejected,
    CommandUnroutable,
    CouponClientError,
    DoesNotExist,
    Exhausted,
    OutcomeError,
    RequestTimeout,
)
from contracts.events import (
    EVENTS,
    CouponCreated,
    CouponError,
    CouponFound,
    CouponRedeemed,
    ErrorKind,
    Event,
    InvalidCommandReply,
)
from contracts.messages import CommandMessage, command_message
from contracts.names import CONTRACT_VERSION, Topology
from contracts.received import ReceivedEvent, UnknownEvent, read_event
from contracts.validation import InvalidCommand, RejectionCode, decode_command

__all__ = [
    "COMMANDS",
    "CONTRACT_VERSION",
    "EVENTS",
    "AlreadyExists",
    "Command",
    "CommandFailed",
    "CommandMessage",
    "CommandRejected",
    "CommandUnroutable",
    "CouponClientError",
    "CouponCreated",
    "CouponError",
    "CouponFound",
    "CouponRedeemed",
    "CreateCoupon",
    "DoesNotExist",
    "ErrorKind",
    "Event",
    "Exhausted",
    "GetCoupon",
    "InvalidCommand",
    "InvalidCommandReply",
    "OutcomeError",
    "ReceivedEvent",
    "RedeemCoupon",
    "RejectionCode",
    "RequestTimeout",
    "Topology",
    "UnknownEvent",
    "command_message",
    "decode_command",
    "names",
    "read_event",
]


def _parse_event() -> object:
    from contracts.messages import parse_event

    return parse_event


__getattr__ = renamed(__name__, {"parse_event": ("contracts.read_event", _parse_event)})
