"""StreamAgent through its example (examples/stream_agent): a MessageCounterAgent run
in a thread against the real broker, and docs/agents.md kept equal to the example."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from prometheus_client import REGISTRY

from chat.agents.heartbeat import live_instances
from chat.agents.records import Outcome
from chat.agents.registry import AGENTS
from chat.agents.stream import StreamAgent
from chat.schemas import ChatEvent
from examples.stream_agent.message_counter import MessageCounterAgent

from ..support import (
    AGENT_ENV,
    ROOT,
    committed_offsets,
    unique_group,
    unique_topic,
    wait_for,
)

EXAMPLE = ROOT / "examples" / "stream_agent" / "message_counter.py"
DOCS = ROOT / "docs" / "agents.md"


def skipped(agent: str, reason: str) -> float:
    """This process's count of records `agent` skipped for `reason`."""
    labels = {"agent": agent, "reason": reason}
    return REGISTRY.get_sample_value("chat_agent_records_skipped_total", labels) or 0.0


def chat_event(room: str, n: int) -> ChatEvent:
    return ChatEvent(
        message_id=uuid.uuid4(), room=room, seq=n, sender_id=1, receiver_id=None,
        content=f"message {n}", created_at=datetime(2026, 1, 2, tzinfo=UTC),
    )  # fmt: skip


class GatedCounter(MessageCounterAgent):
    """The example, whose first batch fails as if the database were down and whose
    next one waits for `gate`: what was committed meanwhile can be looked at."""

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.calls = 0
        self.waiting = threading.Event()
        self.gate = threading.Event()

    def handle(self, events: Any) -> Outcome:
        self.calls += 1
        if self.calls == 1:
            raise OperationalError("database is locked")
        self.waiting.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return super().handle(events)


