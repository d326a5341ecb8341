"""ChatProducer: produces chat events, and dead-letter copies, to Kafka.

One producer per OS process, built lazily on first publish (so never in the parent of
a prefork pool). Every Kafka call is bounded by KAFKA_SEND_TIMEOUT, and a batch's
outcome by KAFKA_DELIVERY_TIMEOUT. A producer whose state broke, or that stalled, is
discarded and built anew (chat.publishing.errors has the table).

With KAFKA_TRANSACTIONS on, each batch is one Kafka transaction: committed when every
record was acknowledged, else abandoned. A batch that is sent again is therefore never
seen twice by a `read_committed` consumer: the producer built next, with the same
transactional id, aborts what its predecessor left open (records written before a
broker failure included) before it sends anything.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import kafka.errors
import pybreaker
from django.core.exceptions import ImproperlyConfigured
from kafka import KafkaProducer
from kafka.errors import KafkaError

from chat.infra import config, metrics
from chat.infra.clients import ProcessSingleton
from chat.publishing.errors import (
    InDoubtPublishError,
    KafkaPublishError,
    PermanentPublishError,
    PublishResult,
    RetriablePublishError,
    _PartlyFailedBatch,
    producer_is_broken,
    publish_error,
)
from chat.publishing.topics import admin_options, chat_topic_specs, topics_ensure
from chat.publishing.transactions import TransactionalBatches
from chat.schemas import ChatEvent

logger = logging.getLogger(__name__)

# A producer that got no acknowledgement at all for this many batches in a row is
# rebuilt: after a whole-cluster restart kafka-python's idempotent producer can keep
# waiting for a producer id or a leader that a new producer finds at once.
STALLED_BATCHES_BEFORE_REBUILD = 2
DLQ_CONTENT_PREVIEW = 200


class ChatProducer(TransactionalBatches, ProcessSingleton):
    """This process's Kafka producer of chat events (and their dead-letter copies)."""

    def __init__(
        self,
        *,
        enabled: bool | None = None,
        bootstrap_servers: str | list[str] | None = None,
        client_id: str | None = None,
        topic: str | None = None,
        send_timeout: float | None = None,
        delivery_timeout: float | None = None,
        producer_config: dict[str, Any] | None = None,
        breaker_failures: int | None = None,
        breaker_reset: float | None = None,
    ) -> None:
        """Keyword overrides of the KAFKA_* settings (None keeps a setting);
        ImproperlyConfigured says what to fix in a bad one."""
        super().__init__()
        self.settings = config.kafka(
            enabled=enabled,
            bootstrap_servers=bootstrap_servers,
            client_id=client_id,
            topic=topic,
            send_timeout=send_timeout,
            delivery_timeout=delivery_timeout,
            producer_config=producer_config,
            breaker_failures=breaker_failures,
            breaker_reset=breaker_reset,
        )
        self.enabled = self.settings.enabled
        self.bootstrap_servers = self.settings.bootstrap_servers
        self.client_id = self.settings.client_id
        self.topic = self.settings.topic
        self.send_timeout = self.settings.send_timeout
        self.delivery_timeout = self.settings.delivery_timeout
        self.producer_config = self.settings.producer_config
        self.transactions = self.settings.transactions
        self._producer: KafkaProducer | None = None
        self._producer_lock = threading.Lock()
        # One transaction at a time per producer.
        self._transaction_lock = threading.Lock()
        self.producer_rebuilds = 0
        self._stalled_batches = 0
        self._topics_ready = not self.settings.create_topics
        # Fail fast while the broker is known to be down, instead of spending
        # KAFKA_SEND_TIMEOUT of a worker on every attempt (retries come later).
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=self.settings.breaker_failures,
            reset_timeout=self.settings.breaker_reset,
            exclude=[PermanentPublishError, ImproperlyConfigured],
            throw_new_error_on_trip=False,
            name=f"kafka-{self.pid}",
        )

    # --- producer lifecycle -----------------------------------------------------

    @property
    def producer(self) -> KafkaProducer:
        """This process's producer, built on first use within KAFKA_SEND_TIMEOUT."""
        if self.closed:
            raise RuntimeError("ChatProducer is closed; call get_instance() again.")
        if self._producer is None:
            with self._producer_lock:
                if self._producer is None:
                    self._producer = self._build_producer()
        return self._producer

    def _build_producer(self) -> KafkaProducer:
        timeout_ms = int(self.send_timeout * 1000)
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": f"{self.client_id}-{self.pid}",
            "acks": "all",
            "enable_idempotence": True,
            # Batches are sent and then flushed, so lingering costs no latency and
            # lets one request carry several records.
            "linger_ms": 5,
            "max_block_ms": timeout_ms,
            "bootstrap_timeout_ms": timeout_ms,
            "request_timeout_ms": timeout_ms,
            # The producer retries a batch itself (same sequence numbers: the broker
            # drops copies) for this long; kafka-python wants it above linger +
            # request timeout.
            "delivery_timeout_ms": max(
                int(self.delivery_timeout * 1000), timeout_ms + 10
            ),
            # Reconnect within a second once the broker is back (default: up to 30 s).
            "reconnect_backoff_max_ms": 1000,
            **self.producer_config,
        }
        if self.transactions:
            config.setdefault("transactional_id", self.transactional_id)
            config.setdefault(
                "transaction_timeout_ms", int(self.settings.transaction_timeout * 1000)
            )
            # A transaction begun right after a commit waits for the broker to
            # finish the previous one, retrying after this; at the default (100 ms)
            # each back-to-back transaction cost ~55 ms, at 10 ms ~12 ms.
            config.setdefault("retry_backoff_ms", 10)
        try:
            producer = KafkaProducer(**config)
        except (kafka.errors.KafkaConfigurationError, ValueError, TypeError) as exc:
            raise ImproperlyConfigured(f"KAFKA_PRODUCER_OPTIONS: {exc}") from exc
        except KafkaError as exc:
            logger.warning(
                "Kafka producer could not connect to %s within %.1fs: %s",
                ",".join(self.bootstrap_servers),
                self.send_timeout,
                exc,
            )
            raise RetriablePublishError(f"Kafka unreachable: {exc}") from exc
        if self.transactions:
            try:
                # Aborts what a predecessor with this id left open, within
                # max_block_ms; a retry after a timeout waits for the same answer.
                producer.init_transactions()
            except Exception as exc:
                producer.close(timeout=0)
                error = publish_error(exc)
                raise (
                    error
                    if isinstance(error, PermanentPublishError)
                    else RetriablePublishError(
                        f"Kafka transactions not initialised: {type(exc).__name__}: "
                        f"{exc}"
                    )
                ) from exc
        if not self._topics_ready:
            try:
                self._ensure_topics()
            except RetriablePublishError:
                producer.close(timeout=0)
                raise
        logger.info(
            "Kafka producer created in pid %d (client_id %s, servers %s)",
            self.pid,
            config["client_id"],
            ",".join(self.bootstrap_servers),
        )
        return producer

    def _ensure_topics(self) -> None:
        """Create the chat and dead-letter topics if missing (once per process)."""
        try:
            topics_ensure(
                bootstrap_servers=self.bootstrap_servers,
                specs=chat_topic_specs(self.topic),
                timeout=self.send_timeout,
                client_options=admin_options(self.producer_config),
            )
        except KafkaError as exc:
            raise RetriablePublishError(
                f"Kafka unreachable, or it refused to create the topics {self.topic} "
                f"and {self.dlq_topic}: {type(exc).__name__}: {exc}"
            ) from exc
        self._topics_ready = True

    def flush(self) -> None:
        """Send what is buffered, waiting at most KAFKA_SEND_TIMEOUT. Idempotent."""
        producer = self._producer
        if producer is None:
            return
        try:
            producer.flush(timeout=self.send_timeout)
        except KafkaError as exc:
            logger.warning("Kafka flush did not complete: %s", exc)

    def close(self) -> None:
        """Close the producer within KAFKA_SEND_TIMEOUT. Idempotent."""
        with self._producer_lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=self.send_timeout)
            except Exception:  # close must never raise during shutdown
                logger.exception("Kafka producer close failed in pid %d", self.pid)
            else:
                logger.info("Kafka producer closed in pid %d", self.pid)
        super().close()

    # --- publishing ---------------------------------------------------------------

    def publish(self, event: ChatEvent) -> PublishResult | None:
        """Produce one event and wait for its acknowledgement (None when disabled)."""
        outcomes = self.publish_batch([event])
        if outcomes is None:
            return None
        [outcome] = outcomes
        if isinstance(outcome, KafkaPublishError):
            raise outcome
        return outcome

    def publish_batch(
        self, events: Sequence[ChatEvent]
    ) -> list[PublishResult | KafkaPublishError] | None:
        """Send events pipelined, flush once, and return each one's outcome, in order.

        None when KAFKA_ENABLED is off. Raises RetriablePublishError when nothing
        could be sent (no broker, circuit open); otherwise a record the broker refused
        has its error in its place (retriable or permanent), the others their results.
        """
        if not self.enabled:
            logger.debug("KAFKA_ENABLED is off: skipped %d event(s)", len(events))
            return None
        try:
            outcomes = self.breaker.call(self._send_batch, events)
        except pybreaker.CircuitBreakerError as exc:
            raise RetriablePublishError(
                f"Kafka circuit open after repeated failures; next try in "
                f"{self.breaker.reset_timeout:g}s ({exc})"
            ) from exc
        except _PartlyFailedBatch as partly:
            outcomes = partly.outcomes
        for event, outcome in zip(events, outcomes, strict=True):
            if isinstance(outcome, KafkaPublishError):
                logger.warning(
                    "Kafka publish of message_id=%s failed (%s): %s",
                    event.message_id,
                    "retriable" if outcome.retriable else "permanent",
                    outcome,
                )
        return outcomes

    def _send_batch(
        self, events: Sequence[ChatEvent]
    ) -> list[PublishResult | KafkaPublishError]:
        records = [(self.topic, e.key, e.value, e.headers) for e in events]
        outcomes = self._send_records(records)
        refused = [
            i for i, o in enumerate(outcomes) if isinstance(o, PermanentPublishError)
        ]
        if len(refused) > 1:
            # The broker refuses a whole batch (too large, say) for one record in
            # it: each is sent again alone, in order, so only the guilty one is dead.
            for i in refused:
                try:
                    outcomes[i] = self._send_one(*records[i])
                except KafkaPublishError as exc:
                    outcomes[i] = exc
        again = [
            i
            for i, o in enumerate(outcomes)
            if isinstance(o, RetriablePublishError)
            and not isinstance(o, InDoubtPublishError)  # read back first, never resent
        ]
        if refused and again:
            # A refused record fails its transaction, or breaks the sequence of
            # the records behind it: those are sent once more without it.
            try:
                resent = self._send_records([records[i] for i in again])
            except KafkaPublishError:  # they stay retriable
                resent = [outcomes[i] for i in again]
            for i, outcome in zip(again, resent, strict=True):
                outcomes[i] = outcome
        if any(isinstance(o, RetriablePublishError) for o in outcomes):
            raise _PartlyFailedBatch(outcomes)  # counts against the breaker
        return outcomes

    def _send_records(
        self, records: Sequence[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]
    ) -> list[PublishResult | KafkaPublishError]:
        """Send (topic, key, value, headers) records pipelined, in one transaction
        when transactions are on, and return each one's outcome."""
        producer = self.producer
        with self._transaction_lock:
            if self.transactions:
                try:
                    producer.begin_transaction()
                except Exception as exc:
                    error = publish_error(exc, producer)
                    self._rebuild_if_needed(producer, [error])
                    raise error from exc
            pending: list[Any] = []
            for topic, key, value, headers in records:
                try:
                    pending.append(
                        producer.send(topic, key=key, value=value, headers=headers)
                    )
                except Exception as exc:  # refused before sending (e.g. too large)
                    pending.append(exc)
            self._wait_for_outcomes(producer, len(records))
            outcomes = [self._outcome(item, producer) for item in pending]
            if self.transactions:
                sent = [not isinstance(item, Exception) for item in pending]
                outcomes = self._end_transaction(producer, outcomes, sent)
        self._rebuild_if_needed(producer, outcomes)
        return outcomes

    def _wait_for_outcomes(self, producer: KafkaProducer, count: int) -> None:
        """Flush until every record is decided (acknowledged or expired, so none is
        sent again while an earlier copy may still land), at most the delivery
        timeout; a producer whose state turned fatal decides nothing more."""
        deadline = time.monotonic() + self.delivery_timeout + 1
        while True:
            try:
                producer.flush(timeout=min(0.5, max(deadline - time.monotonic(), 0)))
                return
            except KafkaError as exc:
                if producer_is_broken(producer) or time.monotonic() >= deadline:
                    logger.warning(
                        "Kafka flush of %d event(s) did not complete: %s", count, exc
                    )
                    return

    def _outcome(self, sent: Any, producer: Any) -> PublishResult | KafkaPublishError:
        if isinstance(sent, Exception):
            return publish_error(sent, producer)
        if not sent.is_done:
            return RetriablePublishError(
                "KafkaTimeoutError: no acknowledgement within "
                f"{self.delivery_timeout:g}s",
                rebuild=producer_is_broken(producer),
            )
        try:
            metadata = sent.get(timeout=0)
        except Exception as exc:
            return publish_error(exc, producer)
        return PublishResult.of(metadata)

    def _rebuild_if_needed(
        self, producer: KafkaProducer, outcomes: Sequence[object]
    ) -> None:
        """Discard `producer` when an outcome says its state is broken, or when it
        has stalled (STALLED_BATCHES_BEFORE_REBUILD batches in a row without one
        acknowledgement), so that the next attempt builds a new one (new producer
        id, new connections)."""
        broken = [
            o for o in outcomes if isinstance(o, RetriablePublishError) and o.rebuild
        ]
        acknowledged = any(isinstance(o, PublishResult) for o in outcomes)
        retriable = any(isinstance(o, RetriablePublishError) for o in outcomes)
        if acknowledged or not retriable:
            self._stalled_batches = 0
        else:
            self._stalled_batches += 1
        if broken:
            self.producer_discard(producer, reason=str(broken[0]))
        elif producer_is_broken(producer):
            self.producer_discard(
                producer, reason=f"its state is fatal after {outcomes[0]}"
            )
        elif self._stalled_batches >= STALLED_BATCHES_BEFORE_REBUILD:
            self.producer_discard(
                producer,
                reason=f"no acknowledgement for {self._stalled_batches} batches in "
                f"a row ({outcomes[0]})",
            )

    def producer_discard(self, producer: KafkaProducer, *, reason: str) -> None:
        """Close `producer` if it is still this agent's; the next use builds anew."""
        with self._producer_lock:
            owned = self._producer is producer
            if owned:
                self._producer = None
        if not owned:
            return  # another thread already replaced it
        self._stalled_batches = 0
        # The cluster may have lost its topics too (an in-memory broker restarted).
        self._topics_ready = not self.settings.create_topics
        self.producer_rebuilds += 1
        metrics.PRODUCER_REBUILDS.inc()
        logger.warning(
            "Kafka producer of pid %d discarded, a new one is built for the next "
            "attempt: %s",
            self.pid,
            reason,
        )
        try:
            producer.close(timeout=0)  # its pending records already failed
        except Exception:  # a broken producer may fail to close: it is dropped anyway
            logger.debug("Closing the discarded producer failed", exc_info=True)

    def publish_dead_letter(
        self, event: ChatEvent, reason: str
    ) -> PublishResult | None:
        """Copy a message that can never be published to `<topic>.dlq`.

        None when Kafka is disabled. Raises KafkaPublishError when the copy was not
        written: the caller keeps the message retrying until it is.
        """
        if not self.enabled:
            return None
        value = json.dumps(
            {
                **json.loads(event.value),
                "content": event.content[:DLQ_CONTENT_PREVIEW],
                "content_length": len(event.content),
                "error": reason,
            },
            ensure_ascii=False,
        ).encode()
        headers = [*event.headers, ("error", reason[:500].encode())]
        result = self._produce(self.dlq_topic, event.key, value, headers, event)
        logger.error(
            "Dead message_id=%s copied to %s[%d]@%d",
            event.message_id,
            result.topic,
            result.partition,
            result.offset,
        )
        return result

    @property
    def dlq_topic(self) -> str:
        """Where messages that can never be published are copied."""
        return self.settings.dlq_topic

    def _produce(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
        event: ChatEvent,
    ) -> PublishResult:
        try:
            return self.breaker.call(self._send_one, topic, key, value, headers)
        except pybreaker.CircuitBreakerError as exc:
            raise RetriablePublishError(
                f"Kafka circuit open after repeated failures; next try in "
                f"{self.breaker.reset_timeout:g}s ({exc})"
            ) from exc
        except KafkaPublishError as exc:
            logger.warning(
                "Kafka publish of message_id=%s to %s failed (%s): %s",
                event.message_id,
                topic,
                "retriable" if exc.retriable else "permanent",
                exc,
            )
            raise

    def _send_one(
        self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]
    ) -> PublishResult:
        [outcome] = self._send_records([(topic, key, value, headers)])
        if isinstance(outcome, KafkaPublishError):
            raise outcome
        return outcome
