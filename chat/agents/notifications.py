"""NotificationAgent: consumes the chat stream and stores DM and @mention notifications.

One Kafka consumer per process (`manage.py run_agent notifications`), in consumer group
KAFKA_NOTIFICATIONS_GROUP on KAFKA_CHAT_TOPIC. More processes in the group share the
topic's partitions (Kafka assigns each partition to one of them); that is how it scales.

The loop: poll a batch (at most KAFKA_NOTIFICATIONS_MAX_RECORDS), decode each record,
record the whole batch's notifications in one transaction
(`notifications_record`), push them live after the commit
(`broadcast.push_notifications`), then commit `offset + 1` of the last record of each
partition. Offsets are committed only after the effects are stored: at least once in,
exactly once in effect (a notification is unique per (user, message_id), so a replayed
event creates nothing).

The kafka-python 3.x facts this relies on:

- Where a new group starts: kafka-python's default `auto_offset_reset` is `latest`,
  which would silently skip everything published before the group's first start (a fresh
  deployment, a renamed group, a topic that outlived its group's offsets). We use
  KAFKA_NOTIFICATIONS_OFFSET_RESET, default `earliest`: a new group reads the whole
  retained topic once, which is safe because the effects are idempotent and a message
  that is not new only costs an indexed lookup. Set it to `latest` for a group that must
  start with new events only.
- Auto-commit is off: a background commit could store the offset of a record whose
  notifications are not yet in the database.
- The committed offset is the next record to read: last handled offset + 1.
- A `commit()` that times out or fails with CommitFailedError (the group rebalanced)
  may still have succeeded, or the partition's new owner re-reads those records; both
  are harmless here, so it is logged and the loop goes on.
- Rebalance-listener callbacks run on the client's IO loop (the one that heartbeats the
  group), so they only log and update gauges; no database work there.

Bad records (not UTF-8, not JSON, wrong schema_version, missing or wrong fields,
unknown room or user, the same event twice) are logged once with topic/partition/offset,
counted in `chat_notification_records_skipped_total{reason}` and skipped; they never
stop the loop. A database error does not lose events: nothing is committed, the
consumer seeks back to the batch's start, backs off (capped by
KAFKA_NOTIFICATIONS_RETRY_MAX) and polls the same records again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import kafka.errors
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import (
    InterfaceError,
    InternalError,
    OperationalError,
    ProgrammingError,
    close_old_connections,
)
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError, KafkaTimeoutError
from pydantic import ValidationError

from chat.agents.base import Agent
from chat.agents.heartbeat import Heartbeat
from chat.agents.kafka_chat import TOPIC_PATTERN, parse_bootstrap_servers
from chat.infra import metrics
from chat.publishing.topics import admin_options, chat_topic_specs, topics_ensure
from chat.schemas import EVENT_SCHEMA_VERSION, MAX_DB_ID, ChatEvent
from chat.services import broadcast
from chat.services.notifications import NotificationOutcome, notifications_record

logger = logging.getLogger(__name__)

# Database errors that say "not now" (down, locked, not migrated yet) rather than "not
# this record" (DataError, IntegrityError): retry the batch, never skip it.
DB_UNAVAILABLE = (OperationalError, InterfaceError, ProgrammingError, InternalError)
# message_ids this process handled recently, to count re-deliveries as duplicates.
RECENT_MESSAGE_IDS = 10_000
# A member assigned nothing for this long while its topic has partitions subscribes
# again (see NotificationAgent._rejoin_if_left_out).
EMPTY_ASSIGNMENT_REJOIN = 15.0


@dataclass(frozen=True)
class RecordRef:
    """Where a record is: what every log line about it names."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class BadRecord(Exception):
    """A record that is not a chat event this agent can handle; `reason` labels the
    skipped-records counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_event(value: bytes | None) -> ChatEvent:
    """The ChatEvent of a record's value, or BadRecord saying why not."""
    if value is None:
        raise BadRecord("empty", "the record has no value")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecord("not_utf8", str(exc)) from None
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadRecord("not_json", str(exc)[:200]) from None
    if not isinstance(raw, dict):
        raise BadRecord("invalid_event", f"a JSON {type(raw).__name__}, not an object")
    version = raw.get("schema_version")
    if type(version) is not int or version != EVENT_SCHEMA_VERSION:
        raise BadRecord(
            "wrong_schema_version",
            f"schema_version {version!r}, expected {EVENT_SCHEMA_VERSION}",
        )
    try:
        event = ChatEvent.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
        raise BadRecord("invalid_event", problems) from None
    for name in ("seq", "sender_id", "receiver_id"):
        number = getattr(event, name)
        if number is not None and not 0 < number <= MAX_DB_ID:
            raise BadRecord("invalid_event", f"{name} {number} is out of range")
    return event


