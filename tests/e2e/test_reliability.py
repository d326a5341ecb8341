"""Fault injection: broker outages, killed workers, a flushed queue. Nothing is lost.

Each scenario counts sent vs. received by message_id and records its figures for
docs/RELIABILITY.md (`make reliability`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
import redis
from channels.db import database_sync_to_async
from django.db import connection

from chat.models import Message
from chat.services import publish_queue
from chat.services.messages import message_create
from chat.services.rooms import room_get_or_create
from chatproj.celery import app
from chatproj.embedded import embedded_kafka, free_port

from ..faults import (
    FAST_RECOVERY,
    REBUILDS,
    ChatLoad,
    FaultProxy,
    check_and_record,
    users_cookies,
)
from ..support import multiprocess_metric, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def kafka_behind_proxy() -> Iterator[tuple[FaultProxy, str]]:
    """A Tansu broker reachable only through a proxy that the test can cut."""
    broker_port, proxy_port = free_port(), free_port()
    server = embedded_kafka(broker_port)
    # Clients must come back through the proxy, so the broker advertises it.
    server.command[server.command.index("--advertised-listener-url") + 1] = (
        f"tcp://127.0.0.1:{proxy_port}"
    )
    with server:
        proxy = FaultProxy(proxy_port, broker_port).start()
        try:
            yield proxy, f"127.0.0.1:{proxy_port}"
        finally:
            proxy.stop()


def no_task_scheduled_or_running() -> bool:
    """Whether the worker has no retry waiting for its ETA and no task running."""
    inspect = app.control.inspect(timeout=1)
    replies = [inspect.scheduled(), inspect.active()]
    return all(r is not None for r in replies) and not any(
        tasks for reply in replies for tasks in reply.values()
    )


async def test_broker_down_15s_mid_stream(
    asgi_server, start_worker, chat_users, kafka_behind_proxy, reliability_rows
):
    """≥300 messages from 4 clients; the broker is unreachable for 15 s in the middle."""
    proxy, bootstrap = kafka_behind_proxy
    worker = await database_sync_to_async(start_worker)(
        beat=True, KAFKA_BOOTSTRAP_SERVERS=bootstrap, **FAST_RECOVERY
    )
    ended: list[float] = []

    def restore() -> None:
        proxy.restore()
        ended.append(time.time())

    async with ChatLoad(
        asgi_server, users_cookies(chat_users, 4), ["r1", "r2"]
    ) as load:
        await load.stream(
            per_client=80, interval=0.4, at={8.0: proxy.cut, 23.0: restore}
        )
        row = await check_and_record(
            reliability_rows, "broker unreachable 15 s mid-stream", load,
            bootstrap=bootstrap, topic=worker.topic, fault_ended=ended[0],
        )  # fmt: skip
    assert row["sent"] >= 300
    retried = await database_sync_to_async(
        Message.objects.filter(message_id__in=list(load.acked), attempts__gt=1).count
    )()
    assert retried > 0  # the outage really hit publishing


async def test_broker_down_longer_than_retry_window(
    asgi_server, start_worker, chat_users, kafka_behind_proxy, reliability_rows
):
    """Messages exhaust their retries (`failed`); the sweep publishes all after recovery."""
    proxy, bootstrap = kafka_behind_proxy
    worker = await database_sync_to_async(start_worker)(
        beat=True, KAFKA_BOOTSTRAP_SERVERS=bootstrap, **FAST_RECOVERY
    )
    proxy.cut()
    async with ChatLoad(asgi_server, users_cookies(chat_users, 2), ["long"]) as load:
        await load.stream(per_client=20, interval=0.1)
        sent = set(load.acked)
        await database_sync_to_async(wait_for)(
            lambda: Message.objects.filter(message_id__in=sent, status="failed").count()
            == len(sent), 60, interval=0.5, what="all failed",
        )  # fmt: skip
        await database_sync_to_async(wait_for)(
            lambda: load.statuses_seen["failed"] >= len(sent), 10
        )
        # A message rides along with its conversation's task, so "all failed" can
        # come while one task still waits for its last retry: wait until none does.
        await database_sync_to_async(wait_for)(
            no_task_scheduled_or_running, 30, interval=0.5, what="retries over"
        )
        proxy.restore()
        row = await check_and_record(
            reliability_rows, "broker down past the retry window", load,
            bootstrap=bootstrap, topic=worker.topic, fault_ended=time.time(),
        )  # fmt: skip
    assert row["failed_statuses"] >= row["sent"]
    swept = await database_sync_to_async(
        Message.objects.filter(message_id__in=sent, sweep_count__gt=0).count
    )()
    assert swept == len(sent)  # every message came back through the outbox sweep


async def test_kill_9_worker_child_and_whole_worker(
    asgi_server, start_worker, chat_users, kafka_bootstrap, reliability_rows
):
    """kill -9 of a prefork child, then of the whole worker, mid-stream; restart; 0 lost."""
    worker = await database_sync_to_async(start_worker)(
        beat=True, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, **FAST_RECOVERY
    )
    topic = worker.topic
    ended: list[float] = []
    unpublished: list[int] = []

    def pool_children() -> list[int]:
        stats = wait_for(lambda: app.control.inspect(timeout=2).stats(), 10)
        return [pid for w in stats.values() for pid in w["pool"]["processes"]]

    def kill_child() -> None:
        children = pool_children()
        os.kill(children[0], signal.SIGKILL)

        def replaced() -> bool:
            now = pool_children()
            return children[0] not in now and len(now) == len(children)

        wait_for(replaced, 15, interval=0.5, what="the pool replaced the killed child")

    burst: set[str] = set()

    def kill_worker_and_restart() -> None:
        # A burst whose conversation lock the test holds, so the worker dies with
        # the burst's task in hand (a batch is otherwise published in milliseconds).
        sender = chat_users["carol"].id
        room = room_get_or_create(name="k-burst")
        lock = publish_queue.conversation_lock(room_id=room.pk)
        assert lock.acquire()
        for n in range(60):
            message = message_create(
                room_name="k-burst", sender_id=sender, receiver_id=None,
                content=f"b{n}",
            )  # fmt: skip
            burst.add(str(message.message_id))
        wait_for(lambda: not no_task_scheduled_or_running(), 10, what="task in hand")
        os.killpg(worker.pid, signal.SIGKILL)
        lock.release()
        unpublished.append(
            Message.objects.filter(message_id__in=burst)
            .exclude(status="published")
            .count()
        )
        connection.close()
        worker.process.wait(10)
        start_worker(beat=True, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
                     KAFKA_CHAT_TOPIC=topic, **FAST_RECOVERY)  # fmt: skip
        ended.append(time.time())

    async with ChatLoad(
        asgi_server, users_cookies(chat_users, 3), ["k1", "k2", "k3"]
    ) as load:
        await load.stream(
            per_client=70,
            interval=0.1,
            at={2.0: kill_child, 4.5: kill_worker_and_restart},
        )
        await check_and_record(
            reliability_rows, "kill -9 of a worker child, then of the whole worker", load,
            bootstrap=kafka_bootstrap, topic=topic, fault_ended=ended[0],
            max_missing_status=4,  # at most the tasks running in the killed processes
            also_sent=frozenset(burst),
        )  # fmt: skip
    assert unpublished[0] > 0, "the kill must catch messages not yet published"


async def test_redis_queue_flushed_mid_stream(
    asgi_server, start_worker, chat_users, kafka_bootstrap, redis_url, reliability_rows
):
    """The task queue is wiped mid-stream (tasks lost); the sweep recovers every message."""
    client = redis.Redis.from_url(redis_url)
    flushed: list[int] = []
    topic = f"flush-{free_port()}"

    def flush_queue() -> None:
        # No worker is consuming yet, so the queue holds every task sent so far.
        flushed.append(client.llen("celery"))
        client.delete("celery", "unacked", "unacked_index")

    async with ChatLoad(
        asgi_server, users_cookies(chat_users, 3), ["f1", "f2"]
    ) as load:
        await load.stream(per_client=70, interval=0.1, at={3.5: flush_queue})
        started = time.time()
        await database_sync_to_async(start_worker)(
            beat=True, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_CHAT_TOPIC=topic,
            **FAST_RECOVERY,
        )  # fmt: skip
        row = await check_and_record(
            reliability_rows, "Redis task queue flushed mid-stream", load,
            bootstrap=kafka_bootstrap, topic=topic, fault_ended=started,
        )  # fmt: skip
    # One task per conversation carries all its messages: the flush dropped both
    # conversations' tasks, and the sweep brought their messages back.
    assert flushed and flushed[0] >= 2, "the flush must really have dropped tasks"
    assert row["sent"] == 210
    swept = await database_sync_to_async(
        Message.objects.filter(message_id__in=set(load.acked), sweep_count__gt=0).count
    )()
    assert swept > 0


async def test_kill_9_of_the_embedded_broker(
    asgi_server, start_worker, chat_users, reliability_rows, process_env
):
    """kill -9 of Tansu mid-stream, restarted on its port a second later (as
    supervisord does under `make run`): the worker's producer, whose producer id the
    new broker does not know, is rebuilt; nothing goes dead; new messages are
    published within 30 s of the broker answering; the kill window's messages are
    in the new (empty) topic once each."""
    port = free_port()
    server = embedded_kafka(port).start()
    bootstrap = f"127.0.0.1:{port}"
    metrics_dir = process_env["PROMETHEUS_MULTIPROC_DIR"]
    rebuilds_before = multiprocess_metric(metrics_dir, REBUILDS)
    worker = await database_sync_to_async(start_worker)(
        beat=True, KAFKA_BOOTSTRAP_SERVERS=bootstrap, **FAST_RECOVERY
    )
    published_before: set[str] = set()
    answering: list[float] = []

    def kill_and_restart() -> None:
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        # What the dead broker acknowledged is gone with its memory.
        published_before.update(
            str(i)
            for i in Message.objects.filter(status="published").values_list(
                "message_id", flat=True
            )
        )
        connection.close()
        time.sleep(1)  # the fault: the broker stays dead for a second
        server.start()
        answering.append(time.time())

    try:
        async with ChatLoad(
            asgi_server, users_cookies(chat_users, 3), ["t1", "t2", "t3"]
        ) as load:
            await load.stream(per_client=60, interval=0.1, at={2.5: kill_and_restart})
            window = set(load.acked) - published_before
            row = await check_and_record(
                reliability_rows, "kill -9 of the embedded broker, restarted", load,
                bootstrap=bootstrap, topic=worker.topic, fault_ended=answering[0],
                in_kafka=window,
            )  # fmt: skip
    finally:
        server.stop()
    assert published_before, "the kill must come after some messages were published"
    assert window, "the kill must catch messages not yet published"
    assert row["duplicates_before"] == 0, row  # the window's messages appear once
    assert row["recovery_seconds"] < 30, row
    rebuilds = multiprocess_metric(metrics_dir, REBUILDS) - rebuilds_before
    assert rebuilds >= 1, "the producer must have been rebuilt after the restart"
