"""What happened to every message, by client_id and message_id, and the Kafka reader.

Times are `time.monotonic()` of the benchmark process, taken when a frame or a record
is read, so every latency is measured on one clock.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from .tasks import CEILING_KEY

logger = logging.getLogger(__name__)

FINAL = ("published", "dead", "skipped")


@dataclass
class Sent:
    """One message a client sent, and when the server answered it."""

    client: int
    room: str
    step: int
    t_send: float
    t_ack: float | None = None
    message_id: str | None = None
    seq: int | None = None
    error: str | None = None


@dataclass
class KafkaSeen:
    """Where and when a message was first readable in Kafka."""

    t: float
    partition: int
    offset: int
    key: bytes
    seq: int


@dataclass
class Ledger:
    """Every observation of the run; counters for progress and the backlog series."""

    clients: int
    sends: dict[str, Sent] = field(default_factory=dict)
    client_of: dict[str, str] = field(default_factory=dict)  # message_id → client_id
    broadcast_first: dict[str, float] = field(default_factory=dict)
    status_first: dict[str, tuple[float, str]] = field(default_factory=dict)
    published_at: dict[str, float] = field(default_factory=dict)
    # acked messages the live reader never got, found when the topic was read again
    # from the start after the run (see reread): in Kafka, with no time to report
    reread: dict[str, KafkaSeen] = field(default_factory=dict)
    received: list[set[str]] = field(default_factory=list)
    kafka: dict[str, KafkaSeen] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    inversions: int = 0
    foreign_records: int = 0
    ceiling_records: int = 0
    n_sent: int = 0
    n_acked: int = 0
    n_published: int = 0
    n_kafka: int = 0
    _max_seq: dict[bytes, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.received = [set() for _ in range(self.clients)]

    # --- WebSocket side (event loop) --------------------------------------------------

    def on_send(self, client_id: str, client: int, room: str, step: int) -> None:
        """A client is about to send a message."""
        self.sends[client_id] = Sent(client, room, step, time.monotonic())
        self.n_sent += 1

    def on_frame(self, client: int, user_id: int, frame: dict[str, Any]) -> str | None:
        """Record a server frame; returns the message_id it concerns, if any."""
        now = time.monotonic()
        kind = frame.get("type")
        if kind == "message.ack":
            sent = self.sends.get(frame.get("client_id") or "")
            if sent is None or sent.t_ack is not None:
                return None
            sent.t_ack, sent.message_id, sent.seq = (
                now,
                frame["message_id"],
                frame["seq"],
            )
            self.client_of[frame["message_id"]] = frame["client_id"]
            self.n_acked += 1
            return str(frame["message_id"])
        if kind == "chat.message":
            message_id = frame["message_id"]
            self.received[client].add(message_id)
            if frame.get("sender_id") != user_id:
                self.broadcast_first.setdefault(message_id, now)
            return None
        if kind == "message.status":
            message_id, status = frame["message_id"], frame["status"]
            self.statuses[status] += 1
            self.status_first.setdefault(message_id, (now, status))
            if status == "published" and message_id not in self.published_at:
                self.published_at[message_id] = now
                self.n_published += 1
            return str(message_id)
        if kind == "error":
            self.errors[frame.get("code", "?")] += 1
            sent = self.sends.get(frame.get("client_id") or "")
            if sent is not None:
                sent.error = frame.get("code")
        return None

    # --- Kafka side (reader thread) ---------------------------------------------------

    def on_record(self, record: Any, now: float) -> None:
        """A record read from the chat topic, in partition order."""
        if record.key == CEILING_KEY:
            self.ceiling_records += 1
            return
        parsed = _bench_record(record)
        if parsed is None:
            self.foreign_records += 1
            return
        message_id, seq = parsed
        if message_id in self.kafka:
            self.duplicates += 1
            return
        key = record.key
        if seq < self._max_seq.get(key, 0):
            self.inversions += 1
        self._max_seq[key] = max(seq, self._max_seq.get(key, 0))
        self.kafka[message_id] = KafkaSeen(
            now, record.partition, record.offset, key, seq
        )
        self.n_kafka += 1

    def not_read(self) -> set[str]:
        """Acked messages that no reader has found in Kafka."""
        return {
            s.message_id
            for s in self.acked()
            if s.message_id is not None
            and s.message_id not in self.kafka
            and s.message_id not in self.reread
        }

    # --- summaries --------------------------------------------------------------------

    def acked(self) -> list[Sent]:
        """Messages the server acknowledged."""
        return [s for s in self.sends.values() if s.message_id is not None]

    def settled(self, *, statuses: bool = True) -> bool:
        """Every sent message answered, every acked one in Kafka (or final without
        being published) and, with `statuses`, its status seen by the sender."""
        if self.n_acked + sum(self.errors.values()) < self.n_sent:
            return False
        for sent in self.sends.values():
            if sent.error:
                continue
            if sent.message_id is None:
                return False
            if sent.message_id in self.published_at or (
                not statuses and sent.message_id in self.kafka
            ):
                if sent.message_id not in self.kafka:
                    return False
                continue
            status = self.status_first.get(sent.message_id)
            if status is None or status[1] not in FINAL:
                return False
        return True

    def seq_gaps(self) -> int:
        """Seqs missing in Kafka below each room's highest seq read."""
        seen: dict[bytes, set[int]] = {}
        for item in [*self.kafka.values(), *self.reread.values()]:
            seen.setdefault(item.key, set()).add(item.seq)
        return sum(max(seqs) - len(seqs) for seqs in seen.values())


