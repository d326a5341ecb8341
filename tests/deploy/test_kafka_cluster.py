"""chatproj.kafka_cluster: a real Apache Kafka (KRaft) cluster replicates, fails over
and talks to kafka-python. The cluster tests are marked `kafka` (through their
fixture): they run under `make test-kafka` (CHAT_TEST_KAFKA=1) only. The first tests
check the configuration without starting anything."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from chatproj.kafka_cluster import KAFKA_VERSION, POM, KafkaCluster, wait_until

from ..compose_support import image_tag, services
from ..support import unique_topic, wait_for

MAVEN = "{http://maven.apache.org/POM/4.0.0}"


def test_one_kafka_version_in_the_pom_the_module_and_compose():
    """The jars the tests run and the image production runs are the same Kafka."""
    properties = ET.parse(POM).getroot().find(f"{MAVEN}properties")
    assert properties is not None
    assert properties.findtext(f"{MAVEN}kafka.version") == KAFKA_VERSION
    for name in ("kafka", "kafka-init"):
        image = services()[name]["image"]
        assert image == f"apache/kafka:{image_tag(image)}"
        assert image_tag(image) == KAFKA_VERSION, name
    assert KAFKA_VERSION.split(".")[0] >= "4"  # KRaft only


def test_cluster_configuration(tmp_path: Path):
    """Combined nodes in a static quorum, topics only created explicitly, replication
    of the internal topics and min ISR by size, extra_config winning; nothing starts."""
    three = KafkaCluster(3, base_dir=tmp_path / "three")
    configs = [three.config(node) for node in three.nodes]
    assert [node.node_id for node in three.nodes] == [1, 2, 3]
    ports = {n.port for n in three.nodes} | {n.controller_port for n in three.nodes}
    assert len(ports) == 6
    assert three.bootstrap == ",".join(f"127.0.0.1:{n.port}" for n in three.nodes)
    for node, config in zip(three.nodes, configs, strict=True):
        assert config["process.roles"] == "broker,controller"
        assert config["node.id"] == str(node.node_id)
        assert config["controller.quorum.voters"] == three.quorum_voters
        assert config["auto.create.topics.enable"] == "false"
        assert config["min.insync.replicas"] == "2"
        assert config["transaction.state.log.min.isr"] == "2"
        assert config["offsets.topic.replication.factor"] == "3"
        assert config["default.replication.factor"] == "3"
        assert config["log.dirs"].startswith(str(tmp_path / "three"))
    assert len({c["log.dirs"] for c in configs}) == 3
    assert three.quorum_voters.count("@127.0.0.1:") == 3

    one = KafkaCluster(
        1,
        base_dir=tmp_path / "one",
        extra_config={"producer.id.expiration.ms": "5000", "num.partitions": "1"},
    )
    config = one.config(one.nodes[0])
    assert config["min.insync.replicas"] == "1"
    assert config["offsets.topic.replication.factor"] == "1"
    assert config["producer.id.expiration.ms"] == "5000"
    assert config["producer.id.expiration.check.interval.ms"] == "1000"
    assert config["num.partitions"] == "1"
    assert (
        KafkaCluster(3, base_dir=tmp_path, min_insync_replicas=3).config(
            three.nodes[0]
        )["min.insync.replicas"]
        == "3"
    )


def read_partition(
    bootstrap: str, topic: str, partition: int, count: int, timeout: float = 30.0
) -> list[bytes]:
    """The first `count` values of one partition (fails after `timeout` seconds)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=10000,
    )
    values: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, partition)])

        def read_all() -> bool:
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(record.value for record in records)
            return len(values) >= count

        wait_for(read_all, timeout, interval=0, what=f"{count} records of {topic}")
    finally:
        consumer.close()
    return values


# Conditions polled against the cluster use wait_until (chatproj.kafka_cluster), which
# retries through the errors a failing-over cluster answers with; wait_for does not.


def isr_of(cluster: KafkaCluster, topic: str, partition: int = 0) -> set[int]:
    """The in-sync replicas of a partition, per the brokers' metadata."""
    return set(cluster.describe_partition(topic, partition)["isr_nodes"])


def test_three_nodes_replicate_and_elect_a_new_leader_on_kill_9(kafka_cluster_3):
    """RF 3, min ISR 2, acks=all and idempotence: every record is read back; after
    kill -9 of partition 0's leader another replica leads and writes go on."""
    cluster = kafka_cluster_3
    topic = unique_topic()
    cluster.create_topic(topic, 3, 3, config={"min.insync.replicas": "2"})
    assert set(cluster.describe_partition(topic, 0)["replica_nodes"]) == {1, 2, 3}
    wait_until(lambda: isr_of(cluster, topic) == {1, 2, 3}, 30, "ISR of 3")

    producer = KafkaProducer(
        bootstrap_servers=cluster.bootstrap,
        acks="all",
        enable_idempotence=True,
        request_timeout_ms=10000,
        delivery_timeout_ms=60000,
    )
    try:
        first = [f"before-{i}".encode() for i in range(20)]
        for value in first:
            producer.send(topic, value, partition=0).get(timeout=30)
        assert read_partition(cluster.bootstrap, topic, 0, 20) == first

        leader = cluster.leader_of(topic, 0)
        try:
            leader.kill()
            assert not leader.alive
            new_leader = cluster.wait_leader(topic, 0, 30, not_on=[leader])
            assert new_leader.node_id != leader.node_id
            wait_until(
                lambda: leader.node_id not in isr_of(cluster, topic),
                30,
                "the killed node out of the ISR",
            )
            second = [f"after-{i}".encode() for i in range(10)]
            offsets = [
                producer.send(topic, value, partition=0).get(timeout=60).offset
                for value in second
            ]
            assert offsets == list(range(20, 30))
            assert read_partition(cluster.bootstrap, topic, 0, 30) == first + second
        finally:
            cluster.heal()
        wait_until(lambda: isr_of(cluster, topic) == {1, 2, 3}, 60, "ISR healed")
    finally:
        producer.close(timeout=5)


def test_active_controller_is_the_quorum_leader_and_fails_over(kafka_cluster_3):
    """active_controller() (the DescribeQuorum API) names the node Kafka's own
    kafka-metadata-quorum tool reports; killing it elects another."""
    cluster = kafka_cluster_3

    def tool_says_leader() -> int:
        status = cluster.metadata_quorum_command("describe", "--status")
        match = re.search(r"^LeaderId:\s+(\d+)$", status, re.MULTILINE)
        assert match, status
        return int(match.group(1))

    # Both ask the quorum in turn: an election in between would be a false alarm.
    controller = wait_until(
        lambda: (
            tool_says_leader() == cluster.active_controller().node_id
            and cluster.active_controller()
        ),
        60,
        "the tool and DescribeQuorum to name one controller",
    )
    try:
        controller.kill()
        elected = cluster.wait_active_controller(30, not_on=[controller])
        assert elected.node_id != controller.node_id
    finally:
        cluster.heal()
    assert cluster.registered_brokers() == {1, 2, 3}


def test_one_node_creates_topics_and_round_trips(kafka_cluster_1):
    """A single node: replication factor 1, a produced record read back."""
    cluster = kafka_cluster_1
    topic = unique_topic()
    cluster.create_topic(topic, 2)
    assert cluster.describe_partition(topic, 1)["replica_nodes"] == [1]
    producer = KafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
    try:
        producer.send(topic, b"hello", partition=1).get(timeout=30)
    finally:
        producer.close(timeout=5)
    assert read_partition(cluster.bootstrap, topic, 1, 1) == [b"hello"]
    assert cluster.active_controller() is cluster.nodes[0]
