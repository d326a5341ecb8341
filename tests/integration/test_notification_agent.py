"""NotificationAgent (`manage.py run_agent notifications`) against the real broker,
Redis-compatible server and database, events produced by the real pipeline
(message_create → Celery worker → Kafka), the agent a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

import psutil
import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError, connection
from kafka import KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.partitioner.default import murmur2
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from chat.agents import ChatEvent, NotificationAgent
from chat.agents.heartbeat import live_instances
from chat.agents.notifications import BadRecord, RecordRef, decode_event
from chat.agents.registry import AGENTS
from chat.models import Message, Notification
from chat.services.messages import message_create
from chat.services.notifications import NotificationOutcome
from chat.services.rooms import membership_join
from chatproj.embedded import free_port

from ..support import (
    ROOT,
    Agent,
    committed_offsets,
    room_ensure,
    unique_group,
    unique_topic,
    wait_for,
)


def rows() -> list[tuple[str, str, str, int]]:
    """Every notification as (username, message_id, kind, seq)."""
    return sorted(
        (n.user.username, str(n.message_id), n.kind, n.seq)
        for n in Notification.objects.select_related("user")
    )


def send(
    room: str, sender_id: int, content: str, receiver_id: int | None = None
) -> str:
    """A message through the real pipeline (the worker publishes it)."""
    message = message_create(
        room_name=room, sender_id=sender_id, receiver_id=receiver_id, content=content
    )
    return str(message.message_id)


def all_published(count: int) -> bool:
    return Message.objects.filter(status="published").count() == count


def published_offsets() -> dict[int, int]:
    """Per partition, the offset after the last published message (from the rows the
    worker wrote; Tansu's ListOffsets answers the end of a multi-record batch wrong)."""
    ends: dict[int, int] = {}
    for partition, offset in Message.objects.filter(status="published").values_list(
        "kafka_partition", "kafka_offset"
    ):
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


def wait_all_committed(
    bootstrap: str, topic: str, group: str, timeout: float = 20
) -> None:
    """Wait until the group committed every published message's offset + 1."""
    seen: list[Any] = []

    def done() -> bool:
        ends = published_offsets()
        committed = committed_offsets(bootstrap, topic, group)
        seen[:] = [ends, committed]
        return bool(ends) and {p: o for p, o in committed.items() if o} == ends

    try:
        wait_for(done, timeout, interval=0.2, what=f"{group} committed to the end")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; published, committed: {seen}") from None


def member_of(room: str, *user_ids: int) -> None:
    room_ensure(room)
    for user_id in user_ids:
        membership_join(user_id=user_id, room_name=room)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.read().decode())
        for s in family.samples
    }


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


pytestmark = pytest.mark.django_db(transaction=True)


# --- the real thing ------------------------------------------------------------------


def test_dm_and_mentions_notify_only_their_users_once_even_replayed(
    start_worker, start_agent, chat_users, kafka_bootstrap, process_env
):
    """A DM notifies its receiver; a room message only the members it @mentions (not
    the sender, a non-member or an unmentioned member). A second group replaying the
    whole topic creates nothing; --check sees the agent while it runs and not after."""
    alice, bob, carol = (chat_users[n].id for n in ("alice", "bob", "carol"))
    get_user_model().objects.create_user(username="dave")  # not a member
    member_of("lobby", alice, bob, carol)
    worker = start_worker()
    group = unique_group()
    assert (
        manage("run_agent", "notifications", "--check", env=process_env).returncode == 1
    )

    mention = send("lobby", alice, "@alice @bob @dave, look (carol is not named)")
    plain = send("lobby", bob, "no mention here")
    dm_message = message_create(
        room_name=f"dm-{min(alice, carol)}-{max(alice, carol)}",
        sender_id=alice, receiver_id=carol, content="psst @bob",
    )  # fmt: skip
    dm = str(dm_message.message_id)
    wait_for(lambda: all_published(3), 30, what="3 messages published")

    agent = start_agent(worker.topic, group)
    wait_for(lambda: len(rows()) == 2, 30, what="2 notifications")
    assert rows() == [("bob", mention, "mention", 1), ("carol", dm, "dm", 1)]
    assert plain not in {r[1] for r in rows()}
    wait_all_committed(kafka_bootstrap, worker.topic, group, 20)
    assert agent.metric("chat_notification_events_total") == 3
    assert agent.metric("chat_notification_freshness_seconds_count") == 2

    check = manage("run_agent", "notifications", "--check", env=process_env)
    assert check.returncode == 0, check.stderr
    assert f"pid {agent.pid}" in check.stdout

    # Replay: a new group starts at the earliest offset and reads it all again.
    replay_group = unique_group()
    replay = start_agent(worker.topic, replay_group)
    wait_all_committed(kafka_bootstrap, worker.topic, replay_group, 30)
    assert replay.metric("chat_notification_events_total") == 3
    assert replay.metric("chat_notifications_created_total") == 0
    assert rows() == [("bob", mention, "mention", 1), ("carol", dm, "dm", 1)]

    assert agent.terminate() == 0
    assert replay.terminate() == 0
    check = manage("run_agent", "notifications", "--check", env=process_env)
    assert check.returncode == 1 and "no instance is consuming" in check.stderr


