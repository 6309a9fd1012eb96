"""Figures from arrival times: throughput first-to-last outcome, latency command→outcome, and
the paced publishing that offers commands at a steady rate to a running target."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import Any

from aio_pika.abc import AbstractExchange

from benchmarks.observer import Arrival
from contracts.amqp import to_amqp
from contracts.messages import CommandMessage

WARM_UP_SHARE = 0.05  # of a paced run's commands, left out of its latency figures


def first_answers(arrivals: Sequence[Arrival]) -> dict[str, float]:
    """When each command got its first outcome."""
    first: dict[str, float] = {}
    for arrival in arrivals:
        if arrival.command_id not in first or arrival.at < first[arrival.command_id]:
            first[arrival.command_id] = arrival.at
    return first


def throughput(arrivals: Sequence[Arrival], since: float | None = None) -> dict[str, float]:
    """Commands per second from the first outcome to the last command's first outcome: the
    target's start-up is outside the window, and so are late copies. `since`: only commands
    first answered from then on count (several processes: once every one is consuming)."""
    answers = sorted(at for at in first_answers(arrivals).values() if since is None or at >= since)
    if len(answers) < 2:
        return {"seconds": 0.0, "commands_per_second": 0.0}
    seconds = answers[-1] - answers[0]
    rate = (len(answers) - 1) / seconds if seconds > 0 else 0.0
    return {"seconds": round(seconds, 3), "commands_per_second": round(rate, 1)}


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of an ascending sequence (no interpolation: a real sample)."""
    rank = max(math.ceil(share * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def latency(
    messages: Sequence[CommandMessage], sent: dict[str, float], arrivals: Sequence[Arrival]
) -> dict[str, Any]:
    """Milliseconds from publish to first outcome, warm-up left out."""
    answers = first_answers(arrivals)
    skip = int(len(messages) * WARM_UP_SHARE)
    samples = sorted(
        (answers[m.message_id] - sent[m.message_id]) * 1000
        for m in messages[skip:]
        if m.message_id in answers and m.message_id in sent
    )
    if not samples:
        return {"samples": 0}
    return {
        "samples": len(samples),
        "warm_up_left_out": skip,
        "p50_ms": round(percentile(samples, 0.50), 2),
        "p99_ms": round(percentile(samples, 0.99), 2),
        "max_ms": round(samples[-1], 2),
    }


async def publish_paced(
    exchange: AbstractExchange, messages: Sequence[CommandMessage], rate: float
) -> tuple[dict[str, float], float]:
    """Publish at `rate` per second on a fixed schedule (a late tick is caught up, not
    skipped), without waiting for each confirm before the next; every confirm is awaited at
    the end. Returns the send time of each command and the rate actually achieved."""
    sent: dict[str, float] = {}
    confirms: list[asyncio.Task[Any]] = []
    started = time.perf_counter()
    for index, message in enumerate(messages):
        delay = started + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[message.message_id] = time.perf_counter()
        publish = exchange.publish(to_amqp(message), message.routing_key, mandatory=True)
        confirms.append(asyncio.ensure_future(publish))
    finished = time.perf_counter()
    await asyncio.gather(*confirms)
    achieved = (len(messages) - 1) / (finished - started) if len(messages) > 1 else 0.0
    return sent, achieved
