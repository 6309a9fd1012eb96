"""A benchmark run's raw record (`benchmarks/results/<stamp>.log`, one `FIGURES [...]` line
per measured run, written by benchmarks/runner.py) and the result file's headline figures
rebuilt from it with the runner's own summaries: `tests/unit/test_benchmark_record.py` compares
the two, so a figure edited by hand in a result file shows."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from benchmarks.provenance import parse_figures_line
from benchmarks.runner import GROWTH_TOLERANCE, TARGETS, ratio, summarize_latency
from benchmarks.runner import summarize_throughput as _throughput


def _number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        return float(text)


def runs(lines: list[str]) -> list[tuple[list[str], dict[str, float | int]]]:
    """(label words, figures) of every run, in order."""
    parsed = []
    for text in lines:
        if text.strip():
            label, figures = parse_figures_line(text)
            parsed.append((label.split(" "), {k: _number(v) for k, v in figures.items()}))
    return parsed


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The figures a result file states for the tables (no per-run detail)."""
    out: dict[str, Any] = {"ceiling": result["ceiling"]}
    for workload, row in result["throughput"].items():
        out[f"throughput {workload}"] = {
            "ratio_to_ceiling": row["ratio_to_ceiling"],
            "ratio_range": row["ratio_range"],
            **{
                target: {k: row[target][k] for k in ("commands_per_second", "range")}
                for target in TARGETS
            },
        }
    for level, row in result["latency"].items():
        out[f"latency {level}"] = {
            "p99_ratio_to_ceiling": row["p99_ratio_to_ceiling"],
            **{target: row[target]["latency"] for target in TARGETS},
        }
    memory = result["memory"]
    out["memory"] = {k: memory[k] for k in ("short", "long", "ratio", "grows_with_count")}
    return out


def rebuild(lines: list[str], workload_of_memory: str) -> dict[str, Any]:
    """`headline` of the result file, computed from its raw record alone."""
    out: dict[str, Any] = {}
    tried: list[dict[str, Any]] = []
    choice_workload = ""
    throughput: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(
        lambda: {t: [] for t in TARGETS}
    )
    latency: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(
        lambda: {t: [] for t in TARGETS}
    )
    commands: dict[str, int] = {}
    long: dict[str, Any] = {}
    for words, figures in runs(lines):
        phase, workload, target = words[0], words[1], words[2]
        extra = dict(word.split("=", 1) for word in words[4:])
        if phase == "ceiling-choice":
            choice_workload = workload
            loop, concurrency = extra["config"].rsplit("x", 1)
            tried.append(
                {
                    "loop": loop,
                    "concurrency": int(concurrency),
                    "commands_per_second": figures["commands_per_second"],
                }
            )
        elif phase == "throughput":
            throughput[workload][target].append(figures)
            commands[workload] = int(figures["commands"])
        elif phase == "latency":
            run = {
                "offered_per_second": figures["offered_per_second"],
                "latency": {k: figures[k] for k in ("p50_ms", "p99_ms", "max_ms")},
            }
            latency[extra["level"]][target].append(run)
        elif phase == "memory":
            long = {"commands": figures["commands"], "peak_rss_bytes": figures["peak_rss_bytes"]}
    best = max(tried, key=lambda t: t["commands_per_second"])
    out["ceiling"] = {
        "workload": choice_workload,
        "tried": tried,
        "chosen": {"loop": best["loop"], "concurrency": best["concurrency"]},
    }
    for workload, by_target in throughput.items():
        row = _throughput(by_target)
        out[f"throughput {workload}"] = {
            "ratio_to_ceiling": row["ratio_to_ceiling"],
            "ratio_range": row["ratio_range"],
            **{
                target: {k: row[target][k] for k in ("commands_per_second", "range")}
                for target in TARGETS
            },
        }
    for level, by_target in latency.items():
        row = summarize_latency(by_target)
        out[f"latency {level}"] = {
            "p99_ratio_to_ceiling": row["p99_ratio_to_ceiling"],
            **{target: row[target]["latency"] for target in TARGETS},
        }
    short_peak = max(int(r["peak_rss_bytes"]) for r in throughput[workload_of_memory]["worker"])
    memory_ratio = ratio(long["peak_rss_bytes"], short_peak)
    out["memory"] = {
        "short": {"commands": commands[workload_of_memory], "peak_rss_bytes": short_peak},
        "long": long,
        "ratio": memory_ratio,
        "grows_with_count": memory_ratio > GROWTH_TOLERANCE,
    }
    return out
