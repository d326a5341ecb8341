"""The benchmark (bench/): a tiny real run writes a well-formed report; its counting.

Not timed: nothing here asserts how fast anything is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.analysis import targets
from bench.ledger import Ledger
from bench.tasks import CEILING_KEY

from ..support import ROOT

STAGES = {"ack", "broadcast", "published", "kafka"}
STATUSES = {"met", "not met", "not measured"}


def run_tiny_bench(tmp_path: Path, *options: str) -> Path:
    """`python -m bench --quick` with 4 clients in 2 rooms at 10 msgs/s for 3 s, on
    its own stack (plus `options`); returns its results directory."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL",
                     "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_CHAT_TOPIC"}
    }  # fmt: skip
    out = tmp_path / "results"
    command = [
        sys.executable, "-m", "bench", "--quick", "--no-progress", *options,
        "--clients", "4", "--rooms", "2", "--rate", "10", "--duration", "3",
        "--ceiling-tasks", "40", "--ceiling-kafka", "40", "--ceiling-round-trips", "40",
        "--output-dir", str(out), "--run-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=170
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return out


@pytest.mark.servers  # the benchmark starts its own stack (no fixture says so)
def test_bench_tiny_run_writes_a_well_formed_report_with_nothing_lost(tmp_path):
    """4 clients, 2 rooms, 10 msgs/s for 3 s on its own stack: 0 lost, 0 duplicates,
    every stage measured, targets judged, and the markdown and the PNG written."""
    out = run_tiny_bench(tmp_path)

    report = json.loads((out / "latest-sqlite.json").read_text())
    stamped = [p for p in out.glob("*-sqlite.json") if not p.name.startswith("latest")]
    assert len(stamped) == 1
    assert report["schema"] == "chatproj-bench/1"
    assert report["stack"]["database"] == "sqlite"
    totals = report["totals"]
    assert totals["sent"] > 0
    assert totals["acked"] == totals["sent"] == totals["in_kafka"]
    assert totals["published_seen"] == totals["sent"]
    assert totals["lost"] == 0 and totals["duplicates"] == 0
    assert totals["missed_frames"]["total"] == 0 and totals["settled"] is True
    assert [s["kind"] for s in report["steps"]] == ["warmup", "fixed"]
    fixed = report["steps"][1]
    assert fixed["offered_rate"] == 10 and fixed["sent"] > 0
    assert set(fixed["latency_ms"]) == STAGES
    for stage in STAGES:
        latency = fixed["latency_ms"][stage]
        assert latency["count"] == fixed["sent"]
        assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert {"web", "worker", "beat", "valkey", "tansu", "bench"} <= set(fixed["cpu"])
    assert set(report["ceilings"]) == {
        "noop_task", "publish_only_task", "repeat_publish_task", "noop_task_again",
        "kafka_per_ack", "kafka_pipelined", "channels_round_trip",
    }  # fmt: skip
    for name, ceiling in report["ceilings"].items():
        assert ceiling.get("rate", 0) > 0, (name, ceiling)
    assert len(report["targets"]) == 8
    assert {t["status"] for t in report["targets"]} <= STATUSES
    by_name = {t["target"].split(":")[0]: t for t in report["targets"]}
    assert by_name["Loss"]["status"] == "met" and by_name["Loss"]["measured"] == 0
    assert by_name["Throughput"]["status"] == "not measured"  # no search in this run
    assert report["timeseries"] and report["ratios"]

    markdown = (out / "latest-sqlite.md").read_text()
    assert "## Targets" in markdown and "(latest-sqlite.png)" in markdown
    assert (out / "latest-sqlite.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _record(key: bytes, seq: int, message_id: str, offset: int) -> SimpleNamespace:
    value = json.dumps({"message_id": message_id, "seq": seq}).encode()
    return SimpleNamespace(
        key=key,
        value=value,
        headers=[("message_id", message_id.encode())],
        partition=0,
        offset=offset,
    )


def test_ledger_counts_inversions_duplicates_and_gaps_per_room():
    """A lower seq after a higher one of the same room is an inversion; a message_id
    read again is a duplicate (not an inversion); ceiling records are set apart."""
    ledger = Ledger(clients=1)
    records = [
        _record(b"room:bench-1", 1, "a", 0),
        _record(b"room:bench-2", 5, "x", 1),
        _record(b"room:bench-1", 3, "c", 2),
        _record(b"room:bench-1", 2, "b", 3),  # late: inversion
        _record(b"room:bench-1", 1, "a", 4),  # redelivered: duplicate
        _record(CEILING_KEY, 1, "00000000-0000-0000-0000-000000000000", 5),
    ]
    for record in records:
        ledger.on_record(record, now=0.0)
    assert (ledger.inversions, ledger.duplicates, ledger.ceiling_records) == (1, 1, 1)
    assert ledger.n_kafka == 4
    assert ledger.seq_gaps() == 4  # room bench-2 has only seq 5 of 1..5


def test_records_the_live_reader_passed_over_are_found_again_not_lost(
    kafka_bootstrap,
):
    """After the run the topic is read again from the start for the acked messages
    the live reader did not get: those found are "passed over", not lost; the rest
    are lost."""
    import uuid

    from kafka import KafkaProducer

    from bench.analysis import totals
    from bench.ledger import Sent, reread

    topic = f"reread-{uuid.uuid4().hex[:8]}"
    ids = [str(uuid.uuid4()) for _ in range(4)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for seq, message_id in enumerate(ids[:3], start=1):  # the 4th never reached Kafka
        producer.send(
            topic,
            key=b"room:bench-1",
            value=json.dumps({"message_id": message_id, "seq": seq}).encode(),
            headers=[("message_id", message_id.encode())],
        )
    producer.flush()
    producer.close()
    ledger = Ledger(clients=1)
    for seq, message_id in enumerate(ids, start=1):
        ledger.sends[f"c{seq}"] = Sent(
            0, "bench-1", 0, 0.0, t_ack=0.1, message_id=message_id, seq=seq
        )
        ledger.n_acked += 1
    ledger.on_record(_record(b"room:bench-1", 1, ids[0], 0), now=0.2)  # read live

    assert reread(kafka_bootstrap, topic, ledger, idle=2.0) == 2
    assert set(ledger.reread) == set(ids[1:3])
    total = totals(ledger, ["bench-1"], settled=True)
    assert (total["lost"], total["passed_over_by_reader"]) == (1, 2)
    assert total["lost_sample"] == [ids[3]]
    assert total["in_kafka"] == 3 and total["seq_gaps"] == 0


def test_targets_judge_ratios_and_leave_unmeasured_ones_open():
    """Throughput is the saturation rate over the no-op ceiling; without an overload
    or half step those targets are not measured rather than met."""
    report = {
        "saturation": {"published_rate": 60.0},
        "ceilings": {"noop_task": {"rate": 100.0}, "repeat_publish_task": {"rate": 50}},
        "steps": [],
        "totals": {"lost": 0, "inversions": 2},
    }
    judged = {t["target"].split(":")[0]: t for t in targets(report)}
    assert judged["Throughput"]["status"] == "met"
    assert judged["Throughput"]["measured"] == 0.6
    assert judged["Cheap repeats"]["status"] == "not met"  # 100/50 = 2x a no-op
    assert judged["Order"]["status"] == "not met"
    assert judged["Loss"]["status"] == "met"
    assert judged["No collapse"]["status"] == "not measured"


def test_the_no_op_ceiling_is_the_mean_of_its_runs_either_side_of_the_repeat():
    """The repeat is compared with the no-op's runs before and after it: the
    machine's speed drifts within a run."""
    report = {
        "saturation": {"published_rate": 60.0},
        "ceilings": {
            "noop_task": {"rate": 100.0},
            "repeat_publish_task": {"rate": 60.0},
            "noop_task_again": {"rate": 60.0},
        },
        "steps": [],
        "totals": {"lost": 0, "inversions": 0},
    }
    judged = {t["target"].split(":")[0]: t for t in targets(report)}
    assert judged["Cheap repeats"]["measured"] == round(80 / 60, 3)
    assert judged["Throughput"]["measured"] == 0.75


@pytest.mark.django_db(transaction=True)
def test_the_benchmark_vacuums_postgres_only_where_autovacuum_is_off():
    """This machine's server runs without autovacuum: the benchmark does its work
    after each step, or the published messages' dead index entries pile up."""
    from django.db import connection

    from bench.stack import autovacuum_off, vacuum_database

    if connection.vendor != "postgresql":
        assert not autovacuum_off()
        return
    with connection.cursor() as cursor:
        cursor.execute("SHOW autovacuum")
        assert autovacuum_off() == (cursor.fetchone()[0] == "off")
    vacuum_database()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT last_vacuum IS NOT NULL FROM pg_stat_user_tables "
            "WHERE relname = 'chat_message'"
        )
        assert cursor.fetchone()[0]
