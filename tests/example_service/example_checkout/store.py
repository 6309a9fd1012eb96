"""The checkout service's own database: its orders, its tally of redemptions, and the outbox and
inbox tables from coupon-contracts, all on one `MetaData` (its migrations create them all)."""

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from contracts.inbox import Inbox
from contracts.outbox import Outbox


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "checkout_order"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    coupon_code: Mapped[str] = mapped_column(String(64))


class Redemptions(Base):
    """How many times each coupon was redeemed, as the worker's events say."""

    __tablename__ = "checkout_redemptions"

    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int]


outbox = Outbox(Base.metadata)  # table coupon_outbox: commands staged with an order
inbox = Inbox(Base.metadata)  # table coupon_inbox: ids of the events already counted
