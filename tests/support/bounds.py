"""The fault suite's time bounds, derived from the worker's configuration, never guessed.

Each bound is the time the worker's own settings allow for the step, plus `SLACK` for a loaded
2-core machine (a process waiting for a core, a log line written late). A test states the bound
next to the figure it bounds (`FIGURES … detected_seconds_after_silence=7.0
detection_bound_seconds=15.0 …`), and the Reliability table prints both, so that a reader sees
how near the measurement the assertion is. The worker under test runs with the defaults the
test's `Settings` hold (no test overrides these settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from worker.settings import Settings

SLACK: Final = 5.0  # seconds, for a loaded machine
TIMES: Final = "\N{MULTIPLICATION SIGN}"


@dataclass(frozen=True, slots=True)
class Bound:
    """A bound in seconds, and how it follows from the configuration."""

    seconds: float
    rule: str  # e.g. "3 x heartbeat 4 s + 5 s" (with a multiplication sign)

    def figures(self, name: str) -> dict[str, object]:
        """The two figures a test states for it: `<name>_bound_seconds` and its rule (without
        spaces, as a FIGURES value)."""
        return {f"{name}_bound_seconds": self.seconds, f"{name}_bound_rule": self.rule_token}

    @property
    def rule_token(self) -> str:
        return self.rule.replace(" ", "_")


def _s(value: float) -> str:
    return f"{value:g}"


def silent_broker_detected(settings: Settings) -> Bound:
    """aiormq gives up a connection after about 3 heartbeat intervals without a frame."""
    heartbeat = settings.broker_heartbeat
    return Bound(3 * heartbeat + SLACK, f"3 {TIMES} heartbeat {heartbeat} s + {_s(SLACK)} s")


def silent_database_detected(settings: Settings) -> Bound:
    """A statement on a mute connection ends at the statement timeout; the attempt after it,
    on a connection that is as mute, may take as long again before the outage is logged."""
    timeout = settings.db_statement_timeout
    return Bound(
        2 * timeout + SLACK, f"2 {TIMES} statement timeout {_s(timeout)} s + {_s(SLACK)} s"
    )


def broker_resumed(settings: Settings) -> Bound:
    """From the broker answering again to an outcome: one connection attempt (its timeout)
    after the 1 s reconnect pause."""
    timeout = settings.amqp_connect_timeout
    return Bound(timeout + SLACK, f"AMQP connect timeout {_s(timeout)} s + {_s(SLACK)} s")


def database_resumed(settings: Settings) -> Bound:
    """From PostgreSQL answering again to an outcome: the longest wait between the worker's
    retries in an outage."""
    backoff = settings.retry_max_backoff
    return Bound(backoff + SLACK, f"retry backoff at most {_s(backoff)} s + {_s(SLACK)} s")
