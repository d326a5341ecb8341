"""`make bench` against a real three-node Apache Kafka (`--kafka-cluster 3`)."""

from __future__ import annotations

import json

import pytest

from .test_bench import run_tiny_bench


@pytest.mark.servers  # the benchmark starts its own stack (no fixture says so)
@pytest.mark.kafka
def test_bench_on_three_real_brokers_loses_nothing(tmp_path):
    """A tiny run on its own 3-node cluster: the topic has replication factor 3,
    nothing is lost or doubled, and the brokers' CPU is measured as `kafka`."""
    out = run_tiny_bench(tmp_path, "--kafka-cluster", "3", "--tag", "kafka3")
    report = json.loads((out / "latest-sqlite-kafka3.json").read_text())
    assert report["stack"]["kafka"].startswith("Apache Kafka")
    assert "replication factor 3" in report["stack"]["kafka"]
    totals = report["totals"]
    assert totals["acked"] == totals["sent"] == totals["in_kafka"] > 0
    assert totals["lost"] == 0 and totals["duplicates"] == 0
    assert "kafka" in report["steps"][1]["cpu"]
