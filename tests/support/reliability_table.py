"""Render the Reliability table (docs/reliability.md) from one stored run of the fault suite.

    uv run python -m tests.support.reliability_table                 # print it
    uv run python -m tests.support.reliability_table --write docs/reliability.md  # replace it

It reads the result file that run wrote (`RELIABILITY_RESULTS=…`, see tests/support/figures.py;
default `tests/results/reliability.json`) and fills every measured figure from it: a figure the
file lacks stops the rendering, so the table never shows a number no run produced. In
docs/reliability.md the table sits between the markers `<!-- reliability:start -->` and
`<!-- reliability:end -->`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

DEFAULT_RESULTS: Final = Path("tests/results/reliability.json")
START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"


class Figures:
    def __init__(self, document: dict[str, Any]) -> None:
        self.run: dict[str, Any] = document["run"]
        self.by_label: dict[str, dict[str, Any]] = document["figures"]

    def __call__(self, label: str, key: str, *, plain: bool = False) -> str:
        try:
            value = self.by_label[label][key]
        except KeyError:
            raise SystemExit(f"the result file has no figure {key!r} for [{label}]") from None
        if plain:
            return str(value)
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, int):
            return f"{value:,}"
        if isinstance(value, float):
            return f"{value:,.1f}" if value >= 10 else f"{value:g}"
        return str(value)

    def kinds(self, label: str) -> dict[str, str]:
        text = self(label, "outcome_kinds")
        pairs = (item.split(":") for item in text.split(",") if ":" in item)
        return {kind: f"{int(count):,}" for kind, count in pairs}


def _row(number: int, fault: str, injected: str, measured: str, test_file: str) -> str:
    return f"| {number}. {fault} | {injected} | {measured} | `{test_file}` |"


def _crash(f: Figures) -> str:
    c = "crash anywhere"
    kinds = f.kinds(c)
    return (
        f"{f(c, 'commands')} commands ({f(c, 'sent')} publishes, re-sent `message_id`s "
        f"included), {f(c, 'kills')} SIGKILLs (seed {f(c, 'seed', plain=True)}), each "
        f"interrupting work: {f(c, 'returned_by_kills')} unacked commands "
        f"returned to the queue by the kills, per kill (processed / queued / returned) "
        f"{f(c, 'processed_by_run_queued_and_returned_at_kill')}: **{f(c, 'lost')} lost, "
        f"{f(c, 'doubled')} doubled, {f(c, 'dead_lettered')} dead-lettered, "
        f"{f(c, 'wrong_outcomes')} wrong outcomes**; {f(c, 'distinct_outcomes')} distinct "
        f"outcomes ({f(c, 'duplicates')} extra copies, each with its command's one event "
        f"`message_id`; redeemed {kinds.get('redeemed', '0')}, Exhausted "
        f"{kinds.get('Exhausted', '0')}, DoesNotExist {kinds.get('DoesNotExist', '0')}, "
        f"AlreadyExists {kinds.get('AlreadyExists', '0')}); {f(c, 'redemptions')} redemptions "
        f"in the database = distinct `coupon.redeemed`; all settled "
        f"{f(c, 'settled_seconds_after_last_restart')} s after the last restart"
    )


def _worst(f: Figures) -> str:
    points = ("handle", "before_commit", "after_commit", "after_publish")
    labels = [f"worst point {p}" for p in points]

    def each(key: str) -> str:
        return " / ".join(f(label, key) for label in labels)

    committed = each("fault_commands_committed_before_restart")
    return (
        f"{each('commands')} commands, 1 kill each (exit {each('faulty_exit')}), at "
        + ", ".join(f"`{p}`" for p in points)
        + f": **{each('lost')} lost, {each('doubled')} doubled, {each('wrong_outcomes')} wrong**;"
        f" fault commands committed before the restart {committed},"
        f" published {each('fault_commands_published_before_restart')}; republished copies "
        f"{each('duplicates')} (same event ids); recovered {each('recovery_seconds')} s after "
        "restart"
    )


def _broker(f: Figures) -> str:
    s, c = "broker stop_app/start_app", "broker close_all_connections"
    return (
        f"`stop_app` {f(s, 'broker_down_seconds')} s under a steady flow: resumed "
        f"{f(s, 'resumed_seconds_after_broker_answered')} s after RabbitMQ answered, same process "
        f"(reconnects: {f(s, 'worker_reconnects')}, starts: {f(s, 'worker_ready_logs')}), "
        f"{f(s, 'distinct_outcomes')}/{f(s, 'commands')} outcomes, {f(s, 'duplicates')} extra "
        f"copies, **{f(s, 'lost')} lost, {f(s, 'doubled')} doubled, {f(s, 'dead_lettered')} "
        f"dead-lettered, {f(s, 'wrong_outcomes')} wrong (no `Exhausted`)**; "
        f"`close_all_connections`: resumed {f(c, 'resumed_seconds_after_broker_answered')} s "
        f"after, {f(c, 'distinct_outcomes')}/{f(c, 'commands')} outcomes, **{f(c, 'lost')} lost, "
        f"{f(c, 'doubled')} doubled, {f(c, 'wrong_outcomes')} wrong**"
    )


def _database(f: Figures) -> str:
    d = "database outage"
    return (
        f"PostgreSQL stopped {f(d, 'outage_seconds')} s, {f(d, 'commands_sent_during_outage')} "
        f"commands sent meanwhile (none answered before it returned), queue delivery limit "
        f"{f(d, 'delivery_limit')}: **{f(d, 'dead_lettered')} dead-lettered, {f(d, 'lost')} lost, "
        f"{f(d, 'doubled')} doubled, {f(d, 'wrong_outcomes')} wrong (no `Exhausted`)**, "
        f"{f(d, 'distinct_outcomes')}/{f(d, 'commands')} outcomes; all processed "
        f"{f(d, 'processed_seconds_after_postgres_answered')} s after PostgreSQL answered; "
        f"outage logged {f(d, 'outage_logged')}, recovery {f(d, 'recovery_logged')} "
        f"({f(d, 'retries_in_outage')} retries, no requeues); worker starts: "
        f"{f(d, 'worker_ready_logs')}"
    )


def _poison(f: Figures) -> str:
    r, c = "poison: always raises", "poison: always crashes"
    return (
        f"delivery limit {f(c, 'delivery_limit')}. Always raising: dead-lettered with `x-error` "
        f"`{f(r, 'poison_reason')}`, worker up throughout (starts: {f(r, 'worker_ready_logs')}), "
        f"{f(r, 'answered_behind_poison')}/{f(r, 'sent_behind_poison')} commands sent behind it "
        f"answered once. Always crashing: {f(c, 'crashes')} crashes, then dead-lettered by "
        f"RabbitMQ (`x-death` reason `{f(c, 'poison_reason')}`), "
        f"{f(c, 'answered_behind_poison')}/{f(c, 'sent_behind_poison')} sent behind it answered "
        f"once, **{f(c, 'lost')} lost, {f(c, 'doubled')} doubled, {f(c, 'wrong_outcomes')} "
        "wrong**"
    )


def _stop(f: Figures) -> str:
    s, g = "graceful stop (in flight finished)", "graceful stop (grace elapsed)"
    return (
        f"SIGTERM with {f(s, 'held_at_sigterm')} in flight (the prefetch of 100 plus the careful "
        f"start's one; redeems held on a row lock): all {f(s, 'answered_by_stopping_worker')} "
        f"answered, exit {f(s, 'exit_code')} in {f(s, 'exit_seconds')} s (grace "
        f"{f(s, 'grace_period')} s), {f(s, 'queued_at_sigterm')} queued before and "
        f"{f(s, 'left_queued')} after (nothing new taken), {f(s, 'duplicates')} delivered twice, "
        f"**{f(s, 'dead_lettered')} dead-lettered, {f(s, 'lost')} lost**. With the lock held past "
        f"a {f(g, 'grace_period')} s grace: exit {f(g, 'exit_code')} in {f(g, 'exit_seconds')} s, "
        f"{f(g, 'returned')} of {f(g, 'held_at_sigterm')} returned "
        f"({f(g, 'back_in_queue')} back in the queue), {f(g, 'dead_lettered')} dead-lettered; "
        "after restart "
        f"{f(g, 'distinct_outcomes')}/{f(g, 'commands')} outcomes, {f(g, 'doubled')} doubled"
    )


def _many(f: Figures) -> str:
    m = "many workers"
    kinds = f.kinds(m)
    return (
        f"{f(m, 'workers')} workers consuming (processed {f(m, 'processed_by')}), "
        f"{f(m, 'commands')} commands ({f(m, 'sent')} publishes, duplicates included): **exactly "
        f"{kinds.get('redeemed', '0')} `coupon.redeemed`, {kinds.get('Exhausted', '0')} "
        f"`Exhausted`**, `remaining_count` {f(m, 'remaining')}, {f(m, 'lost')} lost, "
        f"{f(m, 'doubled')} doubled, {f(m, 'wrong_outcomes')} wrong; duplicates answered with "
        "the same event ids"
    )


def _bad(f: Figures) -> str:
    b = "bad input"
    return (
        f"{f(b, 'corpus')} table entries + {f(b, 'generated')} generated bodies (their expected "
        f"`x-error` from an independent reading of the contract, tests/support/contract_rules.py)"
        f" interleaved with {f(b, 'valid_interleaved')} valid commands: "
        f"{f(b, 'dead_lettered_in_all')} dead-lettered exactly once ({f(b, 'x_errors')}), "
        f"worker running at the end: {f(b, 'worker_running_at_end')} (starts: "
        f"{f(b, 'worker_started')}, error log lines: {f(b, 'error_log_lines')}), every coupon "
        f"row from a valid create, all {f(b, 'distinct_outcomes')} valid commands answered, "
        f"{f(b, 'wrong_outcomes')} wrong"
    )


def _security(f: Figures) -> str:
    lp, ns, tls, sql = "least privilege", "no secrets", "amqps", "sql injection"
    return (
        f"least-privilege user: processes, dead-letters and replies (exit "
        f"{f(lp, 'stop_exit')}); missing topology → exit {f(lp, 'missing_topology_exit')} naming "
        f"what is missing; {f(ns, 'failure_cases')} failure cases + a DEBUG run "
        f"({f(ns, 'log_lines')} log lines), {f(ns, 'lines_searched')} lines searched: "
        f"**{f(ns, 'passwords_found')} passwords**; `amqps://` through a TLS proxy with a test "
        f"CA: TLS handshakes {f(tls, 'tls_handshakes')}, "
        f"{f(tls, 'refusal_cases')} refusal cases with clear messages; injection strings rejected "
        f"by the code rules, stored literally through the repositories (tables intact: "
        f"{f(sql, 'tables_intact')})"
    )


def _silent(f: Figures) -> str:
    def one(label: str, peer: str) -> str:
        return (
            f"{peer}: dark {f(label, 'partition_seconds')} s, detected "
            f"{f(label, 'detected_seconds_after_silence')} s after it went silent; "
            f"{f(label, 'commands_without_outcome_at_network_back')} commands waiting when the "
            f"network came back, first outcome "
            f"{f(label, 'first_outcome_seconds_after_network_back')} s and all "
            f"{f(label, 'all_outcomes_in_seconds_after_network_back')} s after; "
            f"{f(label, 'distinct_outcomes')}/{f(label, 'commands')} outcomes, **{f(label, 'lost')}"
            f" lost, {f(label, 'doubled')} doubled**"
        )

    return f"{one('silent broker', 'RabbitMQ')}; {one('silent database', 'PostgreSQL')}"


def _cluster(f: Figures) -> str:
    node, leader = "cluster: worker's node stopped", "cluster: quorum queue leader stopped"
    sync = "database failover (synchronous standby)"
    async_ = "database failover (asynchronous standby)"
    return (
        f"worker's node ({f(node, 'worker_node_before')}) stopped: resumed on "
        f"{f(node, 'worker_node_after')} {f(node, 'resumed_seconds_after_node_stopped')} s after, "
        f"**{f(node, 'lost')} lost, {f(node, 'doubled')} doubled**; queue leader "
        f"({f(leader, 'leader_before')}) stopped: new leader {f(leader, 'leader_after')}, resumed "
        f"{f(leader, 'resumed_seconds_after_node_stopped')} s after, **{f(leader, 'lost')} lost, "
        f"{f(leader, 'doubled')} doubled**; PostgreSQL failover to a synchronous standby: "
        f"resumed {f(sync, 'resumed_seconds_after_promotion')} s after promotion, "
        f"**{f(sync, 'acked_effects_lost')} acknowledged effects lost, {f(sync, 'lost')} lost, "
        f"{f(sync, 'doubled')} doubled**; to an asynchronous standby (the cost measured, not "
        f"a guarantee): {f(async_, 'outcomes_acked_in_window')} outcomes acknowledged while "
        f"the standby was cut off for {f(async_, 'lag_window_seconds')} s "
        f"({f(async_, 'outcomes_acked_until_primary_stopped')} until the primary stopped); "
        f"**{f(async_, 'acked_effects_lost')} acknowledged commands have no effect** on the new "
        f"primary, and the ledger counts {f(async_, 'doubled')} effects doubled and "
        f"{f(async_, 'wrong_outcomes')} wrong outcomes (counter values handed out again)"
    )


def _alarms(f: Figures) -> str:
    def one(resource: str) -> str:
        short, long = f"{resource} alarm 10 s", f"{resource} alarm 90 s"

        def both(key: str) -> str:
            return f"{f(short, key)} / {f(long, key)}"

        return (
            f"{resource}: held {both('alarm_held_seconds')} s (in effect "
            f"{both('alarm_took_effect_seconds')} s after it was set) over "
            f"{both('commands')} commands, queued while the worker was frozen "
            f"{both('freeze_seconds')} s; all answered {both('last_outcome_seconds_after_clear')} "
            f"s after the clear, {both('distinct_outcomes')} outcomes, **{both('lost')} lost, "
            f"{both('doubled')} doubled, {both('dead_lettered')} dead-lettered, "
            f"{both('wrong_outcomes')} wrong**; worker exits {both('worker_exits')}, restarts "
            f"{both('restarts')}, consumers after the clear {both('consumers_after_clear')}, "
            f"`/healthz` after it {both('healthz_after_clear')}; `broker_blocked` / "
            f"`broker_unblocked` logged {f(short, 'broker_blocked_logs')}/"
            f"{f(short, 'broker_unblocked_logs')} and {f(long, 'broker_blocked_logs')}/"
            f"{f(long, 'broker_unblocked_logs')}"
        )

    return f"each pair: held 10 s / 90 s. {one('memory')}. {one('disk')}"


def _closed(f: Figures) -> str:
    def one(role: str, kind: str) -> str:
        c = f"closed {role} connection"
        name = f(c, "connection_closed", plain=True).replace("_", " ")  # stated without spaces
        return (
            f"{kind} connection (`{name}`) closed: resumed "
            f"{f(c, 'resumed_seconds_after_close')} s after, same process (reconnects: "
            f"{f(c, 'worker_reconnects')}, starts: "
            f"{f(c, 'worker_ready_logs')}), {f(c, 'distinct_outcomes')}/{f(c, 'commands')} "
            f"outcomes, **{f(c, 'lost')} lost, {f(c, 'doubled')} doubled, "
            f"{f(c, 'dead_lettered')} dead-lettered, {f(c, 'wrong_outcomes')} wrong**"
        )

    return f"{one('consume', 'consuming')}; {one('publish', 'publishing')}"


ROWS: list[tuple[str, str, Callable[[Figures], str], str]] = [
    (
        "Crash anywhere",
        "≥ 5,000 mixed commands (creates, redeems of shared coupons, duplicate `message_id`s); "
        "the worker SIGKILLed 6 times at random points of the stream's progress, while work is "
        "queued (frozen first, so that the broker can count what each kill interrupts) and "
        "restarted, each next kill possibly in its careful start",
        _crash,
        "tests/faults/test_crash.py",
    ),
    (
        "Crash at the worst points",
        "SIGKILL mid-transaction, before commit, after commit before publish, and after publish "
        "before ack (`WORKER_FAULT_PLAN`)",
        _worst,
        "tests/faults/test_worst_points.py",
    ),
    (
        "Broker restart",
        "RabbitMQ app stopped and started during a run; separately, every broker connection "
        "force-closed",
        _broker,
        "tests/faults/test_broker_restart.py",
    ),
    (
        "Database outage",
        "PostgreSQL unreachable ≥ 30 s with commands arriving",
        _database,
        "tests/faults/test_database_outage.py",
    ),
    (
        "Poison",
        "a command that always fails unexpectedly, and one that crashes the process",
        _poison,
        "tests/faults/test_poison.py",
    ),
    (
        "Graceful stop",
        "SIGTERM with a full prefetch window in flight",
        _stop,
        "tests/faults/test_graceful_stop.py",
    ),
    (
        "Many workers, no oversell",
        "4 worker processes; a coupon with 100 left; 1,000 distinct redeems plus duplicates",
        _many,
        "tests/faults/test_many_workers.py",
    ),
    (
        "Bad input at scale",
        "a hand-written table of invalid bodies and ≥ 2,000 generated ones (hypothesis), "
        "interleaved with valid commands",
        _bad,
        "tests/faults/test_bad_input.py",
    ),
    (
        "Security",
        "least-privilege RabbitMQ user with `WORKER_DECLARE_TOPOLOGY=false`; known passwords "
        "searched for in every log line and error; `amqps://` with a CA file; SQL-injection "
        "strings as codes",
        _security,
        "tests/faults/test_security.py",
    ),
    (
        "Silent peers",
        "a TCP proxy between the worker and RabbitMQ, then PostgreSQL, that goes dark (no FIN, "
        "no RST: a half-open connection) for 20 s with commands arriving",
        _silent,
        "tests/faults/test_silent_peers.py",
    ),
    (
        "Past one machine",
        "a 3-node RabbitMQ cluster on loopback (`scripts/rabbit-cluster`): the worker's node "
        "stopped, then the quorum queue's leader; PostgreSQL primary stopped and a standby "
        "promoted (`scripts/pg-standby`), synchronous and asynchronous",
        _cluster,
        "tests/faults/test_cluster.py",
    ),
    (
        "Resource alarms",
        "a RabbitMQ memory alarm, then a disk alarm (`rabbitmqctl set_vm_memory_high_watermark`, "
        "`set_disk_free_limit`), each held 10 s and 90 s, met by ~6,000 mixed commands "
        "(creates, redeems of shared coupons and of unknown codes, duplicate `message_id`s) "
        "queued while the worker was frozen; every outcome due within 15 s of the clear",
        _alarms,
        "tests/faults/test_resource_alarms.py",
    ),
    (
        "Connections closed under the worker",
        "`rabbitmqctl close_connection` on the worker's consuming connection, then on its "
        "publishing one, under a steady flow",
        _closed,
        "tests/faults/test_resource_alarms.py",
    ),
]


def render(document: dict[str, Any], source: str) -> str:
    f = Figures(document)
    run = f.run
    machine = run["machine"]
    failed = run["failed"]
    lines = [
        f"Figures from one run of the fault suite, stored in `{source}`: started "
        f"{run['started_at']}, {run['seconds']:.0f} s, commit `{run['commit']}`"
        + (" (with uncommitted changes)" if run["uncommitted_changes"] else "")
        + f", {run['tests']} tests, "
        + (f"**{len(failed)} failed**" if failed else "all passed")
        + f"; {machine['cpus']} CPUs, load average {machine['load_average_at_start']} at the "
        f"start and {machine['load_average_at_end']} at the end (the machine is shared).",
        "",
        "| fault | what was injected | measured figures | test file |",
        "| --- | --- | --- | --- |",
    ]
    for number, (fault, injected, measured, test_file) in enumerate(ROWS, start=1):
        lines.append(_row(number, fault, injected, measured(f), test_file))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument(
        "--write", type=Path, help="replace the table in this file (docs/reliability.md)"
    )
    options = parser.parse_args(argv)
    table = render(json.loads(options.results.read_text()), str(options.results))
    if options.write is None:
        print(table)  # noqa: T201
        return 0
    text = options.write.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{options.write} has no {START} … {END} markers")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    options.write.write_text(f"{before}{START}\n{table}\n{END}{after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
