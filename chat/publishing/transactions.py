"""A publish batch as one Kafka transaction: committed when every record sent was
acknowledged, else abandoned; a commit that fails or goes unanswered is in doubt,
and settled by reading the records back.

TransactionalBatches is the part of ChatProducer (chat.publishing.producer) that ends
a batch's transaction; the producer calls `_end_transaction` after a batch's
outcomes are known.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kafka.errors import KafkaError

from chat.publishing.errors import (
    InDoubtPublishError,
    KafkaPublishError,
    PublishResult,
    RetriablePublishError,
)
from chat.publishing.readback import records_committed
from chat.publishing.topics import admin_options

if TYPE_CHECKING:
    from kafka import KafkaProducer

logger = logging.getLogger(__name__)


class TransactionalBatches:
    """Ends a batch's transaction (ChatProducer's attributes: `producer`,
    `producer_discard`, `send_timeout`, `client_id`, `pid`, `bootstrap_servers`,
    `producer_config`)."""

    producer: Any
    send_timeout: float
    client_id: str
    pid: int
    bootstrap_servers: list[str]
    producer_config: dict[str, Any]

    def producer_discard(self, producer: KafkaProducer, *, reason: str) -> None:
        raise NotImplementedError

    @property
    def transactional_id(self) -> str:
        """Unique per process on a host, and across hosts."""
        return f"{self.client_id}-{socket.gethostname()}-{self.pid}"

    def _end_transaction(
        self,
        producer: KafkaProducer,
        outcomes: list[PublishResult | KafkaPublishError],
        sent: list[bool],
    ) -> list[PublishResult | KafkaPublishError]:
        """Commit when every record sent was acknowledged (one refused before
        sending, too large say, never joined the transaction). Otherwise abandon
        the transaction: abort it when only refused records failed (the cluster
        answers), else leave it to the next producer's init_transactions. The
        acknowledged records of an abandoned transaction become retriable."""
        if all(
            isinstance(o, PublishResult)
            for o, s in zip(outcomes, sent, strict=True)
            if s
        ):
            if not any(sent):
                producer.abort_transaction()  # empty: nothing to commit
                return outcomes
            # A commit that failed may still have reached the coordinator (the
            # request timed out, say): unanswered or failed, it is in doubt.
            try:
                if self._commit(producer):
                    return outcomes
                doubt = f"its commit went unanswered for {self.send_timeout:g}s"
            except Exception as exc:
                doubt = f"its commit failed ({type(exc).__name__}: {exc})"
            return self._settle_in_doubt(producer, outcomes, sent, doubt)
        failed = [o for o in outcomes if isinstance(o, KafkaPublishError)]
        abandon = any(o.retriable for o in failed)
        if not abandon:
            try:
                producer.abort_transaction()
            except Exception:
                logger.debug("Transaction abort failed", exc_info=True)
                abandon = True
        if abandon:
            self.producer_discard(
                producer, reason=f"its transaction was abandoned after {failed[0]}"
            )
        aborted = RetriablePublishError(
            f"acknowledged, but its transaction was aborted with {failed[0]}"
        )
        return [aborted if isinstance(o, PublishResult) else o for o in outcomes]

    def _commit(self, producer: KafkaProducer) -> bool:
        """Commit the open transaction: True once committed, False when no answer
        came within KAFKA_SEND_TIMEOUT (in doubt). Raises what the commit met
        (it was aborted). kafka-python's commit_transaction() waits without a
        bound; this is its body with one (tests/unit/test_publish_errors.py pins it)."""
        result = producer._transaction_manager.begin_commit()
        producer._sender.wakeup()
        return bool(result.wait(timeout_ms=int(self.send_timeout * 1000)))

    def _settle_in_doubt(
        self,
        producer: KafkaProducer,
        outcomes: list[PublishResult | KafkaPublishError],
        sent: list[bool],
        doubt: str,
    ) -> list[PublishResult | KafkaPublishError]:
        """The transaction's fate is unknown (`doubt` says why). A new producer
        with the same transactional id initialises only once the cluster has
        decided it; then the records are read back: there (committed) or not
        (aborted, sent again). Undecided within KAFKA_SEND_TIMEOUT (the cluster
        is down, say), each acknowledged record becomes an InDoubtPublishError
        carrying its place, which the caller keeps, to read it back later."""
        self.producer_discard(producer, reason=doubt)
        found: set[tuple[str, int, int]] | None = None
        try:
            self.producer  # noqa: B018 - building it runs init_transactions
            found = self.committed(
                [o for o in outcomes if isinstance(o, PublishResult)]
            )
        except KafkaPublishError as exc:
            logger.warning("Transaction in doubt not settled yet: %s", exc)
        if found:  # one transaction: all of it or nothing
            logger.info("Transaction in doubt was committed (%d records)", len(found))
            return outcomes
        if found is None:
            logger.warning(
                "Transaction in doubt not settled yet (%s): its records wait, and "
                "are read back before anything of their conversation is sent",
                doubt,
            )
            return [
                InDoubtPublishError(f"transaction undecided after {doubt}", o)
                if isinstance(o, PublishResult)
                else o
                for o in outcomes
            ]
        aborted = RetriablePublishError(f"transaction aborted after {doubt}")
        return [aborted if s else o for o, s in zip(outcomes, sent, strict=True)]

    def committed(
        self, results: Sequence[PublishResult]
    ) -> set[tuple[str, int, int]] | None:
        """Which of these records, acknowledged in transactions whose fate was in
        doubt, were committed: read back within KAFKA_SEND_TIMEOUT (None when
        not decided yet)."""
        try:
            return records_committed(
                bootstrap_servers=self.bootstrap_servers,
                records=[(r.topic, r.partition, r.offset) for r in results],
                timeout=self.send_timeout,
                client_options=admin_options(self.producer_config),
            )
        except KafkaError as exc:
            logger.warning("Read-back of %d record(s) failed: %s", len(results), exc)
            return None
