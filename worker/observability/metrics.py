"""Prometheus metrics of one worker process.

Fed by the decorators of `worker.observability.metered`, which the composition root wraps around
the pipeline, the publisher and the unit of work (production classes know nothing of them), and
by two facts only the consumer sees: one hook (`delivered`, for redeliveries) and one reading
(`in_flight`).

Names follow Prometheus conventions: `coupon_worker_` prefix, base units (seconds), `_total` on
counters (added by the client library), labels with a small, closed set of values.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from typing import Final

from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

from contracts import names
from worker.app.outcomes import Outcome
from worker.messaging.retry import RETRY_REASONS, RetryReason

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# From a command's AMQP timestamp, which counts whole seconds (the sub-second part is dropped
# when it is sent): a reading is late by up to 1 s, so nothing finer than 1 s is told apart;
# the long end is a backlog, or an outage ridden out.
COMMAND_LATENCY_BUCKETS: Final = (1, 2, 3, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    """Every metric of the worker, in a registry of its own (several workers can live in one
    test process)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
        self.commands = Counter(
            "coupon_worker_commands",
            "Commands answered (outcome published and confirmed), by command and outcome; "
            "outcome is the event name, or the error of a coupon.error",
            ["routing_key", "outcome"],
            registry=registry,
        )
        self.duplicates = Counter(
            "coupon_worker_duplicate_commands",
            "Commands found already applied and answered from their stored outcome",
            registry=registry,
        )
        self.dead_lettered = Counter(
            "coupon_worker_dead_lettered_commands",
            "Commands the worker dead-lettered, by x-error (RabbitMQ's own dead letters, at the "
            "delivery limit, are not seen here: watch coupon_worker_dead_letter_queue_messages)",
            ["error"],
            registry=registry,
        )
        self.redeliveries = Counter(
            "coupon_worker_redeliveries",
            "Deliveries flagged as redelivered by the broker (a crash, a requeue, a lost ack)",
            registry=registry,
        )
        self.command_latency = Histogram(
            "coupon_worker_command_latency_seconds",
            "From a command's AMQP timestamp (when its sender published it) to its outcome "
            "published and confirmed; commands without a timestamp are not counted. AMQP "
            "timestamps have a resolution of 1 s: each reading is up to 1 s too long, and "
            "the buckets start at 1 s",
            buckets=COMMAND_LATENCY_BUCKETS,
            registry=registry,
        )
        self.retries = Counter(
            "coupon_worker_retries",
            "Tries again, by reason: transaction_conflict (a concurrent transaction won), "
            "dependency_unavailable (one per wait while the database is unavailable), "
            "batch_split (a failed batch tried command by command), command_failed (a "
            "command alone tried once more before it is dead-lettered)",
            ["reason"],
            registry=registry,
        )
        self.batch_duration = Histogram(
            "coupon_worker_batch_duration_seconds",
            "Time to handle one batch in one transaction: dedupe, handle, record, commit",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "coupon_worker_batch_size_commands",
            "Commands per batch handed to the pipeline",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.confirm_duration = Histogram(
            "coupon_worker_publish_confirm_duration_seconds",
            "Time from publishing to the broker's confirm, by what was published; each "
            "outcome of a batch counts the wait for all of the batch's confirms",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "coupon_worker_commands_in_flight",
            "Commands delivered to this worker and not yet settled",
            registry=registry,
        )
        self.broker_connected = Gauge(
            "coupon_worker_broker_connected",
            "1 while the broker connection is open",
            registry=registry,
        )
        self.database_up = Gauge(
            "coupon_worker_database_up", "1 while PostgreSQL answers SELECT 1", registry=registry
        )
        self.consuming = Gauge(
            "coupon_worker_consuming", "1 while the worker consumes its queue", registry=registry
        )
        self.broker_blocked = Gauge(
            "coupon_worker_broker_blocked",
            "1 while the broker blocks the publishing connection (a memory or disk alarm): the "
            "worker holds its batches and takes no new ones until the alarm clears",
            registry=registry,
        )
        self.broker_blocks = Counter(
            "coupon_worker_broker_blocks",
            "Times the broker blocked the publishing connection",
            registry=registry,
        )
        self.reconnects = Counter(
            "coupon_worker_broker_reconnects",
            "Broker connections opened anew after one was lost or given up, by role (consume, "
            "publish)",
            ["role"],
            registry=registry,
        )
        self.not_consuming = Gauge(
            "coupon_worker_not_consuming_seconds",
            "Seconds the worker has been unable to consume while the broker accepts connections "
            "(0 while it consumes); at WORKER_STUCK_LIMIT /healthz fails and the worker exits",
            registry=registry,
        )
        self.dead_letter_queue = Gauge(
            "coupon_worker_dead_letter_queue_messages",
            "Letters waiting in coupon.worker.dead (sampled by each worker)",
            registry=registry,
        )
        Info("coupon_worker_build", "Versions of this worker", registry=registry).info(
            {
                "version": _version(),
                "contract": names.CONTRACT_VERSION,
                "python": platform.python_version(),
            }
        )

        # Labelled children looked up once: `labels()` takes a lock and builds a key per call.
        self.outcome_confirm = self.confirm_duration.labels("outcome")
        self.dead_letter_confirm = self.confirm_duration.labels("dead_letter")
        self._commands: dict[tuple[str, str], Counter] = {}
        # Every reason exported from the start, at 0: a rate over it needs the series first.
        self._retries = {reason: self.retries.labels(reason) for reason in RETRY_REASONS}

    def retried(self, reason: RetryReason) -> None:
        """The retry policy's observer."""
        self._retries[reason].inc()

    def answered(self, command: AbstractIncomingMessage, now: datetime | None = None) -> None:
        """A command's outcome confirmed: its latency, when its sender stamped it."""
        sent = command.timestamp
        if sent is None:
            return
        if sent.tzinfo is None:  # aio-pika decodes them in UTC; a naive one is UTC too
            sent = sent.replace(tzinfo=UTC)
        waited = ((now or datetime.now(UTC)) - sent).total_seconds()
        self.command_latency.observe(max(waited, 0.0))  # another host's clock may run ahead

    def delivered(self, message: AbstractIncomingMessage) -> None:
        """The consumer's hook, once per delivery."""
        if message.redelivered:
            self.redeliveries.inc()

    def blocked(self, blocked: bool) -> None:
        """A publishing link's observer: blocked or unblocked by the broker."""
        self.broker_blocked.set(blocked)
        if blocked:
            self.broker_blocks.inc()

    def track_in_flight(self, read: Callable[[], int]) -> None:
        self.in_flight.set_function(lambda: float(read()))

    def outcome(self, outcome: Outcome) -> None:
        label = outcome.routing_key.removeprefix("coupon.")
        if outcome.routing_key == names.ERROR:
            label = str(json.loads(outcome.body).get("error", "unknown"))
        key = (outcome.command, label)
        child = self._commands.get(key)
        if child is None:
            child = self._commands[key] = self.commands.labels(*key)
        child.inc()


def _version() -> str:
    try:
        return metadata.version("coupon-worker")
    except metadata.PackageNotFoundError:
        return "unknown"