def test_run_agent_all_runs_every_registered_agent_and_stops_with_them(
    start_worker, start_agent, kafka_bootstrap, process_env
):
    """`run_agent --all` (the Procfile's and compose's `agents`) runs each registered
    agent in a child: `--all --check` passes once each consumes; SIGTERM stops them
    all (exit 0); a child that dies takes the parent down with a failing code, for
    the supervisor to restart them."""
    from chat.agents.heartbeat import live_instances
    from chat.agents.registry import AGENTS

    worker = start_worker()
    parent = start_agent(worker.topic, unique_group(), args=("--all",))

    def consuming(of: Agent | None = None) -> list[dict]:
        """The heartbeats of the children of `of` (the current parent)."""
        try:
            children = {c.pid for c in psutil.Process((of or parent).pid).children()}
        except psutil.NoSuchProcess:
            return []
        return [
            i for n in AGENTS for i in live_instances(n) if i.get("pid") in children
        ]

    wait_for(lambda: len(consuming()) == len(AGENTS), 60, what="every agent consuming")
    check = manage("run_agent", "--all", "--check", env=process_env)
    assert check.returncode == 0, check.stderr
    children = [i["pid"] for i in consuming()]
    assert parent.terminate() == 0
    assert not any(psutil.pid_exists(pid) for pid in children)
    assert manage("run_agent", "--all", "--check", env=process_env).returncode == 1

    again = start_agent(worker.topic, unique_group(), args=("--all",))
    wait_for(
        lambda: len(consuming(again)) == len(AGENTS), 60, what="every agent consuming"
    )
    os.kill(int(consuming(again)[0]["pid"]), signal.SIGKILL)
    wait_for(lambda: again.process.poll() is not None, 30, what="the parent stopped")
    assert again.process.returncode != 0
    assert "stopping the others" in again.log()


