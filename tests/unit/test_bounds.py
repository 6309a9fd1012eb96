"""The fault suite's bounds follow the worker's settings (tests/support/bounds.py)."""

from __future__ import annotations

from tests.support import bounds
from worker.settings import Settings


def settings(**overrides: object) -> Settings:
    return Settings.model_validate(
        {
            "AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/",
            "DATABASE_URL": "postgresql+asyncpg://u@h/d",
            **overrides,
        }
    )


def test_the_defaults_give_the_issue_bounds() -> None:
    defaults = settings()
    assert bounds.silent_broker_detected(defaults).seconds == 3 * 4 + 5
    assert bounds.silent_database_detected(defaults).seconds == 2 * 5 + 5
    assert bounds.broker_resumed(defaults).seconds == 10
    assert bounds.database_resumed(defaults).seconds == 10


def test_each_bound_moves_with_its_setting_and_says_how() -> None:
    changed = settings(
        amqp_heartbeat=10, db_statement_timeout=2.5, amqp_connect_timeout=7, retry_max_backoff=1
    )
    broker = bounds.silent_broker_detected(changed)
    assert broker.seconds == 35 and broker.rule == "3 \N{MULTIPLICATION SIGN} heartbeat 10 s + 5 s"
    assert bounds.silent_database_detected(changed).seconds == 10
    assert bounds.broker_resumed(changed).seconds == 12
    database = bounds.database_resumed(changed)
    assert database.figures("resume") == {
        "resume_bound_seconds": 6.0,
        "resume_bound_rule": "retry_backoff_at_most_1_s_+_5_s",
    }