def _bench_record(record: Any) -> tuple[str, int] | None:
    """(message_id, seq) of a chat event of the benchmark's rooms; None otherwise."""
    headers = dict(record.headers or [])
    try:
        event = json.loads(record.value)
        message_id = (headers.get("message_id") or b"").decode() or event["message_id"]
        seq = int(event["seq"])
    except (ValueError, KeyError, TypeError):
        return None
    if not (record.key or b"").startswith(b"room:bench-"):
        return None
    return message_id, seq


def _consumer(bootstrap: str) -> KafkaConsumer:
    """A consumer outside any group, for reading partitions it is assigned."""
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        fetch_max_wait_ms=100,  # Tansu answers as soon as data comes
        request_timeout_ms=10_000,
        max_poll_records=5000,
    )


def _assign(
    consumer: KafkaConsumer,
    topic: str,
    partitions: set[int] | None,
    *,
    from_end: bool = False,
) -> list[TopicPartition]:
    """Assign `consumer` these partitions of `topic`, from their start (or end)."""
    assignment = [TopicPartition(topic, p) for p in sorted(partitions or ())]
    consumer.assign(assignment)
    if from_end:
        consumer.seek_to_end(*assignment)
    else:
        consumer.seek_to_beginning(*assignment)
    return assignment


def reread(
    bootstrap: str, topic: str, ledger: Ledger, *, idle: float = 5.0, limit: float = 120
) -> int:
    """After the run: read the topic again from the start, for the acked messages the
    live reader did not get, into `ledger.reread`; returns how many it found.

    A message acked by Kafka can be stored and yet be passed over by a reader: in one
    run the live reader never got six records the test broker (Tansu) had acked at
    offsets 34509-34514 of a partition, while it read the ones after them (a consumer
    moves past offsets a fetch skips). "Lost" is what this second reading does not
    find either. It stops once all are found, after `idle` s without a record, or
    after `limit` s.
    """
    wanted = ledger.not_read()
    if not wanted:
        return 0
    consumer = _consumer(bootstrap)
    try:
        _assign(consumer, topic, consumer.partitions_for_topic(topic))
        start = last = time.monotonic()
        while (
            wanted
            and time.monotonic() - last < idle
            and time.monotonic() - start < limit
        ):
            batches = consumer.poll(timeout_ms=200)
            now = time.monotonic()
            for records in batches.values():
                last = now
                for record in records:
                    parsed = _bench_record(record)
                    if parsed is None or parsed[0] not in wanted:
                        continue
                    wanted.discard(parsed[0])
                    ledger.reread[parsed[0]] = KafkaSeen(
                        now, record.partition, record.offset, record.key, parsed[1]
                    )
    finally:
        consumer.close()
    return len(ledger.reread)


class KafkaReader(threading.Thread):
    """Reads every partition of the chat topic (no consumer group) into the ledger."""

    def __init__(
        self, bootstrap: str, topic: str, ledger: Ledger, *, from_end: bool = False
    ) -> None:
        super().__init__(name="kafka-reader", daemon=True)
        self.bootstrap, self.topic, self.ledger = bootstrap, topic, ledger
        self.from_end = from_end
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        """Assign all partitions, then poll until stopped."""
        consumer = _consumer(self.bootstrap)
        try:
            partitions: set[int] | None = None
            while not self.stopping.is_set():
                partitions = consumer.partitions_for_topic(self.topic)
                if partitions:
                    break
                time.sleep(0.1)
            assignment = _assign(
                consumer, self.topic, partitions, from_end=self.from_end
            )
            for tp in assignment:
                consumer.position(tp)  # resolve now, so "ready" means reading
            self.ready.set()
            while not self.stopping.is_set():
                batches = consumer.poll(timeout_ms=100)
                now = time.monotonic()
                for tp in sorted(batches):
                    for record in batches[tp]:
                        self.ledger.on_record(record, now)
        except BaseException as exc:  # reported by the runner, never silently lost
            logger.exception("Kafka reader failed")
            self.error = exc
            self.ready.set()
        finally:
            consumer.close()

    def stop(self) -> None:
        """Stop polling and close the consumer."""
        self.stopping.set()
        self.join(15)
