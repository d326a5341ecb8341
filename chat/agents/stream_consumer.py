"""The Kafka consumer of a stream agent: how it is built, and the rebalance listener
that keeps the agent's view of its partitions."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import kafka.errors
from django.core.exceptions import ImproperlyConfigured
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener

from chat.infra import config
from chat.publishing.topics import admin_options, chat_topic_specs, topics_ensure

if TYPE_CHECKING:
    from chat.infra.metrics import StreamMetrics


class ConsumingAgent(Protocol):
    """What of a StreamAgent its consumer and rebalance listener use."""

    @property
    def name(self) -> str:
        """The agent's registry name."""
        ...

    pid: int
    bootstrap_servers: list[str]
    client_id: str
    consumer_config: dict[str, Any]
    group_id: str
    max_records: int
    offset_reset: str
    timeout: float
    topic: str
    assigned: set[int]
    next_offset: dict[int, int]
    series: StreamMetrics


logger = logging.getLogger(__name__)


def build_consumer(agent: ConsumingAgent) -> KafkaConsumer:
    """The agent's KafkaConsumer, subscribed to its topic (created first when
    KAFKA_CREATE_TOPICS), in its group: read_committed, auto-commit off."""
    if config.kafka().create_topics:
        # A group that subscribes to a topic not created yet is assigned nothing
        # until its next metadata refresh (minutes): create it first.
        topics_ensure(
            bootstrap_servers=agent.bootstrap_servers,
            specs=chat_topic_specs(agent.topic),
            timeout=agent.timeout,
            client_options=admin_options(agent.consumer_config),
        )
    timeout_ms = int(agent.timeout * 1000)
    options: dict[str, Any] = {
        "bootstrap_servers": agent.bootstrap_servers,
        "client_id": f"{agent.client_id}-{agent.name}-{agent.pid}",
        "group_id": agent.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": agent.offset_reset,
        "max_poll_records": agent.max_records,
        # A member that died is replaced within 10 s (the default is 45 s).
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 3_000,
        # A fetch waits at most this for records: with Tansu a long poll is not
        # woken by new records, so the default (500 ms) would be added to the
        # delay of every event.
        "fetch_max_wait_ms": 100,
        # A topic or partitions that appear after the group formed (a topic made
        # moments ago, metadata still spreading between brokers) are assigned
        # within seconds, not at the default 5-minute metadata refresh.
        "metadata_max_age_ms": 5_000,
        # Only committed publish transactions: a batch that was sent again after
        # a failure is seen once.
        "isolation_level": "read_committed",
        "bootstrap_timeout_ms": timeout_ms,
        "request_timeout_ms": max(timeout_ms, 30_000),
        "reconnect_backoff_max_ms": 1000,
        **agent.consumer_config,
    }
    try:
        consumer = KafkaConsumer(**options)
    except (kafka.errors.KafkaConfigurationError, ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"KAFKA_CONSUMER_OPTIONS: {exc}") from exc
    consumer.subscribe([agent.topic], listener=RebalanceListener(agent))
    logger.info(
        "Kafka consumer created in pid %d (client_id %s, group %s, topic %s, "
        "servers %s, new group starts at %s)",
        agent.pid,
        options["client_id"],
        agent.group_id,
        agent.topic,
        ",".join(agent.bootstrap_servers),
        agent.offset_reset,
    )
    return consumer


class RebalanceListener(ConsumerRebalanceListener):
    """Runs on the client's IO loop: log and update gauges only, never block."""

    def __init__(self, agent: ConsumingAgent) -> None:
        self.agent = agent

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        partitions = sorted(p.partition for p in revoked)
        for partition in partitions:
            self.agent.series.set_lag(partition, 0)
            self.agent.next_offset.pop(partition, None)
        self.agent.assigned -= set(partitions)
        if partitions:
            logger.info("Partitions revoked: %s", partitions)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.agent.assigned = {p.partition for p in assigned}
        # positions come from the committed offsets, not from what this process handled
        self.agent.next_offset.clear()
        logger.info(
            "Partitions assigned: %s of %s (group %s)",
            sorted(self.agent.assigned),
            self.agent.topic,
            self.agent.group_id,
        )
