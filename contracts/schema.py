"""The contract as JSON Schema, for clients in other languages."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from contracts import names
from contracts.commands import COMMANDS
from contracts.events import EVENTS, InvalidCommandReply


def contract_json_schema() -> dict[str, Any]:
    models: list[type[BaseModel]] = [*COMMANDS.values(), *EVENTS.values(), InvalidCommandReply]
    _, schema = models_json_schema(
        [(model, "validation") for model in models],
        title=f"Coupon worker wire contract v{names.CONTRACT_VERSION}",
    )
    schema["commands"] = {key: {"$ref": f"#/$defs/{cls.__name__}"} for key, cls in COMMANDS.items()}
    schema["events"] = {key: {"$ref": f"#/$defs/{cls.__name__}"} for key, cls in EVENTS.items()}
    schema["replies"] = {names.INVALID: {"$ref": f"#/$defs/{InvalidCommandReply.__name__}"}}
    return schema


def main() -> None:
    print(json.dumps(contract_json_schema(), indent=2))  # noqa: T201 - this is the output