def test_poison_records_are_skipped_counted_and_do_not_stop_good_ones(
    start_worker, start_agent, chat_users, kafka_bootstrap
):
    """Not UTF-8, not JSON, wrong schema_version, missing fields, unknown room, unknown
    user, a tombstone and the same event twice, between two good events: both good
    ones notify, each bad one is counted by reason (served on AGENT_METRICS_PORT)."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    member_of("lobby", alice, bob)
    worker = start_worker()
    first = send("lobby", alice, "@bob first")
    wait_for(lambda: all_published(1), 30)
    [record] = Message.objects.filter(message_id=first)
    good = ChatEvent.from_message(record)
    bad_event = json.loads(good.value)
    poison = [
        b"\xff\xfe\x00 not utf-8",
        b"{not json",
        json.dumps({**bad_event, "schema_version": 2}).encode(),
        json.dumps({"schema_version": 1, "room": "lobby"}).encode(),
        json.dumps({**bad_event, "message_id": str(uuid.uuid4()), "room": "nowhere"}).encode(),
        json.dumps({**bad_event, "message_id": str(uuid.uuid4()), "sender_id": 987654}).encode(),
        None,
        good.value,  # the same event again
    ]  # fmt: skip
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for value in poison:
        producer.send(worker.topic, key=good.key, value=value)
    producer.flush(10)
    producer.close()
    second = send("lobby", alice, "second, @bob")
    wait_for(lambda: all_published(2), 30)

    port = free_port()
    agent = start_agent(worker.topic, unique_group(), AGENT_METRICS_PORT=str(port))
    wait_for(lambda: len(rows()) == 2, 30, what="both good events notified")
    assert [r[1] for r in rows()] == sorted([first, second])
    expected = {
        "not_utf8": 1, "not_json": 1, "wrong_schema_version": 1, "invalid_event": 1,
        "unknown_room": 1, "unknown_user": 1, "empty": 1, "duplicate": 1,
    }  # fmt: skip

    def skipped() -> dict[str, float]:
        return {
            dict(labels)["reason"]: value
            for (name, labels), value in scrape(port).items()
            if name == "chat_notification_records_skipped_total"
        }

    wait_for(lambda: skipped() == expected, 10, what=f"skips {expected}")
    lag = (
        "chat_notification_consumer_lag",
        (("partition", str(record.kafka_partition)),),
    )
    wait_for(lambda: scrape(port).get(lag) == 0, 10, what="lag 0")
    samples = scrape(port)
    assert samples[("chat_notification_freshness_seconds_count", ())] == 2
    assert agent.process is not None and agent.process.poll() is None


def test_killed_and_terminated_agents_lose_and_duplicate_nothing(
    start_worker, start_agent, chat_users, kafka_bootstrap
):
    """SIGKILL mid-stream, restart: every notification exactly once. Then SIGTERM:
    exit code 0 with the offsets committed, so the next start reads only new events."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    dm_room = f"dm-{min(alice, bob)}-{max(alice, bob)}"
    worker = start_worker()
    group = unique_group()
    agent = start_agent(worker.topic, group)
    sent = [send(dm_room, alice, f"dm {i}", receiver_id=bob) for i in range(30)]
    wait_for(lambda: Notification.objects.count() >= 1, 30, what="agent consuming")
    agent.stop(sig=signal.SIGKILL)
    sent += [send(dm_room, alice, f"dm {i}", receiver_id=bob) for i in range(30, 60)]

    agent = start_agent(worker.topic, group)
    wait_for(lambda: Notification.objects.count() == 60, 45, what="60 notifications")
    assert sorted(r[1] for r in rows()) == sorted(sent)  # each once, none missing
    wait_all_committed(kafka_bootstrap, worker.topic, group, 20)

    sent += [send(dm_room, alice, f"dm {i}", receiver_id=bob) for i in range(60, 70)]
    wait_for(lambda: Notification.objects.count() == 70, 30, what="70 notifications")
    assert agent.terminate() == 0
    committed = committed_offsets(kafka_bootstrap, worker.topic, group)
    assert {p: o for p, o in committed.items() if o} == published_offsets()

    sent += [send(dm_room, alice, f"dm {i}", receiver_id=bob) for i in range(70, 75)]
    wait_for(lambda: all_published(75), 30)
    agent = start_agent(worker.topic, group)
    wait_for(lambda: Notification.objects.count() == 75, 30, what="75 notifications")
    wait_all_committed(kafka_bootstrap, worker.topic, group, 20)
    assert agent.metric("chat_notification_events_total") == 5  # only the new ones
    assert sorted(r[1] for r in rows()) == sorted(sent)


