"""The coupon worker's wire contract (v1) as frozen Pydantic models.

Imports nothing but pydantic, so a client service can depend on it without the worker.
`contracts.client` (aio-pika) is the optional ready-made client.
"""

from contracts.commands import COMMANDS, Command, CreateCoupon, GetCoupon, RedeemCoupon
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
from contracts.messages import CommandMessage, command_message, parse_event
from contracts.names import Topology
from contracts.validation import InvalidCommand, RejectionCode, decode_command

__all__ = [
    "COMMANDS",
    "EVENTS",
    "Command",
    "CommandMessage",
    "CouponCreated",
    "CouponError",
    "CouponFound",
    "CouponRedeemed",
    "CreateCoupon",
    "ErrorKind",
    "Event",
    "GetCoupon",
    "InvalidCommand",
    "InvalidCommandReply",
    "RedeemCoupon",
    "RejectionCode",
    "Topology",
    "command_message",
    "decode_command",
    "parse_event",
]
