"""The `storage` fixture: a test that takes it runs twice, on the in-memory fakes and on
PostgreSQL (tests/support/storage.py). Pin one with
`@pytest.mark.parametrize("storage", ["fake"], indirect=True)`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.storage import Storage, fake_storage, postgresql_storage


@pytest.fixture(params=["fake", "postgresql"])
def storage(request: pytest.FixtureRequest) -> Iterator[Storage]:
    if request.param == "fake":
        yield fake_storage()
        return
    with postgresql_storage(request.getfixturevalue("db")) as storage:
        yield storage
