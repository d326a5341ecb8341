"""StreamAgent: the lifecycle every consumer of the chat stream shares.

A concrete agent is a subclass that names itself and says what a batch does:

    class MessageCounterAgent(StreamAgent):
        name = "message-counter"          # registry name, heartbeat key, client id

        def handle(self, events):         # [(RecordRef, ChatEvent), ...], one batch
            ...store the effects...
            return Outcome(accepted=[event for _, event in events])

Its settings are `<settings_prefix>_GROUP`, `_OFFSET_RESET`, `_POLL_TIMEOUT`,
`_MAX_RECORDS` and `_RETRY_MAX` (prefix `KAFKA_<NAME>` unless the agent sets
`settings_prefix`); one it does not find in Django's settings takes the default below
(the group: `default_group`, else `chat-<name>`). Constructor keywords override them.

What the base owns, for agent authors: docs/agents.md.

The kafka-python 3.x facts this relies on:

- Where a new group starts: kafka-python's default `auto_offset_reset` is `latest`,
  which would silently skip everything published before the group's first start (a
  fresh deployment, a renamed group, a topic that outlived its group's offsets). The
  default here is `earliest`: a new group reads the whole retained topic once, which is
  safe when the effects are idempotent. `<prefix>_OFFSET_RESET=latest` starts a new
  group with new events only.
- Auto-commit is off: a background commit could store the offset of a record whose
  effects are not stored yet.
- The committed offset is the next record to read: last handled offset + 1.
- A `commit()` that times out or fails with CommitFailedError (the group rebalanced)
  may still have succeeded, or the partition's new owner re-reads those records; both
  are harmless for idempotent effects, so it is counted, logged and the loop goes on.
- isolation_level `read_committed`: only records of committed publish transactions.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, ClassVar
from uuid import UUID

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
from kafka.errors import KafkaError

from chat.agents.base import Agent
from chat.agents.heartbeat import Heartbeat
from chat.agents.records import (
    BadRecord,
    Outcome,
    RecordRef,
    decode_event,
    merge_outcomes,
)
from chat.agents.stream_consumer import RebalanceListener, build_consumer
from chat.infra import config
from chat.infra.metrics import (
    AGENT_COMMIT_ERRORS,
    AGENT_CONSUMER_LAG,
    AGENT_RECORDS_SKIPPED,
    StreamMetrics,
)
from chat.schemas import ChatEvent

logger = logging.getLogger(__name__)

# Database errors that say "not now" (down, locked, not migrated yet) rather than "not
# this record" (DataError, IntegrityError): retry the batch, never skip it.
DB_UNAVAILABLE = (OperationalError, InterfaceError, ProgrammingError, InternalError)
# message_ids this process handled recently, to count re-deliveries as duplicates.
RECENT_MESSAGE_IDS = 10_000
# A member assigned nothing for this long while its topic has partitions subscribes
# again (see StreamAgent._rejoin_if_left_out).
EMPTY_ASSIGNMENT_REJOIN = 15.0
# First delay of the retry backoff, doubled on each failure in a row.
BACKOFF_FIRST = 0.5


def backoff(failures: int, cap: float) -> float:
    """Seconds to wait after `failures` failures in a row (1, 2, ...): BACKOFF_FIRST
    doubled each time, at most `cap`."""
    return min(cap, BACKOFF_FIRST * 2 ** (failures - 1))


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


class StreamAgent(Agent):
    """A per-process Kafka consumer of the chat stream in its own consumer group.

    Subclasses set `name` and implement `handle`; see the module docstring for the
    rest of what they may set and what the base guarantees.
    """

    # Registry name (`run_agent <name>`), heartbeat key and client id part.
    name: ClassVar[str] = ""
    # Prefix of this agent's settings; "" means KAFKA_<NAME> (dashes as underscores).
    settings_prefix: ClassVar[str] = ""
    # The consumer group when <prefix>_GROUP is not set; "" means chat-<name>.
    default_group: ClassVar[str] = ""
    # What `handle` returns (a dataclass of lists with `accepted` and `skipped`).
    outcome_type: ClassVar[type[Any]] = Outcome
    # Errors of `handle` that mean "not now": the batch is retried, never skipped.
    retry_on: ClassVar[tuple[type[BaseException], ...]] = DB_UNAVAILABLE
    # The `why` of an event skipped because `handle` failed on it alone.
    rejected_why: ClassVar[str] = "rejected by handle"
    # The agent's own skipped / commit-error / lag series; None: the AGENT_* series.
    stream_metrics: ClassVar[StreamMetrics | None] = None
    # Per-agent settings (after the prefix) and their defaults.
    SETTING_DEFAULTS: ClassVar[dict[str, Any]] = {
        "OFFSET_RESET": "earliest",
        "POLL_TIMEOUT": 1.0,
        "MAX_RECORDS": 500,
        "RETRY_MAX": 10.0,
    }

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
        if not self.name or not isinstance(self.name, str):
            raise ImproperlyConfigured(f"{type(self).__name__} must set `name`.")
        shared = config.kafka(
            bootstrap_servers=bootstrap_servers,
            topic=topic,
            client_id=client_id,
            send_timeout=timeout,
            consumer_config=consumer_config,
        )
        self.bootstrap_servers = shared.bootstrap_servers
        self.topic = shared.topic
        self.client_id = shared.client_id
        # Bound of every blocking Kafka call: connect, commit, close.
        self.timeout = shared.send_timeout
        self.consumer_config = shared.consumer_config
        self.group_id = _given(group_id, self.setting("GROUP"))
        self.offset_reset = _given(offset_reset, self.setting("OFFSET_RESET"))
        self.poll_timeout = float(_given(poll_timeout, self.setting("POLL_TIMEOUT")))
        self.max_records = _given(max_records, self.setting("MAX_RECORDS"))
        self.retry_max = float(_given(retry_max, self.setting("RETRY_MAX")))
        self._validate_config()
        self.series = self.stream_metrics or StreamMetrics(
            AGENT_RECORDS_SKIPPED,
            AGENT_COMMIT_ERRORS,
            AGENT_CONSUMER_LAG,
            bound=(self.name,),
        )
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

    # --- what a concrete agent provides ----------------------------------------------

    def decode(self, record: Any) -> ChatEvent:
        """The ChatEvent of a consumer record, or BadRecord(reason, detail)."""
        return decode_event(record.value)

    def handle(self, events: Sequence[tuple[RecordRef, ChatEvent]]) -> Any:
        """Store the effects of a batch (at least one event, none seen before by this
        process) and return an `outcome_type` saying which were accepted and which
        skipped. Called again with the same events after a failure: effects must be
        idempotent per message_id. Raise one of `retry_on` when the batch cannot be
        stored now."""
        raise NotImplementedError(f"{type(self).__name__}.handle")

    def skip_reason(self, why: str) -> str:
        """Counter label of a `why` that `handle` gave for a skipped event."""
        return "rejected" if why == self.rejected_why else "not_handled"

    # --- configuration ---------------------------------------------------------------

    @classmethod
    def setting_name(cls, suffix: str) -> str:
        """This agent's Django setting with that suffix (GROUP, POLL_TIMEOUT, ...)."""
        prefix = cls.settings_prefix or "KAFKA_" + cls.name.upper().replace("-", "_")
        return f"{prefix}_{suffix}"

    def setting(self, suffix: str) -> Any:
        """This agent's setting, or its default when Django's settings lack it."""
        if suffix == "GROUP":
            default = self.default_group or f"chat-{self.name}"
        else:
            default = self.SETTING_DEFAULTS[suffix]
        return getattr(settings, self.setting_name(suffix), default)

    def _validate_config(self) -> None:
        # The shared KAFKA_* settings are checked by config.kafka(); these are the
        # agent's own.
        if not self.bootstrap_servers:
            raise ImproperlyConfigured(
                "KAFKA_BOOTSTRAP_SERVERS is empty: set it to host:port[,host:port]."
            )
        if not self.group_id or not isinstance(self.group_id, str):
            raise ImproperlyConfigured(f"{self.setting_name('GROUP')} must be a name.")
        if self.offset_reset not in ("earliest", "latest"):
            raise ImproperlyConfigured(
                f"{self.setting_name('OFFSET_RESET')} must be 'earliest' or 'latest', "
                f"not {self.offset_reset!r}."
            )
        for name in ("poll_timeout", "retry_max"):
            if not getattr(self, name) > 0:
                raise ImproperlyConfigured(
                    f"{type(self).__name__} {name} must be a positive number of "
                    f"seconds, not {getattr(self, name)!r}."
                )
        if not (isinstance(self.max_records, int) and self.max_records > 0):
            raise ImproperlyConfigured(
                f"{self.setting_name('MAX_RECORDS')} must be a positive integer, "
                f"not {self.max_records!r}."
            )

    # --- consumer lifecycle -------------------------------------------------------

    @property
    def consumer(self) -> KafkaConsumer:
        """This process's consumer, built and subscribed on first use."""
        if self.closed:
            raise RuntimeError(
                f"{type(self).__name__} is closed; call get_instance() again."
            )
        if self.pid != os.getpid():
            raise RuntimeError(
                f"{type(self).__name__} was built in pid {self.pid}, not this "
                f"process; call get_instance() here."
            )
        if self._consumer is None:
            with self._lock:
                if self._consumer is None:
                    self._consumer = self._build_consumer()
        return self._consumer

    def _build_consumer(self) -> KafkaConsumer:
        return build_consumer(self)

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
                self.series.set_lag(partition, 0)
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
                except self.retry_on as exc:
                    failures += 1
                    delay = backoff(failures, self.retry_max)
                    logger.warning(
                        "Batch not stored (%s: %s); not committed, retry %d in %.1fs",
                        type(exc).__name__,
                        exc,
                        failures,
                        delay,
                    )
                    self._beat(state="retrying")
                    stop.wait(delay)
                    continue
                except KafkaError as exc:
                    failures += 1
                    delay = backoff(failures, self.retry_max)
                    logger.warning("Kafka poll failed (%s); retry in %.1fs", exc, delay)
                    stop.wait(delay)
                    continue
                failures = 0  # the next outage backs off from the start again
        finally:
            logger.info("%s stopping in pid %d", type(self).__name__, self.pid)
            self.close()

    def poll_once(self) -> int | None:
        """Poll one batch, handle it and commit it; the number of records, None if
        none came.

        Raises one of `retry_on` after seeking back to the batch's start (nothing of
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
            self.process([record for records in batches.values() for record in records])
        except self.retry_on:
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

    def process(self, records: Sequence[Any]) -> Any:
        """Decode a batch of consumer records, hand the new events to `handle`, then
        log and count every skipped record; what `handle` returned (its parts merged
        when it was handled one event at a time). Commits nothing."""
        close_old_connections()  # a long-lived process: drop stale/broken connections
        skipped: list[tuple[RecordRef, str, str]] = []
        events: list[tuple[RecordRef, ChatEvent]] = []
        in_batch: set[UUID] = set()
        for record in records:
            ref = RecordRef(record.topic, record.partition, record.offset)
            try:
                event = self.decode(record)
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
        outcome = self._handle_isolating_failures(events)
        for ref, why in outcome.skipped:
            skipped.append((ref, self.skip_reason(why), why))
        for ref, reason, detail in sorted(
            skipped, key=lambda s: (s[0].partition, s[0].offset)
        ):
            logger.warning("Skipped record %s (%s): %s", ref, reason, detail)
            self.series.count_skipped(reason)
        for _, event in events:
            self._recent[event.message_id] = None
        while len(self._recent) > RECENT_MESSAGE_IDS:
            self._recent.popitem(last=False)
        return outcome

    def _handle_isolating_failures(
        self, events: list[tuple[RecordRef, ChatEvent]]
    ) -> Any:
        """`handle(events)`; when it fails with an error not in `retry_on`, the
        events one at a time, and one that fails alone is skipped (`rejected_why`)."""
        if not events:
            return self.outcome_type()
        try:
            return self.handle(events)
        except self.retry_on:
            raise
        except Exception:
            if len(events) == 1:
                ref = events[0][0]
                logger.exception("Record %s rejected by %s", ref, type(self).__name__)
                outcome = self.outcome_type()
                outcome.skipped.append((ref, self.rejected_why))
                return outcome
        # One event that cannot be handled must not block the others: one by one.
        return merge_outcomes(
            self.outcome_type(),
            [self._handle_isolating_failures([item]) for item in events],
        )

    def _commit(
        self, consumer: KafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]
    ) -> None:
        where = ", ".join(f"{tp.partition}:{o.offset}" for tp, o in offsets.items())
        try:
            consumer.commit(offsets, timeout_ms=int(self.timeout * 1000))
        except KafkaError as exc:  # CommitFailedError, KafkaTimeoutError, ...
            # Not a failure of the effects: they are stored, and whoever reads these
            # records again (this process or the partition's new owner) changes
            # nothing.
            self.series.count_commit_error()
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
        kafka-python does not always rejoin when the partitions appear. Rejoining
        rebalances the group, at most once per interval; a member left out only
        because the group has more members than the topic has partitions pays that
        rebalance too."""
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
        consumer.subscribe([self.topic], listener=RebalanceListener(self))

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
            self.series.set_lag(partition, lag)
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
