"""Topics are created explicitly from settings (`manage.py kafka_topics`, and each
producer process before its first send), never by the broker's auto-create."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from chat.agents import KafkaChatAgent
from chat.publishing.topics import topics_describe

from ..support import unique_topic


@pytest.mark.servers
def test_kafka_topics_creates_both_topics_from_settings(kafka_bootstrap, settings):
    """The chat topic and its .dlq get KAFKA_TOPIC_PARTITIONS; a second run creates
    nothing and reports the same; --check fails for a topic that is missing."""
    settings.KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.KAFKA_CHAT_TOPIC = topic = unique_topic()
    settings.KAFKA_TOPIC_PARTITIONS = 4
    with pytest.raises(CommandError, match="Missing topic"):
        call_command("kafka_topics", "--check", stdout=io.StringIO())
    out = io.StringIO()
    call_command("kafka_topics", stdout=out)
    assert f"Created {topic}\n" in out.getvalue()
    assert f"Created {topic}.dlq\n" in out.getvalue()
    again = io.StringIO()
    call_command("kafka_topics", stdout=again)
    assert "Created" not in again.getvalue()
    assert f"{topic}: 4 partitions, replication factor 1" in again.getvalue()
    assert topics_describe(
        bootstrap_servers=[kafka_bootstrap], names=[topic, f"{topic}.dlq"], timeout=5
    ) == {topic: (4, 1), f"{topic}.dlq": (4, 1)}


@pytest.mark.servers
def test_the_producer_creates_its_topics_before_the_first_send(
    kafka_bootstrap, settings
):
    """A producer process creates its topic with the settings' partitions."""
    from ..support import sample_event

    settings.KAFKA_TOPIC_PARTITIONS = 5
    topic = unique_topic()
    agent = KafkaChatAgent(bootstrap_servers=kafka_bootstrap, topic=topic)
    try:
        assert agent.publish(sample_event()) is not None
    finally:
        agent.close()
    described = topics_describe(
        bootstrap_servers=[kafka_bootstrap], names=[topic, f"{topic}.dlq"], timeout=5
    )
    assert described == {topic: (5, 1), f"{topic}.dlq": (5, 1)}


def test_kafka_topics_refuses_clearly(settings, kafka_port_down):
    """No broker, or Kafka disabled: a CommandError saying so, no traceback."""
    settings.KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{kafka_port_down}"
    with pytest.raises(CommandError, match="did not answer"):
        call_command("kafka_topics", "--timeout", "1", stdout=io.StringIO())
    settings.KAFKA_ENABLED = False
    with pytest.raises(CommandError, match="KAFKA_ENABLED is off"):
        call_command("kafka_topics", stdout=io.StringIO())
