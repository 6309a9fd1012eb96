"""What one benchmark run does, from flags and the environment, and the worker knobs it sets.

The knobs of the worker under test (batch bound, prefetch, concurrency, pool size) come from the
flags, else from the worker's own environment variables (`WORKER_BATCH_SIZE=50 make bench`),
else are left to the worker's defaults. The ceiling process is given the same prefetch and
batch bound, so that both consume the same way.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.settings import Settings

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# Flag name → the worker's environment variable and its Settings field.
KNOBS: dict[str, tuple[str, str]] = {
    "batch_size": ("WORKER_BATCH_SIZE", "batch_size"),
    "prefetch": ("WORKER_PREFETCH", "prefetch"),
    "concurrency": ("WORKER_CONCURRENCY", "concurrency"),
    "pool_size": ("WORKER_DB_POOL_SIZE", "db_pool_size"),
}
WORKLOAD_NAMES = ("create", "redeem", "redeem-hot", "mixed")
QUICK_COMMANDS = 2000  # windows of a second or more: 500 gave sub-second windows, start-up noise
REPETITIONS = 3  # interleaved repetitions per figure (ceiling, worker, ceiling, worker, ...)
FLOOR = 0.5  # CI's quick benchmark fails a workload whose worker is below this share of the ceiling
LOOPS = ("asyncio", "uvloop")


@dataclass(frozen=True, slots=True)
class CeilingConfiguration:
    """How the broker-only ceiling process runs: its event loop and batches in flight."""

    loop: str
    concurrency: int

    @property
    def name(self) -> str:
        return f"{self.loop} x{self.concurrency}"

    def describe(self) -> dict[str, Any]:
        return {"loop": self.loop, "concurrency": self.concurrency}


@dataclass(frozen=True, slots=True)
class BenchConfig:
    amqp_url: str
    admin_database_url: str
    workloads: tuple[str, ...] = WORKLOAD_NAMES
    commands: int = 20_000  # preloaded commands per throughput run
    memory_commands: int = 100_000  # the long run whose peak RSS is compared with `commands`'
    memory_workload: str = "mixed"
    latency_workload: str = "create"
    latency_rate: float = 200.0  # commands/s offered in the first latency run
    latency_seconds: float = 10.0  # length of each latency run
    coupons: int = 1_000  # preseeded coupons the redeems of `redeem` and `mixed` spread over
    seed: int = 20261127
    repetitions: int = REPETITIONS
    quick: bool = False
    knobs: dict[str, int] = field(default_factory=dict)  # only what was set explicitly
    worker_log_level: str | None = None
    output_dir: Path = RESULTS_DIR

    def effective_knob(self, name: str) -> int:
        """The value the worker will use: as set, else the worker's own default."""
        if name in self.knobs:
            return self.knobs[name]
        default = Settings.model_fields[KNOBS[name][1]].default
        assert isinstance(default, int)
        return default

    def ceiling_configurations(self) -> list[CeilingConfiguration]:
        """The ceilings tried: the worker's own loop (uvloop, as the worker runs by default)
        and concurrency first, then one batch at a time, then the default loop; the benchmark
        measures against the best of them."""
        concurrency = self.effective_knob("concurrency")
        tried = [("uvloop", concurrency), ("uvloop", 1), ("asyncio", concurrency), ("asyncio", 1)]
        return [CeilingConfiguration(loop, c) for loop, c in dict.fromkeys(tried)]

    def worker_environment(self) -> dict[str, str]:
        env = {KNOBS[name][0]: str(value) for name, value in self.knobs.items()}
        if self.worker_log_level:
            env["WORKER_LOG_LEVEL"] = self.worker_log_level
        return env

    def describe(self) -> dict[str, Any]:
        """The settings used, as written to the result file."""
        return {
            "workloads": list(self.workloads),
            "commands": self.commands,
            "memory_commands": self.memory_commands,
            "memory_workload": self.memory_workload,
            "latency_workload": self.latency_workload,
            "latency_rate": self.latency_rate,
            "latency_seconds": self.latency_seconds,
            "coupons": self.coupons,
            "seed": self.seed,
            "repetitions": self.repetitions,
            "quick": self.quick,
            "worker_knobs_set": dict(self.knobs),
            "worker_knobs_effective": {name: self.effective_knob(name) for name in KNOBS},
            "worker_log_level": self.worker_log_level or "worker default",
        }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Throughput, latency and memory of coupon-worker processes against a "
        "broker-only ceiling process, on the local RabbitMQ and PostgreSQL (AMQP_URL, "
        "DATABASE_URL). Fails (exit 1) if the worker lost or doubled any command.",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: small counts (2000)")
    parser.add_argument("--commands", type=int, help="preloaded commands per run (20000)")
    parser.add_argument("--memory-commands", type=int, help="long run for peak RSS (100000)")
    parser.add_argument("--memory-workload", choices=WORKLOAD_NAMES, default="mixed")
    parser.add_argument("--latency-workload", choices=WORKLOAD_NAMES, default="create")
    parser.add_argument("--latency-rate", type=float, default=200.0, help="offered/s (200)")
    parser.add_argument("--latency-seconds", type=float, help="length of a latency run (10)")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOAD_NAMES, default=WORKLOAD_NAMES)
    parser.add_argument("--coupons", type=int, default=1_000, help="preseeded coupons (1000)")
    parser.add_argument("--seed", type=int, default=20261127, help="workload random seed")
    parser.add_argument(
        "--repetitions",
        type=int,
        default=REPETITIONS,
        help=f"interleaved repetitions per figure, its median reported ({REPETITIONS})",
    )
    for name, (variable, _) in KNOBS.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, help=f"worker's {variable} (else from env)"
        )
    parser.add_argument("--worker-log-level", help="the worker's WORKER_LOG_LEVEL")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    return parser


