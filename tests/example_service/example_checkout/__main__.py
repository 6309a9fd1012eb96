"""The checkout service as processes (the fault suite runs them, and kills some):

    python -m example_checkout setup                 # create its tables
    python -m example_checkout orders COUNT [--burst N] [--pause S] [--declined-every K]
    python -m example_checkout tally [--queue NAME]

CHECKOUT_DATABASE_URL (SQLAlchemy async URL), COUPON_AMQP_URL and COUPON_PREFIX come from the
environment. `orders` writes orders `0 … COUNT-1`, each in its own transaction, in bursts; every
K-th payment is declined after the redeem was staged, so that order and its redeem roll back.
The relay is coupon-contracts' own: `coupon-contracts relay`.
"""

import argparse
import asyncio
import logging
import os

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from contracts.client import connect
from example_checkout.orders import place_order
from example_checkout.redemptions import tally_redemptions
from example_checkout.store import Base


class PaymentDeclined(Exception):
    pass


async def write_orders(
    sessions: async_sessionmaker[AsyncSession], options: argparse.Namespace
) -> None:
    codes = options.codes.split(",")
    for order in range(options.count):
        try:
            async with sessions.begin() as session:
                await place_order(session, str(order), codes[order % len(codes)])
                if options.declined_every and order % options.declined_every == 0:
                    raise PaymentDeclined(order)
        except PaymentDeclined:
            pass
        if (order + 1) % options.burst == 0:
            await asyncio.sleep(options.pause)


async def main(options: argparse.Namespace) -> None:
    engine = create_async_engine(os.environ["CHECKOUT_DATABASE_URL"])
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        if options.action == "setup":
            async with engine.begin() as connection:
                await connection.run_sync(Base.metadata.create_all)
        elif options.action == "orders":
            await write_orders(sessions, options)
        else:
            url, prefix = os.environ["COUPON_AMQP_URL"], os.environ.get("COUPON_PREFIX", "")
            async with await connect(url, prefix) as client:
                await tally_redemptions(client, sessions, queue=f"{prefix}{options.queue}")
    finally:
        await engine.dispose()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m example_checkout")
    actions = parser.add_subparsers(dest="action", required=True)
    actions.add_parser("setup")
    orders = actions.add_parser("orders")
    orders.add_argument("count", type=int)
    orders.add_argument("--codes", default="CHECKOUT")
    orders.add_argument("--burst", type=int, default=50)
    orders.add_argument("--pause", type=float, default=0.2)
    orders.add_argument("--declined-every", type=int, default=0)
    tally = actions.add_parser("tally")
    tally.add_argument("--queue", default="checkout.redemptions")
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    asyncio.run(main(parse()))
