"""Security (issue 3, item 9; issue 21, item 4): a least-privilege broker user, no password in
any output, amqps:// with a CA file, and SQL that takes input only as bound parameters.

The helpers (users and roles with real passwords, the forms a password is searched in, the TLS
proxy) are in tests/support/security.py and tests/support/tls.py."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, GetCoupon, RedeemCoupon, names
from contracts.validation import InvalidCommand, RejectionCode, decode_command
from tests.conftest import StartWorker
from tests.support import figures, security
from tests.support.broker import Broker
from tests.support.cli import Finished, run_cli
from tests.support.http_probe import get, http_port, wait_status
from tests.support.ledger import _reason
from tests.support.security import (
    RabbitUser,
    assert_no_secret,
    new_password,
    rabbitmqctl,
    secret_forms,
)
from tests.support.services import Services
from tests.support.tls import TlsProxy, make_certificates
from worker.app.outcomes import Outcome
from worker.db import tables
from worker.db.repositories import CouponsRepository, ProcessedCommandsRepository
from worker.domain.model import Coupon

pytestmark = pytest.mark.faults

INJECTIONS = ("'); DROP TABLE coupon;--", "' OR '1'='1")
CLOSED_PORT = 1  # nothing listens on tcpmux here: the connection is refused at once


@pytest.fixture
async def rabbit_user(prefix: str) -> AsyncIterator[RabbitUser]:
    async with security.rabbit_user(prefix) as user:
        yield user


def code_and_output(result: Finished) -> tuple[int, str]:
    return result.returncode, result.output


def print_figures(capsys: pytest.CaptureFixture[str], label: str, **stated: object) -> None:
    figures.state(label, capsys, **stated)


# --- (a) least privilege ---------------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_least_privilege_user_runs_on_operator_topology_and_names_what_is_missing(
    broker: Broker,
    start_worker: StartWorker,
    services: Services,
    prefix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing_prefix = f"{prefix}absent-"
    user = RabbitUser(f"coupon-lp-{uuid.uuid4().hex[:8]}", new_password())
    ours = f"(?:{re.escape(prefix)}|{re.escape(missing_prefix)})"
    await rabbitmqctl("add_user", user.name, user.password)
    try:
        # configure: nothing. write: the events and dead-letter exchanges (and the default
        # exchange, for replies). read: the worker queue. The topology is the operator's:
        # the `broker` fixture declared it as guest.
        await rabbitmqctl(
            "set_permissions",
            "-p",
            "/",
            user.name,
            "^$",
            f"^{ours}coupon\\.(?:events|dead)$|^amq\\.default$",
            f"^{ours}coupon\\.worker$",
        )
        amqp_url = user.url(services)

        # With the topology missing, it says what is missing, and stops.
        absent = start_worker(
            name="absent",
            amqp_url=amqp_url,
            worker_declare_topology="false",
            worker_name_prefix=missing_prefix,
        )
        absent_code = await absent.wait_exit(within=60)
        assert absent_code == 2, absent.output[-3000:]
        assert "Traceback" not in absent.output
        for name in ("coupon.commands", "coupon.events", "coupon.dead", "coupon.worker"):
            assert f"'{missing_prefix}{name}'" in absent.output, absent.output[-3000:]
        assert "WORKER_DECLARE_TOPOLOGY=false" in absent.output

        # Asked to declare the topology, it cannot (no configure permission) and says why.
        declaring = start_worker(name="declaring", amqp_url=amqp_url)
        declaring_code = await declaring.wait_exit(within=60)
        assert declaring_code == 2, declaring.output[-3000:]
        assert "Traceback" not in declaring.output
        assert "WORKER_DECLARE_TOPOLOGY=false" in declaring.output

        # On the operator's topology, it processes commands, dead-letters and replies.
        events = await broker.collect_events()
        reply_to, replies = await broker.reply_queue()
        worker = start_worker(amqp_url=amqp_url, worker_declare_topology="false")
        await worker.wait_ready()
        await broker.send(CreateCoupon(code="LP-1", init_count=2))
        await events.wait_for(1)
        await broker.send(RedeemCoupon(code="LP-1"))
        await broker.send(GetCoupon(code="LP-1"), reply_to=reply_to)
        bad_id = await broker.send_raw(names.REDEEM, b"{")
        await events.wait_for(2)
        await replies.wait_for(1)
        dead = await broker.wait_dead_letters(1, within=30, quiet=1.0)
        code = await worker.stop(within=60)
        print_figures(
            capsys,
            "least privilege",
            events=len(events.messages),
            replies=len(replies.messages),
            dead_lettered=len(dead),
            missing_topology_exit=absent_code,
            declare_without_permission_exit=declaring_code,
            stop_exit=code,
        )
        assert [m.type for m in events.messages] == ["coupon.created", "coupon.redeemed"]
        assert replies.messages[0].type == "coupon.found"
        assert [(m.message_id, _reason(m)) for m in dead] == [(bad_id, "InvalidJson")]
        assert code == 0, worker.output[-3000:]
    finally:
        await rabbitmqctl("delete_user", user.name)


# --- (b) no secrets in any output ------------------------------------------------------------


@pytest.mark.disruptive  # may put a line for its own role in pg_hba.conf and reload PostgreSQL
@pytest.mark.timeout(300)
async def test_no_password_appears_in_any_output(
    broker: Broker,
    start_worker: StartWorker,
    services: Services,
    database_url: str,
    rabbit_user: RabbitUser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with security.password_role(database_url) as role:
        await no_password_in_any_output(broker, start_worker, services, rabbit_user, role, capsys)


async def no_password_in_any_output(
    broker: Broker,
    start_worker: StartWorker,
    services: Services,
    rabbit_user: RabbitUser,
    role: security.PostgresRole,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrong = new_password()
    hidden = secret_forms(
        rabbit_user.password, role.password, wrong, users=(rabbit_user.name, role.name)
    )
    amqp_url = rabbit_user.url(services)
    db_url = role.database_url
    # Both services really check these passwords: a wrong one is refused.
    assert await security.password_refused(role.url(password=wrong))

    # A full run, at DEBUG and with traces printed (the console exporter, into the log):
    # start-up, commands, dead letters, a command whose failure is logged with its traceback,
    # a reply to an invalid command, the HTTP endpoints, and a clean stop.
    events = await broker.collect_events()
    reply_to, replies = await broker.reply_queue()
    worker = start_worker(
        amqp_url=amqp_url,
        database_url=db_url,
        worker_log_level="DEBUG",
        worker_fault_plan="handle:raise:fault-secret",
        worker_max_attempts="2",
        worker_http_port="0",
        otel_traces_exporter="console",
    )
    port = await http_port(worker)
    await worker.wait_ready()
    await broker.send(CreateCoupon(code="SEC-1", init_count=1))
    await events.wait_for(1)
    await broker.send(RedeemCoupon(code="SEC-1"))
    await broker.send(RedeemCoupon(code="SEC-1"))
    await broker.send(RedeemCoupon(code="fault-secret"))
    await broker.send_raw(names.CREATE, b'{"code": "Z", "init_count": 0}', reply_to=reply_to)
    await broker.send_raw(names.REDEEM, b"\xff")
    await events.wait_for(3)
    await replies.wait_for(1)
    dead = await broker.wait_dead_letters(3, within=30, quiet=1.0)
    assert sorted(_reason(m) for m in dead) == ["InvalidCommand", "InvalidJson", "ProcessingFailed"]
    await worker.wait_for_log("command_failed")
    ready = json.dumps(await wait_status(port, "/readyz", 200, within=30))
    metrics_status, metrics = await get(port, "/metrics")
    assert metrics_status == 200 and "coupon_worker_commands_total" in metrics, metrics[:500]
    assert await worker.stop(within=60) == 0
    assert worker.events("worker_stopped")
    assert f"{rabbit_user.name}:***@" in worker.output  # where it connects, redacted
    spans = worker.output.count('"trace_id"')
    assert spans >= 3, "no traces were printed to search:\n" + worker.output[-3000:]
    letters = "\n".join(f"{m.headers!r} {m.headers!s}" for m in dead)
    places = {
        "the worker's log (and traces)": worker.output,
        "/readyz": ready,
        "/metrics": metrics,
        "dead-letter headers": letters,
    }
    for place, output in places.items():
        assert_no_secret(output, hidden, place)

    # Failures, each a process of its own: every message names the service, never a password.
    closed_amqp = rabbit_user.url(services, port=CLOSED_PORT)
    wrong_amqp = rabbit_user.url(services, password=wrong)
    closed_db = role.url(port=CLOSED_PORT)
    wrong_db = role.url(password=wrong)
    base = {
        "AMQP_URL": amqp_url,
        "DATABASE_URL": db_url,
        "WORKER_NAME_PREFIX": broker.topology.prefix,
    }
    publish = ("publish", "redeem", "--code", "X", "--wait", "--timeout", "5")
    cases: Sequence[tuple[str, dict[str, str], tuple[str, ...], str]] = [
        ("broker unreachable", {"AMQP_URL": closed_amqp}, ("run",), "cannot reach RabbitMQ"),
        ("wrong broker password", {"AMQP_URL": wrong_amqp}, ("run",), "refused the credentials"),
        ("database unreachable", {"DATABASE_URL": closed_db}, ("run",), "cannot reach PostgreSQL"),
        (
            "wrong database password",
            {"DATABASE_URL": wrong_db},
            ("run",),
            "refused the credentials",
        ),
        ("migrate, database unreachable", {"DATABASE_URL": closed_db}, ("migrate",), "PostgreSQL"),
        (
            "migrate, wrong database password",
            {"DATABASE_URL": wrong_db},
            ("migrate",),
            "refused the credentials",
        ),
        ("publish, broker unreachable", {"AMQP_URL": closed_amqp}, publish, "RabbitMQ"),
        ("publish, wrong broker password", {"AMQP_URL": wrong_amqp}, publish, "credentials"),
        (
            "events, broker unreachable",
            {"AMQP_URL": closed_amqp},
            ("events", "--limit", "1"),
            "RabbitMQ",
        ),
        (
            "bad AMQP_URL",
            {"AMQP_URL": closed_amqp.replace(f":{CLOSED_PORT}/", ":port/")},
            ("run",),
            "AMQP_URL",
        ),
        (
            "bad DATABASE_URL",
            {"DATABASE_URL": db_url.replace("postgresql+asyncpg", "postgresql")},
            ("run",),
            "DATABASE_URL",
        ),
    ]
    results = await asyncio.gather(
        *(run_cli(*args, env={**base, **env}) for _, env, args, _ in cases)
    )
    for (label, _, _, expected), (code, output) in zip(
        cases, map(code_and_output, results), strict=True
    ):
        assert code == 2, f"{label}: exit {code}\n{output[-3000:]}"
        assert expected in output, f"{label}:\n{output[-3000:]}"
        assert "Traceback" not in output, f"{label}:\n{output[-3000:]}"
        assert_no_secret(output, hidden, label)
    searched = [*places.values(), *(r.output for r in results)]
    print_figures(
        capsys,
        "no secrets",
        log_lines=len(worker.lines),
        spans=spans,
        failure_cases=len(cases),
        failures_exiting_2=sum(r.returncode == 2 for r in results),
        failures_naming_the_service=sum(
            expected in r.output for (_, _, _, expected), r in zip(cases, results, strict=True)
        ),
        wrong_password_cases=sum("wrong" in label for label, *_ in cases),
        unreachable_cases=sum("unreachable" in label for label, *_ in cases),
        forms_searched=len(hidden),
        places_searched=len(places) + len(cases),
        lines_searched=sum(len(text.splitlines()) for text in searched),
        passwords_found=sum(text.count(form) for text in searched for form in hidden),
        dead_lettered=len(dead),
        pg_hba_line_added=role.hba_changed,
    )
    with capsys.disabled():
        for (label, *_), result in zip(cases, results, strict=True):
            print(f"  {label}: {result.output.strip().splitlines()[-1][:220]}")  # noqa: T201


# --- (c) amqps:// with a CA file -------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_amqps_with_a_ca_file(
    broker: Broker,
    start_worker: StartWorker,
    services: Services,
    database_url: str,
    rabbit_user: RabbitUser,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = await asyncio.to_thread(make_certificates, tmp_path)
    where = urlsplit(services.amqp_url)
    proxy = TlsProxy(
        files["server"], files["server_key"], where.hostname or "127.0.0.1", where.port or 5672
    )
    port = await proxy.start()
    hidden = secret_forms(rabbit_user.password, users=(rabbit_user.name,))
    try:
        # Through TLS, verified against the CA file: the worker works as on plain AMQP.
        events = await broker.collect_events()
        worker = start_worker(
            amqp_url=rabbit_user.url(services, "amqps", port),
            worker_amqp_ca_file=str(files["ca"]),
        )
        await worker.wait_ready()
        await broker.send(CreateCoupon(code="TLS-1", init_count=1))
        await events.wait_for(1)
        assert events.messages[0].type == "coupon.created"
        assert await worker.stop(within=60) == 0
        assert proxy.handshakes >= 1
        assert_no_secret(worker.output, hidden, "the worker's log")

        base = {"DATABASE_URL": database_url, "WORKER_NAME_PREFIX": broker.topology.prefix}
        plain_port = rabbit_user.url(services, "amqps")  # the AMQP port speaks no TLS
        cases: list[tuple[str, dict[str, str], str]] = [
            (
                "amqps to a port without TLS",
                {"AMQP_URL": plain_port, "WORKER_AMQP_CA_FILE": str(files["ca"])},
                "TLS handshake with RabbitMQ",
            ),
            (
                "certificate from another CA",
                {
                    "AMQP_URL": rabbit_user.url(services, "amqps", port),
                    "WORKER_AMQP_CA_FILE": str(files["other_ca"]),
                },
                "CERTIFICATE_VERIFY_FAILED",
            ),
            (
                "missing CA file",
                {"AMQP_URL": plain_port, "WORKER_AMQP_CA_FILE": str(tmp_path / "missing.pem")},
                "cannot read",
            ),
            (
                "CA file that is not PEM",
                {
                    "AMQP_URL": plain_port,
                    "WORKER_AMQP_CA_FILE": str(tmp_path / "san.ext"),
                },
                "not a PEM CA bundle",
            ),
            (
                "CA file with plain amqp://",
                {"AMQP_URL": rabbit_user.url(services), "WORKER_AMQP_CA_FILE": str(files["ca"])},
                "amqps://",
            ),
        ]
        results = await asyncio.gather(
            *(run_cli("run", env={**base, **env}) for _, env, _ in cases)
        )
        for (label, _, expected), (code, output) in zip(
            cases, map(code_and_output, results), strict=True
        ):
            assert code == 2, f"{label}: exit {code}\n{output[-3000:]}"
            assert expected in output, f"{label}:\n{output[-3000:]}"
            assert "Traceback" not in output, f"{label}:\n{output[-3000:]}"
            assert_no_secret(output, hidden, label)
    finally:
        await proxy.close()
    print_figures(
        capsys,
        "amqps",
        tls_handshakes=proxy.handshakes,
        refusal_cases=len(cases),
        refusals_exiting_2=sum(r.returncode == 2 for r in results),
        refusals_naming_the_cause=sum(
            expected in r.output for (_, _, expected), r in zip(cases, results, strict=True)
        ),
    )
    with capsys.disabled():
        for (label, *_), result in zip(cases, results, strict=True):
            print(f"  {label}: {result.output.strip().splitlines()[-1][:220]}")  # noqa: T201


# --- (d) SQL takes input as bound parameters only ---------------------------------------------


def test_injection_strings_are_not_valid_coupon_codes() -> None:
    for code in INJECTIONS:
        for routing_key, body in (
            (names.REDEEM, RedeemCoupon.model_construct(code=code).model_dump_json()),
            (names.CREATE, CreateCoupon.model_construct(code=code, init_count=1).model_dump_json()),
        ):
            with pytest.raises(InvalidCommand) as refused:
                decode_command(
                    routing_key,
                    body.encode(),
                    message_id="m-1",
                    content_type=names.JSON_CONTENT_TYPE,
                )
            assert refused.value.code is RejectionCode.INVALID_COMMAND
            assert "code" in refused.value.detail


@pytest.mark.timeout(120)
async def test_injection_strings_are_stored_literally_and_the_tables_survive(
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Below the contract's code rules, the repositories themselves take any string literally.
    async with db.begin() as connection:
        real = Coupon(uuid.uuid4(), "REAL-1", 5, 5)
        hostile = [Coupon(uuid.uuid4(), code, 3, 3) for code in INJECTIONS]
        await CouponsRepository(connection).create_many([real, *hostile])
    async with db.begin() as connection:
        coupons = CouponsRepository(connection)
        assert set(await coupons.lock_many(INJECTIONS)) == set(INJECTIONS)
        await coupons.redeem_many(dict.fromkeys(INJECTIONS, 1))
        found = await coupons.get_many(INJECTIONS)
        assert {c.remaining_count for c in found.values()} == {2}
        # Would match every row if spliced in:
        assert await coupons.get_many(["' OR ''='"]) == {}
        processed = ProcessedCommandsRepository(connection)
        outcome = Outcome(
            command_message_id=INJECTIONS[0],
            command=names.REDEEM,
            routing_key=names.REDEEMED,
            body=b'{"note": "\'); DROP TABLE processed_command;--"}',
            occurred_at=datetime.now(UTC),
        )
        assert await processed.record([outcome])
    async with db.connect() as connection:
        stored = await ProcessedCommandsRepository(connection).outcomes(list(INJECTIONS))
        assert list(stored) == [INJECTIONS[0]] and stored[INJECTIONS[0]].body == outcome.body

    # Through the worker: the message_id is free text, and is stored literally too.
    events = await broker.collect_events()
    worker = start_worker()
    await worker.wait_ready()
    hostile_id = "'); DROP TABLE processed_command;--"
    await broker.send(CreateCoupon(code="INJ-1", init_count=1), message_id=hostile_id)
    await broker.send(CreateCoupon(code="INJ-1", init_count=1), message_id=hostile_id)
    await events.wait_for(2)
    assert {m.headers["causation_id"] for m in events.messages if m.headers} == {hostile_id}
    assert len({m.message_id for m in events.messages}) == 1

    async with db.connect() as connection:
        regclasses = {
            name: await connection.scalar(text("SELECT to_regclass(:name)::text"), {"name": name})
            for name in ("coupon", "processed_command")
        }
        codes = set((await connection.scalars(select(tables.coupon.c.code))).all())
        rows = await connection.scalar(select(func.count()).select_from(tables.processed_command))
        hostile_rows = await connection.scalar(
            select(func.count()).where(tables.processed_command.c.message_id == hostile_id)
        )
    print_figures(
        capsys,
        "sql injection",
        coupons=len(codes),
        processed_rows=rows,
        hostile_rows=hostile_rows,
        tables_intact=all(regclasses.values()),
    )
    assert regclasses == {"coupon": "coupon", "processed_command": "processed_command"}
    assert codes == {"REAL-1", "INJ-1", *INJECTIONS}
    assert hostile_rows == 1 and rows == 2
