"""What a failure means for the work in hand, by kind, not by library.

- `TransientFailure`: the same work will succeed later; the message is held and retried, never
  dead-lettered. Two kinds, retried differently:
  `DependencyUnavailable` (the database cannot serve: wait with a growing back-off, log once)
  and `TransactionConflict` (a concurrent transaction won: go again at once).
- `OperatorError`: a person must act (wrong URL, missing schema or topology, refused
  credentials). The CLI prints its message and exits 2, without a traceback.
- Anything else is unexpected: retried up to the attempt limit, then dead-lettered.

Adapters (`worker.db`, `worker.messaging`, the entry points) translate their libraries'
exceptions into these, by class, walking the cause chain with `causes`.
"""

from __future__ import annotations

from collections.abc import Iterator


class TransientFailure(Exception):
    """A dependency cannot serve this work now; the same work will succeed later."""


class DependencyUnavailable(TransientFailure):
    """The dependency is unreachable, shutting down or out of resources: wait, then retry."""


class TransactionConflict(TransientFailure):
    """A concurrent transaction got there first (deadlock, serialization failure, or the same
    command recorded by another delivery): roll back and retry at once."""


class OperatorError(Exception):
    """An expected fault that a person must fix; its message says what and how."""


def causes(error: BaseException) -> Iterator[BaseException]:
    """The error, then what caused it (`raise ... from`) or what it interrupted, each once.
    SQLAlchemy chains the DBAPI error and the driver's own exception this way, aiormq its
    socket errors: one walk reaches the exception class that says what happened."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
