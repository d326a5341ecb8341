"""Fault injection on a real Apache Kafka cluster: three KRaft nodes, replication
factor 3, min.insync.replicas=2, acks=all (`make test-kafka`).

Each scenario streams messages from real WebSocket clients in several conversations
through the real web server and Celery worker, breaks the cluster, and counts by
message_id: 0 lost, 0 duplicates after de-duplication, 0 seq inversions per
conversation, 0 dead, and how long publishing took to recover. The rows go to
docs/RELIABILITY.md (`make reliability`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async

from chat.models import Message, Notification
from chat.services.messages import message_create
from chat.services.rooms import membership_join
from chatproj.kafka_cluster import KafkaCluster, KafkaNode, admin_client

from ..faults import FAST_RECOVERY, ChatLoad, check_and_record, users_cookies
from ..support import room_ensure, unique_group, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

BROKER = "Apache Kafka ×3"
# Topics as production creates them on three brokers; a send waits up to 5 s, the
# time a leader election or a fenced broker takes here.
KAFKA3_ENV = {
    **FAST_RECOVERY,
    "KAFKA_TRANSACTIONS": "True",
    "KAFKA_SEND_TIMEOUT": "5",
    "KAFKA_TOPIC_PARTITIONS": "3",
    "KAFKA_TOPIC_REPLICATION_FACTOR": "3",
    "KAFKA_TOPIC_MIN_INSYNC_REPLICAS": "2",
}
ROOMS = ["kf1", "kf2", "kf3"]
OUTAGE = 20  # seconds two of the three brokers stay down


@pytest.fixture
def kafka3(kafka_cluster_3: KafkaCluster) -> Iterator[KafkaCluster]:
    """The session's three-node cluster, made whole again after the test."""
    yield kafka_cluster_3
    kafka_cluster_3.heal()


@pytest.fixture
def worker3(start_worker: Any, kafka3: KafkaCluster) -> Any:
    """A worker (with beat) publishing to a fresh topic of the cluster."""
    return start_worker(
        beat=True, KAFKA_BOOTSTRAP_SERVERS=kafka3.bootstrap, **KAFKA3_ENV
    )


def answered(question: Any) -> Any:
    """What `question()` answers, or None while the cluster cannot answer it (a
    node it asked is down)."""
    try:
        return question()
    except Exception:
        return None


def topic_ready(cluster: KafkaCluster, topic: str) -> bool:
    """Whether the worker has created its topic (every partition has a leader)."""
    return bool(answered(lambda: all(cluster.leader_of(topic, p) for p in range(3))))


async def stream_with_fault(
    asgi_server: str,
    chat_users: Any,
    cluster: KafkaCluster,
    topic: str,
    rows: list[dict[str, Any]],
    scenario: str,
    fault: Any,
    *,
    start_agent: Any,
    at: float = 2.0,
    per_client: int = 60,
    interval: float = 0.1,
) -> dict[str, Any]:
    """Three clients in three rooms stream messages that @mention bob while a
    notification agent consumes the topic; `fault()` runs `at` seconds in and
    returns when the fault has ended (the time recovery is measured from). Every
    message is published once in order, and every mention stored once."""
    ended: list[float] = []
    bob = chat_users["bob"].id
    for room in ROOMS:
        await database_sync_to_async(room_ensure)(room)
        for user in chat_users.values():
            await database_sync_to_async(membership_join)(
                user_id=user.id, room_name=room
            )
    start_agent(topic, KAFKA_BOOTSTRAP_SERVERS=cluster.bootstrap)

    def run_fault() -> None:
        wait_for(lambda: topic_ready(cluster, topic), 30, what="the topic created")
        fault()
        ended.append(time.time())

    async with ChatLoad(asgi_server, users_cookies(chat_users, 3), ROOMS) as load:
        await load.stream(
            per_client=per_client, interval=interval, at={at: run_fault},
            prefix="@bob ",
        )  # fmt: skip
        expected = sorted(
            await database_sync_to_async(
                lambda: [
                    str(i)
                    for i in Message.objects.filter(message_id__in=list(load.acked))
                    .exclude(sender_id=bob)
                    .values_list("message_id", flat=True)
                ]
            )()
        )
        row = await check_and_record(
            rows, scenario, load, bootstrap=cluster.bootstrap, topic=topic,
            fault_ended=ended[0], broker=BROKER,
        )  # fmt: skip
    await database_sync_to_async(wait_for)(
        lambda: Notification.objects.count() >= len(expected), 60,
        what="every mention stored",
    )  # fmt: skip
    stored = await database_sync_to_async(
        lambda: sorted(
            str(m) for m in Notification.objects.values_list("message_id", flat=True)
        )
    )()
    row["notifications"] = f"{len(stored)} / {len(expected)}"
    assert stored == expected, row  # none lost, none doubled
    return row


