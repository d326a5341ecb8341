"""KafkaChatAgent: the public API of chat.agents, against the real broker."""

from __future__ import annotations

import json
import os
import time

import pytest
from channels.db import database_sync_to_async
from django.core.exceptions import ImproperlyConfigured

from chat.agents import (
    ChatValidationError,
    KafkaChatAgent,
    PublishResult,
    RetriablePublishError,
)
from chat.models import Message

from ..support import event_of, read_topic, sample_event, unique_topic, wait_for


@pytest.fixture(autouse=True)
def fresh_agent():
    """Each test starts without a process instance and leaves none behind."""
    KafkaChatAgent.shutdown_instance()
    yield
    KafkaChatAgent.shutdown_instance()


def test_get_instance_is_one_object_per_process_until_closed():
    """get_instance() returns the same object; after close() it builds a new one."""
    first = KafkaChatAgent.get_instance()
    assert KafkaChatAgent.get_instance() is first
    first.close()
    first.close()  # idempotent
    second = KafkaChatAgent.get_instance()
    assert second is not first and not second.closed


def test_forked_child_gets_its_own_instance():
    """A child process never reuses its parent's agent or producer."""
    parent = KafkaChatAgent.get_instance()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            child = KafkaChatAgent.get_instance()
            result = {
                "new_object": child is not parent,
                "pid": child.pid,
                "same_twice": KafkaChatAgent.get_instance() is child,
                "no_producer": child._producer is None,
            }
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    result = json.loads(os.read(read_end, 1000))
    os.close(read_end)
    assert result == {
        "new_object": True,
        "pid": pid,
        "same_twice": True,
        "no_producer": True,
    }
    assert KafkaChatAgent.get_instance() is parent


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"bootstrap_servers": ""}, "KAFKA_BOOTSTRAP_SERVERS is empty"),
        ({"bootstrap_servers": "no-port-here"}, "is not host:port"),
        ({"topic": "bad topic!"}, "not a valid Kafka topic name"),
        ({"send_timeout": 0}, "KAFKA_SEND_TIMEOUT must be a positive"),
        ({"producer_config": ["x"]}, "KAFKA_PRODUCER_OPTIONS must be a JSON object"),
    ],
)
def test_misconfiguration_fails_loudly(overrides, complaint):
    """Bad settings raise ImproperlyConfigured saying what to fix."""
    with pytest.raises(ImproperlyConfigured, match=complaint):
        KafkaChatAgent(**overrides)


def test_unknown_producer_option_is_a_configuration_error():
    """A typo in KAFKA_PRODUCER_OPTIONS is reported as such, not retried."""
    agent = KafkaChatAgent(producer_config={"lingerms": 5})
    with pytest.raises(ImproperlyConfigured, match="KAFKA_PRODUCER_OPTIONS"):
        agent.publish(sample_event())


def test_publish_writes_key_value_headers_and_returns_offset(kafka_bootstrap):
    """publish() waits for the ack and returns where the event landed."""
    topic = unique_topic()
    agent = KafkaChatAgent(topic=topic, bootstrap_servers=kafka_bootstrap)
    event = sample_event(receiver_id=1, sender_id=9)
    result = agent.publish(event)
    assert isinstance(result, PublishResult) and result.topic == topic
    [record] = read_topic(kafka_bootstrap, topic, expected=1)
    assert (record.partition, record.offset) == (result.partition, result.offset)
    assert record.key == b"dm:1:9"
    assert event_of(record)["created_at"] == "2026-01-02T03:04:05.006000Z"
    assert dict(record.headers)["message_id"] == str(event.message_id).encode()
    agent.flush()
    agent.flush()
    agent.close()
    agent.close()
    with pytest.raises(RuntimeError, match="closed"):
        agent.publish(event)


def test_dead_broker_fails_fast_and_retriably(kafka_port_down):
    """With no broker, publish gives up within KAFKA_SEND_TIMEOUT, as retriable."""
    agent = KafkaChatAgent(
        bootstrap_servers=f"127.0.0.1:{kafka_port_down}", send_timeout=1
    )
    started = time.monotonic()
    with pytest.raises(RetriablePublishError, match="unreachable"):
        agent.publish(sample_event())
    assert time.monotonic() - started < 3
    started = time.monotonic()
    agent.flush()
    agent.close()
    assert time.monotonic() - started < 3


def test_disabled_agent_skips_without_a_producer():
    """KAFKA_ENABLED=False: publish is a logged no-op that builds no producer."""
    agent = KafkaChatAgent(enabled=False, bootstrap_servers="127.0.0.1:1")
    assert agent.publish(sample_event()) is None
    assert agent._producer is None


