"""The producer error table: retry, rebuild the producer, or dead letter."""

from __future__ import annotations

import inspect

import kafka.errors as errors
import pytest
from kafka import KafkaProducer
from kafka.producer.transaction_manager import TransactionManager

from chat.publishing.errors import (
    PERMANENT_ERRORS,
    REBUILD_ERRORS,
    PermanentPublishError,
    Recovery,
    RetriablePublishError,
    producer_is_broken,
    publish_error,
    recovery_for,
)


@pytest.mark.parametrize(
    ("error", "recovery"),
    [
        (errors.MessageSizeTooLargeError(), Recovery.PERMANENT),
        (errors.RecordListTooLargeError(), Recovery.PERMANENT),
        (errors.InvalidTopicError(), Recovery.PERMANENT),
        (errors.TopicAuthorizationFailedError(), Recovery.PERMANENT),
        (errors.ClusterAuthorizationFailedError(), Recovery.PERMANENT),
        (errors.UnknownProducerIdError(), Recovery.REBUILD),
        (errors.OutOfOrderSequenceNumberError(), Recovery.REBUILD),
        (errors.InvalidProducerEpochError(), Recovery.REBUILD),
        (errors.ProducerFencedError(), Recovery.REBUILD),
        (errors.IllegalStateError(), Recovery.REBUILD),
        (errors.KafkaConnectionError(), Recovery.REBUILD),
        (errors.UnknownError(), Recovery.REBUILD),
        (
            errors.KafkaError("Unexpected error in InitProducerIdResponse: x"),
            Recovery.REBUILD,
        ),
        (errors.NotLeaderForPartitionError(), Recovery.RETRY),
        (errors.LeaderNotAvailableError(), Recovery.RETRY),
        (errors.NotEnoughReplicasError(), Recovery.RETRY),
        (errors.NotEnoughReplicasAfterAppendError(), Recovery.RETRY),
        (errors.KafkaTimeoutError(), Recovery.RETRY),
        (errors.RequestTimedOutError(), Recovery.RETRY),
        (errors.UnknownTopicOrPartitionError(), Recovery.RETRY),
        (errors.CorruptRecordError(), Recovery.RETRY),
        (errors.InvalidTimestampError(), Recovery.RETRY),
        (RuntimeError("not a Kafka error"), Recovery.RETRY),
    ],
)
def test_every_error_has_a_recovery(error, recovery):
    """Each class of the table maps to its recovery; what is not in it is retriable."""
    assert recovery_for(error) is recovery


def test_no_error_not_listed_is_permanent():
    """Of all kafka-python errors, only the listed ones (and their subclasses) are
    permanent: a new or unknown error is never a reason to give a message up."""

    def subclasses(cls: type) -> set[type]:
        return {cls} | {s for sub in cls.__subclasses__() for s in subclasses(sub)}

    permanent = {
        cls
        for cls in subclasses(errors.KafkaError)
        if recovery_for(cls.__new__(cls)) is Recovery.PERMANENT
    }
    assert permanent == {
        cls
        for cls in permanent
        if any(issubclass(cls, listed) for listed in PERMANENT_ERRORS)
    }
    assert not set(PERMANENT_ERRORS) & set(REBUILD_ERRORS)


def test_publish_errors_carry_the_recovery():
    """The agent's errors: permanent is dead-lettered; rebuild is retriable and
    says the producer must go."""
    assert isinstance(
        publish_error(errors.MessageSizeTooLargeError()), PermanentPublishError
    )
    rebuild = publish_error(errors.UnknownProducerIdError())
    assert isinstance(rebuild, RetriablePublishError) and rebuild.rebuild
    retry = publish_error(errors.NotLeaderForPartitionError())
    assert isinstance(retry, RetriablePublishError) and not retry.rebuild


class _Manager:
    def __init__(self, fatal: bool) -> None:
        self.fatal = fatal

    def has_fatal_error(self) -> bool:
        return self.fatal


class _Sender:
    def __init__(self, alive: bool) -> None:
        self.alive = alive

    def is_alive(self) -> bool:
        return self.alive


