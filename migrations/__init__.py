"""The alembic environment and revisions of the coupon worker's schema.

A package of its own (shipped in the wheel beside `worker` and `contracts`), so that alembic
finds it as the package resource `migrations:` from a source checkout and from an installed
wheel alike: `worker.db.migrations` runs it, `alembic -c alembic.ini …` too."""
