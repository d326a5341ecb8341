"""What to do about each error the Kafka producer can raise (docs/operations table).

Three answers: retry with the same producer; rebuild the producer, then retry; or
give up on that one record (it can never be published: dead letter with its reason).
Only the message itself can make a record permanent; an error not in these tables
is retriable, never permanent.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import kafka.errors as errors


class Recovery(enum.Enum):
    """How publishing recovers from an error."""

    RETRY = "retry"  # same producer, later (Celery's countdown)
    REBUILD = "rebuild"  # close the producer, build a new one, then retry
    PERMANENT = "permanent"  # this record never gets through: dead letter


# The record itself is the problem: retrying can never help.
PERMANENT_ERRORS: dict[type[Exception], str] = {
    errors.MessageSizeTooLargeError: "the record is larger than the broker accepts",
    errors.RecordListTooLargeError: "the batch is larger than the broker accepts",
    errors.InvalidTopicError: "the topic name is invalid",
    errors.InvalidRecordError: "the broker refused the record as invalid",
    errors.AuthorizationError: "the producer is not authorized for this record",
}

# The producer's own state is broken: only a new producer (new producer id and
# epoch, new connections) gets through again.
REBUILD_ERRORS: dict[type[Exception], str] = {
    errors.UnknownProducerIdError: "the broker forgot the producer id",
    errors.OutOfOrderSequenceNumberError: "the broker saw a sequence gap",
    errors.InvalidProducerEpochError: "the producer epoch is stale",
    errors.ProducerFencedError: "another producer took over the producer id",
    errors.InvalidProducerIdMappingError: "the producer id mapping is invalid",
    errors.InvalidTxnStateError: "the producer's transaction state is invalid",
    errors.TransactionCoordinatorFencedError: "the coordinator fenced the producer",
    errors.DuplicateSequenceNumberError: "the broker saw a duplicate sequence",
    errors.IllegalStateError: "the producer is in an illegal state",
    errors.KafkaConnectionError: "a connection to the broker broke",
    errors.UnknownError: "the broker answered with an unknown error",
}


def recovery_for(exc: BaseException, producer: Any = None) -> Recovery:
    """The recovery for `exc`, raised by `producer`: permanent when the record is
    the problem; else a rebuild when the error or the producer's broken state says
    so; else a retry."""
    mro = type(exc).__mro__
    if any(cls in PERMANENT_ERRORS for cls in mro):
        return Recovery.PERMANENT
    if producer is not None and producer_is_broken(producer):
        return Recovery.REBUILD
    for cls in mro:
        if cls in REBUILD_ERRORS:
            return Recovery.REBUILD
    if type(exc) is errors.KafkaError:  # e.g. "Unexpected error in InitProducerId"
        return Recovery.REBUILD
    return Recovery.RETRY


def producer_is_broken(producer: Any) -> bool:
    """Whether a kafka-python producer can no longer send: its idempotence state
    is fatal (every later batch would fail with the same error) or its sender
    thread died. kafka-python has no public call for this; both checks read
    attributes that tests/unit pin (test_publish_errors)."""
    manager = getattr(producer, "_transaction_manager", None)
    if manager is not None and manager.has_fatal_error():
        return True
    sender = getattr(producer, "_sender", None)
    return sender is not None and not sender.is_alive() and not producer._closed


class KafkaPublishError(Exception):
    """Publishing an event failed; `retriable` says whether trying again can help."""

    retriable = False


class RetriablePublishError(KafkaPublishError):
    """The broker is unreachable, slow or electing a leader: try again later.

    `rebuild` says the producer that met it was discarded (its state was broken);
    the next attempt builds a new one."""

    retriable = True

    def __init__(self, message: str, *, rebuild: bool = False) -> None:
        super().__init__(message)
        self.rebuild = rebuild


class PermanentPublishError(KafkaPublishError):
    """The broker rejected the record for good (e.g. too large): do not retry."""


class InDoubtPublishError(RetriablePublishError):
    """A record acknowledged in a transaction whose fate is not known yet: it is at
    `result` if that transaction was committed. Before it is sent again, a read-back
    (`ChatProducer.committed`) must say it is not there."""

    def __init__(self, message: str, result: PublishResult) -> None:
        super().__init__(message)
        self.result = result


class _PartlyFailedBatch(RetriablePublishError):
    """Some records of a batch failed retriably: the breaker counts it; the caller
    gets every record's outcome."""

    def __init__(self, outcomes: list[PublishResult | KafkaPublishError]) -> None:
        super().__init__("some records of the batch were not acknowledged")
        self.outcomes = outcomes


def publish_error(exc: Exception, producer: Any = None) -> KafkaPublishError:
    """The publish error for what the producer raised (the tables above)."""
    text = f"{type(exc).__name__}: {exc}"
    recovery = recovery_for(exc, producer)
    if recovery is Recovery.PERMANENT:
        return PermanentPublishError(text)
    return RetriablePublishError(text, rebuild=recovery is Recovery.REBUILD)


@dataclass(frozen=True)
class PublishResult:
    """Where Kafka stored the event."""

    topic: str
    partition: int
    offset: int

    @classmethod
    def of(cls, metadata: Any) -> PublishResult:
        """From kafka-python's RecordMetadata."""
        return cls(metadata.topic, metadata.partition, metadata.offset)
