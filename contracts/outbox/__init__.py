"""A transactional outbox for services that send the coupon worker commands (the `outbox`
extra: SQLAlchemy 2 async on PostgreSQL, aio-pika).

    outbox = Outbox(Base.metadata)                    # the table, in your own migrations
    async with sessions.begin() as session:           # your transaction
        session.add(order)
        await outbox.stage(session, RedeemCoupon(code=code), message_id=f"order-{order.id}")
    ...
    await Relay(outbox, sessions, AmqpPublisher(amqp_url)).run()   # or: coupon-contracts relay

`staging` holds the table and `stage`; `relay` the relay; `publisher` what it publishes
through; `command` the relay as a process.
"""

from contracts.outbox.publisher import AmqpPublisher, BrokerUnavailable, Publisher, PublishRefused
from contracts.outbox.relay import Batch, Relay, RelayPolicy
from contracts.outbox.staging import DEFAULT_TABLE, DuplicateMessageId, Outbox

__all__ = [
    "DEFAULT_TABLE",
    "AmqpPublisher",
    "Batch",
    "BrokerUnavailable",
    "DuplicateMessageId",
    "Outbox",
    "PublishRefused",
    "Publisher",
    "Relay",
    "RelayPolicy",
]