def test_database_outage_commits_nothing_and_loses_nothing(
    start_worker, start_agent, chat_users, kafka_bootstrap
):
    """While the notification table is gone (a database that fails every batch), the
    agent retries, reports `retrying` and commits no offset; once it is back, every
    event is stored once and committed."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    member_of("lobby", alice, bob)
    worker = start_worker()
    group = unique_group()
    agent = start_agent(worker.topic, group)
    wait_for(lambda: "Partitions assigned: [" in agent.log(), 30, what="agent joined")
    table = Notification._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
    try:
        sent = [send("lobby", alice, f"@bob during the outage {i}") for i in range(3)]
        wait_for(lambda: all_published(3), 30)

        def retrying() -> bool:
            return any(
                i["pid"] == agent.pid and i["state"] == "retrying"
                for i in live_instances("notifications")
            )

        wait_for(retrying, 30, what="the agent to report retrying")
        assert not any(committed_offsets(kafka_bootstrap, worker.topic, group).values())
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table}_away RENAME TO {table}")
    wait_for(lambda: Notification.objects.count() == 3, 30, what="3 notifications")
    assert sorted(r[1] for r in rows()) == sorted(sent)
    wait_all_committed(kafka_bootstrap, worker.topic, group, 20)
    assert agent.terminate() == 0


def test_two_agents_in_one_group_split_the_partitions(
    start_worker, start_agent, chat_users, kafka_bootstrap, stack
):
    """Two processes in one group on a 4-partition topic: each gets partitions, the
    union is all four, and every event is handled once (rows unique)."""
    topic = unique_topic()
    admin = KafkaAdminClient(
        bootstrap_servers=kafka_bootstrap, request_timeout_ms=10_000
    )
    admin.create_topics([NewTopic(topic, 4, 1)])
    admin.close()
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    # one room per partition (the key's murmur2 hash, as the producer partitions)
    rooms: dict[int, str] = {}
    for i in range(200):
        name = f"room-{i}"
        rooms.setdefault(murmur2(f"room:{name}".encode()) % 4, name)
    assert len(rooms) == 4
    for room in rooms.values():
        member_of(room, alice, bob)
    worker = start_worker(KAFKA_CHAT_TOPIC=topic)
    group = unique_group()
    first = start_agent(topic, group)
    second = start_agent(topic, group)

    def split() -> bool:
        parts = {
            i["pid"]: set(i["partitions"])
            for i in live_instances("notifications")
            if i.get("group") == group
        }
        a, b = parts.get(first.pid, set()), parts.get(second.pid, set())
        return bool(a and b and not a & b and a | b == {0, 1, 2, 3})

    wait_for(split, 40, what="the two agents to share the 4 partitions")
    sent = [
        send(room, alice, f"@bob message {n} in {room}")
        for n in range(10)
        for room in rooms.values()
    ]
    wait_for(lambda: Notification.objects.count() == 40, 40, what="40 notifications")
    assert sorted(r[1] for r in rows()) == sorted(sent)
    wait_all_committed(kafka_bootstrap, topic, group, 20)
    handled = [a.metric("chat_notification_events_total") for a in (first, second)]
    assert all(handled) and sum(handled) == 40, handled
    for agent in (first, second):
        assert "Partitions assigned: [" in agent.log()
    assert worker.topic == topic


def test_run_agent_refuses_when_kafka_is_disabled(settings):
    """KAFKA_ENABLED=False: there is nothing to consume, and it says so."""
    settings.KAFKA_ENABLED = False
    with pytest.raises(CommandError, match="KAFKA_ENABLED is False"):
        call_command("run_agent", "notifications")


def test_run_agent_command_line(stack, capsys):
    """--list, no name, an unknown name, garbage, --local without --check."""
    call_command("run_agent", "--list")
    out = capsys.readouterr().out
    assert out.startswith("notifications  ") and "KAFKA_NOTIFICATIONS_GROUP" in out
    for args, message in [
        ((), "Name the agent to run (notifications)"),
        (("mail",), "Unknown agent 'mail'. Registered agents: notifications."),
        (("; rm -rf /",), "Unknown agent '; rm -rf /'"),
        (("notifications", "--local"), "--local only goes with --check"),
    ]:
        with pytest.raises(
            CommandError, match=message.replace("(", r"\(").replace(")", r"\)")
        ):
            call_command("run_agent", *args)


def test_run_agent_garbage_exit_codes(process_env):
    """From a shell: bad options exit 2, an unknown agent 1, both with a message."""
    bogus = manage("run_agent", "notifications", "--bogus", env=process_env)
    assert bogus.returncode == 2 and "unrecognized arguments: --bogus" in bogus.stderr
    unknown = manage("run_agent", "\x1b[31m", env=process_env)
    assert (
        unknown.returncode == 1 and "Registered agents: notifications" in unknown.stderr
    )


# --- pure logic (no servers) -----------------------------------------------------------


def event_bytes(**changes: Any) -> bytes:
    data = {
        "schema_version": 1, "message_id": str(uuid.uuid4()), "room": "lobby",
        "seq": 3, "sender_id": 1, "receiver_id": None, "content": "hi @bob",
        "created_at": "2026-11-25T12:00:00.123456Z",
    }  # fmt: skip
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v != "DROP"}).encode()


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty"),
        (b"\xc3\x28", "not_utf8"),
        (b"", "not_json"),
        (b"{", "not_json"),
        (b"[1]", "invalid_event"),
        (event_bytes(schema_version=2), "wrong_schema_version"),
        (event_bytes(schema_version="1"), "wrong_schema_version"),
        (event_bytes(schema_version=True), "wrong_schema_version"),
        (event_bytes(schema_version="DROP"), "wrong_schema_version"),
        (event_bytes(message_id="DROP"), "invalid_event"),
        (event_bytes(message_id="not-a-uuid"), "invalid_event"),
        (event_bytes(created_at="yesterday"), "invalid_event"),
        (event_bytes(sender_id=2**70), "invalid_event"),
        (event_bytes(seq=0), "invalid_event"),
        (event_bytes(receiver_id=-4), "invalid_event"),
    ],
)
def test_decode_rejects_with_a_reason(value, reason):
    with pytest.raises(BadRecord) as caught:
        decode_event(value)
    assert caught.value.reason == reason


def test_decode_accepts_the_published_event():
    event = ChatEvent(
        message_id=uuid.uuid4(), room="lobby", seq=1, sender_id=1, receiver_id=2,
        content="مرحبًا", created_at=datetime(2026, 1, 2, tzinfo=UTC),
    )  # fmt: skip
    assert decode_event(event.value) == event


def test_registry_and_configuration():
    assert AGENTS["notifications"].load() is NotificationAgent
    agent = NotificationAgent(topic="t", group_id="g", poll_timeout=0.5)
    assert (agent.topic, agent.group_id, agent.offset_reset) == ("t", "g", "earliest")
    assert agent.heartbeat.ttl >= 3 * 0.5
    with pytest.raises(ImproperlyConfigured, match="'earliest' or 'latest'"):
        NotificationAgent(offset_reset="smallest")
    with pytest.raises(ImproperlyConfigured, match="KAFKA_CONSUMER_OPTIONS"):
        NotificationAgent(consumer_config=[])  # type: ignore[arg-type]
    with pytest.raises(ImproperlyConfigured, match="poll_timeout"):
        NotificationAgent(poll_timeout=0)


class FakeConsumer:
    """Stands in for KafkaConsumer in the loop's bookkeeping test."""

    def __init__(self, batches: list[dict[TopicPartition, list[Any]]]) -> None:
        self.batches = batches
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commits: list[dict[TopicPartition, Any]] = []
        self.subscriptions: list[list[str] | None] = []

    def poll(
        self, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[Any]]:
        return self.batches.pop(0) if self.batches else {}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def commit(self, offsets: dict[TopicPartition, Any], timeout_ms: int) -> None:
        self.commits.append(offsets)

    def highwater(self, tp: TopicPartition) -> int:
        return 12

    def position(self, tp: TopicPartition, timeout_ms: int) -> int | None:
        return None  # not known without a fetch

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1, 2}

    def unsubscribe(self) -> None:
        self.subscriptions.append(None)

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.subscriptions.append(topics)


