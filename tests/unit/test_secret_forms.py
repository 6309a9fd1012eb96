"""The password search of the security tests finds every form a password could leak in."""

from __future__ import annotations

import base64
from urllib.parse import quote

from tests.support.security import SUBSTRING, leaks, new_password, secret_forms


def test_every_form_of_a_password_is_found_and_nothing_else() -> None:
    password = new_password()
    forms = secret_forms(password, users=("alice",))
    found_in = {
        "raw": f"connecting with {password}",
        "url-encoded": f"amqp://alice:{quote(password, safe='')}@host/",
        "basic auth": base64.b64encode(f"alice:{password}".encode()).decode(),
        "base64": base64.b64encode(password.encode()).decode(),
        "repr": repr({"password": password}),
        "a piece": f"...{password[3 : 3 + SUBSTRING]}...",
        "an encoded piece": f"...{quote(password, safe='')[-SUBSTRING:]}",
    }
    for form, text in found_in.items():
        assert leaks(text, forms), form
    assert not leaks(f"amqp://alice:***@host/ {password[: SUBSTRING - 1]}", forms)
    assert not leaks(new_password(), forms)  # another password shares no run of 6


def test_a_new_password_never_reads_as_a_command_line_option() -> None:
    assert not any(new_password().startswith("-") for _ in range(2000))
