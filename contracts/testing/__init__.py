"""Testing a client service of the coupon worker: the pytest plugin's parts (`testing` extra).

The plugin (`contracts.testing.plugin`, registered as a `pytest11` entry point) provides the
fixtures `coupon_backend`, `coupon_client`, `coupon_events`, `coupon_replay` and
`coupon_backend_factory`; golden files are checked with `assert_matches_golden`.
"""

from contracts.testing.outcomes import GoldenMismatch, ReplayOutcome, assert_matches_golden

__all__ = ["GoldenMismatch", "ReplayOutcome", "assert_matches_golden"]
