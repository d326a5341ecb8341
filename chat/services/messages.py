"""Storing messages: one or a group commit, idempotent by client_id, then their
broadcast and the request to publish them, in that order after the commit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction
from django.utils import timezone

from chat.infra import config, metrics
from chat.infra.db import write_turn
from chat.models import (
    Message,
)
from chat.selectors import (
    message_by_client_id,
)
from chat.services import broadcast, publish_queue
from chat.services.storage import store

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser


logger = logging.getLogger(__name__)

# Rows per write turn when the sweep forgets old idempotency keys.
CLIENT_ID_EXPIRE_CHUNK = 500


@dataclass(frozen=True)
class NewMessage:
    """What a sender asks to store (message_create's arguments)."""

    room_name: str
    sender_id: int
    receiver_id: int | None
    content: str
    # the user object when the caller has it: spares the broadcast a read of the name
    sender: AbstractBaseUser | None = None
    client_id: str | None = None


def message_create(
    *,
    room_name: str,
    sender_id: int,
    receiver_id: int | None,
    content: str,
    sender: AbstractBaseUser | None = None,
    client_id: str | None = None,
) -> Message:
    """Persist a message with the room's next seq; on commit broadcast and enqueue it.

    Two statements in one transaction (UPDATE ... RETURNING the seq, INSERT; on
    Postgres, outside a caller's transaction, one statement that is its own
    transaction), and no re-read: the message is built from what the caller has.
    `sender`, the user object when the caller has it, spares the broadcast a read of
    the sender's name.

    `client_id` is the sender's idempotency key: if the sender stored a message with
    it within CHAT_CLIENT_ID_WINDOW, that message is returned (`replayed` True) and
    nothing is created or sent, and no seq is used.
    """
    return _message_create(
        NewMessage(
            room_name=room_name,
            sender_id=sender_id,
            receiver_id=receiver_id,
            content=content,
            sender=sender,
            client_id=client_id,
        )
    )


def _message_create(new: NewMessage) -> Message:
    # The insert comes first: a resend is rare, and the unique (sender, client_id)
    # constraint finds it without a read per message. Its transaction rolls back,
    # seq included, so a resend leaves no gap.
    try:
        return _messages_insert([new])[0]
    except IntegrityError:
        if new.client_id is None:
            raise
    earlier = message_by_client_id(sender_id=new.sender_id, client_id=new.client_id)
    if earlier is not None:
        return earlier
    # The key's message is older than the window and the sweep has not forgotten
    # the key yet: forget it now, as the sweep would have.
    Message.objects.filter(sender_id=new.sender_id, client_id=new.client_id).update(
        client_id=None
    )
    return _messages_insert([new])[0]


def messages_create(
    requests: Sequence[NewMessage],
    *,
    on_stored: Callable[[list[Message]], None] | None = None,
) -> list[Message | Exception]:
    """Persist several senders' messages in one transaction (a group commit): one
    UPDATE takes all their rooms' seqs, each room's in the order given, and one
    INSERT stores them all (on Postgres, outside a caller's transaction, the two are
    one statement: one round trip). Each gets what message_create would give it, or
    the exception it would raise.

    `on_stored` is called with the messages once they are committed and their
    broadcasts are on their way, before their publication is enqueued (a round trip
    to Redis): a server acks them then.

    If the batch breaks a constraint (a resent client_id, a receiver gone), it rolls
    back whole and each request goes through message_create on its own.
    """
    try:
        return list(_messages_insert(requests, on_stored=on_stored))
    except IntegrityError:
        pass
    results: list[Message | Exception] = []
    for new in requests:
        try:
            results.append(_message_create(new))
        except Exception as exc:  # this request's own error, for its caller
            results.append(exc)
    return results


def _messages_insert(
    requests: Sequence[NewMessage],
    *,
    on_stored: Callable[[list[Message]], None] | None = None,
) -> list[Message]:
    messages = [_unstored(new) for new in requests]
    rooms = [new.room_name for new in requests]
    with write_turn() as release_turn:
        store(messages, rooms)
        # room id → its last message, whose task carries the room's publication
        publish = {m.room_id: str(m.message_id) for m in messages}
        # In this order after the commit (now, or the caller's transaction's):
        # broadcasts (in seq order, before the next writer's), the caller's acks, the
        # next writer's turn, then the enqueue. robust: the messages are committed;
        # if Redis is down now, the senders still get their acks and the outbox
        # sweep enqueues the publications later.
        # (lambdas, not partials: Django names a failed robust callback by __qualname__)
        transaction.on_commit(lambda: _broadcast_all(messages), robust=True)
        if on_stored is not None:
            transaction.on_commit(lambda: on_stored(messages), robust=True)
        transaction.on_commit(release_turn)
        transaction.on_commit(
            lambda: publish_queue.enqueue_publishes(publish), robust=True
        )
    metrics.MESSAGES_RECEIVED.inc(len(messages))
    for message in messages:
        logger.debug(
            "Message message_id=%s persisted in room %s seq %d",
            message.message_id,
            message.room.name,
            message.seq,
            extra={"message_id": str(message.message_id)},
        )
    return messages


def _unstored(new: NewMessage) -> Message:
    """The message `new` asks for, without its room and seq yet."""
    message = Message(
        sender_id=new.sender_id,
        receiver_id=new.receiver_id,
        content=new.content,
        client_id=new.client_id,
    )
    if new.sender is not None and new.sender.pk == new.sender_id:
        message.sender = new.sender  # type: ignore[assignment]
    return message


def _broadcast_all(messages: list[Message]) -> None:
    for message in messages:
        broadcast.broadcast_message(message)


def client_ids_expire(*, now: datetime | None = None) -> int:
    """Forget idempotency keys older than CHAT_CLIENT_ID_WINDOW (the sweep calls
    this), so a client may use a key again after the window; returns how many."""
    cutoff = (now or timezone.now()) - timedelta(seconds=config.chat().client_id_window)
    expired = Message.objects.filter(client_id__isnull=False, created_at__lt=cutoff)
    # Found by a read first, then written a chunk per write turn: on SQLite an UPDATE
    # holds the database's write lock from its first row read, and this one reads the
    # whole table (no index on created_at alone), which held every writer up for tens
    # of ms every sweep on a large table.
    total = 0
    while ids := list(expired.values_list("pk", flat=True)[:CLIENT_ID_EXPIRE_CHUNK]):
        with write_turn():
            total += expired.filter(pk__in=ids).update(client_id=None)
        if len(ids) < CLIENT_ID_EXPIRE_CHUNK:
            break
    return total
