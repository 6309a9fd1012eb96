"""The coupon pytest plugin (entry point `pytest11`, installed with `coupon-contracts[testing]`).

Fixtures, each on the backend chosen by `--coupon-backend` (or the ini option `coupon_backend`,
or `COUPON_BACKEND`; default `memory`):

- `coupon_backend`: the backend itself (`contracts.testing.backends.CouponBackend`), fresh for
  each test: `memory` is an in-memory fake worker; `real` starts `coupon-worker run` on RabbitMQ
  and a fresh PostgreSQL database of its own, under a name prefix of its own, and removes all
  three after (or, with `COUPON_WORKER_PREFIX`, uses a worker that is already running);
- `coupon_client`: a `contracts.client.CouponClient` (the Protocol both backends implement);
- `coupon_events`: an `EventCollector` of every event from the start of the test, `wait_for(...)`;
- `coupon_replay`: `await coupon_replay(path_or_messages)` -> the outcomes in command order;
- `coupon_backend_factory`: `async with coupon_backend_factory() as backend:` for a test that
  needs more than one fresh backend.

`--coupon-update-golden` makes `assert_matches_golden` write golden files instead of comparing.

**Zero configuration.** An `async def` test that uses a `coupon_*` fixture runs with no pytest
configuration at all: this plugin marks it `asyncio` for pytest-asyncio (already a dependency of
the `testing` extra, and what most asyncio projects run), and gives pytest-asyncio's
`asyncio_default_fixture_loop_scope` the value `function` when the project did not set it, which
is what it would warn about. Why pytest-asyncio rather than an anyio runner: a project that runs
pytest-asyncio in `auto` mode (as many do) hands every async test and fixture to it; an anyio
runner would then race it for the same tests, while a mark it understands composes with any
mode. A project's own settings always win: an `asyncio` mark, a loop scope, `asyncio_mode`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import pytest
import pytest_asyncio

from contracts.protocol import CouponClient
from contracts.testing.backends import CouponBackend, ReplaySource, open_backend
from contracts.testing.collector import EventCollector
from contracts.testing.outcomes import ReplayOutcome, configure_golden

BACKENDS = ("memory", "real")
FIXTURE_PREFIX = "coupon_"
LOOP_SCOPE_OPTION = "asyncio_default_fixture_loop_scope"

BackendFactory = Callable[[], contextlib.AbstractAsyncContextManager[CouponBackend]]
Replay = Callable[[ReplaySource], Awaitable[list[ReplayOutcome]]]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("coupon", "coupon worker test backends")
    group.addoption(
        "--coupon-backend",
        choices=BACKENDS,
        default=None,
        help="backend of the coupon fixtures: memory (default) or real",
    )
    group.addoption(
        "--coupon-update-golden",
        action="store_true",
        default=False,
        help="write golden files instead of comparing with them",
    )
    parser.addini("coupon_backend", "backend of the coupon fixtures: memory or real", default="")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    configure_golden(bool(config.getoption("--coupon-update-golden")), config.rootpath)
    if not config.getini(LOOP_SCOPE_OPTION):
        # Before pytest-asyncio's own pytest_configure reads it (tryfirst): the value it would
        # otherwise warn about, as if the project had set it. pytest has no public way for a
        # plugin to give another plugin's ini option a default; its getini cache is the seam,
        # and tests/unit/test_zero_config.py fails if that ever stops working.
        config._inicache[LOOP_SCOPE_OPTION] = "function"


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, Any, Any]:
    # trylast: the innermost wrapper, so the mark is there when pytest-asyncio's wrapper
    # decides which items are asyncio tests.
    result = yield
    items = result if isinstance(result, list) else [result]
    for item in items:
        if (
            isinstance(item, pytest.Function)
            and inspect.iscoroutinefunction(item.obj)
            and any(name.startswith(FIXTURE_PREFIX) for name in item.fixturenames)
            and item.get_closest_marker("asyncio") is None
        ):
            item.add_marker(pytest.mark.asyncio)
    return result


@pytest.fixture
def coupon_backend_name(request: pytest.FixtureRequest) -> str:
    """The backend of the coupon fixtures: `--coupon-backend`, the `coupon_backend` ini option,
    `COUPON_BACKEND`, else `memory`. Override (or parametrize) it to choose per module or test."""
    chosen = (
        request.config.getoption("--coupon-backend")
        or request.config.getini("coupon_backend")
        or os.environ.get("COUPON_BACKEND")
        or "memory"
    )
    if chosen not in BACKENDS:
        raise pytest.UsageError(f"coupon backend {chosen!r}: choose memory or real")
    return str(chosen)


@pytest.fixture
def coupon_backend_factory(coupon_backend_name: str) -> BackendFactory:
    """`async with coupon_backend_factory() as backend:` a fresh backend of the chosen kind,
    closed on leaving, for a test that needs more than one."""

    @contextlib.asynccontextmanager
    async def fresh() -> AsyncIterator[CouponBackend]:
        backend = await open_backend(coupon_backend_name)
        try:
            yield backend
        finally:
            await backend.aclose()

    return fresh


@pytest_asyncio.fixture
async def coupon_backend(coupon_backend_factory: BackendFactory) -> AsyncIterator[CouponBackend]:
    """A fresh backend for this test (`contracts.testing.backends.CouponBackend`): its
    `client`, `publish` (raw messages), `replay`, `dead_letters`, `take_queue`, `events`,
    `delete_queue` and `topology` (its name prefix)."""
    async with coupon_backend_factory() as backend:
        yield backend


@pytest.fixture
def coupon_client(coupon_backend: CouponBackend) -> CouponClient:
    """A `contracts.client.CouponClient` of this test's backend: `create`, `redeem`, `get`
    (wait for the outcome), `send` (fire and forget), `subscribe` (follow events)."""
    return coupon_backend.client


@pytest_asyncio.fixture
async def coupon_events(coupon_backend: CouponBackend) -> EventCollector:
    """Every event published on `coupon.events` from the start of this test: `received`,
    `of(routing_key)`, and `await wait_for(routing_key, count=..., where=..., within=...)`."""
    return await coupon_backend.events()


@pytest.fixture
def coupon_replay(coupon_backend: CouponBackend) -> Replay:
    """`await coupon_replay(recording_path_or_messages_or_commands)`: one `ReplayOutcome` per
    command, in command order (compare them with `assert_matches_golden`)."""
    return coupon_backend.replay
