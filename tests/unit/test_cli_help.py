"""The command line explains itself: help on every option, the environment from the settings
model, configuration errors under the variable's own name, and library noise kept at debug."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
from collections.abc import Iterator

import pytest
from pydantic import ValidationError
from pydantic_settings import EnvSettingsSource

from worker.entrypoints.arguments import build_parser
from worker.entrypoints.environment import (
    describe_settings_error,
    describe_variables,
    variable_name,
    variables,
)
from worker.logs import configure_logging
from worker.settings import LogFormat, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WORKER_") or name in ("AMQP_URL", "DATABASE_URL"):
            monkeypatch.delenv(name)


def parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def test_every_option_and_every_subcommand_has_help() -> None:
    missing: list[str] = []
    seen = 0
    for path, parser in parsers(build_parser()):
        for action in parser._actions:
            seen += 1
            if isinstance(action, argparse._SubParsersAction):
                missing += [
                    f"{' '.join(path)} {choice.dest}"
                    for choice in action._choices_actions
                    if not choice.help
                ]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert seen > 50  # the walk did reach the subcommands
    assert missing == []


def test_run_help_lists_every_settings_field_with_default_and_meaning() -> None:
    [run] = [parser for path, parser in parsers(build_parser()) if path == ("run",)]
    text = run.format_help()
    for field, info in Settings.model_fields.items():
        assert info.description, f"Settings.{field} has no Field description"
        assert f"\n  {variable_name(field)}  (default: " in text, field
    assert "  WORKER_PREFETCH  (default: 500)\n" in text
    assert "  AMQP_URL  (default: amqp://guest:guest@localhost:5672/)\n" in text
    assert "  WORKER_HTTP_PORT  (default: unset)\n" in text
    assert "  WORKER_DECLARE_TOPOLOGY  (default: true)\n" in text
    assert "  WORKER_GRACE_PERIOD  (default: 25)\n" in text
    assert "unacknowledged deliveries per worker" in text
    assert len(variables()) == len(Settings.model_fields)
    assert describe_variables() in text


@pytest.mark.parametrize("field", list(Settings.model_fields))
def test_the_variable_named_in_help_is_the_one_pydantic_settings_reads(
    field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable_name(field), "x")
    read = EnvSettingsSource(Settings)()
    info = Settings.model_fields[field]
    assert read == {info.validation_alias or field: "x"}


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("WORKER_PREFETCH", "many", "  WORKER_PREFETCH: Input should be a valid integer"),
        ("WORKER_HTTP_PORT", "70000", "  WORKER_HTTP_PORT: Input should be less than or equal"),
        ("WORKER_AMQP_HEARTBEAT", "-1", "  WORKER_AMQP_HEARTBEAT: Input should be greater"),
        ("AMQP_URL", "http://x/", "  AMQP_URL: AMQP_URL entry 1 of 1 does not start with amqp://"),
        ("WORKER_LOG_LEVEL", "loud", "  WORKER_LOG_LEVEL: log level must be DEBUG"),
    ],
)
def test_configuration_errors_name_the_variable_as_the_user_sets_it(
    variable: str, value: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    described = describe_settings_error(raised.value)
    assert described.splitlines()[0] == "invalid configuration:"
    assert expected in described, described
    assert "Value error" not in described


def test_a_validator_that_names_its_variable_is_not_named_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AMQP_URL", "amqps://guest:guest@127.0.0.1:5671/")
    monkeypatch.setenv("WORKER_AMQP_CA_FILE", "/nonexistent/ca.pem")
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert describe_settings_error(raised.value).splitlines()[1:] == [
        "  WORKER_AMQP_CA_FILE: cannot read /nonexistent/ca.pem: No such file or directory"
    ]


@pytest.mark.parametrize(("level", "shown"), [("INFO", False), ("DEBUG", True)])
def test_aiormq_failed_transport_line_is_debug_noise(level: str, shown: bool) -> None:
    """aiormq logs the error it is about to raise; the caller reports it (see RaisedErrorsAtDebug).
    Its other errors stay errors."""
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, level, stream=stream)
    try:
        transport = logging.getLogger("aiormq.connection")
        transport.error("error when creating transport: %r", ConnectionRefusedError(111))
        transport.error("Unexpected connection close from remote %r", "amqp://x")
    finally:
        configure_logging(LogFormat.JSON, "INFO", stream=io.StringIO())
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [record["level"] for record in records] == (["debug", "error"] if shown else ["error"])
    assert records[-1]["event"].startswith("Unexpected connection close")
