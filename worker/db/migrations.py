"""The schema's version: checked before consuming, upgraded by alembic under an advisory lock.

The alembic environment and revisions are the top-level package `migrations` (in the wheel
too), found as a package resource, so an installed wheel migrates as well as a source checkout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.app.failures import OperatorError

# Any fixed 64-bit key; it serialises migrations between replicas started together.
MIGRATION_LOCK_KEY: Final = 0x636F75706F6E  # "coupon"
SCRIPT_LOCATION: Final = "migrations:"


class SchemaMismatch(OperatorError):
    """The database's schema is not the one this worker was built for."""


def alembic_config() -> Config:
    """The configuration `alembic.ini` holds for the `alembic` command line, minus its logging
    set-up: the worker configures its own."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise SchemaMismatch("no migrations found")
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)


async def ensure_current(engine: AsyncEngine) -> None:
    """Refuse to run against a schema that is behind (or ahead of) this worker."""
    current, head = await current_revision(engine), head_revision()
    if current == head:
        return
    remedy = "run `coupon-worker migrate` or start with `coupon-worker run --migrate`"
    if current is None:
        raise SchemaMismatch(
            f"the database has no coupon schema (this worker needs revision {head}); {remedy}"
        )
    scripts = ScriptDirectory.from_config(alembic_config())
    if current not in {script.revision for script in scripts.walk_revisions()}:
        raise SchemaMismatch(
            f"the database schema is at revision {current}, which this worker does not know "
            f"(it needs {head}): a newer worker migrated it"
        )
    raise SchemaMismatch(
        f"the database schema is at revision {current}, behind this worker's {head}; {remedy}"
    )


@dataclass(frozen=True)
class Migration:
    """The schema's revision before and after an alembic command."""

    before: str | None
    after: str | None

    @property
    def changed(self) -> bool:
        return self.before != self.after


async def _run_locked(engine: AsyncEngine, action: str, revision: str) -> Migration:
    """Run an alembic command on one connection that holds a transaction-level advisory lock,
    so that replicas started together cannot race each other's DDL; the revisions before and
    after are read under the same lock."""
    config = alembic_config()

    def run(connection: Connection) -> Migration:
        def read() -> str | None:
            return MigrationContext.configure(connection).get_current_revision()

        before = read()
        config.attributes["connection"] = connection
        getattr(command, action)(config, revision)
        return Migration(before, read())

    async with engine.connect() as connection:
        await connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
        migration = await connection.run_sync(run)
        await connection.commit()
    return migration


async def upgrade(engine: AsyncEngine, revision: str = "head") -> Migration:
    return await _run_locked(engine, "upgrade", revision)


async def downgrade(engine: AsyncEngine, revision: str) -> Migration:
    return await _run_locked(engine, "downgrade", revision)
