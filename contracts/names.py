"""Names on the wire: routing keys, exchanges and queues (contract v1.1, "Broker topology")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# The version of /work/shared/contract.md (docs/contract.md) this package implements; the
# coupon-contracts distribution carries it as its version (1.1 -> 1.1.0).
CONTRACT_VERSION: Final = "1.1"

# Commands (routing key on `coupon.commands`, and the AMQP `type` when present).
CREATE: Final = "coupon.create"
REDEEM: Final = "coupon.redeem"
GET: Final = "coupon.get"
COMMAND_ROUTING_KEYS: Final = (CREATE, REDEEM, GET)

# Outcomes (routing key on `coupon.events`, or on a reply).
CREATED: Final = "coupon.created"
REDEEMED: Final = "coupon.redeemed"
FOUND: Final = "coupon.found"
ERROR: Final = "coupon.error"
# `type` of the reply sent to `reply_to` for a command that could not be processed as sent.
INVALID: Final = "coupon.invalid"

# Headers.
CAUSATION_ID_HEADER: Final = "causation_id"
ERROR_HEADER: Final = "x-error"
ERROR_DETAIL_HEADER: Final = "x-error-detail"
# When the worker dead-lettered a command (an AMQP timestamp); RabbitMQ's own dead letters carry
# the time in `x-death` instead.
DEAD_LETTERED_AT_HEADER: Final = "x-dead-lettered-at"

JSON_CONTENT_TYPE: Final = "application/json"
MAX_BODY_BYTES: Final = 64 * 1024
DIRECT_REPLY_TO: Final = "amq.rabbitmq.reply-to"


@dataclass(frozen=True, slots=True)
class Topology:
    """Exchange and queue names, all under one optional prefix (empty by default).

    The prefix lets tests and tenants share one broker without touching each other's queues.
    """

    prefix: str = ""

    @property
    def commands_exchange(self) -> str:
        return f"{self.prefix}coupon.commands"

    @property
    def worker_queue(self) -> str:
        return f"{self.prefix}coupon.worker"

    @property
    def events_exchange(self) -> str:
        return f"{self.prefix}coupon.events"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}coupon.dead"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}coupon.worker.dead"

    # The worker queue is bound with this pattern; commands with any other key never reach it.
    command_binding_key: str = "coupon.*"
