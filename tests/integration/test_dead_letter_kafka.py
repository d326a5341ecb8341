"""A dead message is dead only with its dead-letter copy: on a real Apache Kafka
node, a record the broker refuses for good waits, retrying, while the dead-letter
topic cannot take its copy (it does not exist, and the broker creates no topic by
itself), and is `dead` once the copy is written."""

from __future__ import annotations

import pytest

from chat.models import Message
from chat.services.messages import message_create
from chatproj.kafka_cluster import KafkaCluster

from ..faults import FAST_RECOVERY
from ..support import event_of, read_topic, unique_topic, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_dead_letter_copy_not_written_keeps_the_message_retrying(
    kafka_cluster_1: KafkaCluster, start_worker, chat_users
):
    """The broker refuses the record (larger than the topic's max.message.bytes):
    permanent. Its .dlq is missing (the worker may not create topics here), so the
    copy fails (retriable): the message stays `failed`, never `dead`, and the small
    message sent with it in one batch is published. Once the .dlq exists, the outbox
    sweep retries it, the copy is written, and it is `dead`."""
    cluster = kafka_cluster_1
    topic = unique_topic()
    cluster.create_topic(topic, 3, 1, config={"max.message.bytes": "2000"})
    start_worker(
        beat=True,
        KAFKA_BOOTSTRAP_SERVERS=cluster.bootstrap,
        KAFKA_CHAT_TOPIC=topic,
        KAFKA_CREATE_TOPICS="False",
        KAFKA_TRANSACTIONS="True",
        **FAST_RECOVERY,
    )
    alice = chat_users["alice"].id
    big = message_create(
        room_name="dlq", sender_id=alice, receiver_id=None, content="x" * 5000
    )
    small = message_create(
        room_name="dlq", sender_id=alice, receiver_id=None, content="fits"
    )

    def status(message: Message) -> str:
        message.refresh_from_db()
        return message.status

    wait_for(lambda: status(small) == "published", 60, what="the small one published")
    wait_for(lambda: status(big) == "failed", 60, what="the big one failed (retrying)")
    big.refresh_from_db()
    assert "dead-letter copy is not written yet" in big.last_error
    assert "MessageSizeTooLarge" in big.last_error
    assert not read_topic(cluster.bootstrap, f"{topic}.dlq", expected=1, timeout=2)

    assert big.status == "failed"  # still retrying, not dead without its copy
    cluster.create_topic(f"{topic}.dlq", 3, 1)
    wait_for(lambda: status(big) == "dead", 60, what="dead, with its copy written")
    [copy] = read_topic(cluster.bootstrap, f"{topic}.dlq", expected=1)
    assert event_of(copy)["message_id"] == str(big.message_id)
    assert event_of(copy)["content_length"] == 5000