def fake_record(partition: int, offset: int, value: bytes | None) -> Any:
    from kafka.consumer.fetcher import ConsumerRecord

    return ConsumerRecord(
        "t", partition, -1, offset, 0, 0, b"k", value, [], None, 1, len(value or b""), 0
    )


def test_database_error_commits_nothing_seeks_back_and_retries(monkeypatch):
    """The database refuses the batch: no commit, each partition seeks to the batch's
    first offset; the re-polled batch is stored and offset + 1 committed."""
    agent = NotificationAgent(topic="t", group_id="g")
    monkeypatch.setattr(agent, "_beat", lambda **_: None)
    monkeypatch.setattr(
        "chat.services.broadcast.push_notifications", lambda outcome: None
    )
    monkeypatch.setattr("chat.agents.stream.close_old_connections", lambda: None)
    batch = {
        TopicPartition("t", 0): [
            fake_record(0, 5, event_bytes()),
            fake_record(0, 6, b"x"),
        ],
        TopicPartition("t", 1): [fake_record(1, 9, event_bytes())],
    }
    consumer = FakeConsumer([batch, batch])
    agent._consumer = consumer  # type: ignore[assignment]
    agent.assigned = {0, 1}
    calls: list[list[tuple[RecordRef, ChatEvent]]] = []

    def record(*, events):
        calls.append(list(events))
        if len(calls) == 1:
            raise OperationalError("database is locked")
        outcome = NotificationOutcome()
        outcome.accepted = [e for _, e in events]
        return outcome

    monkeypatch.setattr("chat.agents.notifications.notifications_record", record)
    with pytest.raises(OperationalError):
        agent.poll_once()
    assert consumer.commits == []
    assert sorted(consumer.seeks) == [
        (TopicPartition("t", 0), 5),
        (TopicPartition("t", 1), 9),
    ]
    assert agent.poll_once() == 3
    [offsets] = consumer.commits
    assert {tp.partition: o.offset for tp, o in offsets.items()} == {0: 7, 1: 10}
    assert [ref.offset for ref, _ in calls[1]] == [5, 9]  # b"x" skipped, not stored
    assert agent.lag == {0: 5, 1: 2}
    agent._consumer = None
    agent.close()


