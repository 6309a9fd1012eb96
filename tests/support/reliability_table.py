"""Render the tables of docs/reliability.md from one stored run of the fault suite.

    uv run python -m tests.support.reliability_table                 # print them
    uv run python -m tests.support.reliability_table --write docs/reliability.md  # replace them

It reads the result file that run wrote (`RELIABILITY_RESULTS=…`, see tests/support/figures.py;
default `tests/results/reliability.json`) and fills every measured figure from it: a figure the
file lacks stops the rendering, so a table never shows a number no run produced, and no claim
is written that a figure does not carry. Each table says which run it is from (time, commit,
result file, raw record) and whether the code under test changed since that commit ("stale
since …", `benchmarks/provenance.py`). In docs/reliability.md the Reliability table sits
between `<!-- reliability:start -->` and `<!-- reliability:end -->`, the Past-one-machine table
between `<!-- past-one-machine:start -->` and `<!-- past-one-machine:end -->`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from benchmarks import provenance

DEFAULT_RESULTS: Final = Path("tests/results/reliability.json")
START, END = "<!-- reliability:start -->", "<!-- reliability:end -->"
CLUSTER_START, CLUSTER_END = "<!-- past-one-machine:start -->", "<!-- past-one-machine:end -->"
TIMES: Final = "\N{MULTIPLICATION SIGN}"


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

    def bound(self, label: str, name: str) -> str:
        """`(bound N s: rule)` of a figure, from the `<name>_bound_seconds` / `_rule` the test
        stated next to it."""
        rule = self(label, f"{name}_bound_rule", plain=True).replace("_", " ")
        return f"(bound {self(label, f'{name}_bound_seconds')} s: {rule})"

    def count(self, label: str, key: str) -> int:
        value = self.by_label.get(label, {}).get(key)
        if not isinstance(value, int):
            raise SystemExit(f"the result file has no count {key!r} for [{label}]")
        return value

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
        f"included), {f(c, 'kills')} SIGKILLs (seed {f(c, 'seed', plain=True)}), "
        f"{f(c, 'kills_interrupting_work')} of them interrupting work ("
        f"{f(c, 'kills_returning_a_full_window')} returning a full prefetch window of "
        f"{f(c, 'prefetch')}): {f(c, 'returned_by_kills')} unacked commands "
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
        f"{f(s, 'resumed_seconds_after_broker_answered')} s after RabbitMQ answered "
        f"{f.bound(s, 'resume')}, worker starts: {f(s, 'worker_ready_logs')} (reconnects: "
        f"{f(s, 'worker_reconnects')}), {f(s, 'distinct_outcomes')}/{f(s, 'commands')} outcomes, "
        f"{f(s, 'duplicates')} extra copies, **{f(s, 'lost')} lost, {f(s, 'doubled')} doubled, "
        f"{f(s, 'dead_lettered')} dead-lettered, {f(s, 'wrong_outcomes')} wrong "
        f"(`Exhausted`: {f.kinds(s).get('Exhausted', '0')})**; "
        f"`close_all_connections`: resumed {f(c, 'resumed_seconds_after_broker_answered')} s "
        f"after {f.bound(c, 'resume')}, {f(c, 'distinct_outcomes')}/{f(c, 'commands')} outcomes, "
        f"**{f(c, 'lost')} lost, {f(c, 'doubled')} doubled, {f(c, 'wrong_outcomes')} wrong**"
    )


def _database(f: Figures) -> str:
    d = "database outage"
    return (
        f"PostgreSQL stopped {f(d, 'outage_seconds')} s, {f(d, 'commands_sent_during_outage')} "
        f"commands sent meanwhile ({f(d, 'answered_during_outage')} answered before it "
        f"returned), queue delivery limit {f(d, 'delivery_limit')}: **"
        f"{f(d, 'dead_lettered')} dead-lettered, {f(d, 'lost')} lost, {f(d, 'doubled')} doubled, "
        f"{f(d, 'wrong_outcomes')} wrong (`Exhausted`: {f.kinds(d).get('Exhausted', '0')})**, "
        f"{f(d, 'distinct_outcomes')}/{f(d, 'commands')} outcomes; first outcome "
        f"{f(d, 'first_outcome_seconds_after_postgres_answered')} s after PostgreSQL answered "
        f"{f.bound(d, 'resume')}, all processed {f(d, 'processed_seconds_after_postgres_answered')}"
        f" s after (asserted ≤ {f(d, 'catch_up_bound_seconds')} s); outage logged "
        f"{f(d, 'outage_logged')}, recovery {f(d, 'recovery_logged')} "
        f"({f(d, 'retries_in_outage')} retries); worker starts: {f(d, 'worker_ready_logs')}"
    )


def _poison(f: Figures) -> str:
    r, c = "poison: always raises", "poison: always crashes"
    return (
        f"delivery limit {f(c, 'delivery_limit')}. Always raising: dead-lettered with `x-error` "
        f"`{f(r, 'poison_reason')}`, worker starts: {f(r, 'worker_ready_logs')}, running at the "
        f"end: {f(r, 'worker_running_at_end')}; {f(r, 'answered_behind_poison')}/"
        f"{f(r, 'sent_behind_poison')} commands sent behind it answered, **{f(r, 'lost')} lost, "
        f"{f(r, 'doubled')} doubled, {f(r, 'wrong_outcomes')} wrong**. Always crashing: "
        f"{f(c, 'crashes')} crashes, then dead-lettered by RabbitMQ (`x-death` reason "
        f"`{f(c, 'poison_reason')}`), {f(c, 'answered_behind_poison')}/"
        f"{f(c, 'sent_behind_poison')} sent behind it answered, **{f(c, 'lost')} lost, "
        f"{f(c, 'doubled')} doubled, {f(c, 'wrong_outcomes')} wrong**"
    )


def _stop(f: Figures) -> str:
    s, g = "graceful stop (in flight finished)", "graceful stop (grace elapsed)"
    return (
        f"SIGTERM with {f(s, 'held_at_sigterm')} in flight: "
        f"{f(s, 'answered_by_stopping_worker')} answered by the stopping worker, exit "
        f"{f(s, 'exit_code')} in {f(s, 'exit_seconds')} s (grace {f(s, 'grace_period')} s), "
        f"{f(s, 'queued_at_sigterm')} queued before and {f(s, 'left_queued')} after, "
        f"{f(s, 'duplicates')} delivered twice, **{f(s, 'dead_lettered')} dead-lettered, "
        f"{f(s, 'lost')} lost**. With the lock held past a {f(g, 'grace_period')} s grace: exit "
        f"{f(g, 'exit_code')} in {f(g, 'exit_seconds')} s, {f(g, 'returned')} of "
        f"{f(g, 'held_at_sigterm')} returned ({f(g, 'back_in_queue')} back in the queue), "
        f"{f(g, 'dead_lettered')} dead-lettered; after restart {f(g, 'distinct_outcomes')}/"
        f"{f(g, 'commands')} outcomes, {f(g, 'doubled')} doubled"
    )


def _many(f: Figures) -> str:
    m = "many workers"
    kinds = f.kinds(m)
    return (
        f"{f(m, 'workers')} workers consuming (processed {f(m, 'processed_by')}), "
        f"{f(m, 'commands')} commands ({f(m, 'sent')} publishes, duplicates included): "
        f"**{kinds.get('redeemed', '0')} `coupon.redeemed`, {kinds.get('Exhausted', '0')} "
        f"`Exhausted`**, `remaining_count` {f(m, 'remaining')}, {f(m, 'lost')} lost, "
        f"{f(m, 'doubled')} doubled (two event ids for one command), {f(m, 'wrong_outcomes')} "
        f"wrong; {f(m, 'duplicates')} extra copies of outcomes"
    )


def _bad(f: Figures) -> str:
    b = "bad input"
    return (
        f"{f(b, 'corpus')} table entries + {f(b, 'generated')} generated bodies (their expected "
        f"`x-error` from an independent reading of the contract, tests/support/contract_rules.py)"
        f" interleaved with {f(b, 'valid_interleaved')} valid commands: "
        f"{f(b, 'dead_lettered_in_all')} dead-lettered ({f(b, 'x_errors')}), "
        f"worker running at the end: {f(b, 'worker_running_at_end')} (starts: "
        f"{f(b, 'worker_started')}, error log lines: {f(b, 'error_log_lines')}), coupon rows "
        f"{f(b, 'coupons')} (`coupon.created` outcomes: {f.kinds(b).get('created', '0')}), "
        f"{f(b, 'distinct_outcomes')} outcomes, **{f(b, 'lost')} lost, {f(b, 'doubled')} "
        f"doubled, {f(b, 'wrong_outcomes')} wrong**"
    )


def _security(f: Figures) -> str:
    lp, ns, tls, sql = "least privilege", "no secrets", "amqps", "sql injection"
    hba = f(ns, "pg_hba_line_added", plain=True) == "True"
    return (
        f"least-privilege user: {f(lp, 'events')} events, {f(lp, 'replies')} reply, "
        f"{f(lp, 'dead_lettered')} dead letter (exit {f(lp, 'stop_exit')}); missing topology → "
        f"exit {f(lp, 'missing_topology_exit')}, declaring without permission → exit "
        f"{f(lp, 'declare_without_permission_exit')}; a PostgreSQL role and a RabbitMQ user with "
        f"passwords, a wrong one refused by both"
        + (
            " (PostgreSQL's loopback trust overridden for the role by a pg_hba.conf line)"
            if hba
            else ""
        )
        + f": {f(ns, 'failure_cases')} failure cases ({f(ns, 'wrong_password_cases')} wrong "
        f"password, {f(ns, 'unreachable_cases')} unreachable; {f(ns, 'failures_exiting_2')} "
        f"exit 2, {f(ns, 'failures_naming_the_service')} naming the service) + a DEBUG run "
        f"({f(ns, 'log_lines')} log lines, {f(ns, 'spans')} trace spans, `/readyz`, `/metrics`, "
        f"{f(ns, 'dead_lettered')} dead letters' headers): {f(ns, 'forms_searched')} forms of "
        f"the passwords (raw, URL-encoded, base64, `repr`, every 6-character run) in "
        f"{f(ns, 'lines_searched')} lines of {f(ns, 'places_searched')} outputs: "
        f"**{f(ns, 'passwords_found')} found**; `amqps://` through a TLS proxy with a test CA: "
        f"TLS handshakes {f(tls, 'tls_handshakes')}, {f(tls, 'refusal_cases')} refusal cases "
        f"({f(tls, 'refusals_exiting_2')} exit 2, {f(tls, 'refusals_naming_the_cause')} naming "
        f"the cause); injection strings stored literally ({f(sql, 'hostile_rows')} row of the "
        f"hostile `message_id`), tables intact: {f(sql, 'tables_intact')}"
    )


def _silent(f: Figures) -> str:
    def one(label: str, peer: str) -> str:
        return (
            f"{peer}: dark {f(label, 'partition_seconds')} s, detected "
            f"{f(label, 'detected_seconds_after_silence')} s after it went silent "
            f"{f.bound(label, 'detection')}; "
            f"{f(label, 'commands_without_outcome_at_network_back')} commands waiting when the "
            f"network came back, first outcome "
            f"{f(label, 'first_outcome_seconds_after_network_back')} s after "
            f"{f.bound(label, 'resume')}, all "
            f"{f(label, 'all_outcomes_in_seconds_after_network_back')} s after; "
            f"worker starts {f(label, 'worker_starts')}; "
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


def _outbox(f: Figures) -> str:
    o = "outbox and inbox"
    return (
        f"{f(o, 'orders_committed')} orders committed ({f(o, 'orders_declined')} declined after "
        f"staging, rolled back): {f(o, 'distinct_outcomes')}/{f(o, 'commands')} outcomes, "
        f"**{f(o, 'lost')} lost, {f(o, 'doubled')} doubled, {f(o, 'wrong_outcomes')} wrong**; "
        f"{f(o, 'relay_kills')} relays killed (backlog at thaw / unsent after each kill: "
        f"{f(o, 'relay_backlog_at_thaw_and_unsent_after_kill', plain=True).replace(',', ', ')}), "
        f"republished commands answered with the stored outcome ({f(o, 'duplicates')} extra "
        f"copies); {f(o, 'tally_kills')} consumers killed, {f(o, 'returned_by_tally_kills')} "
        f"events returned by the kills, {f(o, 'repeats_skipped_by_inbox')} repeats skipped by "
        f"the inbox; {f(o, 'tallied')} of {f(o, 'redeemed_events')} `coupon.redeemed` counted "
        f"(inbox ids: {f(o, 'inbox_ids')}); parked {f(o, 'parked')}, dead-lettered "
        f"{f(o, 'dead_lettered')} + {f(o, 'tally_dead_lettered')}; settled "
        f"{f(o, 'settled_seconds_after_last_kill')} s after the last kill"
    )


Text = Callable[[Figures], str]
ROWS: list[tuple[str, str | Text, Text, str]] = [
    (
        "Crash anywhere",
        lambda f: (
            "≥ 5,000 mixed commands (creates, redeems of shared coupons, duplicate "
            f"`message_id`s); the worker SIGKILLed {f('crash anywhere', 'kills')} times at "
            "random points of the stream's progress, while work is queued (frozen first, so that "
            "the broker can count what each kill interrupts) and restarted, each next kill "
            "possibly in its careful start"
        ),
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
        "SIGTERM with a full prefetch window in flight (redeems held on a row lock)",
        _stop,
        "tests/faults/test_graceful_stop.py",
    ),
    (
        "Many workers, no oversell",
        lambda f: (
            f"{f('many workers', 'workers')} worker processes; a coupon with 100 left; "
            "1,000 distinct redeems plus duplicates"
        ),
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
        "least-privilege RabbitMQ user with `WORKER_DECLARE_TOPOLOGY=false`; a RabbitMQ user and "
        "a PostgreSQL role with passwords made for the test, the passwords searched for in every "
        "output; `amqps://` with a CA file; SQL-injection strings as codes and `message_id`s",
        _security,
        "tests/faults/test_security.py",
    ),
    (
        "Silent peers",
        lambda f: (
            "a TCP proxy between the worker and RabbitMQ, then PostgreSQL, that goes dark "
            "(no FIN, no RST: a half-open connection) for "
            f"{f('silent broker', 'partition_seconds')} s with commands arriving"
        ),
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
    (
        "Outbox and inbox across services",
        lambda f: (
            "the example checkout service: orders and their redeems staged in one transaction "
            "(every 7th declined after staging), a relay publishing the outbox and a consumer "
            "counting `coupon.redeemed` through an inbox; each SIGKILLed "
            f"{f('outbox and inbox', 'relay_kills')} times at random points, while work was "
            "in flight"
        ),
        _outbox,
        "tests/faults/test_outbox_inbox.py",
    ),
]


def run_line(document: dict[str, Any], source: str) -> str:
    """Which run the figures are from, its raw record, and whether they are still fresh."""
    run = document["run"]
    machine = run["machine"]
    failed = run["failed"]
    fresh = provenance.freshness(
        run["commit"],
        provenance.RELIABILITY_CODE,
        dirty_run=bool(run.get("uncommitted_code_under_test", run["uncommitted_changes"])),
    )
    raw = Path(source).parent / run.get("raw_record", "(no raw record)")
    return (
        f"Figures from one run of the fault suite, stored in `{source}` (raw record: `{raw}`): "
        f"started {run['started_at']}, {run['seconds']:.0f} s, commit `{run['commit']}`, "
        f"{run['tests']} tests, "
        + (f"**{len(failed)} failed**" if failed else "all passed")
        + f"; {machine['cpus']} CPUs, load average {machine['load_average_at_start']} at the "
        f"start and {machine['load_average_at_end']} at the end (the machine is shared). "
        f"{fresh.describe()}."
    )


def render(document: dict[str, Any], source: str) -> str:
    """The Reliability table, with its run line."""
    f = Figures(document)
    lines = [
        run_line(document, source),
        "",
        "| fault | what was injected | measured figures | test file |",
        "| --- | --- | --- | --- |",
    ]
    for number, (fault, injected, measured, test_file) in enumerate(ROWS, start=1):
        described = injected if isinstance(injected, str) else injected(f)
        lines.append(_row(number, fault, described, measured(f), test_file))
    return "\n".join(lines)


def render_cluster(document: dict[str, Any], source: str) -> str:
    """The Past-one-machine table (tests/faults/test_cluster.py), from the same stored run."""
    f = Figures(document)
    node, leader = "cluster: worker's node stopped", "cluster: quorum queue leader stopped"
    sync = "database failover (synchronous standby)"
    async_ = "database failover (asynchronous standby)"

    def tally(label: str) -> str:
        return (
            f"{f(label, 'commands')} commands, **{f(label, 'lost')} lost, {f(label, 'doubled')} "
            f"doubled, {f(label, 'dead_lettered')} dead-lettered, {f(label, 'wrong_outcomes')} "
            "wrong outcomes**"
        )

    def broker(label: str, placed: str) -> str:
        return (
            f"{placed}; worker reconnects {f(label, 'worker_reconnects')}, starts "
            f"{f(label, 'worker_starts')}; resumed "
            f"**{f(label, 'resumed_seconds_after_node_stopped')} s** after the stop began "
            f"{f.bound(label, 'resume')}; {tally(label)}"
        )

    def database(label: str) -> str:
        return (
            f"**{f(label, 'outcomes_acked_in_window')} outcomes acknowledged in the "
            f"{f(label, 'lag_window_seconds')} s window** "
            f"({f(label, 'outcomes_acked_until_primary_stopped')} until the primary stopped, "
            f"promoted {f(label, 'primary_stop_to_promoted_seconds')} s after it stopped); on the "
            f"new primary **{f(label, 'acked_effects_lost')} acknowledged commands have no "
            f"effect**; resumed {f(label, 'resumed_seconds_after_promotion')} s after the "
            f"promotion {f.bound(label, 'resume')}; worker starts {f(label, 'worker_starts')}; "
            f"{tally(label)}"
        )

    rows = [
        (
            "The RabbitMQ node the worker is connected to stops",
            "the connection drops; the worker reconnects to the next node of `AMQP_URL` and "
            "consumes again; its unacknowledged deliveries come back (to it or another replica), "
            "are handled one at a time (the worker's guard against poison messages) and answered "
            "from the stored outcomes",
            broker(
                node,
                f"worker on {f(node, 'worker_node_before')} (leader "
                f"{f(node, 'leader_before')}), {f(node, 'stopped_node')} stopped: moved to "
                f"{f(node, 'worker_node_after')}",
            ),
        ),
        (
            "The node leading the quorum queue stops",
            "the two others elect a new leader; the worker, connected elsewhere, keeps its "
            "connection and consumer",
            broker(
                leader,
                f"leader {f(leader, 'leader_before')} stopped, worker on "
                f"{f(leader, 'worker_node_before')}: leadership moved to "
                f"{f(leader, 'leader_after')}, worker on {f(leader, 'worker_node_after')}",
            ),
        ),
        (
            "PostgreSQL primary lost, **synchronous** standby promoted",
            "the standby is cut off (a partition), then 5432 is stopped and the standby promoted "
            "(a failover manager's detection); commits wait while the standby is away; the "
            "worker holds its commands through the outage (`database_unavailable`) and carries "
            "on with the new primary",
            database(sync),
        ),
        (
            "PostgreSQL primary lost, **asynchronous** standby promoted",
            "the same fault; commits go on without the standby; on failover what it had not "
            "received is gone, though the worker had acknowledged the commands and published "
            "their outcomes",
            database(async_) + " (the doubled effects and wrong outcomes are counter values "
            "handed out again)",
        ),
    ]
    lines = [
        run_line(document, source),
        "",
        "| failure | what happens | measured |",
        "| --- | --- | --- |",
        *(f"| {failure} | {what} | {measured} |" for failure, what, measured in rows),
    ]
    return "\n".join(lines)


BLOCKS: Final = ((START, END, render), (CLUSTER_START, CLUSTER_END, render_cluster))


def replace_blocks(text: str, document: dict[str, Any], source: str) -> str:
    """`text` with every table whose markers it holds rendered anew (at least one)."""
    found = False
    for start, end, renderer in BLOCKS:
        if start not in text or end not in text:
            continue
        found = True
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = f"{before}{start}\n{renderer(document, source)}\n{end}{after}"
    if not found:
        raise SystemExit(f"no {START} … {END} or {CLUSTER_START} … {CLUSTER_END} markers")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument(
        "--write", type=Path, help="replace the table in this file (docs/reliability.md)"
    )
    options = parser.parse_args(argv)
    document = json.loads(options.results.read_text())
    source = str(options.results)
    if options.write is None:
        print(render(document, source))  # noqa: T201
        print(f"\n{render_cluster(document, source)}")  # noqa: T201
        return 0
    options.write.write_text(replace_blocks(options.write.read_text(), document, source))
    return 0


if __name__ == "__main__":
    sys.exit(main())
