"""What the security tests (tests/faults/test_security.py) need: broker users and a PostgreSQL
role with real passwords, made for one test and removed after it, and a search for a password
in every form it could leak in.

PostgreSQL here may trust loopback connections (`host all all 127.0.0.1/32 trust`): a password
in DATABASE_URL is then never checked and a wrong one never fails. `password_role` makes the
password count for its own role only: when a wrong password still gets in, it puts one line for
that role (`scram-sha-256`) in front of pg_hba.conf and reloads the server, and in a `finally`
puts the file back, reloads, and checks that PostgreSQL answers. Nobody else's login changes.
The test that uses it is `disruptive` (it holds the machine's service lock alone meanwhile).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus, urlsplit

import asyncpg

from tests.support.service_lock import require_exclusive
from tests.support.services import Services

SUBSTRING = 6  # every run of this many characters of a password is searched for


def new_password() -> str:
    """A password no log line holds by chance (72 random bits in each 12-character run), with
    the characters a URL must encode (`/%+@:`) in the middle. It starts with a letter:
    rabbitmqctl takes a password starting with `-` for an option."""
    return f"P{secrets.token_urlsafe(12)}/%+@:{secrets.token_urlsafe(12)}"


def secret_forms(*passwords: str, users: Iterable[str] = ()) -> set[str]:
    """Every form in which a password could leak: as given, URL-encoded (both ways), base64 of
    it and of `user:password` (HTTP basic auth, AMQP PLAIN), in `repr`, and every run of
    `SUBSTRING` characters of it raw or URL-encoded."""
    forms: set[str] = set()
    names = list(users)
    for password in passwords:
        whole = {password, quote(password, safe=""), quote_plus(password), repr(password)[1:-1]}
        for raw in [password, *(f"{user}:{password}" for user in names)]:
            for encode in (base64.b64encode, base64.urlsafe_b64encode):
                whole.add(encode(raw.encode()).decode().rstrip("="))
        forms |= whole
        for text in (password, quote(password, safe="")):
            forms |= {text[i : i + SUBSTRING] for i in range(len(text) - SUBSTRING + 1)}
    return forms


def leaks(text: str, forms: set[str]) -> list[str]:
    """The forms of a password found in `text`."""
    return sorted(form for form in forms if form in text)


def assert_no_secret(output: str, forms: set[str], what: str) -> None:
    found = leaks(output, forms)
    assert not found, f"a password appears in {what} as {found[:5]}:\n{output[-3000:]}"


# --- RabbitMQ ----------------------------------------------------------------------------------


async def rabbitmqctl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    output = out.decode(errors="replace")
    assert process.returncode == 0, f"rabbitmqctl {args[0]} failed: {output}"
    return output


@dataclass(frozen=True)
class RabbitUser:
    name: str
    password: str

    def url(
        self,
        services: Services,
        scheme: str = "amqp",
        port: int | None = None,
        *,
        password: str | None = None,
    ) -> str:
        where = urlsplit(services.amqp_url)
        secret = quote(self.password if password is None else password, safe="")
        return f"{scheme}://{self.name}:{secret}@{where.hostname}:{port or where.port or 5672}/"


@contextlib.asynccontextmanager
async def rabbit_user(prefix: str) -> AsyncIterator[RabbitUser]:
    """A broker user of this test's own with a password of `new_password()`, allowed
    everything under the test's prefix (plus the default exchange, for replies); deleted
    after."""
    user = RabbitUser(f"coupon-sec-{uuid.uuid4().hex[:8]}", new_password())
    await rabbitmqctl("add_user", user.name, user.password)
    try:
        mine = f"^{re.escape(prefix)}.*"
        await rabbitmqctl(
            "set_permissions", "-p", "/", user.name, mine, mine + "|^amq\\.default$", mine
        )
        yield user
    finally:
        await rabbitmqctl("delete_user", user.name)


# --- PostgreSQL --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresRole:
    name: str
    password: str
    database_url: str  # the test database, as this role, with its password (URL-encoded)
    hba_changed: bool  # whether pg_hba.conf had to be changed for its password to count

    def url(self, *, password: str | None = None, port: int | None = None) -> str:
        secret = quote(self.password if password is None else password, safe="")
        where = urlsplit(self.database_url)
        netloc = f"{self.name}:{secret}@{where.hostname}:{port or where.port or 5432}"
        return where._replace(netloc=netloc).geturl()


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def password_refused(url: str) -> bool:
    """Whether PostgreSQL refuses this URL's password (it tries to log in)."""
    try:
        connection = await asyncpg.connect(_asyncpg_dsn(url), timeout=10)
    except asyncpg.InvalidPasswordError:
        return True
    await connection.close()
    return False


