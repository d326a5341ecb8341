"""Undecodable Celery queue entries: moved aside by chatproj.kombu_poison, the worker
keeps consuming (a real prefork worker on the real Redis-compatible server)."""

from __future__ import annotations

import base64
import json
from typing import Any

import kombu
import pytest
import redis
from celery import Celery

from chat.models import Message
from chatproj import kombu_poison

from ..support import wait_for
from .test_tasks import make_message


def envelope(body: str, **properties: Any) -> bytes:
    """A kombu Redis envelope as Celery writes it, with `body` and properties replaced."""
    return json.dumps(
        {
            "body": body,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {},
            "properties": {
                "body_encoding": "base64",
                "delivery_info": {"exchange": "", "routing_key": "celery"},
                "delivery_mode": 2,
                "delivery_tag": "d3b07384-d9a0-4c9b-8a1e-poison",
                "priority": 0,
                **properties,
            },
        }
    ).encode()


# Each of these stopped the worker with "Unrecoverable error" before the fix.
POISON = [
    b"not json",
    b"[]",
    b'"hello"',
    b"{}",
    b"\xff\xfe not utf-8",
    envelope("not base64!"),  # b64decode: Incorrect padding
    envelope(base64.b64encode(b"[]").decode(), delivery_info=None),
    envelope(base64.b64encode(b"[]").decode(), delivery_tag=["a", "list"]),
]


@pytest.fixture
def memory_channel() -> Any:
    """A kombu virtual channel without a server (the in-memory transport)."""
    with kombu.Connection("memory://") as connection:
        yield connection.default_channel


def test_envelope_problem_names_each_poison_and_passes_real_envelopes(memory_channel):
    """Every poison shape gets a reason; an envelope kombu itself wrote gets none."""
    for item in POISON:
        assert kombu_poison.envelope_problem(memory_channel, item), item
    producer = kombu.Producer(memory_channel)
    producer.publish({"task": "x"}, routing_key="q", declare=[kombu.Queue("q")])
    raw = json.dumps(memory_channel._get("q")).encode()
    assert kombu_poison.envelope_problem(memory_channel, raw) is None


def test_installed_kombu_is_verified_and_only_plain_redis_gets_the_transport():
    """The installed kombu is in the checked range (an upgrade fails here until it is
    re-checked); redis:// brokers get the transport and still show as redis://;
    rediss:// and an explicit broker_transport do not get it."""
    assert kombu_poison.kombu_verified()
    assert not kombu_poison.kombu_verified("5.8.0")
    assert not kombu_poison.kombu_verified("6.0.0")
    assert kombu_poison.install()  # chatproj.celery did it already; repeatable

    def connection(url: str, **conf: Any) -> Any:
        app = Celery(set_as_current=False)
        app.conf.broker_url = url
        app.conf.update(conf)
        return app.connection_for_read()

    plain = connection("redis://:pw@127.0.0.1:1/0")
    assert type(plain.transport) is kombu_poison.Transport
    assert plain.as_uri() == "redis://:**@127.0.0.1:1/0"  # what Flower and logs read
    assert type(connection("rediss://h:1/0").transport) is not kombu_poison.Transport
    explicit = connection("redis://h:1/0", broker_transport="memory")
    assert type(explicit.transport) is not kombu_poison.Transport


def test_a_channel_reuses_one_command_client_until_its_pool_changes(redis_url):
    """kombu built a redis-py client object per command; the channel keeps one (on
    the same pool), and a new pool after fork gets a new one. Commands still work."""
    with kombu.Connection(redis_url) as connection:
        channel = connection.default_channel
        assert type(channel) is kombu_poison.Channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as again:
            assert first is again and first.connection_pool is channel.pool
            assert first.ping()
        own = redis.Redis.from_url(redis_url)
        with channel.conn_or_acquire(own) as given:
            assert given is own
        channel._after_fork()  # what kombu does in a forked child
        with channel.conn_or_acquire() as after:
            assert after is not first and after.connection_pool is channel.pool
            assert after.ping()


@pytest.mark.django_db(transaction=True)
def test_worker_survives_each_poison_entry_and_loses_nothing(
    start_worker, chat_users, redis_url
):
    """Poison LPUSHed between good publish tasks: the worker stays up, every good task
    publishes, each poison is logged once and is on the dead-letter list as written."""
    client = redis.Redis.from_url(redis_url)
    client.delete("celery.poison")
    worker = start_worker(concurrency=1)
    bob = chat_users["bob"].id
    before = [make_message(bob, f"before {i}") for i in range(2)]  # queued on commit
    for item in POISON:
        client.lpush("celery", item)
    after = [make_message(bob, f"after {i}") for i in range(2)]
    sent = {m.pk for m in before + after}

    wait_for(
        lambda: (
            set(
                Message.objects.filter(pk__in=sent, status="published").values_list(
                    "pk", flat=True
                )
            )
            == sent
        ),
        30,
        what="every good task published",
    )
    last = make_message(bob, "still consuming")  # the same worker, after the poison
    wait_for(
        lambda: Message.objects.get(pk=last.pk).status == "published", 20, what="last"
    )
    assert worker.process is not None and worker.process.poll() is None
    assert sorted(client.lrange("celery.poison", 0, -1)) == sorted(POISON)
    assert worker.log().count("Moved an undecodable entry of queue celery") == len(
        POISON
    )
    assert "Unrecoverable error" not in worker.log()
