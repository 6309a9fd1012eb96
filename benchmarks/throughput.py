"""What the benchmark measures: throughput of real worker processes in four variants, run
interleaved, and request/reply latency at low load.

The machine is shared and noisy, so absolute figures drift from minute to minute; the variants
are therefore measured side by side in the same run, in a rotating order, and compared as ratios
(each variant against the baseline measured next to it).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.harness import Bench, BenchmarkError, ready_time
from contracts.client import to_amqp
from contracts.commands import RedeemCoupon
from contracts.messages import command_message
from worker.settings import Settings

DEFAULT_BATCH_SIZE: int = Settings.model_fields["batch_size"].default


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    workers: int
    batch_size: int
    preloaded: bool  # the whole workload queued before the workers start, else published live
    about: str

    @property
    def mode(self) -> str:
        return "pre-loaded" if self.preloaded else "steady"


BASELINE = Variant(
    "baseline", 1, DEFAULT_BATCH_SIZE, True, "1 worker, default batch size, pre-loaded queue"
)
VARIANTS: tuple[Variant, ...] = (
    BASELINE,
    Variant("batch-1", 1, 1, True, "1 worker, WORKER_BATCH_SIZE=1, pre-loaded queue"),
    Variant("2-workers", 2, DEFAULT_BATCH_SIZE, True, "2 workers, default batch, pre-loaded"),
    Variant("steady", 1, DEFAULT_BATCH_SIZE, False, "1 worker, published while it consumes"),
)

# The comparisons the README reports: (label, numerator, denominator).
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    (f"batch_size {DEFAULT_BATCH_SIZE} vs 1", "baseline", "batch-1"),
    ("2 workers vs 1", "2-workers", "baseline"),
    ("pre-loaded vs steady", "baseline", "steady"),
)


@dataclass(frozen=True, slots=True)
class Trial:
    variant: str
    repetition: int
    commands: int
    measured: int  # outcomes counted in the timed window
    seconds: float
    throughput: float  # commands per second


async def run_trial(
    bench: Bench, variant: Variant, repetition: int, size: int, creates: float
) -> Trial:
    messages = bench.workload(size, creates, f"{variant.name}-{repetition}-{time.time_ns()}")
    await bench.expect_consumers(0, f"before {variant.name}")
    await bench.expect_empty_queue()
    before = await bench.processed_count()
    bench.clock.reset()
    within = 60 + size / 20  # generous: even batch-1 on a loaded machine does 20 commands/s
    if variant.preloaded:
        await bench.publish(messages)
        async with bench.workers(variant.workers, variant.batch_size) as workers:
            # Measure from the moment the last worker consumes, counting what arrived after.
            started = max(ready_time(worker) for worker in workers)
            finished = await bench.clock.wait_for(size, within)
        measured = sum(1 for arrival in bench.clock.arrivals if arrival > started)
        if measured < size // 2:
            raise BenchmarkError(
                f"{variant.name}: the queue drained before all workers were ready; "
                "use more --commands"
            )
    else:
        async with bench.workers(variant.workers, variant.batch_size):
            started, _ = await bench.publish(messages)
            finished = await bench.clock.wait_for(size, within)
        measured = size
    await bench.expect_empty_queue()
    applied = await bench.processed_count() - before
    if applied != size:
        raise BenchmarkError(f"{variant.name}: {size} commands sent, {applied} applied")
    seconds = finished - started
    return Trial(variant.name, repetition, size, measured, seconds, measured / seconds)


async def measure_latency(bench: Bench, requests: int, warm_up: int = 10) -> list[float]:
    """Milliseconds from publish to reply for `requests` redeems sent one at a time to one
    worker (the full path: transaction, commit, confirmed event and reply, ack)."""
    reply_to, waiting = await bench.reply_queue()
    exchange = await bench.broker.ch.get_exchange(
        bench.broker.topology.commands_exchange, ensure=False
    )
    samples: list[float] = []
    async with bench.workers(1, DEFAULT_BATCH_SIZE):
        for i in range(warm_up + requests):
            message = command_message(
                RedeemCoupon(code=bench.shared_codes[i % len(bench.shared_codes)]),
                reply_to=reply_to,
            )
            arrived = asyncio.get_running_loop().create_future()
            waiting[message.message_id] = arrived
            sent = time.perf_counter()
            await exchange.publish(to_amqp(message), message.routing_key)
            async with asyncio.timeout(30):
                received: float = await arrived
            if i >= warm_up:
                samples.append((received - sent) * 1000)
    return samples


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def summarise(trials: list[Trial], latencies: list[float]) -> dict[str, Any]:
    by_variant = {
        variant.name: [t.throughput for t in trials if t.variant == variant.name]
        for variant in VARIANTS
    }
    by_repetition: dict[int, dict[str, float]] = {}
    for trial in trials:
        by_repetition.setdefault(trial.repetition, {})[trial.variant] = trial.throughput
    variants = {
        variant.name: {
            "about": variant.about,
            "workers": variant.workers,
            "batch_size": variant.batch_size,
            "mode": variant.mode,
            "throughput_runs": [round(value, 1) for value in by_variant[variant.name]],
            "throughput_median": round(statistics.median(by_variant[variant.name]), 1),
        }
        for variant in VARIANTS
        if by_variant[variant.name]
    }
    comparisons = []
    for label, top, bottom in COMPARISONS:
        if top not in variants or bottom not in variants:
            continue
        paired = [
            runs[top] / runs[bottom]
            for runs in by_repetition.values()
            if top in runs and bottom in runs
        ]
        comparisons.append(
            {
                "comparison": label,
                "numerator": top,
                "denominator": bottom,
                "ratio_of_medians": round(
                    statistics.median(by_variant[top]) / statistics.median(by_variant[bottom]), 2
                ),
                "median_paired_ratio": round(statistics.median(paired), 2),
                "paired_ratios": [round(value, 2) for value in paired],
            }
        )
    latency = (
        {
            "requests": len(latencies),
            "p50_ms": round(percentile(latencies, 50), 1),
            "p99_ms": round(percentile(latencies, 99), 1),
            "max_ms": round(max(latencies), 1),
        }
        if len(latencies) >= 2
        else {}
    )
    return {"variants": variants, "comparisons": comparisons, "latency": latency}


def render(summary: dict[str, Any]) -> str:
    lines = [
        f"{'variant':<11} {'workers':>7} {'batch':>5} {'mode':<10} {'median cmd/s':>12}  runs",
    ]
    for name, row in summary["variants"].items():
        runs = ", ".join(f"{value:.0f}" for value in row["throughput_runs"])
        lines.append(
            f"{name:<11} {row['workers']:>7} {row['batch_size']:>5} {row['mode']:<10} "
            f"{row['throughput_median']:>12.0f}  {runs}"
        )
    lines.append("")
    lines.append(f"{'comparison':<24} {'ratio of medians':>16} {'median paired ratio':>20}")
    for row in summary["comparisons"]:
        lines.append(
            f"{row['comparison']:<24} {row['ratio_of_medians']:>15.2f}x "
            f"{row['median_paired_ratio']:>19.2f}x"
        )
    latency = summary["latency"]
    if latency:
        lines.append("")
        lines.append(
            f"request/reply latency, 1 worker, one request at a time ({latency['requests']}): "
            f"p50 {latency['p50_ms']:.1f} ms, p99 {latency['p99_ms']:.1f} ms, "
            f"max {latency['max_ms']:.1f} ms"
        )
    return "\n".join(lines)
