"""Declarative base and tables. Alembic owns the schema; `create_all` is for tests only."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, Integer, MetaData, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Coupon(Base):
    __tablename__ = "coupon"
    __table_args__ = (
        CheckConstraint("init_count >= 1", name="init_count_positive"),
        CheckConstraint("remaining_count >= 0", name="remaining_count_not_negative"),
        CheckConstraint("remaining_count <= init_count", name="remaining_count_at_most_init"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    init_count: Mapped[int] = mapped_column(Integer)
    remaining_count: Mapped[int] = mapped_column(Integer)
    # For a person reading the table (when a coupon was made, last redeemed); the worker
    # neither reads nor needs them. The database fills both, SQLAlchemy's UPDATEs the second.
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class ProcessedCommand(Base):
    """One row per applied command: its outcome, answered again on any redelivery."""

    __tablename__ = "processed_command"

    message_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    command: Mapped[str] = mapped_column(String(64))
    outcome_type: Mapped[str] = mapped_column(String(64))
    outcome_body: Mapped[str] = mapped_column(Text)
    processed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