@pytest.mark.django_db(transaction=True)
async def test_original_readme_examples_work(chat_users, start_worker, kafka_bootstrap):
    """The README's agent examples run as written and the message reaches Kafka."""
    worker = await database_sync_to_async(start_worker)()
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    agent = KafkaChatAgent.get_instance()
    data = await agent.process_websocket_message(
        text_data=json.dumps({"message": "مرحبًا!", "receiver_id": bob}), user_id=alice
    )
    assert data == {
        "type": "chat.message", "message": "مرحبًا!", "receiver_id": bob,
        "client_id": None, "sender_id": alice,
    }  # fmt: skip
    with pytest.raises(ChatValidationError) as rejected:
        await agent.process_websocket_message(
            text_data='{"message": ""}', user_id=alice
        )
    assert (rejected.value.code, rejected.value.detail) == (
        "empty",
        "The message is empty (no visible character).",
    )

    sent = await agent.send_chat_message(
        sender_id=alice, receiver_id=bob, content="مرحبًا!"
    )
    low, high = sorted((alice, bob))
    assert sent["room"] == f"dm-{low}-{high}" and sent["seq"] == 1
    [record] = await database_sync_to_async(read_topic)(
        kafka_bootstrap, worker.topic, expected=1
    )
    assert event_of(record)["message_id"] == sent["message_id"]
    await database_sync_to_async(wait_for)(
        lambda: (
            Message.objects.get(message_id=sent["message_id"]).status == "published"
        ),
        10,
    )
    with pytest.raises(ChatValidationError) as rejected:
        await agent.send_chat_message(sender_id=alice, receiver_id=424242, content="hi")
    assert rejected.value.code == "unknown_receiver"
    agent.flush()
    agent.close()


@pytest.mark.servers  # starts a broker itself
def test_circuit_opens_after_repeated_failures_and_closes_when_broker_returns(
    kafka_port_down,
):
    """After N retriable failures attempts fail at once; after the reset it retries."""
    from chatproj.embedded import embedded_kafka

    agent = KafkaChatAgent(
        bootstrap_servers=f"127.0.0.1:{kafka_port_down}",
        send_timeout=0.5,
        breaker_failures=2,
        breaker_reset=3600,
    )
    for _ in range(2):
        with pytest.raises(RetriablePublishError, match="unreachable"):
            agent.publish(sample_event())
    started = time.monotonic()
    with pytest.raises(RetriablePublishError, match="circuit open"):
        agent.publish(sample_event())
    assert time.monotonic() - started < 0.1  # no broker call at all
    with embedded_kafka(kafka_port_down):
        agent.breaker.close()  # as after reset_timeout: the next call goes through
        assert agent.publish(sample_event()) is not None
    agent.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("receiver", "code"),
    [
        (3.0, "invalid_message"),
        (True, "invalid_message"),
        (None, "invalid_message"),
        (["lobby"], "invalid_message"),
        (424242, "unknown_receiver"),
        (-1, "invalid_message"),
        ("no-such-room", "unknown_receiver"),
        ("not a room name", "unknown_receiver"),
    ],
)
async def test_send_chat_message_refuses_bad_receivers(chat_users, receiver, code):
    """A wrong type or an unknown room/user is a ChatValidationError, never TypeError."""
    agent = KafkaChatAgent.get_instance()
    with pytest.raises(ChatValidationError) as rejected:
        await agent.send_chat_message(
            sender_id=chat_users["alice"].id, receiver_id=receiver, content="hi"
        )
    assert rejected.value.code == code
    assert not await database_sync_to_async(Message.objects.exists)()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("sender", [424242, "1", None])
async def test_send_chat_message_refuses_unknown_senders(chat_users, sender):
    """The sender must be an existing user id."""
    with pytest.raises(ChatValidationError) as rejected:
        await KafkaChatAgent.get_instance().send_chat_message(
            sender_id=sender, receiver_id=chat_users["bob"].id, content="hi"
        )
    assert rejected.value.code == "unknown_sender"


@pytest.mark.django_db(transaction=True)
async def test_send_chat_message_to_a_room_by_name(chat_users, stack):
    """A str receiver_id is a room: the message goes there, with no receiver."""
    from chat.services.rooms import room_get_or_create

    await database_sync_to_async(room_get_or_create)(name="lobby")
    sent = await KafkaChatAgent.get_instance().send_chat_message(
        sender_id=chat_users["alice"].id, receiver_id="lobby", content="hello room"
    )
    assert (sent["room"], sent["receiver_id"], sent["seq"]) == ("lobby", None, 1)
