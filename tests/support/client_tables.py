"""The outbox and inbox tables as a client service declares them, on its own `MetaData`; the
integration tests create them in the session's database, beside the worker's tables."""

from __future__ import annotations

from sqlalchemy import Column, Integer, MetaData, String, Table, text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts.inbox import Inbox
from contracts.outbox import Outbox

# A schema of their own: the worker's migration check compares the default schema with its models.
SCHEMA = "client_service"
metadata = MetaData(schema=SCHEMA)
outbox = Outbox(metadata, schema=SCHEMA)
inbox = Inbox(metadata, schema=SCHEMA)
# A client's own table, for effects that must commit with the outbox or inbox row.
effects = Table(
    "client_effect",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("note", String(200), nullable=False),
)


async def fresh_client_tables(engine: AsyncEngine) -> None:
    """Create the tables if they are missing, and empty them."""
    async with engine.begin() as connection:
        await connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))  # a constant
        await connection.run_sync(metadata.create_all)
        names = ", ".join(table.fullname for table in metadata.sorted_tables)
        # Names of the tables above, not input.
        await connection.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
