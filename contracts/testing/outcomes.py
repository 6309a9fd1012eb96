"""Replay outcomes and golden files (pydantic only).

A replay returns one `ReplayOutcome` per command, in command order: the outcome's type, its
event `message_id` (absent for `coupon.invalid`, whose reply id the broker library makes up), the
`x-error` of a refused command, and the body exactly as published. Outcomes carry no timestamps
and no correlation ids, so a recorded stream replayed into a fresh database gives the same
outcomes byte for byte (contract "Determinism"), which is what a golden file pins down.

Golden files are JSON lines, one outcome per line, in a `golden/` folder beside the test module
(or at an absolute path). `assert_matches_golden` fails with a unified diff; run pytest with
`--coupon-update-golden` to write the file instead (review the change like any other).
"""

from __future__ import annotations

import difflib
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict

from contracts import names
from contracts.commands import Command
from contracts.messages import CommandMessage, command_message
from contracts.recording import RecordedMessage, read_messages

# Commands given to a replay as models get message ids derived from their position and content,
# so that a golden file of their outcomes stays the same from run to run.
REPLAY_ID_NAMESPACE: Final = uuid.UUID("3c5e0a7d-9b1f-4f62-8d2e-7a4b6c1e9f30")


class ReplayOutcome(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    command: str  # the command's routing key
    command_message_id: str | None
    routing_key: str  # the outcome: coupon.created, ..., or coupon.invalid
    message_id: str | None  # the event's (None for coupon.invalid)
    error: str | None = None  # x-error of a refused command
    body: str

    def to_line(self) -> str:
        return self.model_dump_json()


def replay_messages(
    source: str | os.PathLike[str] | Iterable[RecordedMessage | CommandMessage | Command],
    commands_exchange: str,
) -> list[RecordedMessage]:
    """What a replay publishes: a recording's lines (every line must be readable), or messages
    and commands given directly."""
    if isinstance(source, str | os.PathLike):
        with Path(source).open("rb") as lines:
            return read_messages(lines)
    messages = []
    for index, item in enumerate(source):
        if isinstance(item, Command):
            seed = f"{index}:{item.routing_key}:{item.model_dump_json()}"
            message_id = str(uuid.uuid5(REPLAY_ID_NAMESPACE, seed))
            item = command_message(item, message_id=message_id)
        if isinstance(item, CommandMessage):
            item = RecordedMessage.of_command(item, commands_exchange)
        messages.append(item)
    return messages


def prepared_for_replay(
    messages: Sequence[RecordedMessage], reply_to: str
) -> list[RecordedMessage]:
    """Each message with the replay's reply queue and a correlation id of its own, by which
    its outcome is told from the others' (neither is part of an outcome's body)."""
    return [
        message.with_properties(reply_to=reply_to, correlation_id=f"replay-{index}")
        for index, message in enumerate(messages)
    ]


def outcome_of(
    command: RecordedMessage,
    routing_key: str,
    message_id: str | None,
    error: str | None,
    body: bytes,
) -> ReplayOutcome:
    invalid = routing_key == names.INVALID
    return ReplayOutcome(
        command=command.routing_key,
        command_message_id=command.properties.message_id,
        routing_key=routing_key,
        message_id=None if invalid else message_id,
        error=error if invalid else None,
        body=body.decode("utf-8", errors="replace"),
    )


class GoldenMismatch(AssertionError):
    pass


_update_golden = False
_root: Path | None = None


def configure_golden(update: bool, root: Path) -> None:
    """Called by the plugin: `--coupon-update-golden`, and the rootdir test ids are relative to."""
    global _update_golden, _root
    _update_golden, _root = update, root


def golden_path(name: str | os.PathLike[str]) -> Path:
    path = Path(name)
    if path.is_absolute():
        return path
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    module = current.split("::", 1)[0]
    base = Path(module).parent if module else Path()
    return (_root or Path.cwd()) / base / "golden" / path


def assert_matches_golden(
    outcomes: Iterable[ReplayOutcome], name: str | os.PathLike[str], *, update: bool | None = None
) -> None:
    path = golden_path(name)
    actual = [outcome.to_line() for outcome in outcomes]
    if update if update is not None else _update_golden:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in actual), encoding="utf-8")
        return
    if not path.exists():
        raise GoldenMismatch(
            f"golden file {path} does not exist; run pytest with --coupon-update-golden to write it"
        )
    expected = path.read_text(encoding="utf-8").splitlines()
    if expected == actual:
        return
    diff = difflib.unified_diff(
        expected, actual, fromfile=f"{path} (golden)", tofile="this run", lineterm="", n=1
    )
    changed = sum(1 for a, b in zip(expected, actual, strict=False) if a != b)
    changed += abs(len(expected) - len(actual))
    raise GoldenMismatch(
        f"{changed} outcome(s) differ from {path} ({len(expected)} expected, {len(actual)} now); "
        "if the change is intended, run pytest with --coupon-update-golden\n" + "\n".join(diff)
    )