def test_the_example_counts_published_events_commits_after_handling_and_skips_bad(
    kafka_bootstrap, stack
):
    """Events of two rooms on a 2-partition topic, a record that is not JSON and one
    event twice: nothing is committed while a batch fails or is being handled; then
    every event is counted once, the bad record and the duplicate are skipped and
    counted by reason, the offsets are committed to the end, the lag is 0 and the
    heartbeat names the agent. Stopping leaves the group."""
    topic, group = unique_topic(), unique_group()
    admin = KafkaAdminClient(
        bootstrap_servers=kafka_bootstrap, request_timeout_ms=10_000
    )
    admin.create_topics([NewTopic(topic, 2, 1)])
    admin.close()
    events = [chat_event("lobby", n) for n in range(1, 4)]
    events += [chat_event("kitchen", n) for n in range(1, 3)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    sent = [producer.send(topic, key=e.key, value=e.value) for e in events]
    sent.append(producer.send(topic, key=events[0].key, value=b"{not json"))
    sent.append(producer.send(topic, key=events[0].key, value=events[0].value))
    producer.flush(10)
    producer.close()
    ends: dict[int, int] = {}
    for future in sent:
        where = future.get(timeout=10)
        ends[where.partition] = max(ends.get(where.partition, 0), where.offset + 1)
    before = {r: skipped("message-counter", r) for r in ("not_json", "duplicate")}

    agent = GatedCounter(
        topic=topic, group_id=group, poll_timeout=0.2, retry_max=1,
        consumer_config=json.loads(AGENT_ENV["KAFKA_CONSUMER_OPTIONS"]),
    )  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert agent.waiting.wait(30), "no batch reached handle after the retry"
        assert agent.calls == 2  # the failed batch was polled again
        assert not any(committed_offsets(kafka_bootstrap, topic, group).values())
        assert agent.per_room == {}
        agent.gate.set()

        wait_for(
            lambda: agent.per_room == {"lobby": 3, "kitchen": 2}, 30, what="counts"
        )
        wait_for(
            lambda: {
                p: o for p, o in committed_offsets(kafka_bootstrap, topic, group).items() if o
            } == ends,
            30, interval=0.2, what=f"offsets {ends} committed",
        )  # fmt: skip
        after = {r: skipped("message-counter", r) - before[r] for r in before}
        assert after == {"not_json": 1, "duplicate": 1}
        wait_for(lambda: agent.lag == {0: 0, 1: 0}, 10, what="lag 0")
        assert any(
            i["pid"] == agent.pid and i["group"] == group
            for i in live_instances("message-counter")
        )
        assert agent.per_room == {"lobby": 3, "kitchen": 2}  # nothing counted twice
    finally:
        agent.gate.set()
        stop.set()
        thread.join(30)
    assert not thread.is_alive() and agent.closed
    assert not any(
        i["pid"] == agent.pid for i in live_instances("message-counter")
    )  # the heartbeat is removed on a clean stop


# --- no servers -----------------------------------------------------------------------


def test_docs_show_the_example_file():
    """docs/agents.md's example is examples/stream_agent/message_counter.py, verbatim."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)
    assert EXAMPLE.read_text() in blocks


def test_the_example_is_not_registered_and_takes_its_settings_by_name():
    """A product registry entry runs an agent; the example has none. Its settings are
    KAFKA_MESSAGE_COUNTER_*, with the defaults when absent."""
    assert all(
        not a.path.startswith("examples.") and a.name != MessageCounterAgent.name
        for a in AGENTS.values()
    )
    assert MessageCounterAgent.setting_name("GROUP") == "KAFKA_MESSAGE_COUNTER_GROUP"
    agent = MessageCounterAgent(topic="t")
    assert (agent.group_id, agent.offset_reset, agent.max_records) == (
        "chat-message-counter", "earliest", 500,
    )  # fmt: skip
    assert agent.heartbeat.key.startswith("chat:agent:message-counter:")
    agent.close()


def fake_record(offset: int, value: bytes | None) -> Any:
    from kafka.consumer.fetcher import ConsumerRecord

    return ConsumerRecord(
        "t", 0, -1, offset, 0, 0, b"k", value, [], None, 1, len(value or b""), 0
    )


def test_an_event_handle_fails_on_alone_is_skipped_and_the_rest_handled(monkeypatch):
    """handle fails on the batch (not a retry_on error): the events are handled one
    at a time and only the one that fails is skipped, as `rejected`."""
    monkeypatch.setattr("chat.agents.stream.close_old_connections", lambda: None)
    poison = chat_event("lobby", 2)

    class Picky(MessageCounterAgent):
        def handle(self, events: Any) -> Outcome:
            if any(e.message_id == poison.message_id for _, e in events):
                raise ValueError("not this one")
            return super().handle(events)

    agent = Picky(topic="t")
    before = skipped("message-counter", "rejected")
    outcome = agent.process(
        [
            fake_record(1, chat_event("lobby", 1).value),
            fake_record(2, poison.value),
            fake_record(3, chat_event("lobby", 3).value),
        ]
    )
    assert len(outcome.accepted) == 2 and agent.per_room == {"lobby": 2}
    assert [(ref.offset, why) for ref, why in outcome.skipped] == [
        (2, "rejected by handle")
    ]
    assert skipped("message-counter", "rejected") - before == 1
    agent.close()


def test_an_agent_without_a_name_is_refused():
    """The name is the agent's registry entry, heartbeat key and settings prefix."""

    class Nameless(StreamAgent):
        pass

    with pytest.raises(ImproperlyConfigured, match="Nameless must set `name`"):
        Nameless()


def test_importing_the_agents_package_and_registry_loads_no_kafka():
    """chat.agents, its base and its registry stay free of the Kafka client (the
    web process imports them)."""
    code = (
        "import sys, chat.agents, chat.agents.base, chat.agents.registry;"
        "assert 'kafka' not in sys.modules, sorted(m for m in sys.modules if 'kafka' in m)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={"DJANGO_SETTINGS_MODULE": "chatproj.settings", "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
