"""`coupon-worker record` and `coupon-worker replay`, run as a user runs them."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aio_pika
import pytest

from contracts import names
from contracts.recording import RecordedMessage, read_messages
from tests.e2e.test_cli import cli_env, run, start
from tests.support.broker import Broker
from tests.support.cli import finish

__all__ = ["cli_env"]  # the fixture, used by name


async def start_recording(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    """`coupon-worker record ...`, once its tap is bound (it says so on standard error)."""
    process = await start(env, "record", *args)
    assert process.stderr is not None
    line = await asyncio.wait_for(process.stderr.readline(), 60)
    assert line.startswith(b"recording "), line
    return process


@pytest.mark.timeout(180)
async def test_record_keeps_body_routing_key_properties_and_headers(
    broker: Broker, cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "commands.jsonl"
    recorder = await start_recording(cli_env, str(path), "--limit", "3", "--pattern", "coupon.*")
    exchange = await broker.ch.get_exchange(broker.topology.commands_exchange, ensure=False)
    stamped = datetime(2026, 11, 27, 3, 4, 5, tzinfo=UTC)
    await exchange.publish(
        aio_pika.Message(
            b'{"code":"REC","init_count":2}',
            message_id="rec-1",
            correlation_id="order-1",
            reply_to="somewhere",
            content_type="application/json",
            content_encoding="utf-8",
            type="coupon.create",
            app_id="checkout",
            priority=3,
            expiration=60,
            timestamp=stamped,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={
                "tenant": "t1",
                "raw": bytearray(b"\x00\xff"),
                "price": Decimal("1.50"),
                "when": stamped,
                "nested": {"n": 1},
            },
        ),
        "coupon.create",
    )
    binary = bytes(range(256))
    await exchange.publish(aio_pika.Message(binary, message_id="rec-2"), "coupon.redeem")
    ignored = aio_pika.Message(b"{}", message_id="rec-ignored")
    await exchange.publish(ignored, "other.key", mandatory=False)  # not bound: not recorded
    await exchange.publish(aio_pika.Message(b"{}", message_id="rec-3"), "coupon.get")
    done = await finish(recorder)
    assert done.returncode == 0, done
    assert "recorded 3 messages" in done.stderr

    first, second, third = read_messages(path.read_bytes().splitlines())
    assert (first.exchange, first.routing_key) == (broker.topology.commands_exchange, names.CREATE)
    assert first.body_bytes() == b'{"code":"REC","init_count":2}'
    p = first.properties
    assert (p.message_id, p.correlation_id, p.reply_to, p.type, p.app_id) == (
        "rec-1",
        "order-1",
        "somewhere",
        "coupon.create",
        "checkout",
    )
    assert (p.priority, p.expiration, p.delivery_mode, p.content_encoding) == (
        3,
        "60000",
        2,
        "utf-8",
    )
    assert p.timestamp == stamped
    assert first.header_values() == {
        "tenant": "t1",
        "raw": b"\x00\xff",
        "price": Decimal("1.50"),
        "when": stamped,
        "nested": {"n": 1},
    }
    assert second.body_encoding == "base64" and second.body_bytes() == binary
    assert [m.properties.message_id for m in (first, second, third)] == ["rec-1", "rec-2", "rec-3"]


def _line(message_id: str, code: str = "RPL") -> str:
    return RecordedMessage.of(
        "prod-coupon.commands",
        names.REDEEM,
        json.dumps({"code": code}).encode(),
        {"message_id": message_id, "content_type": "application/json"},
        {"x-origin": b"\x01"},
    ).to_line()


@pytest.mark.timeout(180)
async def test_replay_refuses_or_skips_bad_lines_and_keeps_or_renews_ids(
    broker: Broker, cli_env: dict[str, str], tmp_path: Path
) -> None:
    tap = await broker.collect(broker.topology.commands_exchange)
    path = tmp_path / "recording.jsonl"
    lines = [
        _line("r-1"),
        "{not json",
        _line("r-2"),
        json.dumps({"v": 2, "exchange": "x", "routing_key": "y", "body": ""}),
        "",
        "# a comment",
        _line("r-1"),  # the same command again
    ]
    path.write_text("\n".join(lines) + "\n")

    refused = await run(cli_env, "replay", str(path))
    assert refused.returncode == 2, refused
    assert "line 2:" in refused.stderr and "line 4:" in refused.stderr
    assert "nothing published" in refused.stderr and "Traceback" not in refused.stderr

    skipped = await run(cli_env, "replay", str(path), "--skip-bad-lines")
    assert skipped.returncode == 0, skipped
    assert "published 3 of 3 messages (2 bad lines skipped)" in skipped.stderr
    await tap.wait_for(3)
    assert [m.message_id for m in tap.messages] == ["r-1", "r-2", "r-1"]
    # To the commands exchange of this prefix, whatever it was recorded from, as recorded.
    assert all(m.exchange == broker.topology.commands_exchange for m in tap.messages)
    assert all((m.headers or {}).get("x-origin") == b"\x01" for m in tap.messages)

    renewed = await run(cli_env, "replay", str(path), "--skip-bad-lines", "--new-ids")
    assert renewed.returncode == 0, renewed
    await tap.wait_for(6)
    new_ids = [m.message_id for m in tap.messages[3:]]
    assert new_ids[0] == new_ids[2] != new_ids[1]  # repeats keep repeating the same new id
    assert not {"r-1", "r-2"} & set(new_ids)
    uuid.UUID(str(new_ids[0]))

    # --rate, measured where it matters: the arrival times of the replayed messages at a
    # consumer of the exchange (process start-up is outside the first-to-last span).
    paced = tmp_path / "paced.jsonl"
    for rate, count in ((10.0, 16), (40.0, 41)):
        paced.write_text("".join(_line(f"p-{rate:.0f}-{n}") + "\n" for n in range(count)))
        seen = len(tap.messages)
        replayed = await run(cli_env, "replay", str(paced), "--rate", f"{rate:g}")
        assert replayed.returncode == 0, replayed
        await tap.wait_for(seen + count)
        arrivals = tap.arrival_times[seen : seen + count]
        measured = (count - 1) / (arrivals[-1] - arrivals[0])
        assert abs(measured - rate) <= 0.2 * rate, f"--rate {rate:g}: arrived at {measured:.1f}/s"

    missing = await run(cli_env, "replay", str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr

    # A message no queue takes is reported with its line, and the rest still go out.
    unroutable = tmp_path / "unroutable.jsonl"
    unroutable.write_text(_line("u-1") + "\n" + _line("u-2") + "\n")
    nobody = await run(
        cli_env, "replay", str(unroutable), "--exchange", broker.topology.events_exchange
    )
    assert nobody.returncode == 1, nobody
    assert "line 1 (coupon.redeem): not delivered" in nobody.stderr
    assert "line 2 (coupon.redeem): not delivered" in nobody.stderr
    assert "published 0 of 2 messages" in nobody.stderr


@pytest.mark.timeout(180)
async def test_record_stops_on_sigint_and_never_overwrites(
    broker: Broker, cli_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "tap.jsonl"
    recorder = await start_recording(cli_env, str(path))
    exchange = await broker.ch.get_exchange(broker.topology.commands_exchange, ensure=False)
    for n in range(2):
        await exchange.publish(aio_pika.Message(b"{}", message_id=f"sig-{n}"), "coupon.redeem")
    for _ in range(100):  # written and flushed one by one
        if len((await asyncio.to_thread(path.read_bytes)).splitlines()) == 2:
            break
        await asyncio.sleep(0.1)
    recorder.send_signal(signal.SIGINT)
    done = await finish(recorder)
    assert done.returncode == 0, done
    assert "recorded 2 messages" in done.stderr
    assert [m.properties.message_id for m in read_messages(path.read_bytes().splitlines())] == [
        "sig-0",
        "sig-1",
    ]
    again = await run(cli_env, "record", str(path), "--limit", "1")
    assert again.returncode == 2 and "exists" in again.stderr
    assert len(path.read_bytes().splitlines()) == 2
