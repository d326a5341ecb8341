"""Publish transactions on a real Apache Kafka node: what a read_committed consumer
sees of a committed, an abandoned and an in-doubt transaction."""

from __future__ import annotations

import pytest
from kafka import KafkaProducer

from chat.publishing.errors import PublishResult
from chat.publishing.producer import ChatProducer
from chat.publishing.readback import records_committed
from chat.services.messages import message_create
from chat.services.outbox import messages_record_in_doubt
from chatproj.kafka_cluster import KafkaCluster

from ..support import read_topic, sample_event, unique_topic


def _producer(bootstrap: str, transactional_id: str) -> KafkaProducer:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=transactional_id,
        retry_backoff_ms=10,
    )
    producer.init_transactions()
    return producer


def _written(producer: KafkaProducer, topic: str, values: list[bytes]) -> list:
    futures = [producer.send(topic, key=b"room:tx", value=v) for v in values]
    producer.flush()
    return [(m.topic, m.partition, m.offset) for m in (f.get() for f in futures)]


def test_read_back_tells_committed_from_abandoned(kafka_cluster_1: KafkaCluster):
    """Committed records are found; the records of a transaction its producer
    abandoned are not, once a new producer with the same id has initialised."""
    cluster = kafka_cluster_1
    topic = unique_topic()
    cluster.create_topic(topic, 1, 1)
    bootstrap = [cluster.bootstrap]

    producer = _producer(cluster.bootstrap, "tx-readback")
    producer.begin_transaction()
    committed = _written(producer, topic, [b"c1", b"c2"])
    producer.commit_transaction()
    producer.begin_transaction()
    abandoned = _written(producer, topic, [b"a1", b"a2"])
    producer.close(timeout=0)  # a worker gone with its transaction open

    successor = _producer(cluster.bootstrap, "tx-readback")  # aborts it
    try:
        assert records_committed(
            bootstrap_servers=bootstrap, records=committed, timeout=10
        ) == set(committed)
        assert (
            records_committed(
                bootstrap_servers=bootstrap, records=abandoned, timeout=10
            )
            == set()
        )
        assert (
            records_committed(bootstrap_servers=bootstrap, records=[], timeout=1)
            == set()
        )
    finally:
        successor.close()
    values = [r.value for r in read_topic(cluster.bootstrap, topic, expected=2)]
    assert values == [b"c1", b"c2"]  # the abandoned ones are hidden


@pytest.mark.django_db
def test_a_commit_in_doubt_is_settled_by_reading_back(
    kafka_cluster_1: KafkaCluster, settings
):
    """The agent's commit goes unanswered (no wait at all here): it discards the
    producer, builds a new one (which settles the transaction) and reads the
    records back; committed, they are published once, not sent again."""
    settings.KAFKA_CREATE_TOPICS = True
    settings.KAFKA_TRANSACTIONS = True
    topic = unique_topic()
    agent = ChatProducer(
        bootstrap_servers=kafka_cluster_1.bootstrap, topic=topic, send_timeout=5
    )
    try:
        agent.publish(sample_event())  # producer and topic ready
        answers: list[bool] = []
        commit = agent._commit

        def commit_unanswered(producer: KafkaProducer) -> bool:
            assert commit(producer)  # the commit does reach the cluster
            answers.append(False)
            return False  # but, as far as the agent knows, in doubt

        agent._commit = commit_unanswered  # type: ignore[method-assign]
        event = sample_event()
        result = agent.publish(event)
        assert answers == [False]
        assert isinstance(result, PublishResult)
        assert agent.producer_rebuilds == 1
        records = read_topic(kafka_cluster_1.bootstrap, topic, expected=3, timeout=5)
        ids = [dict(r.headers)["message_id"].decode() for r in records]
        assert ids.count(str(event.message_id)) == 1
    finally:
        agent.close()


def test_messages_left_in_doubt_are_read_back_not_sent_again(
    kafka_cluster_1: KafkaCluster, stack, chat_users, settings
):
    """Two messages whose commits went unanswered while the cluster was away (their
    places recorded, their status unpublished): one's transaction was in fact
    committed, the other's abandoned. The next publisher of the conversation reads
    them back: the first is published where it is, without a second copy; the
    second, not there, is sent again; each message_id is in the topic once."""
    from chat.models import Message
    from chat.publishing import conversation
    from chat.schemas import ChatEvent

    if kafka_cluster_1.bootstrap != settings.KAFKA_BOOTSTRAP_SERVERS:
        pytest.skip("the stack's broker is not this Kafka (CHAT_TEST_BROKER=kafka)")
    settings.KAFKA_CHAT_TOPIC = topic = unique_topic()
    kafka_cluster_1.create_topic(topic, 1, 1)
    ChatProducer.get_instance().close()  # the next one publishes to `topic`
    alice = chat_users["alice"].id
    first, second = (
        message_create(
            room_name="doubt", sender_id=alice, receiver_id=None, content=text
        )
        for text in ("committed", "abandoned")
    )

    def send(producer: KafkaProducer, message: Message) -> PublishResult:
        event = ChatEvent.from_message(message)
        future = producer.send(
            topic, key=event.key, value=event.value, headers=event.headers
        )
        producer.flush()
        return PublishResult.of(future.get())

    producer = _producer(kafka_cluster_1.bootstrap, "tx-doubt")
    producer.begin_transaction()
    first_place = send(producer, first)
    producer.commit_transaction()
    producer.begin_transaction()
    second_place = send(producer, second)
    producer.close(timeout=0)
    _producer(kafka_cluster_1.bootstrap, "tx-doubt").close()  # aborts the second
    messages_record_in_doubt(in_doubt=[(first, first_place), (second, second_place)])

    assert (
        conversation.publish_conversation(
            room_id=first.room_id, room_name="doubt", message_id=str(first.message_id)
        )
        == "published"
    )
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, first.kafka_offset) == ("published", first_place.offset)
    assert second.status == "published"
    assert second.kafka_offset not in (None, second_place.offset)
    records = read_topic(kafka_cluster_1.bootstrap, topic, expected=2, timeout=5)
    ids = sorted(dict(r.headers)["message_id"].decode() for r in records)
    assert ids == sorted([str(first.message_id), str(second.message_id)])
    ChatProducer.get_instance().close()
