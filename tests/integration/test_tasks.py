"""publish_chat_message through a real prefork Celery worker, Redis and Kafka."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime
from typing import Any

import psutil
import pytest
from channels.db import database_sync_to_async

from chat.models import Message
from chat.services.messages import message_create
from chat.tasks import publish_chat_message, retry_countdown
from chatproj.celery import app
from chatproj.embedded import embedded_kafka

from ..support import WSClient, event_of, read_topic, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class TaskEvents:
    """Celery task events captured from the broker, as Flower sees them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.ready = threading.Event()

    def _run(self) -> None:
        with app.connection_for_read() as connection:
            self.receiver = app.events.Receiver(
                connection, handlers={"*": self.events.append}
            )
            self.ready.set()
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> TaskEvents:
        self.thread.start()
        self.ready.wait(10)
        # The subscription is live once an event we send ourselves comes back.
        with app.events.default_dispatcher() as dispatcher:
            wait_for(
                lambda: dispatcher.send("test-probe") or self.of("test-probe"),
                10,
                interval=0.2,
                what="event receiver subscribed",
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.receiver.should_stop = True
        self.thread.join(10)

    def of(self, kind: str) -> list[dict[str, Any]]:
        """Events of one type, in arrival order."""
        return [e for e in self.events if e["type"] == kind]


def measured_countdowns(events: TaskEvents) -> list[tuple[float, float]]:
    """For each retry: (ETA − retry time, start − retry time) in seconds."""
    received = {e["retries"]: e for e in events.of("task-received")}
    started = [e["timestamp"] for e in events.of("task-started")]
    result = []
    for n, retry in enumerate(events.of("task-retried"), start=1):
        eta = datetime.fromisoformat(received[n]["eta"]).timestamp()
        next_start = min(t for t in started if t > retry["timestamp"])
        result.append((eta - retry["timestamp"], next_start - retry["timestamp"]))
    return result


def make_message(user_id: int, content: str = "hello", room: str = "tasks") -> Message:
    """A persisted message (enqueued for publishing on commit)."""
    return message_create(
        room_name=room, sender_id=user_id, receiver_id=None, content=content
    )


def test_retry_countdown_formula():
    """DELAY × BACKOFF^(n-1), fractional and non-2 backoffs included; jitter only adds."""
    assert [retry_countdown(n, delay=1, backoff=2) for n in (1, 2, 3)] == [1, 2, 4]
    assert [retry_countdown(n, delay=0.5, backoff=3) for n in (1, 2, 3)] == [
        0.5,
        1.5,
        4.5,
    ]
    assert retry_countdown(4, delay=2, backoff=1) == 2
    jittered = [retry_countdown(2, delay=1, backoff=2, jitter=0.5) for _ in range(50)]
    assert all(2 <= c <= 3 for c in jittered) and len(set(jittered)) > 1


@pytest.mark.parametrize(
    ("tries", "delay", "backoff", "expected"),
    [("3", "1", "2", [1.0, 2.0]), ("4", "0.5", "3", [0.5, 1.5, 4.5])],
)
async def test_broker_unreachable_retries_with_configured_countdowns_then_fails(
    asgi_server,
    start_worker,
    chat_users,
    kafka_port_down,
    tries,
    delay,
    backoff,
    expected,
):
    """Celery retries with DELAY × BACKOFF^(n-1) and gives up after TRIES attempts."""
    await database_sync_to_async(start_worker)(
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{kafka_port_down}",
        KAFKA_SEND_TIMEOUT="0.5",
        KAFKA_RETRY_TRIES=tries,
        KAFKA_RETRY_DELAY=delay,
        KAFKA_RETRY_BACKOFF=backoff,
    )
    with TaskEvents() as events:
        alice = await WSClient.connect(asgi_server, "retry", chat_users["alice"].cookie)
        await alice.expect("history")
        await alice.send({"message": "will it get through?"})
        ack = await alice.expect("message.ack")
        status = await alice.expect("message.status", timeout=30)
        assert status == {"type": "message.status", "message_id": ack["message_id"],
                          "status": "failed"}  # fmt: skip
        await database_sync_to_async(wait_for)(lambda: events.of("task-failed"), 10)
    message = await database_sync_to_async(Message.objects.get)(
        message_id=ack["message_id"]
    )
    assert message.status == "failed"
    assert message.attempts == int(tries)
    assert "Unable to bootstrap" in message.last_error or "Kafka" in message.last_error
    countdowns = measured_countdowns(events)
    assert len(countdowns) == int(tries) - 1
    for (eta_delay, start_delay), want in zip(countdowns, expected, strict=True):
        assert eta_delay == pytest.approx(want, abs=0.25)
        assert start_delay >= want - 0.1  # event clocks of two processes
    await alice.close()


def test_broker_back_before_last_attempt_publishes_exactly_once(
    start_worker, chat_users, kafka_port_down
):
    """The broker returns during the retries: the message is published exactly once."""
    worker = start_worker(
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{kafka_port_down}",
        KAFKA_SEND_TIMEOUT="0.5",
        KAFKA_RETRY_TRIES="3",
        KAFKA_RETRY_DELAY="1",
        KAFKA_RETRY_BACKOFF="2",
    )
    with TaskEvents() as events:
        message = make_message(chat_users["alice"].id, "late but once")
        wait_for(lambda: events.of("task-retried"), 20, what="first retry")
        with embedded_kafka(kafka_port_down):
            wait_for(lambda: events.of("task-succeeded"), 20, what="success")
            message.refresh_from_db()
            assert message.status == "published"
            assert message.attempts == 2
            records = read_topic(f"127.0.0.1:{kafka_port_down}", worker.topic, expected=2,
                                 timeout=3)  # fmt: skip
    assert [event_of(r)["message_id"] for r in records] == [str(message.message_id)]
    assert not events.of("task-failed")


async def test_record_too_large_is_dead_after_one_attempt_and_copied_to_dlq(
    asgi_server, start_worker, chat_users, kafka_bootstrap
):
    """A permanent error (record too large) is not retried: the message is `dead`,
    the sender is told, and a copy with the reason lands in `<topic>.dlq`."""
    worker = await database_sync_to_async(start_worker)(
        KAFKA_PRODUCER_OPTIONS='{"max_request_size": 1200}'
    )
    alice = await WSClient.connect(asgi_server, "big", chat_users["alice"].cookie)
    await alice.expect("history")
    with TaskEvents() as events:
        await alice.send({"message": "x" * 3000, "client_id": "big"})
        big = await alice.expect("message.ack")
        await alice.send({"message": "fits", "client_id": "small"})
        small = await alice.expect("message.ack")
        statuses = {}
        for _ in range(2):
            frame = await alice.expect("message.status")
            statuses[frame["message_id"]] = frame["status"]
        assert statuses == {big["message_id"]: "dead", small["message_id"]: "published"}
        await database_sync_to_async(wait_for)(lambda: events.of("task-failed"), 10)
    dead = await database_sync_to_async(Message.objects.get)(
        message_id=big["message_id"]
    )
    assert (dead.status, dead.attempts) == ("dead", 1)
    assert "MessageSizeTooLarge" in dead.last_error
    assert not events.of("task-retried")
    [copy] = await database_sync_to_async(read_topic)(
        kafka_bootstrap, worker.topic + ".dlq", expected=1
    )
    headers = dict(copy.headers)
    assert headers["message_id"] == big["message_id"].encode()
    assert b"MessageSizeTooLarge" in headers["error"]
    body = event_of(copy)
    assert body["message_id"] == big["message_id"] and body["content_length"] == 3000
    assert body["content"] == "x" * 200 and "MessageSizeTooLarge" in body["error"]
    published = await database_sync_to_async(read_topic)(
        kafka_bootstrap, worker.topic, expected=2, timeout=3
    )
    assert [event_of(r)["message_id"] for r in published] == [small["message_id"]]
    await alice.close()


def test_garbage_tasks_are_dropped_and_worker_keeps_working(
    start_worker, chat_users, redis_url
):
    """Bad task arguments are dropped (or fail, unretried); the worker keeps working."""
    start_worker()
    with TaskEvents() as events:
        for garbage in ("not-a-uuid", str(uuid.uuid4()), None, 12345, {"a": 1}):
            publish_chat_message.delay(garbage)
        app.send_task(publish_chat_message.name, args=[], kwargs={"junk": 1})
        message = make_message(chat_users["bob"].id, "after the garbage")
        wait_for(
            lambda: Message.objects.get(pk=message.pk).status == "published",
            20,
            what="publish",
        )
        wait_for(
            lambda: len(events.of("task-succeeded") + events.of("task-failed")) >= 7,
            10,
            what="every task finished",
        )
    results = sorted(e["result"] for e in events.of("task-succeeded"))
    assert results == ["'published'"] + ["None"] * 5  # the garbage ids dropped
    [failed] = events.of("task-failed")  # the unchecked call with a wrong signature
    assert failed["exception"].startswith("TypeError(")
    assert not events.of("task-retried")


def test_each_prefork_child_builds_its_own_producer(
    start_worker, chat_users, kafka_bootstrap
):
    """With -c 2 each child connects its own producer to Kafka after fork; the parent
    never connects; a warm shutdown (children flush and close) exits cleanly."""
    worker = start_worker(concurrency=2)
    stats = wait_for(lambda: app.control.inspect(timeout=2).stats(), 10)
    [worker_stats] = stats.values()
    children = set(worker_stats["pool"]["processes"])
    broker_ports = {
        int(server.rpartition(":")[2]) for server in kafka_bootstrap.split(",")
    }
    sent: list[Message] = []

    def connected_to_kafka() -> set[int]:
        """Worker processes holding a TCP connection to the broker (a live producer)."""
        return {
            pid
            for pid in (worker.pid, *children)
            if any(
                c.raddr and c.raddr.port in broker_ports
                for c in psutil.Process(pid).net_connections("tcp")
            )
        }

    def both_children_published() -> bool:
        sent.extend(make_message(chat_users["alice"].id, f"m{i}") for i in range(10))
        return connected_to_kafka() >= children

    wait_for(both_children_published, 30, interval=0.5, what="two producers")
    wait_for(
        lambda: Message.objects.filter(status="published").count() == len(sent),
        30,
        what="all published",
    )
    assert connected_to_kafka() == children  # the parent (worker.pid) never connects
    records = read_topic(kafka_bootstrap, worker.topic, expected=len(sent))
    assert sorted(event_of(r)["message_id"] for r in records) == sorted(
        str(m.message_id) for m in sent
    )
    process = worker.process
    worker.stop()  # warm shutdown: each child flushes and closes its producer
    assert process is not None and process.returncode == 0


def test_a_worker_child_keeps_its_database_connection_across_tasks(
    start_worker, chat_users
):
    """Celery's Django fix-up would reconnect before and after every task; with
    CELERY_DB_REUSE_MAX and chat.tasks' check a child keeps one connection."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("seen through the child's TCP connection to Postgres")
    db_port = int(connection.settings_dict["PORT"] or 5432)
    start_worker(concurrency=1)
    stats = wait_for(lambda: app.control.inspect(timeout=2).stats(), 10)
    [worker_stats] = stats.values()
    [child] = worker_stats["pool"]["processes"]

    def local_ports() -> set[int]:
        return {
            c.laddr.port
            for c in psutil.Process(child).net_connections("tcp")
            if c.raddr and c.raddr.port == db_port and c.status == "ESTABLISHED"
        }

    ports: list[set[int]] = []
    for n in range(6):  # one task each: the next message waits for the last
        make_message(chat_users["alice"].id, f"m{n}")
        wait_for(
            lambda n=n: Message.objects.filter(status="published").count() == n + 1,
            30,
            what=f"message {n} published",
        )
        ports.append(local_ports())
    assert len(ports[0]) == 1 and all(p == ports[0] for p in ports)