async def _execute(admin_url: str, *statements: str) -> None:
    connection = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=10)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _quoted(admin_url: str, template: str, *values: str) -> str:
    """A statement PostgreSQL itself builds with `format()` (%I identifiers, %L literals): DDL
    takes no bound parameters, and nothing here splices a value into SQL."""
    connection = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=10)
    try:
        statement = await connection.fetchval(
            "SELECT format($1::text, VARIADIC $2::text[])", template, list(values)
        )
    finally:
        await connection.close()
    assert isinstance(statement, str)
    return statement


@contextlib.asynccontextmanager
async def password_role(admin_database_url: str) -> AsyncIterator[PostgresRole]:
    """A login role with a password, allowed to read and write the test database's tables,
    whose wrong password really fails (see the module's docstring); dropped after."""
    name = f"coupon_sec_{uuid.uuid4().hex[:8]}"
    password = new_password()
    admin = urlsplit(admin_database_url)
    role = PostgresRole(
        name,
        password,
        admin._replace(
            netloc=f"{name}:{quote(password, safe='')}@{admin.hostname}:{admin.port or 5432}"
        ).geturl(),
        hba_changed=False,
    )
    await _execute(
        admin_database_url,
        await _quoted(admin_database_url, "CREATE ROLE %I LOGIN PASSWORD %L", name, password),
        await _quoted(admin_database_url, "GRANT USAGE ON SCHEMA public TO %I", name),
        await _quoted(
            admin_database_url,
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO %I",
            name,
        ),
        await _quoted(
            admin_database_url, "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO %I", name
        ),
    )
    hba: tuple[Path, str] | None = None
    try:
        if not await password_refused(role.url(password=new_password())):
            hba = await _require_password(admin_database_url, name)
            role = PostgresRole(role.name, role.password, role.database_url, hba_changed=True)
        assert await password_refused(role.url(password=new_password())), (
            "PostgreSQL still accepts a wrong password for the test role"
        )
        yield role
    finally:
        try:
            if hba is not None:
                path, original = hba
                await asyncio.to_thread(path.write_text, original)
                await _execute(admin_database_url, "SELECT pg_reload_conf()")
                await _execute(admin_database_url, "SELECT 1")  # it answers, with the old rules
        finally:
            await _execute(
                admin_database_url,
                await _quoted(admin_database_url, "DROP OWNED BY %I", name),
                await _quoted(admin_database_url, "DROP ROLE %I", name),
            )


async def _require_password(admin_database_url: str, name: str) -> tuple[Path, str]:
    """One line in front of pg_hba.conf: `name` logs in over TCP with scram-sha-256. Returns
    the file and its text before, for the caller to restore."""
    require_exclusive("changing pg_hba.conf")
    connection = await asyncpg.connect(_asyncpg_dsn(admin_database_url), timeout=10)
    try:
        hba_file = await connection.fetchval(
            "SELECT setting FROM pg_settings WHERE name = $1", "hba_file"
        )
    finally:
        await connection.close()
    path = Path(str(hba_file))
    lines = f"host all {name} 0.0.0.0/0 scram-sha-256\nhost all {name} ::/0 scram-sha-256\n"
    original = await asyncio.to_thread(_prepend, path, lines)
    await _execute(admin_database_url, "SELECT pg_reload_conf()")
    return path, original


def _prepend(path: Path, lines: str) -> str:
    """Put `lines` in front of the file (its owner and mode kept); returns the text before."""
    assert path.is_file(), (
        f"PostgreSQL accepts any password and its pg_hba.conf ({path}) is not on this machine: "
        "the secret test cannot check a password login"
    )
    original = path.read_text()
    path.write_text(lines + original)
    return original
