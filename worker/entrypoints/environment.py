"""The environment variables the worker reads, as an operator sets them: their names, defaults
and meanings (for `coupon-worker run --help`), and configuration errors under those names.

Everything comes from the `Settings` model itself (its aliases, `env_prefix` and Field
descriptions), so that a new setting shows in the help the day it is added."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pydantic import SecretStr, ValidationError

from worker.settings import Settings


@dataclass(frozen=True)
class Variable:
    name: str  # as the user sets it, e.g. WORKER_PREFETCH
    default: str  # as the user would write it; "unset" or "empty" where there is none
    meaning: str


def variable_name(field: str) -> str:
    """The environment variable that sets `Settings.<field>` (or the alias a validation error
    names): the field's alias when it has one (`AMQP_URL`), else `env_prefix` + its name.
    pydantic-settings matches either case-insensitively; this is the documented spelling."""
    info = Settings.model_fields.get(field)
    if info is None:  # already an alias (errors name an aliased field by its alias)
        aliases = {f.validation_alias for f in Settings.model_fields.values()}
        return field if field in aliases else field.upper()
    if isinstance(info.validation_alias, str):
        return info.validation_alias
    return f"{Settings.model_config.get('env_prefix', '')}{field}".upper()


def _written(value: object) -> str:
    if isinstance(value, SecretStr):  # the built-in default, a well-known local URL
        value = value.get_secret_value()
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Path):
        return str(value)
    return str(value) if value != "" else "empty"


def variables() -> list[Variable]:
    """Every variable `Settings` reads, in the model's order."""
    return [
        Variable(variable_name(field), _written(info.default), info.description or "")
        for field, info in Settings.model_fields.items()
    ]


def describe_variables(width: int = 79) -> str:
    """The variables as a help epilog: one block per variable, its meaning indented below."""
    lines = ["environment variables (names are case-insensitive):"]
    for variable in variables():
        lines.append(f"  {variable.name}  (default: {variable.default})")
        lines.extend(
            textwrap.wrap(
                variable.meaning,
                width,
                initial_indent="      ",
                subsequent_indent="      ",
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines)


def describe_settings_error(error: ValidationError) -> str:
    """`invalid configuration:` and one line per invalid variable, named as the user sets it
    (pydantic-settings reports the field, `prefetch`, not `WORKER_PREFETCH`)."""
    lines = ["invalid configuration:"]
    for item in error.errors(include_input=False, include_url=False):
        loc = item["loc"]
        name = variable_name(str(loc[0])) if loc else "configuration"
        message = item["msg"]
        if item["type"] == "value_error":
            # A validator's own words; drop pydantic's "Value error, " and a repeated name.
            message = str(item.get("ctx", {}).get("error", message))
            message = message.removeprefix(f"{name}: ")
        lines.append(f"  {name}: {message}")
    return "\n".join(lines)
