"""The publish queue: Celery tasks by name, one waiting task per conversation.

A committed message asks for its conversation to be published. Only the first ask
since the last publish pass enqueues a task (a Redis flag set with NX); the task clears
the flag before it reads the conversation's unpublished messages, so every message
committed before that read is in it, and every later one sets the flag again. Under
load that is one task per batch, not one per message. One worker at a time publishes a
conversation (a Redis lock), which keeps its events in seq order in Kafka.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from celery import current_app
from kombu.exceptions import ChannelError
from redis.lock import Lock

from chat.infra import config
from chat.infra.clients import redis_client

logger = logging.getLogger(__name__)

PUBLISH_TASK = "chat.tasks.publish_chat_message"
CELERY_QUEUE = "celery"


def _scheduled_key(room_id: int) -> str:
    return f"chat:publish:scheduled:{room_id}"


def enqueue_publish(*, room_id: int, message_id: str, force: bool = False) -> bool:
    """Enqueue the publication of a conversation unless a task for it already waits.

    The mark names the message whose task carries the conversation. `force` enqueues
    anyway and takes the mark over (a sweep, a re-drive, the rest of a long
    backlog). Returns whether a task was sent. Raises redis/kombu errors when Redis
    is down (callers on commit are robust: the sweep enqueues later).
    """
    return bool(enqueue_publishes({room_id: message_id}, force=force))


def enqueue_publishes(marks: Mapping[int, str], *, force: bool = False) -> list[int]:
    """enqueue_publish for several conversations (room id → message id), their
    marks set in one round trip. Returns the rooms whose task was sent."""
    pipe = redis_client().pipeline(transaction=False)
    for room_id, message_id in marks.items():
        pipe.set(
            _scheduled_key(room_id),
            message_id,
            nx=not force,
            # A lost task's mark must not outlive the grace after which the sweep
            # re-enqueues its messages.
            px=max(1, int(config.outbox().grace_seconds * 1000)),
        )
    sent = []
    for (room_id, message_id), scheduled in zip(
        marks.items(), pipe.execute(), strict=True
    ):
        if scheduled:
            current_app.send_task(PUBLISH_TASK, args=[message_id])
            sent.append(room_id)
    return sent


_TAKE_MARK_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def publish_pass_started(*, room_id: int, message_id: str, owner_only: bool) -> bool:
    """A task is about to read the conversation: later commits must enqueue again.

    With `owner_only`, the mark is taken only if this message's task set it (others
    ride along on it, so the task must read the conversation). Returns whether it
    took the mark.
    """
    client = redis_client()
    key = _scheduled_key(room_id)
    if owner_only:
        return bool(client.eval(_TAKE_MARK_IF_OWNER, 1, key, message_id))
    return bool(client.delete(key))


def publish_scheduled(*, room_id: int) -> bool:
    """Whether a task for this conversation is enqueued and has not started."""
    return bool(redis_client().exists(_scheduled_key(room_id)))


def conversation_lock(*, room_id: int) -> Lock:
    """The lock that lets one worker at a time publish a conversation."""
    chat = config.chat()
    return redis_client().lock(
        f"chat:publish:lock:{room_id}",
        timeout=chat.publish_lock_timeout,
        sleep=0.005,
        blocking_timeout=min(config.kafka().send_timeout, chat.publish_lock_timeout),
    )


def queue_depth() -> int:
    """Tasks waiting in the Celery queue on the broker (kombu's public, passive
    queue_declare: every priority level of the queue; 0 when it does not exist)."""
    with current_app.connection_for_read() as connection:
        try:
            declared = connection.default_channel.queue_declare(
                CELERY_QUEUE, passive=True
            )
        except ChannelError:  # never declared, or emptied and removed: none wait
            return 0
        return int(declared.message_count)
