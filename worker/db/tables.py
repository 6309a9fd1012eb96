"""The two tables, as SQLAlchemy Core `Table`s. Alembic owns the schema (migrations/versions);
`tests/integration/test_migrations.py` checks that these match it. No ORM: the repositories
run Core statements and build the domain's own `Coupon` from the rows.

`coupon` and `processed_command` name tables; the domain's coupon is
`worker.domain.model.Coupon`, and nothing in `worker.db` defines another.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    func,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

coupon = Table(
    "coupon",
    metadata,
    Column("code", String(64), nullable=False, unique=True),
    Column("init_count", Integer, nullable=False),
    Column("remaining_count", Integer, nullable=False),
    Column("id", Uuid, primary_key=True),
    # For a person reading the table (when a coupon was made, last redeemed); the worker
    # neither reads nor needs them. The database fills both; the redeem sets the second.
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint("init_count >= 1", name="init_count_positive"),
    CheckConstraint("remaining_count >= 0", name="remaining_count_not_negative"),
    CheckConstraint("remaining_count <= init_count", name="remaining_count_at_most_init"),
)
"""One row per coupon: its code (unique), how many redemptions it started with and has left."""

processed_command = Table(
    "processed_command",
    metadata,
    Column("message_id", String(255), primary_key=True),
    Column("command", String(64), nullable=False),
    Column("outcome_type", String(64), nullable=False),
    Column("outcome_body", Text, nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=False),
    Index(None, "processed_at"),
)
"""One row per applied command: its outcome, answered again on any redelivery."""
