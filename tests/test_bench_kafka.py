"""`make bench` against a real three-node Apache Kafka (`--kafka-cluster 3`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .support import ROOT


@pytest.mark.servers  # the benchmark starts its own stack (no fixture says so)
@pytest.mark.kafka
def test_bench_on_three_real_brokers_loses_nothing(tmp_path):
    """A tiny run on its own 3-node cluster: the topic has replication factor 3,
    nothing is lost or doubled, and the brokers' CPU is measured as `kafka`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL",
                     "KAFKA_BOOTSTRAP_SERVERS", "KAFKA_CHAT_TOPIC"}
    }  # fmt: skip
    out = tmp_path / "results"
    command = [
        sys.executable, "-m", "bench", "--quick", "--no-progress",
        "--kafka-cluster", "3", "--tag", "kafka3",
        "--clients", "4", "--rooms", "2", "--rate", "10", "--duration", "3",
        "--ceiling-tasks", "40", "--ceiling-kafka", "40", "--ceiling-round-trips", "40",
        "--output-dir", str(out), "--run-dir", str(tmp_path / "run"),
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=170
    )
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads((out / "latest-sqlite-kafka3.json").read_text())
    assert report["stack"]["kafka"].startswith("Apache Kafka")
    assert "replication factor 3" in report["stack"]["kafka"]
    totals = report["totals"]
    assert totals["acked"] == totals["sent"] == totals["in_kafka"] > 0
    assert totals["lost"] == 0 and totals["duplicates"] == 0
    assert "kafka" in report["steps"][1]["cpu"]