class _Producer:
    def __init__(self, *, fatal: bool = False, alive: bool = True) -> None:
        self._transaction_manager = _Manager(fatal)
        self._sender = _Sender(alive)
        self._closed = False


def test_a_broken_producer_is_rebuilt_whatever_the_error():
    """A producer in a fatal idempotence state, or whose sender thread died, is
    rebuilt even for an error that alone would be retried with it; the record's own
    permanent error still wins."""
    retriable = errors.NotLeaderForPartitionError()
    assert recovery_for(retriable, _Producer()) is Recovery.RETRY
    assert recovery_for(retriable, _Producer(fatal=True)) is Recovery.REBUILD
    assert recovery_for(retriable, _Producer(alive=False)) is Recovery.REBUILD
    assert not producer_is_broken(_Producer())
    # ...but a record the broker refuses for good stays refused (kafka-python's
    # idempotent producer turns fatal on it too).
    too_large = errors.MessageSizeTooLargeError()
    assert recovery_for(too_large, _Producer(fatal=True)) is Recovery.PERMANENT


def test_kafka_python_still_has_the_state_the_check_reads():
    """producer_is_broken reads kafka-python internals; this fails when they move."""
    init = inspect.getsource(KafkaProducer.__init__)
    for attribute in ("self._transaction_manager", "self._sender", "self._closed"):
        assert attribute in init, attribute
    assert callable(TransactionManager.has_fatal_error)


def test_kafka_python_still_commits_the_way_the_bounded_commit_does():
    """ChatProducer._commit is commit_transaction() with a bound on the wait; this
    fails when kafka-python's commit changes."""
    from kafka.producer.transaction_manager import TransactionalRequestResult

    commit = inspect.getsource(KafkaProducer.commit_transaction)
    assert "self._transaction_manager.begin_commit()" in commit
    assert "self._sender.wakeup()" in commit
    assert "timeout_ms" in inspect.signature(TransactionalRequestResult.wait).parameters


class _NeverAcks:
    """A producer whose records are never acknowledged (a stalled producer)."""

    def __init__(self) -> None:
        self.closed = False

    def begin_transaction(self) -> None:
        pass

    def send(self, *args: object, **kwargs: object) -> object:
        return type("Pending", (), {"is_done": False})()

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


def test_a_stalled_producer_is_rebuilt_after_two_silent_batches(settings):
    """A producer that got no acknowledgement for two batches in a row is discarded;
    the next attempt builds a new one."""
    from chat.publishing.producer import ChatProducer

    from ..support import sample_event

    settings.KAFKA_CREATE_TOPICS = False
    settings.KAFKA_TRANSACTIONS = False
    agent = ChatProducer(bootstrap_servers="127.0.0.1:1", breaker_failures=100)
    stalled = _NeverAcks()
    agent._producer = stalled
    outcomes = agent.publish_batch([sample_event()])
    assert isinstance(outcomes[0], RetriablePublishError)
    assert agent._producer is stalled  # one silent batch: kept
    agent.publish_batch([sample_event()])
    assert agent._producer is None and stalled.closed  # two: discarded
    assert agent.producer_rebuilds == 1
    agent.closed = True


def test_a_transaction_abandoned_after_a_failure_discards_the_producer(settings):
    """With transactions, a batch that failed leaves its transaction open: the
    producer is discarded at once, and the next one (same transactional id) aborts
    that transaction when it initialises."""
    from chat.publishing.producer import ChatProducer

    from ..support import sample_event

    settings.KAFKA_CREATE_TOPICS = False
    settings.KAFKA_TRANSACTIONS = True
    agent = ChatProducer(bootstrap_servers="127.0.0.1:1", breaker_failures=100)
    stalled = _NeverAcks()
    agent._producer = stalled
    [outcome] = agent.publish_batch([sample_event()])
    assert isinstance(outcome, RetriablePublishError)
    assert agent._producer is None and stalled.closed
    assert agent.producer_rebuilds == 1
    agent.closed = True
