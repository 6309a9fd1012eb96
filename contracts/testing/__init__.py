"""Testing a client service of the coupon worker: the testing tier (`testing` extra).

The pytest plugin (`contracts.testing.plugin`, registered as a `pytest11` entry point) provides
the fixtures `coupon_backend`, `coupon_client`, `coupon_events`, `coupon_replay` and
`coupon_backend_factory`, with no configuration; golden files are checked with
`assert_matches_golden`. The names here are what a test annotates its fixtures with.
"""

from contracts.testing.backends import CouponBackend, ReplaySource
from contracts.testing.broker_replay import ReplayError
from contracts.testing.collector import EventCollector
from contracts.testing.outcomes import GoldenMismatch, ReplayOutcome, assert_matches_golden

__all__ = [
    "CouponBackend",
    "EventCollector",
    "GoldenMismatch",
    "ReplayError",
    "ReplayOutcome",
    "ReplaySource",
    "assert_matches_golden",
]
