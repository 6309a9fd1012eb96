"""One rulebook: every command of the contract (`contracts.commands.COMMANDS`) has its three
places - the worker's handler (`worker/domain/handlers.py`), the client fake's rule
(`contracts/testing/fake.py`, behind the memory backend) and the oracle's rule and worked case
(`tests/support/oracle.py`) - and the oracle and the client fake give each case its answers.
(The worker's pipeline gives them too, on both storages: tests/integration/test_pipeline.py.)
"""

from __future__ import annotations

import pytest

from contracts.commands import COMMANDS
from contracts.messages import command_message
from contracts.testing.backends import MemoryBackend
from tests.support.oracle import CASES, RULES, Answer, answers
from worker.domain.handlers import HANDLERS

ROUTING_KEYS = sorted(COMMANDS)


@pytest.mark.parametrize("routing_key", ROUTING_KEYS)
def test_every_command_has_a_handler_an_oracle_rule_and_an_oracle_case(routing_key: str) -> None:
    assert COMMANDS[routing_key] in HANDLERS, "no handler in worker/domain/handlers.py HANDLERS"
    assert routing_key in RULES, "no rule in tests/support/oracle.py RULES"
    assert routing_key in CASES, "no worked case in tests/support/oracle.py CASES"
    # The case gives the command every answer the rule allows it, and no other.
    case = CASES[routing_key]
    answered = {answer.kind for step, answer in case if step.routing_key == routing_key}
    assert answered == RULES[routing_key].answers
    # The contract says whether the command reads; the oracle says it independently.
    assert RULES[routing_key].writes is not COMMANDS[routing_key].is_read


def test_the_worker_and_the_oracle_know_no_command_the_contract_does_not() -> None:
    assert set(HANDLERS) == set(COMMANDS.values())
    assert set(RULES) == set(CASES) == set(COMMANDS)


@pytest.mark.parametrize("routing_key", ROUTING_KEYS)
def test_the_oracle_gives_each_case_its_answers(routing_key: str) -> None:
    case = CASES[routing_key]
    assert answers([], [step for step, _ in case]) == [answer for _, answer in case]
    # As history, then answered again: reads fresh, writes from their first answer.
    assert answers([step for step, _ in case], [case[-1][0]]) == [case[-1][1]]


@pytest.mark.parametrize("routing_key", ROUTING_KEYS)
async def test_the_client_fake_gives_each_case_its_answers(routing_key: str) -> None:
    """A command the client fake has no rule for is answered wrongly here (or not at all)."""
    case = CASES[routing_key]
    messages = [
        command_message(
            COMMANDS[step.routing_key].model_validate(step.fields), message_id=step.message_id
        )
        for step, _ in case
    ]
    backend = MemoryBackend()
    try:
        outcomes = await backend.replay(messages)
    finally:
        await backend.aclose()
    assert [Answer.of(o.routing_key, o.body) for o in outcomes] == [answer for _, answer in case]
