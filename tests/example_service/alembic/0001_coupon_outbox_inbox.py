"""coupon outbox and inbox (`alembic revision --autogenerate` with `target_metadata =
Base.metadata`, the metadata that `Outbox(...)` and `Inbox(...)` were given)

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "coupon_outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("routing_key", sa.String(length=64), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("correlation_id", sa.String(length=255), nullable=True),
        sa.Column(
            "staged_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("park_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id"),
    )
    op.create_index(
        "ix_coupon_outbox_unsent",
        "coupon_outbox",
        ["id"],
        postgresql_where=sa.text("sent_at IS NULL AND parked_at IS NULL"),
    )
    op.create_index(
        "ix_coupon_outbox_sent_at",
        "coupon_outbox",
        ["sent_at"],
        postgresql_where=sa.text("sent_at IS NOT NULL"),
    )
    op.create_table(
        "coupon_inbox",
        sa.Column("consumer", sa.String(length=128), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("consumer", "message_id"),
    )
    op.create_index("ix_coupon_inbox_received_at", "coupon_inbox", ["received_at"])


def downgrade() -> None:
    op.drop_table("coupon_inbox")
    op.drop_table("coupon_outbox")
