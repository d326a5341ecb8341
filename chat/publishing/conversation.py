"""Publishing one conversation: its unpublished messages, in seq order, as one batch.

The publish task (chat.tasks) calls publish_conversation under the conversation's
lock: read the batch, settle what an earlier attempt left in doubt, have the
producer send the rest pipelined, record each outcome, tell the senders. A message
the broker refuses for good is copied to the dead-letter topic, then marked dead.
"""

from __future__ import annotations

import logging

from redis.exceptions import LockError

from chat import selectors
from chat.infra import config
from chat.models import Message, Room
from chat.publishing.errors import (
    InDoubtPublishError,
    KafkaPublishError,
    PermanentPublishError,
    PublishResult,
    RetriablePublishError,
)
from chat.publishing.producer import ChatProducer
from chat.schemas import ChatEvent
from chat.services import broadcast, publish_queue
from chat.services.outbox import (
    message_mark_dead,
    messages_forget_place,
    messages_record_error,
    messages_record_in_doubt,
    messages_record_published,
)

logger = logging.getLogger(__name__)


def publish_conversation(*, room_id: int, room_name: str, message_id: str) -> str:
    """Publish the conversation's unpublished messages (one batch) under its lock.

    Read the batch, have the agent send it pipelined with one flush, record the
    outcome and the attempt with one UPDATE, tell the senders. Returns the status
    of `message_id`; raises RetriablePublishError (retry) or PermanentPublishError
    (dead) for it.
    """
    lock = publish_queue.conversation_lock(room_id=room_id)
    if not lock.acquire():
        raise RetriablePublishError(
            f"Conversation {room_name} stayed locked by another publisher for "
            f"{config.kafka().send_timeout:g}s"
        )
    try:
        batch = selectors.messages_unpublished(
            room_id=room_id, limit=config.chat().publish_batch
        )
        outcomes = _publish_batch(room_id, room_name, batch) if batch else {}
    finally:
        try:
            lock.release()
        except LockError:
            logger.warning("Publish lock of %s expired before release", room_name)
    if len(batch) == config.chat().publish_batch:  # more to do: carry on in a new task
        publish_queue.enqueue_publish(
            room_id=room_id, message_id=str(batch[-1].message_id), force=True
        )
    outcome = outcomes.get(message_id)
    if isinstance(outcome, KafkaPublishError):
        raise outcome
    for error in outcomes.values():
        if isinstance(error, RetriablePublishError):
            raise error  # this conversation is stuck behind it: retry the batch
    if outcome is None:  # not in this batch: published meanwhile, or in the next
        state = selectors.message_publish_state(message_id=message_id)
        return state.status if state else "unknown"
    return str(outcome)


def _publish_batch(
    room_id: int, room_name: str, batch: list[Message]
) -> dict[str, str | KafkaPublishError]:
    """Publish one batch; message_id → new status, or the error it met."""
    room = Room(id=room_id, name=room_name)
    for message in batch:
        message.room = room
    agent = ChatProducer.get_instance()
    outcome: dict[str, str | KafkaPublishError] = {}
    batch = _settle_in_doubt(agent, room_name, batch, outcome)
    if not batch:
        return outcome
    events = [ChatEvent.from_message(m) for m in batch]
    try:
        results = agent.publish_batch(events)
    except RetriablePublishError as exc:
        messages_record_error(messages=batch, error=str(exc))
        raise
    if results is None:
        messages_record_published(published=[], skipped=batch)
        broadcast.send_statuses(batch)
        return {str(m.message_id): m.status for m in batch}
    published, retriable, in_doubt = [], [], []
    for message, event, result in zip(batch, events, results, strict=True):
        key = str(message.message_id)
        if isinstance(result, PermanentPublishError):
            dead_letter_error = _dead_letter(agent, event, result)
            if dead_letter_error is not None:
                retriable.append(message)
                outcome[key] = dead_letter_error
                continue
            message.attempts += 1
            message_mark_dead(message=message, reason=str(result))
            outcome[key] = result
        elif isinstance(result, KafkaPublishError):
            retriable.append(message)
            outcome[key] = result
            if isinstance(result, InDoubtPublishError):
                in_doubt.append((message, result.result))
        else:
            published.append((message, result))
            outcome[key] = Message.Status.PUBLISHED
    messages_record_published(published=published)
    if published:  # per batch: DEBUG (metrics and Flower count them at any level)
        logger.debug(
            "Published %d message(s) of %s, seq %d-%d, to %s[%d]",
            len(published),
            room_name,
            published[0][0].seq,
            published[-1][0].seq,
            published[0][1].topic,
            published[0][1].partition,
        )
    if retriable:
        messages_record_error(
            messages=retriable, error=str(outcome[str(retriable[0].message_id)])
        )
    if in_doubt:
        messages_record_in_doubt(in_doubt=in_doubt)
    broadcast.send_statuses([m for m, _ in published])
    return outcome


def _settle_in_doubt(
    agent: ChatProducer,
    room_name: str,
    batch: list[Message],
    outcome: dict[str, str | KafkaPublishError],
) -> list[Message]:
    """Messages an earlier attempt left in doubt (a commit unanswered while the
    cluster was down: their place is recorded, their status is not published) are
    read back first. Found, they are published there; not found, they go with the
    rest of the batch, which is returned. Undecided, nothing of the conversation is
    sent: a copy, or a later message ahead of them, could follow."""
    places = {
        m.pk: PublishResult(agent.topic, m.kafka_partition, m.kafka_offset)
        for m in batch
        if m.kafka_partition is not None and m.kafka_offset is not None
    }
    if not places:
        return batch
    doubtful = [m for m in batch if m.pk in places]
    found = agent.committed(list(places.values()))
    if found is None:
        error = RetriablePublishError(
            f"{len(doubtful)} message(s) of {room_name} in doubt since a commit went "
            "unanswered: not decided yet"
        )
        messages_record_error(messages=batch, error=str(error))
        raise error
    there = [
        (m, place)
        for m in doubtful
        if ((place := places[m.pk]).topic, place.partition, place.offset) in found
    ]
    published = {m.pk for m, _ in there}
    gone = [m for m in doubtful if m.pk not in published]
    messages_record_published(published=there)
    messages_forget_place(messages=gone)
    broadcast.send_statuses([m for m, _ in there])
    for message, _ in there:
        outcome[str(message.message_id)] = Message.Status.PUBLISHED
    logger.info(
        "In doubt in %s: %d message(s) found in Kafka, %d sent again",
        room_name,
        len(there),
        len(gone),
    )
    return [m for m in batch if m.pk not in published]


def _dead_letter(
    agent: ChatProducer, event: ChatEvent, error: PermanentPublishError
) -> RetriablePublishError | None:
    """Copy a dead message to the dead-letter topic. A copy not written (retriable)
    keeps the message retrying, never dead without its copy: returns that error."""
    try:
        agent.publish_dead_letter(event, str(error))
    except RetriablePublishError as exc:
        logger.warning(
            "Dead-letter copy of message_id=%s not written yet, retried later: %s",
            event.message_id,
            exc,
        )
        return RetriablePublishError(
            f"{error}; its dead-letter copy is not written yet: {exc}"
        )
    except KafkaPublishError as exc:  # the dead-letter topic refuses it for good
        logger.error(
            "Dead-letter copy of message_id=%s refused for good: %s",
            event.message_id,
            exc,
        )
    return None
