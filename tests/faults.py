"""Fault injection for the reliability tests: a cuttable TCP proxy and a chat load."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from django.db.models import Max

from chat.models import Message

from .support import WSClient, wait_for

REBUILDS = "chat_kafka_producer_rebuilds_total"
FAST_RECOVERY = {
    "KAFKA_SEND_TIMEOUT": "2",
    "KAFKA_RETRY_TRIES": "3",
    "KAFKA_RETRY_DELAY": "1",
    "KAFKA_RETRY_BACKOFF": "2",
    "KAFKA_BREAKER_FAILURES": "3",
    "KAFKA_BREAKER_RESET": "2",
    "OUTBOX_GRACE_SECONDS": "5",
    "OUTBOX_BACKOFF_MAX": "8",
    "OUTBOX_SWEEP_INTERVAL": "1",
}


class FaultProxy:
    """TCP proxy 127.0.0.1:listen → 127.0.0.1:target that can be cut and restored.

    Cutting aborts every open connection and stops listening, so clients see resets
    and refused connections: the broker is down as far as they can tell. Freezing
    stops forwarding on the open connections without closing anything (what a
    sleeping laptop, a Wi-Fi change or a NAT timeout does), while new connections
    flow: a fresh path.
    """

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.BaseTransport] = set()
        self.gates: set[asyncio.Event] = set()  # one per open connection: set = flowing

    def start(self) -> FaultProxy:
        """Start the event loop thread and listen."""
        self.thread.start()
        self.restore()
        return self

    def _run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def restore(self) -> None:
        """Accept connections again."""

        async def listen() -> None:
            self.server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.listen_port, reuse_address=True
            )

        self._run(listen())

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""

        async def cut() -> None:
            if self.server is not None:
                self.server.close()
            for transport in list(self.transports):
                transport.abort()
            self.transports.clear()
            for gate in self.gates:  # frozen pipes end on the aborted transports
                gate.set()
            if self.server is not None:
                await self.server.wait_closed()
                self.server = None

        self._run(cut())

    def freeze(self) -> None:
        """Hold every byte of the open connections (in both directions), closing
        nothing; new connections are not affected."""

        async def freeze() -> None:
            for gate in self.gates:
                gate.clear()

        self._run(freeze())

    def thaw(self) -> None:
        """Let the frozen connections flow again, held bytes first."""

        async def thaw() -> None:
            for gate in self.gates:
                gate.set()

        self._run(thaw())

    def stop(self) -> None:
        """Cut, let the connections' handlers end, and stop the thread."""
        self.cut()

        async def handlers_end() -> None:
            others = asyncio.all_tasks() - {asyncio.current_task()}
            if others:
                await asyncio.wait(others, timeout=2)

        self._run(handlers_end())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            client_writer.transport.abort()
            return
        self.transports.update({client_writer.transport, upstream_writer.transport})
        gate = asyncio.Event()
        gate.set()
        self.gates.add(gate)

        async def pipe(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            try:
                while data := await reader.read(65536):
                    await gate.wait()  # frozen: hold it, and read no more
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.transport.abort()
                self.transports.discard(writer.transport)

        try:
            await asyncio.gather(
                pipe(client_reader, upstream_writer),
                pipe(upstream_reader, client_writer),
            )
        finally:
            self.gates.discard(gate)


class ChatLoad:
    """Several real WebSocket clients sending a steady stream, recording what they see."""

    def __init__(self, server: str, cookies: list[str], rooms: list[str]) -> None:
        self.server = server
        self.cookies = cookies
        self.rooms = rooms
        self.acked: dict[str, str] = {}  # message_id -> room
        self.unacked: set[str] = set()  # client_ids sent, not yet acked
        self.errors: list[dict[str, Any]] = []
        self.last_status: dict[str, str] = {}
        self.statuses_seen: Counter[str] = Counter()
        self.clients: list[WSClient] = []
        self.readers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> ChatLoad:
        for i, cookie in enumerate(self.cookies):
            client = await WSClient.connect(self.server, self.room_of(i), cookie)
            await client.expect("history")
            self.clients.append(client)
            self.readers.append(asyncio.create_task(self._read(client)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self.readers:
            task.cancel()
        for client in self.clients:
            await client.close()

    def room_of(self, index: int) -> str:
        """The room client `index` talks in."""
        return self.rooms[index % len(self.rooms)]

    async def _read(self, client: WSClient) -> None:
        async for raw in client.connection:
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "message.ack":
                self.unacked.discard(frame["client_id"])
                self.acked[frame["message_id"]] = frame["client_id"]
            elif kind == "message.status":
                self.last_status[frame["message_id"]] = frame["status"]
                self.statuses_seen[frame["status"]] += 1
            elif kind == "error":
                self.errors.append(frame)

    async def stream(
        self,
        *,
        per_client: int,
        interval: float,
        at: dict[float, Callable[[], Any]] | None = None,
        prefix: str = "",
    ) -> float:
        """Each client sends `per_client` messages (`prefix` before each text), one per
        `interval` seconds, while `at` runs fault actions (blocking callables, in a
        thread) at their offsets. Returns when every message was acked; the time the
        stream took."""
        started = time.monotonic()

        async def send_all(index: int, client: WSClient) -> None:
            for n in range(per_client):
                client_id = f"c{index}-{n}"
                self.unacked.add(client_id)
                await client.send(
                    {"message": f"{prefix}load {client_id}", "client_id": client_id}
                )
                await asyncio.sleep(
                    max(0.0, started + (n + 1) * interval - time.monotonic())
                )

        async def faults() -> None:
            for offset, action in sorted((at or {}).items()):
                await asyncio.sleep(max(0.0, started + offset - time.monotonic()))
                await asyncio.to_thread(action)

        await asyncio.gather(
            faults(), *(send_all(i, c) for i, c in enumerate(self.clients))
        )
        deadline = time.monotonic() + 30
        while self.unacked and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not self.unacked, f"{len(self.unacked)} messages never acked"
        return time.monotonic() - started


def verify_delivery(
    *, bootstrap: str, topic: str, sent: set[str], timeout: float = 120.0
) -> dict[str, Any]:
    """Read the topic back and count, by message_id, what arrived (raw and de-duplicated).

    Runs the events through chat.agents.reorderer.ChatStreamReorderer as a consumer would.
    """
    from chat.agents.reorderer import ChatStreamReorderer, decode_record

    from .support import read_topic

    def has_all(records: list[Any]) -> bool:
        return sent <= {dict(r.headers)["message_id"].decode() for r in records}

    records = read_topic(bootstrap, topic, until=has_all, timeout=timeout)
    events = [decode_record(r) for r in records]
    ids = [e["message_id"] for e in events]
    reorderer = ChatStreamReorderer(window=len(events) + 1)
    released = [out for e in events for out in reorderer.push(e)] + reorderer.drain()
    released_ids = [e["message_id"] for e in released]
    rooms = {e["room"] for e in events}

    def inversions(seq_list: list[int]) -> int:
        return sum(1 for a, b in itertools.pairwise(seq_list) if b < a)

    def first_seen(stream: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # A repeat of a message_id is a duplicate, counted as such: the order is
        # judged on each message's first appearance, as the benchmark does.
        seen: set[str] = set()
        firsts = []
        for event in stream:
            if event["message_id"] not in seen:
                seen.add(event["message_id"])
                firsts.append(event)
        return firsts

    firsts = first_seen(events)
    return {
        "kafka_records": len(records),
        "lost": len(sent - set(ids)),
        "foreign": len(set(ids) - sent),
        "duplicates_before": len(ids) - len(set(ids)),
        "duplicates_after": len(released_ids) - len(set(released_ids)),
        "delivered_after": len(set(released_ids) & sent),
        "out_of_order_before": sum(
            inversions([e["seq"] for e in firsts if e["room"] == room])
            for room in rooms
        ),
        "out_of_order_after": sum(
            inversions([e["seq"] for e in released if e["room"] == room])
            for room in rooms
        ),
    }


def _cell(value: Any) -> str:
    return "–" if value is None else str(value)


def render_report(rows: list[dict[str, Any]], *, failed: int) -> str:
    """docs/RELIABILITY.md, from the rows the fault tests measured."""
    import os
    import platform
    from datetime import UTC, datetime

    lines = [
        "# Reliability: measured, not promised",
        "",
        "<!-- Generated by `make reliability` (tests/e2e/test_reliability.py and "
        "tests/e2e/test_kafka_faults.py); do not edit. -->",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, embedded Valkey; the broker is the "
        "embedded Tansu or a real Apache Kafka cluster of three KRaft nodes "
        "(`chatproj.kafka_cluster`: replication factor 3, `min.insync.replicas=2`, "
        "acks=all); SQLite or the configured `DATABASE_URL`, real prefork Celery "
        "workers and a real uvicorn server"
        + (f". **{failed} test(s) failed in this run.**" if failed else "."),
        "",
        "Each scenario sends chat messages from real WebSocket clients, injects the "
        "fault, and then counts by `message_id`: what the users got acknowledged (sent), "
        "what is in Kafka (raw records, duplicates, and seq order per room, judged on "
        "each message's first appearance), and what a consumer using "
        "`chat.agents.reorderer.ChatStreamReorderer` sees (each message once, in `seq` "
        "order per room). *Recovery* is the time from the end of the fault until the "
        "last message of the run was published. *Status frames missed* counts messages "
        "whose live `message.status: published` frame never reached the sender (a worker "
        "killed between the database update and the frame); their history shows "
        "`published` after a reconnect. *Notifications* (Apache Kafka rows): a "
        "notification agent consumed the stream through the fault, and every message "
        "that @mentions a member must be stored once as a notification.",
        "",
        "| scenario | broker | sent | lost | dead | Kafka records | duplicates before "
        "de-dup | after | out of seq order before | after | `failed` statuses shown | "
        "error frames | status frames missed | notifications stored / expected | "
        "recovery |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    columns = [
        "broker", "sent", "lost", "dead", "kafka_records", "duplicates_before",
        "duplicates_after", "out_of_order_before", "out_of_order_after",
        "failed_statuses", "error_frames", "missing_status_frames", "notifications",
    ]  # fmt: skip
    for row in rows:
        cells = [_cell(row.get(column)) for column in columns]
        lines.append(
            f"| {row['scenario']} | {' | '.join(cells)} | "
            f"{row['recovery_seconds']:.1f} s |"
        )
    lines += [
        "",
        "Settings in these runs: `KAFKA_SEND_TIMEOUT=2`, `KAFKA_RETRY_TRIES=3`, "
        "`KAFKA_RETRY_DELAY=1`, `KAFKA_RETRY_BACKOFF=2`, `KAFKA_BREAKER_FAILURES=3`, "
        "`KAFKA_BREAKER_RESET=2`, `OUTBOX_GRACE_SECONDS=5`, `OUTBOX_BACKOFF_MAX=8`, "
        "`OUTBOX_SWEEP_INTERVAL=1` (production defaults are longer: see docs/operations.md); "
        "on Apache Kafka `KAFKA_SEND_TIMEOUT=5`, topics of 3 partitions with "
        "replication factor 3 and `min.insync.replicas=2`, brokers fenced 3 s after "
        "their last heartbeat and producer ids expiring after 8 s idle "
        "(`chatproj.kafka_cluster`). *Recovery* on Apache Kafka runs from the end of "
        "the fault (the kill, or the restart of what was stopped).",
        "",
        GUARANTEES,
    ]
    return "\n".join(lines) + "\n"


GUARANTEES = """## What is guaranteed, and how

- **Nothing acknowledged is lost.** The sender's `message.ack` is sent only after the
  message row is committed. The row is the outbox: a message stays `pending` or
  `failed` until a worker has Kafka's acknowledgement (`acks=all`, idempotent
  producer), and the outbox sweep (Celery beat, every `OUTBOX_SWEEP_INTERVAL`)
  re-enqueues any message pending longer than `OUTBOX_GRACE_SECONDS` after its last
  attempt (a lost task, a flushed queue, a killed worker) and every failed one, waiting
  `GRACE × 2^n` (at most `OUTBOX_BACKOFF_MAX`) between re-enqueues so a long outage is
  probed, not hammered. `manage.py republish_pending --all` does the same on demand.
- **Crashes.** Tasks are acknowledged late and rejected when a worker child dies, so
  Redis redelivers them; the Redis `visibility_timeout` (settings refuse to start if it
  does not exceed the longest retry countdown) bounds how long an unacknowledged task
  of a dead worker waits, and the sweep usually republishes it much sooner. Each worker
  process flushes and closes its producer (bounded) when it stops.
- **Outages.** A worker process that sees `KAFKA_BREAKER_FAILURES` retriable failures
  in a row stops calling the broker for `KAFKA_BREAKER_RESET` seconds: attempts then
  fail at once and go to Celery's retry countdown instead of each holding a worker for
  `KAFKA_SEND_TIMEOUT`. The producer reconnects within a second once the broker is back.
- **A producer that breaks is rebuilt.** An error that says the producer's own state
  is broken (an unknown or expired producer id after a broker restart or a quiet
  spell, a sequence gap, a fenced epoch, a broken connection, a fatal idempotence
  state) makes the worker process discard its producer and build a new one for the
  next attempt; leader changes and unmet `min.insync.replicas` are retried with the
  same producer; an error nobody classified is retried, never dead
  (docs/operations.md has the table).
- **Permanent failures** (a record larger than the broker accepts, an invalid topic,
  no authorization) are not retried: the message is copied (content cut to 200
  characters, with `content_length` and `error`) to `<KAFKA_CHAT_TOPIC>.dlq`, then
  becomes `dead` with the reason and is logged at error level. While the copy cannot
  be written, the message stays `failed` and is retried: never dead without its copy.
  `manage.py dead_letters` lists them and `--redrive ID…`/`--redrive-all` puts them
  back once the cause is fixed.
- **Duplicates.** On Apache Kafka each publish batch is one Kafka transaction, and
  the records are read back with `isolation_level="read_committed"`: a batch sent
  again after a broker failure is seen once, and a batch whose commit went
  unanswered is read back at its offsets before it is sent again, so the Apache
  Kafka rows have 0 duplicates before de-duplication. The embedded Tansu runs
  without transactions (it neither hides aborted records nor ends a transaction a
  killed worker left open), and a worker killed between Kafka's commit and the
  database update publishes its batch again: delivery stays at least once, a
  duplicate is always a repeat of a `message_id`, and consumers de-duplicate by the
  `message_id` header or field.
- **Ordering.** All events of one conversation share a key (`room:<room>` or
  `dm:<low>:<high>`) and so one partition, and they reach it in `seq` order: only the
  holder of the conversation's Redis lock publishes it, always starting from its lowest
  unpublished `seq`, through an idempotent producer, and it releases the lock only after
  the batch is acknowledged and recorded. So the "out of seq order" columns are 0, and a
  consumer needs no reordering, only de-duplication by `message_id`: a batch that
  reached Kafka but whose worker died before recording it is published again, after
  the originals. Two exceptions, both operator actions or rare: a re-driven dead
  message is published when it is re-driven, after later ones; and if the lock expires
  under a publisher stuck longer than `CHAT_PUBLISH_LOCK_TIMEOUT`, two publishers could
  overlap. `ChatStreamReorderer` (bounded by `window` events or `max_wait` seconds)
  still restores order for a consumer that wants to be safe against those.
- **The sender sees the outcome**: `message.status` frames say `published`, `failed`
  (retries exhausted; the sweep keeps trying and a later `published` follows) or `dead`;
  after a reconnect the history carries each message's current `status`.
"""


def all_published(ids: set[str]) -> bool:
    """Whether every message of the run is published."""
    return (
        not Message.objects.filter(message_id__in=ids)
        .exclude(status="published")
        .exists()
    )


def last_published_at(ids: set[str]) -> float:
    """Epoch seconds of the last publication among these messages."""
    return (
        Message.objects.filter(message_id__in=ids)
        .aggregate(t=Max("published_at"))["t"]
        .timestamp()
    )


async def check_and_record(
    rows: list[dict[str, Any]],
    scenario: str,
    load: ChatLoad,
    *,
    bootstrap: str,
    topic: str,
    fault_ended: float,
    max_missing_status: int = 0,
    also_sent: frozenset[str] = frozenset(),
    in_kafka: set[str] | None = None,
    broker: str = "Tansu",
) -> dict[str, Any]:
    """Wait for the run to settle, count, assert nothing lost, and record the row.

    The live `message.status` frame is sent once, after the database says
    published: a worker killed between the two loses that frame (the history
    shows the status after a reconnect), so a kill scenario allows a few.
    `in_kafka` narrows what must be in the topic (an in-memory broker that restarted
    lost what it held before). On Apache Kafka, which hides aborted transactions from
    read_committed consumers, no message_id may be in the topic twice; Tansu does
    not hide them, so there only the de-duplicated stream is judged."""
    sent = set(load.acked) | also_sent
    await database_sync_to_async(wait_for)(lambda: all_published(sent), 120, interval=0.5,
                                  what="every message published")  # fmt: skip
    figures = await database_sync_to_async(verify_delivery)(
        bootstrap=bootstrap, topic=topic, sent=sent if in_kafka is None else in_kafka
    )
    recovery = max(
        0.0, await database_sync_to_async(last_published_at)(sent) - fault_ended
    )

    def missing_status() -> list[str]:
        return [i for i in load.acked if load.last_status.get(i) != "published"]

    await database_sync_to_async(wait_for)(
        lambda: len(missing_status()) <= max_missing_status, 30,
        what="senders told published",
    )  # fmt: skip
    dead = await database_sync_to_async(
        Message.objects.filter(message_id__in=sent, status="dead").count
    )()
    row = {
        "scenario": scenario,
        "broker": broker,
        "sent": len(sent),
        "dead": dead,
        "failed_statuses": load.statuses_seen["failed"],
        "error_frames": len(load.errors),
        "missing_status_frames": len(missing_status()),
        "recovery_seconds": recovery,
        **figures,
    }
    rows.append(row)
    assert dead == 0, row
    assert figures["lost"] == 0, row
    assert figures["foreign"] == 0, (
        row
    )  # a duplicate is only ever a repeated message_id
    assert figures["duplicates_after"] == 0, row
    if broker != "Tansu":
        assert figures["duplicates_before"] == 0, row
    assert figures["delivered_after"] == len(sent if in_kafka is None else in_kafka), (
        row
    )
    assert figures["out_of_order_after"] == 0, row
    assert figures["out_of_order_before"] == 0, row  # one publisher per conversation
    assert load.errors == [], row
    return row


def users_cookies(chat_users, count: int) -> list[str]:
    """`count` session cookies, cycling through the test users."""
    users = list(chat_users.values())
    return [users[i % len(users)].cookie for i in range(count)]
