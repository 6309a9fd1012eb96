"""`coupon-worker migrate` and `coupon-worker prune`: the two commands that change the database
outside `run`, each on an engine of its own without a statement timeout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog

from worker.settings import Settings

log = structlog.stdlib.get_logger(__name__)


async def migrate(settings: Settings, revision: str) -> int:
    from worker.db import migrations
    from worker.db.engine import database
    from worker.entrypoints.operator_errors import describe_startup_failure

    async with database(settings, admin=True) as engine:
        try:
            migration = await migrations.upgrade(engine, revision)
        except Exception as error:
            raise describe_startup_failure(error, settings, "database") from error
    log.info("schema_migrated", from_revision=migration.before, revision=migration.after)
    return 0


async def prune(settings: Settings, older_than_days: float, batch_size: int) -> int:
    from worker.db import migrations
    from worker.db.engine import create_session_factory, database
    from worker.db.repositories import ProcessedCommandsRepository
    from worker.entrypoints.operator_errors import describe_startup_failure

    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    deleted = 0
    async with database(settings, admin=True) as engine:
        sessions = create_session_factory(engine)
        try:
            await migrations.ensure_current(engine)
            while True:
                async with sessions() as session, session.begin():
                    batch = await ProcessedCommandsRepository(session).prune(cutoff, batch_size)
                deleted += batch
                if batch < batch_size:
                    break
        except Exception as error:
            raise describe_startup_failure(error, settings, "database") from error
    log.info("processed_commands_pruned", deleted=deleted, processed_before=cutoff.isoformat())
    return 0