def service_urls(environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """(AMQP_URL, DATABASE_URL) as every phase reads them: the local services by default."""
    return (
        environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        environ.get("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"),
    )


def config_from(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> BenchConfig:
    knobs: dict[str, int] = {}
    for name, (variable, _) in KNOBS.items():
        value = getattr(args, name)
        if value is None and environ.get(variable):
            value = int(environ[variable])
        if value is not None:
            knobs[name] = value
    quick = bool(args.quick)
    commands = args.commands or (QUICK_COMMANDS if quick else 20_000)
    amqp_url, admin_database_url = service_urls(environ)
    config = BenchConfig(
        amqp_url=amqp_url,
        admin_database_url=admin_database_url,
        workloads=tuple(args.workloads),
        commands=commands,
        memory_commands=args.memory_commands or (commands * 4 if quick else 100_000),
        memory_workload=args.memory_workload,
        latency_workload=args.latency_workload,
        latency_rate=args.latency_rate,
        latency_seconds=args.latency_seconds or (2.0 if quick else 10.0),
        coupons=args.coupons,
        seed=args.seed,
        repetitions=args.repetitions,
        quick=quick,
        knobs=knobs,
        worker_log_level=args.worker_log_level,
        output_dir=args.output_dir,
    )
    check(config)
    return config


def check(config: BenchConfig) -> None:
    """Bounded inputs: a clear message instead of a run that cannot mean anything."""
    problems = []
    if not 100 <= config.commands <= 1_000_000:
        problems.append("--commands must be from 100 to 1,000,000")
    if not config.commands <= config.memory_commands <= 2_000_000:
        problems.append("--memory-commands must be from --commands to 2,000,000")
    if not 1 <= config.latency_rate <= 100_000:
        problems.append("--latency-rate must be from 1 to 100,000")
    if not 1 <= config.latency_seconds <= 600:
        problems.append("--latency-seconds must be from 1 to 600")
    if not 3 <= config.repetitions <= 20:
        problems.append("--repetitions must be from 3 to 20 (a median needs three)")
    if not 1 <= config.coupons <= 100_000:
        problems.append("--coupons must be from 1 to 100,000")
    if any(value < 1 for value in config.knobs.values()):
        problems.append("worker knobs must be positive")
    if problems:
        raise ValueError("; ".join(problems))