def skip_reason(why: str) -> str:
    """Counter label of a reason `notifications_record` gave for a skip."""
    return "unknown_room" if why.startswith("unknown room") else "unknown_user"


class _RebalanceListener(ConsumerRebalanceListener):
    """Runs on the client's IO loop: log and update gauges only, never block."""

    def __init__(self, agent: NotificationAgent) -> None:
        self.agent = agent

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        partitions = sorted(p.partition for p in revoked)
        for partition in partitions:
            metrics.NOTIFICATION_CONSUMER_LAG.labels(str(partition)).set(0)
            self.agent.next_offset.pop(partition, None)
        self.agent.assigned -= set(partitions)
        if partitions:
            logger.info("Partitions revoked: %s", partitions)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.agent.assigned = {p.partition for p in assigned}
        # positions come from the committed offsets now, not from what we handled
        self.agent.next_offset.clear()
        logger.info(
            "Partitions assigned: %s of %s (group %s)",
            sorted(self.agent.assigned),
            self.agent.topic,
            self.agent.group_id,
        )


class NotificationAgent(Agent):
    """Per-process Kafka consumer of chat events that stores their notifications."""

    name = "notifications"

    def __init__(
        self,
        *,
        bootstrap_servers: str | list[str] | None = None,
        topic: str | None = None,
        group_id: str | None = None,
        client_id: str | None = None,
        offset_reset: str | None = None,
        poll_timeout: float | None = None,
        max_records: int | None = None,
        retry_max: float | None = None,
        timeout: float | None = None,
        consumer_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        servers = (
            settings.KAFKA_BOOTSTRAP_SERVERS
            if bootstrap_servers is None
            else bootstrap_servers
        )
        self.bootstrap_servers = [
            f"{host}:{port}" for host, port in parse_bootstrap_servers(servers)
        ]
        self.topic = settings.KAFKA_CHAT_TOPIC if topic is None else topic
        self.group_id = (
            settings.KAFKA_NOTIFICATIONS_GROUP if group_id is None else group_id
        )
        self.client_id = settings.KAFKA_CLIENT_ID if client_id is None else client_id
        self.offset_reset = (
            settings.KAFKA_NOTIFICATIONS_OFFSET_RESET
            if offset_reset is None
            else offset_reset
        )
        self.poll_timeout = float(
            settings.KAFKA_NOTIFICATIONS_POLL_TIMEOUT
            if poll_timeout is None
            else poll_timeout
        )
        self.max_records = (
            settings.KAFKA_NOTIFICATIONS_MAX_RECORDS
            if max_records is None
            else max_records
        )
        self.retry_max = float(
            settings.KAFKA_NOTIFICATIONS_RETRY_MAX if retry_max is None else retry_max
        )
        # Bound of every blocking Kafka call: connect, commit, close.
        self.timeout = float(
            settings.KAFKA_SEND_TIMEOUT if timeout is None else timeout
        )
        self.consumer_config = (
            settings.KAFKA_CONSUMER_OPTIONS
            if consumer_config is None
            else consumer_config
        )
        self._validate_config()
        self.assigned: set[int] = set()
        self.lag: dict[int, int] = {}
        self.next_offset: dict[int, int] = {}
        self._consumer: KafkaConsumer | None = None
        self._lock = threading.Lock()
        self._recent: OrderedDict[UUID, None] = OrderedDict()
        self._empty_since: float | None = None
        # A few poll intervals, plus the longest backoff between two polls.
        self.heartbeat = Heartbeat(
            self.name, ttl=max(5.0, 3 * self.poll_timeout + self.retry_max)
        )

    def _validate_config(self) -> None:
        if not self.bootstrap_servers:
            raise ImproperlyConfigured(
                "KAFKA_BOOTSTRAP_SERVERS is empty: set it to host:port[,host:port]."
            )
        if not TOPIC_PATTERN.match(self.topic):
            raise ImproperlyConfigured(
                f"KAFKA_CHAT_TOPIC {self.topic!r} is not a valid Kafka topic name."
            )
        if not self.group_id or not isinstance(self.group_id, str):
            raise ImproperlyConfigured("KAFKA_NOTIFICATIONS_GROUP must be a name.")
        if self.offset_reset not in ("earliest", "latest"):
            raise ImproperlyConfigured(
                "KAFKA_NOTIFICATIONS_OFFSET_RESET must be 'earliest' or 'latest', "
                f"not {self.offset_reset!r}."
            )
        for name in ("poll_timeout", "retry_max", "timeout"):
            if not getattr(self, name) > 0:
                raise ImproperlyConfigured(
                    f"NotificationAgent {name} must be a positive number of seconds, "
                    f"not {getattr(self, name)!r}."
                )
        if not (isinstance(self.max_records, int) and self.max_records > 0):
            raise ImproperlyConfigured(
                "KAFKA_NOTIFICATIONS_MAX_RECORDS must be a positive integer, "
                f"not {self.max_records!r}."
            )
        if not isinstance(self.consumer_config, dict):
            raise ImproperlyConfigured(
                "KAFKA_CONSUMER_OPTIONS must be a JSON object of KafkaConsumer "
                f"options, not {self.consumer_config!r}."
            )

    # --- consumer lifecycle -------------------------------------------------------

    @property
    def consumer(self) -> KafkaConsumer:
        """This process's consumer, built and subscribed on first use."""
        if self.closed:
            raise RuntimeError(
                "NotificationAgent is closed; call get_instance() again."
            )
        if self._consumer is None:
            with self._lock:
                if self._consumer is None:
                    self._consumer = self._build_consumer()
        return self._consumer

    def _build_consumer(self) -> KafkaConsumer:
        if settings.KAFKA_CREATE_TOPICS:
            # A group that subscribes to a topic not created yet is assigned nothing
            # until its next metadata refresh (minutes): create it first.
            topics_ensure(
                bootstrap_servers=self.bootstrap_servers,
                specs=chat_topic_specs(self.topic),
                timeout=self.timeout,
                client_options=admin_options(self.consumer_config),
            )
        timeout_ms = int(self.timeout * 1000)
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": f"{self.client_id}-notifications-{self.pid}",
            "group_id": self.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": self.offset_reset,
            "max_poll_records": self.max_records,
            # A member that died is replaced within 10 s (the default is 45 s).
            "session_timeout_ms": 10_000,
            "heartbeat_interval_ms": 3_000,
            # A fetch waits at most this for records: with Tansu a long poll is not
            # woken by new records, and 500 ms (the default) was most of the
            # notification delay (p50 132 ms → 37 ms at 50 msgs/s with 50 ms).
            "fetch_max_wait_ms": 100,
            # A topic or partitions that appear after the group formed (a topic made
            # moments ago, metadata still spreading between brokers) are assigned
            # within seconds, not at the default 5-minute metadata refresh.
            "metadata_max_age_ms": 5_000,
            # Only committed publish transactions: a batch that was sent again after
            # a failure is seen once.
            "isolation_level": "read_committed",
            "bootstrap_timeout_ms": timeout_ms,
            "request_timeout_ms": max(timeout_ms, 30_000),
            "reconnect_backoff_max_ms": 1000,
            **self.consumer_config,
        }
        try:
            consumer = KafkaConsumer(**config)
        except (kafka.errors.KafkaConfigurationError, ValueError, TypeError) as exc:
            raise ImproperlyConfigured(f"KAFKA_CONSUMER_OPTIONS: {exc}") from exc
        consumer.subscribe([self.topic], listener=_RebalanceListener(self))
        logger.info(
            "Kafka consumer created in pid %d (client_id %s, group %s, topic %s, "
            "servers %s, new group starts at %s)",
            self.pid,
            config["client_id"],
            self.group_id,
            self.topic,
            ",".join(self.bootstrap_servers),
            self.offset_reset,
        )
        return consumer

    def flush(self) -> None:
        """Nothing is buffered: offsets are committed after every batch."""

    def close(self) -> None:
        """Leave the group and close the consumer within the timeout. Idempotent."""
        with self._lock:
            consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close(autocommit=False, timeout_ms=int(self.timeout * 1000))
            except Exception:  # close must never raise during shutdown
                logger.exception("Kafka consumer close failed in pid %d", self.pid)
            else:
                logger.info("Kafka consumer closed in pid %d", self.pid)
            for partition in self.assigned:
                metrics.NOTIFICATION_CONSUMER_LAG.labels(str(partition)).set(0)
            self.assigned = set()
            self.heartbeat.clear()
        super().close()

    # --- the loop -------------------------------------------------------------------

    def run_forever(self) -> None:
        """Consume until interrupted (KeyboardInterrupt); `run_agent` uses run() with
        SIGTERM and SIGINT handlers instead."""
        self.run(threading.Event())

    def run(self, stop: threading.Event) -> None:
        """Consume until `stop` is set: the current batch is finished and committed,
        then the consumer is closed."""
        failures = 0
        try:
            while not stop.is_set():
                try:
                    self.poll_once()
                except DB_UNAVAILABLE as exc:
                    failures += 1
                    delay = min(self.retry_max, 0.5 * 2 ** (failures - 1))
                    logger.warning(
                        "Database unavailable (%s); batch not committed, retry %d in "
                        "%.1fs",
                        exc,
                        failures,
                        delay,
                    )
                    self._beat(state="retrying")
                    stop.wait(delay)
                    continue
                except KafkaError as exc:
                    failures += 1
                    delay = min(self.retry_max, 0.5 * 2 ** (failures - 1))
                    logger.warning("Kafka poll failed (%s); retry in %.1fs", exc, delay)
                    stop.wait(delay)
                    continue
                failures = 0  # the next outage backs off from the start again
        finally:
            logger.info("NotificationAgent stopping in pid %d", self.pid)
            self.close()

    def poll_once(self) -> int | None:
        """Poll one batch and handle it; the number of records, None if none came.

        Raises DB_UNAVAILABLE after seeking back to the batch's start (nothing of
        it committed), so the next poll returns the same records.
        """
        consumer = self.consumer
        batches = consumer.poll(
            timeout_ms=int(self.poll_timeout * 1000), max_records=self.max_records
        )
        batches = {tp: records for tp, records in batches.items() if records}
        if not batches:
            self._update_lag(consumer, {})
            self._rejoin_if_left_out(consumer)
            self._beat()
            return None
        try:
            self.handle([record for records in batches.values() for record in records])
        except DB_UNAVAILABLE:
            for tp, records in batches.items():
                try:
                    consumer.seek(tp, records[0].offset)
                except KafkaError as exc:  # revoked meanwhile: its new owner reads it
                    logger.info("No seek back on %s: %s", tp, exc)
            close_old_connections()
            raise
        self._commit(
            consumer,
            {
                tp: OffsetAndMetadata(
                    records[-1].offset + 1, "", records[-1].leader_epoch
                )
                for tp, records in batches.items()
            },
        )
        self._update_lag(
            consumer,
            {tp.partition: records[-1].offset + 1 for tp, records in batches.items()},
        )
        self._beat()
        return sum(len(records) for records in batches.values())

    def handle(self, records: Sequence[Any]) -> NotificationOutcome[RecordRef]:
        """Store the effects of a batch of records (one transaction), then push them
        live and count them. Skipped records are reported only once it is stored."""
        close_old_connections()  # a long-lived process: drop stale/broken connections
        skipped: list[tuple[RecordRef, str, str]] = []
        events: list[tuple[RecordRef, ChatEvent]] = []
        in_batch: set[UUID] = set()
        for record in records:
            ref = RecordRef(record.topic, record.partition, record.offset)
            try:
                event = decode_event(record.value)
            except BadRecord as bad:
                skipped.append((ref, bad.reason, bad.detail))
                continue
            if event.message_id in in_batch or event.message_id in self._recent:
                skipped.append(
                    (ref, "duplicate", f"message_id {event.message_id} seen before")
                )
                continue
            in_batch.add(event.message_id)
            events.append((ref, event))
        outcome = self._record(events)
        stored_at = time.time()
        for ref, why in outcome.skipped:
            skipped.append((ref, skip_reason(why), why))
        for ref, reason, detail in sorted(
            skipped, key=lambda s: (s[0].partition, s[0].offset)
        ):
            logger.warning("Skipped record %s (%s): %s", ref, reason, detail)
            metrics.NOTIFICATION_RECORDS_SKIPPED.labels(reason).inc()
        for _, event in events:
            self._recent[event.message_id] = None
        while len(self._recent) > RECENT_MESSAGE_IDS:
            self._recent.popitem(last=False)
        metrics.NOTIFICATION_EVENTS.inc(len(outcome.accepted))
        metrics.NOTIFICATIONS_CREATED.inc(len(outcome.created))
        for notification, event, _ in outcome.created:
            created = notification.created_at
            moment = created.timestamp() if created else stored_at
            metrics.NOTIFICATION_FRESHNESS.observe(
                max(0.0, moment - event.created_at.timestamp())
            )
        if outcome.created:
            logger.info(
                "%d notification(s) from %d event(s)",
                len(outcome.created),
                len(outcome.accepted),
            )
        try:
            broadcast.push_notifications(outcome)
        except Exception:  # live frames are best effort: the rows are stored
            logger.exception("Live push of %d event(s) failed", len(outcome.accepted))
        return outcome

    def _record(
        self, events: list[tuple[RecordRef, ChatEvent]]
    ) -> NotificationOutcome[RecordRef]:
        try:
            return notifications_record(events=events)
        except DB_UNAVAILABLE:
            raise
        except Exception:
            if len(events) <= 1:
                if not events:
                    raise
                ref = events[0][0]
                logger.exception("Record %s refused by the database", ref)
                outcome: NotificationOutcome[RecordRef] = NotificationOutcome()
                outcome.skipped.append((ref, "rejected by the database"))
                return outcome
        # One record the database refuses must not block the others: one by one.
        merged: NotificationOutcome[RecordRef] = NotificationOutcome()
        for item in events:
            part = self._record([item])
            merged.accepted += part.accepted
            merged.created += part.created
            merged.skipped += part.skipped
        return merged

    def _commit(
        self, consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]
    ) -> None:
        where = ", ".join(f"{tp.partition}:{o.offset}" for tp, o in offsets.items())
        try:
            consumer.commit(offsets, timeout_ms=int(self.timeout * 1000))
        except (CommitFailedError, KafkaTimeoutError, KafkaError) as exc:
            # Not a failure of the effects: they are stored, and whoever reads these
            # records again (this process or the partition's new owner) changes
            # nothing.
            metrics.NOTIFICATION_COMMIT_ERRORS.inc()
            logger.warning(
                "Offset commit %s not confirmed (%s: %s); the records may be read "
                "again, which is harmless",
                where,
                type(exc).__name__,
                exc,
            )
        else:
            logger.debug("Committed offsets %s", where)

    def _rejoin_if_left_out(self, consumer: KafkaConsumer) -> None:
        """Subscribe again after EMPTY_ASSIGNMENT_REJOIN seconds with no partition
        while the topic has some. A group that formed on metadata without the
        topic (a broker restarting as the topic was made) assigns nothing, and
        kafka-python did not always rejoin when the partitions appeared (seen in
        a rolling restart: 90 s and more). Rejoining rebalances the group, at most
        once per interval; a member left out only because the group has more
        members than the topic has partitions pays that rebalance too."""
        if self.assigned:
            self._empty_since = None
            return
        now = time.monotonic()
        if self._empty_since is None:
            self._empty_since = now
            return
        if now - self._empty_since < EMPTY_ASSIGNMENT_REJOIN:
            return
        self._empty_since = now
        if not consumer.partitions_for_topic(self.topic):
            return
        logger.warning(
            "No partition of %s assigned for %gs while it has some: joining the "
            "group %s again",
            self.topic,
            EMPTY_ASSIGNMENT_REJOIN,
            self.group_id,
        )
        consumer.unsubscribe()
        consumer.subscribe([self.topic], listener=_RebalanceListener(self))

    def _update_lag(self, consumer: KafkaConsumer, handled: dict[int, int]) -> None:
        """Lag per assigned partition: highwater (from the last fetch) minus the next
        offset to handle, or the consumer's position when that is further (past a
        transaction's commit marker, which is no record); no network call. A
        partition with nothing handled yet by this process has no figure until its
        first record."""
        self.next_offset.update(handled)
        for partition in sorted(self.assigned):
            tp = TopicPartition(self.topic, partition)
            try:
                highwater = consumer.highwater(tp)
                fetched = consumer.position(tp, timeout_ms=0)
            except KafkaError:  # revoked since
                continue
            position = self.next_offset.get(partition)
            if highwater is None or position is None:
                continue
            position = max(position, fetched or 0)
            lag = max(0, highwater - position)
            self.lag[partition] = lag
            metrics.NOTIFICATION_CONSUMER_LAG.labels(str(partition)).set(lag)
        for partition in set(self.lag) - self.assigned:
            del self.lag[partition]

    def _beat(self, state: str = "consuming") -> None:
        self.heartbeat.beat(
            state=state,
            topic=self.topic,
            group=self.group_id,
            partitions=sorted(self.assigned),
            lag={str(p): n for p, n in sorted(self.lag.items())},
        )