async def test_kill_9_of_a_partition_leader(
    asgi_server, chat_users, kafka3, worker3, reliability_rows, start_agent
):
    """kill -9 of the node leading partition 0 mid-stream: a follower takes over."""
    killed = []

    def fault() -> None:
        leader = kafka3.leader_of(worker3.topic, 0)
        leader.kill()
        killed.append(leader)
        kafka3.wait_leader(worker3.topic, 0, not_on=[leader])

    await stream_with_fault(
        asgi_server, chat_users, kafka3, worker3.topic, reliability_rows,
        "kill -9 of a partition leader", fault, start_agent=start_agent,
    )  # fmt: skip
    assert killed and not killed[0].alive


async def test_kill_9_of_the_active_controller(
    asgi_server, chat_users, kafka3, worker3, reliability_rows, start_agent
):
    """kill -9 of the node leading the KRaft metadata quorum mid-stream."""
    killed = []

    def fault() -> None:
        controller = kafka3.active_controller()
        controller.kill()
        killed.append(controller)
        wait_for(
            lambda: answered(kafka3.active_controller) not in (None, controller), 30,
            what="a new active controller",
        )  # fmt: skip

    await stream_with_fault(
        asgi_server, chat_users, kafka3, worker3.topic, reliability_rows,
        "kill -9 of the active controller", fault, start_agent=start_agent,
    )  # fmt: skip
    assert killed and not killed[0].alive


async def test_two_of_three_brokers_stopped_then_back(
    asgi_server, chat_users, kafka3, worker3, reliability_rows, start_agent
):
    """Two nodes killed: min.insync.replicas=2 cannot be met, so messages wait,
    their attempts failing and retried (never dead), until the nodes come back; the
    outage outlasts the producer's own delivery window (KAFKA_DELIVERY_TIMEOUT)."""
    waited: list[int] = []
    retrying: list[int] = []
    dead_seen: list[int] = []

    def sample() -> None:
        in_rooms = Message.objects.filter(room__name__in=ROOMS)
        unpublished = in_rooms.exclude(status="published")
        waited.append(unpublished.count())
        retrying.append(
            unpublished.filter(attempts__gt=0).exclude(last_error="").count()
        )
        dead_seen.append(in_rooms.filter(status="dead").count())

    def fault() -> None:
        survivor = kafka3.leader_of(worker3.topic, 0)
        stopped = [node for node in kafka3.nodes if node is not survivor]
        for node in stopped:
            node.kill()
        # The outage holds for a while: messages arrive and are retried meanwhile.
        deadline = time.monotonic() + OUTAGE
        while time.monotonic() < deadline:
            sample()
            time.sleep(0.5)  # sampling the outage, not waiting for a condition
        for node in stopped:
            node.start()
        kafka3.wait_ready()

    row = await stream_with_fault(
        asgi_server, chat_users, kafka3, worker3.topic, reliability_rows,
        f"2 of 3 brokers down (min ISR unmet) for {OUTAGE} s, then back", fault,
        at=1.0, start_agent=start_agent,
    )  # fmt: skip
    assert max(waited) > 0, "messages must have waited for the brokers"
    assert max(dead_seen) == 0 and row["dead"] == 0, row
    assert max(retrying) > 0, "attempts must have failed and be retried"


async def test_full_cluster_restart(
    asgi_server, chat_users, kafka3, worker3, reliability_rows, start_agent
):
    """Every node stopped at once and started again mid-stream."""
    await stream_with_fault(
        asgi_server, chat_users, kafka3, worker3.topic, reliability_rows,
        "full cluster restart", kafka3.restart_all, start_agent=start_agent,
    )  # fmt: skip


async def test_rolling_restart(
    asgi_server, chat_users, kafka3, worker3, reliability_rows, start_agent
):
    """The three nodes restarted one at a time, as an upgrade does."""
    await stream_with_fault(
        asgi_server, chat_users, kafka3, worker3.topic, reliability_rows,
        "rolling restart of all three", kafka3.rolling_restart, at=1.0,
        per_client=100, start_agent=start_agent,
    )  # fmt: skip


def leader_isolated(
    cluster: KafkaCluster,
    topic: str,
    isolate: Callable[[KafkaNode], None],
    restore: Callable[[KafkaNode], None],
) -> Callable[[], None]:
    """A fault: the leader of the topic's partition 0 is isolated until the others
    have elected a new leader, and 10 s more; then it is restored."""

    def fault() -> None:
        leader = cluster.leader_of(topic, 0)
        # Asked through the others: the isolated node may never answer.
        others = ",".join(n.address for n in cluster.nodes if n is not leader)

        def new_leader() -> bool:
            with admin_client(others) as admin:
                (described,) = admin.describe_topics([topic])
            [partition] = [
                p for p in described["partitions"] if p["partition_index"] == 0
            ]
            return partition["leader_id"] not in (-1, leader.node_id)

        isolate(leader)
        try:
            wait_for(lambda: answered(new_leader), 30, what="a new leader")
            time.sleep(10)  # the fault holds for a while after the failover
        finally:
            restore(leader)
        cluster.wait_ready()

    return fault


