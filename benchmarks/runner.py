"""The whole benchmark, in one run so that every ratio compares figures taken minutes apart:

1. throughput, preloaded queue, per workload: the ceiling, then the worker;
2. latency, paced, on the latency workload: at the offered rate (200/s), then at half of the
   maximum each target reached in 1 (the ceiling at half the ceiling's, the worker at half
   the worker's);
3. memory: the worker's peak RSS in a long run of the memory workload, against its peak in
   the run of the same workload in 1.
"""

from __future__ import annotations

from typing import Any

from benchmarks.measure import Context, measure

TARGETS = ("ceiling", "worker")
GROWTH_TOLERANCE = 1.10  # peak RSS within 10 % counts as flat (issue 8's target)


async def run_all(context: Context) -> dict[str, Any]:
    config = context.config
    say = context.progress.say
    workloads = list(config.workloads)
    for needed in (config.latency_workload, config.memory_workload):
        if needed not in workloads:
            workloads.append(needed)

    throughput: dict[str, Any] = {}
    for workload in workloads:
        runs = {t: await measure(context, t, workload, config.commands) for t in TARGETS}
        ratio = _ratio(
            runs["worker"]["commands_per_second"], runs["ceiling"]["commands_per_second"]
        )
        throughput[workload] = {"commands": config.commands, **runs, "ratio_to_ceiling": ratio}
        say(
            f"== {workload}: worker {runs['worker']['commands_per_second']:.0f}/s, ceiling "
            f"{runs['ceiling']['commands_per_second']:.0f}/s, ratio {ratio:.2f}"
        )

    latency: dict[str, Any] = {}
    workload = config.latency_workload
    for level in ("offered", "half_max"):
        runs = {}
        for target in TARGETS:
            maximum = throughput[workload][target]["commands_per_second"]
            rate = config.latency_rate if level == "offered" else max(maximum / 2, 1.0)
            size = max(int(rate * config.latency_seconds), 20)
            runs[target] = await measure(context, target, workload, size, rate)
        p99 = _ratio(runs["worker"]["latency"]["p99_ms"], runs["ceiling"]["latency"]["p99_ms"])
        latency[level] = {"workload": workload, **runs, "p99_ratio_to_ceiling": p99}
        say(
            f"== latency {level}: worker p99 {runs['worker']['latency']['p99_ms']} ms, ceiling "
            f"p99 {runs['ceiling']['latency']['p99_ms']} ms"
        )

    short = throughput[config.memory_workload]["worker"]
    long = await measure(context, "worker", config.memory_workload, config.memory_commands)
    growth = _ratio(long["peak_rss_bytes"], short["peak_rss_bytes"])
    memory = {
        "workload": config.memory_workload,
        "short": {"commands": short["commands"], "peak_rss_bytes": short["peak_rss_bytes"]},
        "long": {"commands": long["commands"], "peak_rss_bytes": long["peak_rss_bytes"]},
        "long_run": long,
        "ratio": growth,
        "grows_with_count": growth > GROWTH_TOLERANCE,
    }
    say(f"== memory: peak RSS {growth:.2f}x from {short['commands']} to {long['commands']}")
    return {"throughput": throughput, "latency": latency, "memory": memory}


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator else 0.0