def test_a_record_the_database_refuses_is_skipped_alone(monkeypatch):
    """An unexpected error for the batch: records are retried one by one, and only the
    one that fails is skipped."""
    agent = NotificationAgent(topic="t", group_id="g")
    monkeypatch.setattr(
        "chat.services.broadcast.push_notifications", lambda outcome: None
    )
    monkeypatch.setattr("chat.agents.stream.close_old_connections", lambda: None)
    poison = uuid.uuid4()

    def record(*, events):
        if any(e.message_id == poison for _, e in events):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        outcome = NotificationOutcome()
        outcome.accepted = [e for _, e in events]
        return outcome

    monkeypatch.setattr("chat.agents.notifications.notifications_record", record)
    outcome = agent.process(
        [
            fake_record(0, 1, event_bytes()),
            fake_record(0, 2, event_bytes(message_id=str(poison))),
            fake_record(0, 3, event_bytes()),
        ]
    )
    assert len(outcome.accepted) == 2
    assert outcome.skipped == [(RecordRef("t", 0, 2), "rejected by the database")]
    agent.close()


def test_counts_are_per_reason(monkeypatch):
    """Two bad records of one kind count twice under that reason."""
    monkeypatch.setattr(
        "chat.services.broadcast.push_notifications", lambda outcome: None
    )
    monkeypatch.setattr("chat.agents.stream.close_old_connections", lambda: None)
    monkeypatch.setattr(
        "chat.agents.notifications.notifications_record",
        lambda *, events: NotificationOutcome(),
    )

    def count() -> float:
        labels = {"reason": "not_json"}
        name = "chat_notification_records_skipped_total"
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = count()
    agent = NotificationAgent(topic="t", group_id="g")
    agent.process([fake_record(0, 1, b"{"), fake_record(0, 2, b"nope")])
    assert count() - before == 2
    agent.close()


def test_a_member_left_without_partitions_joins_again(monkeypatch):
    """Assigned nothing for EMPTY_ASSIGNMENT_REJOIN seconds while the topic has
    partitions: the agent subscribes again (once per interval); assigned some, it
    leaves the group alone."""
    from chat.agents import stream

    agent = NotificationAgent(topic="t", group_id="g")
    monkeypatch.setattr(agent, "_beat", lambda **_: None)
    consumer = FakeConsumer([])
    agent._consumer = consumer  # type: ignore[assignment]
    now = [1000.0]
    monkeypatch.setattr(stream.time, "monotonic", lambda: now[0])
    agent.poll_once()  # the clock starts
    now[0] += stream.EMPTY_ASSIGNMENT_REJOIN - 1
    agent.poll_once()
    assert consumer.subscriptions == []
    now[0] += 2
    agent.poll_once()
    assert consumer.subscriptions == [None, ["t"]]
    agent.poll_once()  # not again within the interval
    assert consumer.subscriptions == [None, ["t"]]
    agent.assigned = {1}
    now[0] += 100
    agent.poll_once()
    assert consumer.subscriptions == [None, ["t"]]
    agent.closed = True