async def test_broker_frozen_as_if_cut_off(
    asgi_server, chat_users, kafka3, worker3, reliability_rows, start_agent
):
    """The leader of partition 0 frozen (SIGSTOP) for 15 s: its connections hang,
    as when a host drops off the network; the others fence it and take over."""
    await stream_with_fault(
        asgi_server, chat_users, kafka3, worker3.topic, reliability_rows,
        "partition leader frozen (cut off) for ~15 s",
        leader_isolated(kafka3, worker3.topic, KafkaNode.freeze, KafkaNode.thaw),
        start_agent=start_agent,
    )  # fmt: skip


async def test_broker_cut_off_the_network(
    asgi_server, chat_users, kafka3, worker3, reliability_rows, start_agent
):
    """The leader of partition 0 cut off the network for 15 s (its network
    namespace's link down): it keeps running, reaching no one and reached by no one;
    the others fence it and take over. Then the link comes back."""
    if kafka3.nodes[0].network is None:
        pytest.skip("no network namespaces here (needs root and iproute2)")
    await stream_with_fault(
        asgi_server, chat_users, kafka3, worker3.topic, reliability_rows,
        "partition leader cut off the network for ~15 s",
        leader_isolated(kafka3, worker3.topic, KafkaNode.cut, KafkaNode.reconnect),
        start_agent=start_agent,
    )  # fmt: skip


async def test_producer_idle_past_producer_id_expiration(
    asgi_server, chat_users, kafka3, worker3, reliability_rows
):
    """The worker's producer stays idle past the cluster's producer.id.expiration.ms
    (set short on this cluster): the next messages are published, none dead."""
    expiration = int(kafka3.extra_config["producer.id.expiration.ms"]) / 1000
    async with ChatLoad(asgi_server, users_cookies(chat_users, 3), ROOMS) as load:
        await load.stream(per_client=5, interval=0.1)
        first = set(load.acked)
        await database_sync_to_async(wait_for)(
            lambda: Message.objects.filter(
                message_id__in=first, status="published"
            ).count() == len(first), 30, what="the first messages published",
        )  # fmt: skip
        # The fault is the quiet: the producer sends nothing for this long.
        await asyncio.sleep(expiration + 5)
        resumed = time.time()
        await load.stream(per_client=20, interval=0.1)
        await check_and_record(
            reliability_rows,
            f"producer idle {expiration + 5:.0f} s, past producer.id.expiration.ms",
            load, bootstrap=kafka3.bootstrap, topic=worker3.topic,
            fault_ended=resumed, broker=BROKER,
        )  # fmt: skip


async def test_two_notification_agents_one_killed(
    start_agent, chat_users, kafka3, worker3, reliability_rows
):
    """Two notification agents in one group; one is killed -9 mid-stream: every
    notification is stored once, none lost, none doubled."""
    topic = worker3.topic
    group = unique_group()
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    for room in ROOMS:
        await database_sync_to_async(room_ensure)(room)
        for user in (alice, bob):
            await database_sync_to_async(membership_join)(user_id=user, room_name=room)
    agents = [start_agent(topic, group, KAFKA_BOOTSTRAP_SERVERS=kafka3.bootstrap)
              for _ in range(2)]  # fmt: skip

    def send(n: int) -> str:
        room = ROOMS[n % len(ROOMS)]
        return str(
            message_create(
                room_name=room, sender_id=alice, receiver_id=None,
                content=f"@bob notify {n}",
            ).message_id
        )  # fmt: skip

    sent: list[str] = []
    for n in range(60):
        sent.append(await database_sync_to_async(send)(n))
        if n == 30:
            await database_sync_to_async(wait_for)(
                lambda: Notification.objects.count() >= 10, 60,
                what="the agents consuming",
            )  # fmt: skip
            agents[0].stop(sig=9)
            killed = time.time()
        await asyncio.sleep(0.05)
    await database_sync_to_async(wait_for)(
        lambda: Notification.objects.count() >= len(sent), 90,
        what="every notification",
    )  # fmt: skip
    stored = await database_sync_to_async(
        lambda: sorted(
            str(m) for m in Notification.objects.values_list("message_id", flat=True)
        )
    )()
    last = await database_sync_to_async(
        lambda: max(
            n.created_at.timestamp() for n in Notification.objects.only("created_at")
        )
    )()
    reliability_rows.append(
        {
            "scenario": "2 notification agents in one group, one killed -9",
            "broker": BROKER,
            "sent": len(sent),
            "dead": 0,
            "lost": len(set(sent) - set(stored)),
            "kafka_records": None,
            "duplicates_before": None,
            "duplicates_after": len(stored) - len(set(stored)),
            "out_of_order_before": None,
            "out_of_order_after": None,
            "failed_statuses": None,
            "error_frames": None,
            "missing_status_frames": None,
            "notifications": f"{len(stored)} / {len(sent)}",
            "recovery_seconds": max(0.0, last - killed),
        }
    )
    assert stored == sorted(sent)
    assert agents[1].metric("chat_notification_events_total") > 0
