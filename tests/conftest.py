"""Shared fixtures: real services, a throw-away database, a per-test broker prefix, workers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator

# Imported here, at a shallow stack: when no collected module imports hypothesis, its pytest
# plugin imports it at the terminal summary, deep in pluggy's stack, where CPython 3.11.7's
# parser intermittently fails ("SystemError: AST constructor recursion depth mismatch",
# cpython gh-106905) under pytest's assertion rewriting.
import hypothesis  # noqa: F401
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.support import figures
from tests.support.broker import Broker
from tests.support.database import create_database, drop_database, truncate
from tests.support.service_lock import holding as service_lock_held
from tests.support.services import Services, ServicesUnavailable, provide_services
from tests.support.worker_process import WorkerProcess
from worker.db import migrations
from worker.settings import Settings

StartWorker = Callable[..., WorkerProcess]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """The figures a test states go into its own record (tests/support/figures.py)."""
    figures.running(item)
    try:
        return (yield)
    finally:
        figures.running(None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" or report.outcome != "passed":
        figures.note_outcome(item.nodeid, report.outcome)
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    """With RELIABILITY_RESULTS set, the figures the tests stated go to that file."""
    figures.write_results(session)


# A client service with a suite of its own, run in its own pytest process by
# tests/e2e/test_example_service.py; not part of this suite.
collect_ignore = ["example_service"]


@pytest.fixture(autouse=True)
def service_lock(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test holds the machine's service lock: shared for ordinary tests, exclusive for
    those marked `disruptive` (they stop or restart RabbitMQ or PostgreSQL, or close every
    broker connection). Two test runs on one machine (`make test` twice, or a run beside a
    benchmark that takes the lock) then never see a service go down under an ordinary test: an
    outage waits until no other test is running, and ordinary tests wait until the outage is
    over. The outage helpers refuse to run without the exclusive lock (tests/support/
    service_lock.py)."""
    with service_lock_held(exclusive=request.node.get_closest_marker("disruptive") is not None):
        yield


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    try:
        with provide_services() as found:
            yield found
    except ServicesUnavailable as error:
        # One message for the run, not one per test: without services none of them can run.
        pytest.exit(str(error), returncode=pytest.ExitCode.TESTS_FAILED)


@pytest.fixture(scope="session")
async def database_url(services: Services) -> AsyncIterator[str]:
    """A database of this session's own, migrated by alembic, dropped at the end. Session
    fixtures run outside any test, so these two hold the service lock (shared) themselves: a
    disruptive test of another run must not stop PostgreSQL under them."""
    with service_lock_held(exclusive=False):
        url = await create_database(services.database_url)
        engine = create_async_engine(url)
        try:
            await migrations.upgrade(engine)
        finally:
            await engine.dispose()
    yield url
    with service_lock_held(exclusive=False):
        await drop_database(services.database_url, url)


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    # pre_ping: PostgreSQL may have been restarted since a pooled connection was last used
    # (by a disruptive test of this run or of another one on the machine).
    engine = create_async_engine(database_url, pool_size=10, max_overflow=60, pool_pre_ping=True)
    yield engine
    await engine.dispose()


@pytest.fixture
async def db(engine: AsyncEngine) -> AsyncEngine:
    """The session's engine, with empty tables."""
    await truncate(engine)
    return engine


@pytest.fixture
def prefix() -> str:
    """Names of this test's own exchanges and queues start with it."""
    return f"t{uuid.uuid4().hex[:10]}-"


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    """Settings a test module changes (e.g. `{"delivery_limit": 3}`): override this fixture.
    The test topology is declared from them, so pass the same to the workers it starts."""
    return {}


@pytest.fixture
def settings(
    services: Services, database_url: str, prefix: str, settings_overrides: dict[str, object]
) -> Settings:
    return Settings.model_validate(
        {
            "AMQP_URL": services.amqp_url,
            "DATABASE_URL": database_url,
            "name_prefix": prefix,
            **settings_overrides,
        }
    )


@pytest.fixture
def robust_broker() -> bool:
    """Override with True where the broker restarts under the test: its client connection then
    reconnects and its collectors consume again."""
    return False


@pytest.fixture
async def broker(
    services: Services, prefix: str, settings: Settings, robust_broker: bool
) -> AsyncIterator[Broker]:
    """The test's client connection, with the topology declared under the test's prefix."""
    client = Broker(services.amqp_url, prefix, robust=robust_broker)
    await client.open()
    await client.declare(settings)
    yield client
    await client.delete_topology()
    await client.close()


@pytest.fixture
def start_worker(
    services: Services, database_url: str, prefix: str, broker: Broker, db: AsyncEngine
) -> Iterator[StartWorker]:
    """Start worker processes on this test's prefix; any left running are killed afterwards
    (before the topology is deleted, so that no robust worker re-declares it)."""
    started: list[WorkerProcess] = []

    def start(*args: str, name: str = "worker", **env: str) -> WorkerProcess:
        environment = {
            "AMQP_URL": services.amqp_url,
            "DATABASE_URL": database_url,
            "WORKER_NAME_PREFIX": prefix,
            **{key.upper(): value for key, value in env.items()},
        }
        worker = WorkerProcess(environment, name).start(*args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()
