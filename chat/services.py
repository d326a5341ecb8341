"""Writes: every change to rooms and messages goes through here.

Services never talk to Kafka: the publish task claims a batch here, has the agent
publish it, and records the outcome here.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache, partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Field, Q
from django.utils import timezone

from . import broadcast, metrics, outbox
from .db_connections import write_turn
from .models import (
    FINAL_STATUSES,
    UNPUBLISHED_STATUSES,
    Message,
    Notification,
    Room,
    RoomMembership,
)

# private rooms: their services are part of this module's API
from .rooms import RoomAccessDenied as RoomAccessDenied
from .rooms import RoomError as RoomError
from .rooms import dm_pair, room_require_member
from .rooms import room_create_private as room_create_private
from .rooms import room_invite as room_invite
from .rooms import room_remove_member as room_remove_member
from .selectors import (
    RoomReadState,
    message_by_client_id,
    message_for_publish,
    messages_pending_publish,
    read_states,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from .schemas import ChatEvent

logger = logging.getLogger(__name__)

# Rows per write turn when the sweep forgets old idempotency keys.
CLIENT_ID_EXPIRE_CHUNK = 500


def _grace() -> timedelta:
    return timedelta(seconds=settings.OUTBOX_GRACE_SECONDS)


def outbox_backoff(*, sweep_count: int) -> timedelta:
    """Wait before the sweep re-enqueues a message again: GRACE × 2^n, capped."""
    seconds = settings.OUTBOX_GRACE_SECONDS * 2 ** min(sweep_count, 32)
    return timedelta(seconds=min(seconds, settings.OUTBOX_BACKOFF_MAX))


def _enqueue_publishes(marks: dict[int, str]) -> None:
    outbox.enqueue_publishes(marks)


def room_get_or_create(*, name: str) -> Room:
    """The room of this name, created on first use (a DM conversation `dm-<a>-<b>`
    with its two users as members)."""
    with transaction.atomic():
        room, created = Room.objects.get_or_create(name=name)
        if created:
            logger.info("Room %s created", name)
            pair = dm_pair(name)
            if pair:
                users = list(get_user_model().objects.filter(pk__in=pair))
                RoomMembership.objects.bulk_create(
                    [RoomMembership(user=user, room=room) for user in users],
                    ignore_conflicts=True,
                )
                _announce_joined([user.pk for user in users], name)
    return room


def _announce_joined(user_ids: Iterable[int], room_name: str) -> None:
    # the users' open /ws/notifications/ connections follow the room from now on
    events = [
        (
            broadcast.notify_user_group(user_id),
            {"type": "membership.joined", "room": room_name},
        )
        for user_id in user_ids
    ]
    transaction.on_commit(lambda: broadcast.send_events(events), robust=True)


def membership_join(*, user_id: int, room_name: str) -> bool:
    """The user opened or sent to the room: make them a member (caught up to now, so
    the history they are shown is not unread). True if they were not one yet; their
    open /ws/notifications/ connections then follow the room too.

    A private room is not joined this way: RoomAccessDenied unless already a member.
    """
    room = room_get_or_create(name=room_name)
    room_require_member(user_id=user_id, room=room)
    _, created = RoomMembership.objects.get_or_create(
        user_id=user_id, room=room, defaults={"last_read_seq": room.next_seq - 1}
    )
    if created:
        logger.info("User %s joined room %s", user_id, room_name)
        _announce_joined([user_id], room_name)
    return created


def room_mark_read(*, user_id: int, room_name: str, up_to_seq: int) -> RoomReadState:
    """The user has read the room up to `up_to_seq` (clamped to its last message):
    move their read mark forward (never back), mark that room's notifications read,
    and push the new count to all of the user's notification connections.

    Raises Room.DoesNotExist for an unknown room, RoomAccessDenied for a private
    room the user is not a member of.
    """
    now = timezone.now()
    with transaction.atomic():
        room = Room.objects.get(name=room_name)
        room_require_member(user_id=user_id, room=room)
        target = max(0, min(up_to_seq, room.next_seq - 1))
        membership, _ = RoomMembership.objects.get_or_create(user_id=user_id, room=room)
        if target > membership.last_read_seq:
            RoomMembership.objects.filter(
                pk=membership.pk, last_read_seq__lt=target
            ).update(last_read_seq=target)
        Notification.objects.filter(
            user_id=user_id, room=room, seq__lte=target, read_at__isnull=True
        ).update(read_at=now)
    (state,) = read_states(user_id=user_id, room_name=room_name)
    broadcast.send_events(
        [
            (
                broadcast.notify_user_group(user_id),
                {"type": "unread.changed", "states": [state._asdict()]},
            )
        ]
    )
    return state


def _seqs_update(counts: Mapping[str, int]) -> tuple[str, list[Any]]:
    """`UPDATE room SET next_seq = next_seq + <the room's count>` and its parameters,
    for the rooms of `counts`, which the caller restricts with a WHERE or FROM."""
    add = " ".join(["WHEN %s THEN %s"] * len(counts))
    params = [x for name in sorted(counts) for x in (name, counts[name])]
    table = Room._meta.db_table
    return f"UPDATE {table} SET next_seq = next_seq + CASE name {add} END ", params


def _seqs_cte(counts: Mapping[str, int]) -> tuple[str, list[Any]]:
    """Postgres: `WITH locked AS (...), seqs AS (UPDATE ... RETURNING name, id,
    next_seq)`, which adds each room's count to its next_seq, for a statement to
    follow. The rows are locked first, in room-name order, so two servers' batches
    wait for each other instead of deadlocking. The lock is the one an UPDATE takes
    (NO KEY): rows that refer to the room (a notification, a membership) are still
    written meanwhile."""
    table = Room._meta.db_table
    update, params = _seqs_update(counts)
    names = sorted(counts)
    in_names = ", ".join(["%s"] * len(names))
    sql = (
        f"WITH locked AS MATERIALIZED (SELECT id FROM {table} "
        f"WHERE name IN ({in_names}) ORDER BY name FOR NO KEY UPDATE), "
        f"seqs AS ({update}FROM locked WHERE {table}.id = locked.id "
        f"RETURNING {table}.name, {table}.id, {table}.next_seq) "
    )
    return sql, [*names, *params]


def _take_seqs(counts: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """Room name → (room id, first of its `count` consecutive seqs), for every room
    of `counts` that exists, in one statement. The row locks (Postgres, see
    _seqs_cte) or the write lock (SQLite IMMEDIATE) make concurrent senders wait
    their turn, gap-free."""
    if connection.vendor == "postgresql":
        sql, params = _seqs_cte(counts)
        sql += "SELECT name, id, next_seq FROM seqs"
    else:
        sql, params = _seqs_update(counts)
        sql += "WHERE name IN ({}) RETURNING name, id, next_seq".format(
            ", ".join(["%s"] * len(counts))
        )
        params += sorted(counts)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return {name: (room_id, after - counts[name]) for name, room_id, after in rows}


@cache
def _insert_sql(
    vendor: str, rows: int, taking_seqs: bool = False
) -> tuple[list[Field[Any, Any]], str]:
    """The INSERT of `rows` messages, RETURNING their ids. `taking_seqs` (Postgres,
    after _seqs_cte): each row's room id and seq come from the `seqs` CTE, by the
    room's name and how far back from the room's new next_seq the row's seq is; it
    returns the room ids and seqs too."""
    fields = [f for f in Message._meta.concrete_fields if not f.primary_key]
    quote = connection.ops.quote_name

    def value(field: Field[Any, Any]) -> str:
        if taking_seqs and field.attname == "room_id":
            return "(SELECT id FROM seqs WHERE name = %s)"
        if taking_seqs and field.attname == "seq":
            return "(SELECT next_seq FROM seqs WHERE name = %s) - %s"
        return "%s"

    row = "({})".format(", ".join(value(f) for f in fields))
    returning = ["id", "room_id", "seq"] if taking_seqs else ["id"]
    sql = "INSERT INTO {} ({}) VALUES {} RETURNING {}".format(
        quote(Message._meta.db_table),
        ", ".join(quote(str(f.column)) for f in fields),
        ", ".join([row] * rows),
        ", ".join(quote(c) for c in returning),
    )
    return fields, sql


def _insert(messages: Sequence[Message]) -> None:
    """One INSERT ... RETURNING the ids for all `messages`: what bulk_create sends
    (the ids come back in row order, as bulk_create relies on), without its query
    compiler (profiled: ~5% of the web process's CPU for one message a time)."""
    fields, sql = _insert_sql(connection.vendor, len(messages))
    values = [
        f.get_db_prep_save(f.pre_save(message, True), connection)
        for message in messages
        for f in fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        ids = cursor.fetchall()
    for message, (pk,) in zip(messages, ids, strict=True):
        _stored_as(message, pk)


def _stored_as(message: Message, pk: int) -> None:
    message.pk = pk
    message._state.adding = False
    message._state.db = connection.alias


def _room(room_id: int, name: str) -> Room:
    room = Room(id=room_id, name=name)
    room._state.adding = False
    return room


def _store_in_one_statement(messages: Sequence[Message], rooms: Sequence[str]) -> bool:
    """Postgres, outside a transaction: take the seqs of `rooms` (each message's) and
    insert `messages` in one statement, which is its own transaction: one round trip
    where BEGIN, UPDATE, INSERT, COMMIT took four, and the room rows are locked for
    that one only. False if it stored nothing: inside a transaction (a savepoint's
    round trips would cost what this saves), or if the statement broke a constraint
    (a room nobody has written to yet has no row, so its messages' room id is NULL;
    a resent client_id; a receiver gone), which the transaction then sorts out."""
    if connection.in_atomic_block:
        return False
    counts = Counter(rooms)
    fields, insert = _insert_sql(connection.vendor, len(messages), taking_seqs=True)
    sql, params = _seqs_cte(counts)
    back = dict(counts)
    for message, name in zip(messages, rooms, strict=True):
        for f in fields:
            if f.attname == "room_id":
                params.append(name)
            elif f.attname == "seq":
                params += [name, back[name]]
                back[name] -= 1
            else:
                params.append(f.get_db_prep_save(f.pre_save(message, True), connection))
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql + insert, params)
            rows = cursor.fetchall()
    except IntegrityError:
        return False
    by_id: dict[int, Room] = {}
    for message, name, (pk, room_id, seq) in zip(messages, rooms, rows, strict=True):
        if room_id not in by_id:
            by_id[room_id] = _room(room_id, name)
        message.room = by_id[room_id]
        message.seq = seq
        _stored_as(message, pk)
    return True


def _store_in_transaction(messages: Sequence[Message], rooms: Sequence[str]) -> None:
    """Take the seqs of `rooms` (each message's; rooms nobody has written to yet are
    created) and insert `messages`, in the caller's transaction."""
    counts = Counter(rooms)
    taken = _take_seqs(counts)
    missing = {n: c for n, c in counts.items() if n not in taken}
    if missing:  # rooms nobody has written to yet
        for name in missing:
            room_get_or_create(name=name)
        taken |= _take_seqs(missing)
    next_seq = {name: first for name, (_, first) in taken.items()}
    by_name = {name: _room(room_id, name) for name, (room_id, _) in taken.items()}
    for message, name in zip(messages, rooms, strict=True):
        message.room = by_name[name]
        message.seq = next_seq[name]
        next_seq[name] += 1
    _insert(messages)


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
        if not (
            connection.vendor == "postgresql"
            and _store_in_one_statement(messages, rooms)
        ):
            with transaction.atomic():
                _store_in_transaction(messages, rooms)
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
        transaction.on_commit(lambda: _enqueue_publishes(publish), robust=True)
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


def messages_record_published(
    *, published: Sequence[tuple[Message, Any]], skipped: Sequence[Message] = ()
) -> None:
    """Record where Kafka stored each message, or that it was skipped, and count the
    attempt: one UPDATE per partition (a conversation has one). The conversation's
    lock is held, so nobody else writes these rows."""
    now = timezone.now()
    by_partition: dict[int, list[tuple[Message, Any]]] = defaultdict(list)
    for message, result in published:
        message.attempts += 1
        message.status = Message.Status.PUBLISHED
        message.published_at = now
        message.kafka_partition = result.partition
        message.kafka_offset = result.offset
        message.last_error = ""
        by_partition[result.partition].append((message, result))
        metrics.PUBLISH_LATENCY.observe((now - message.created_at).total_seconds())
    for message in skipped:
        message.attempts += 1
        message.status = Message.Status.SKIPPED
    with write_turn():  # beside the web's group commits (db_connections)
        for partition, rows in by_partition.items():
            _record_offsets(partition, rows, now)
        if skipped:
            Message.objects.filter(pk__in=[m.pk for m in skipped]).update(
                status=Message.Status.SKIPPED, attempts=F("attempts") + 1
            )
    metrics.MESSAGES_PUBLISHED.inc(len(published))
    metrics.MESSAGES_SKIPPED.inc(len(skipped))


def _record_offsets(partition: int, rows: list[tuple[Message, Any]], now: Any) -> None:
    # Plain SQL: Django's bulk_update compiles a CASE per field per row, which cost
    # more than the Kafka publication itself (8 ms for one message, profiled).
    table = Message._meta.db_table
    cases = " ".join("WHEN %s THEN %s" for _ in rows)
    ids = ", ".join("%s" for _ in rows)
    params: list[Any] = [
        Message.Status.PUBLISHED,
        connection.ops.adapt_datetimefield_value(now),
        partition,
    ]
    for message, result in rows:
        params += [message.pk, result.offset]
    params += [m.pk for m, _ in rows]
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET status = %s, published_at = %s, "
            f"kafka_partition = %s, last_error = '', attempts = attempts + 1, "
            f"kafka_offset = CASE id {cases} END WHERE id IN ({ids})",
            params,
        )


def messages_record_error(*, messages: Sequence[Message], error: str) -> None:
    """Count the attempt and keep the retriable error of messages tried again later;
    the sweep waits a grace period past this attempt."""
    with write_turn():
        Message.objects.filter(pk__in=[m.pk for m in messages]).update(
            attempts=F("attempts") + 1,
            last_error=error[:2000],
            next_sweep_at=timezone.now() + _grace(),
        )


def messages_record_in_doubt(*, in_doubt: Sequence[tuple[Message, Any]]) -> None:
    """Keep where Kafka acknowledged messages whose transaction's fate is unknown
    (their status stays unpublished): the next publisher of the conversation reads
    them back there before it sends anything (tasks._settle_in_doubt)."""
    for message, result in in_doubt:
        message.kafka_partition = result.partition
        message.kafka_offset = result.offset
    with write_turn():
        Message.objects.bulk_update(
            [m for m, _ in in_doubt], ["kafka_partition", "kafka_offset"]
        )


def messages_forget_place(*, messages: Sequence[Message]) -> None:
    """Read back and not there (their transaction was aborted): to be sent again."""
    if not messages:
        return
    for message in messages:
        message.kafka_partition = message.kafka_offset = None
    with write_turn():
        Message.objects.filter(pk__in=[m.pk for m in messages]).update(
            kafka_partition=None, kafka_offset=None
        )


def message_mark_failed(*, message_id: str, error: str) -> Message | None:
    """Retries exhausted: mark the message failed, and with it the conversation's
    other attempted, unpublished messages (they wait behind it in seq order); tell
    their senders. The sweep retries them."""
    try:
        message = message_for_publish(message_id=message_id)
    except (Message.DoesNotExist, ValidationError):
        logger.error("Cannot mark %r failed: no such message (%s)", message_id, error)
        return None
    if message.status in FINAL_STATUSES:
        return message
    behind = Message.objects.filter(
        room_id=message.room_id, status__in=UNPUBLISHED_STATUSES, attempts__gt=0
    ).exclude(pk=message.pk)
    failed = [message, *behind]
    newly_failed = [m for m in failed if m.status != Message.Status.FAILED]
    now = timezone.now()
    for each in failed:
        each.status = Message.Status.FAILED
        each.last_error = error[:2000]
        each.next_sweep_at = now + outbox_backoff(sweep_count=each.sweep_count)
    with write_turn():
        Message.objects.bulk_update(failed, ["status", "last_error", "next_sweep_at"])
    metrics.MESSAGES_FAILED.inc(len(newly_failed))
    logger.error(
        "Retries exhausted for message_id=%s and %d more of %s (sweep again at %s): %s",
        message_id,
        len(failed) - 1,
        message.room.name,
        now + outbox_backoff(sweep_count=message.sweep_count),
        error,
    )
    broadcast.send_statuses(newly_failed)  # a sender hears "failed" once per failure
    return message


def message_mark_dead(*, message: Message, reason: str) -> Message:
    """The message can never be published as it is: stop retrying, tell the sender."""
    message.status = Message.Status.DEAD
    message.last_error = reason[:2000]
    message.next_sweep_at = None
    with write_turn():
        message.save(
            update_fields=["status", "attempts", "last_error", "next_sweep_at"]
        )
    metrics.MESSAGES_DEAD.inc()
    logger.error(
        "Dead message_id=%s: %s",
        message.message_id,
        reason,
        extra={"message_id": str(message.message_id)},
    )
    broadcast.send_statuses([message])
    return message


def outbox_sweep(
    *, now: datetime | None = None, limit: int | None = None, force: bool = False
) -> list[str]:
    """Re-enqueue the conversations of messages whose sweep is due; return their ids.

    One task per conversation: it publishes all of the conversation's unpublished
    messages in seq order. Messages whose conversation already has a task waiting are
    left alone, and nothing is enqueued while the Celery queue is deeper than
    OUTBOX_SWEEP_MAX_QUEUE: those tasks are late, not lost, and more would only feed
    a collapse. Each re-enqueue pushes the message's next sweep back (GRACE × 2^n,
    capped), so a long outage is probed at a falling rate. `force` (an operator's
    command) enqueues every due conversation whatever waits.
    """
    now = now or timezone.now()
    limit = settings.OUTBOX_SWEEP_BATCH if limit is None else limit
    depth = 0 if force else outbox.queue_depth()
    if depth > settings.OUTBOX_SWEEP_MAX_QUEUE:
        logger.warning(
            "Outbox sweep skipped: %d tasks wait in the queue (more than %d)",
            depth,
            settings.OUTBOX_SWEEP_MAX_QUEUE,
        )
        return []
    pending = messages_pending_publish(now=now, grace=_grace())
    # Nothing due (the usual case): no write transaction, which on SQLite would hold
    # the database's write lock while the query runs.
    if not pending.exists():
        return []
    with write_turn(), transaction.atomic():
        candidates = list(pending.select_for_update(skip_locked=True)[:limit])
        waiting = {
            room_id
            for room_id in {m.room_id for m in candidates}
            if not force and outbox.publish_scheduled(room_id=room_id)
        }
        due = [m for m in candidates if m.room_id not in waiting]
        for message in due:
            message.sweep_count += 1
            message.next_sweep_at = now + outbox_backoff(
                sweep_count=message.sweep_count
            )
        Message.objects.bulk_update(due, ["sweep_count", "next_sweep_at"])
        _enqueue_conversations_on_commit(due)
    if due:
        logger.warning("Outbox sweep re-enqueued %d message(s)", len(due))
    return [str(m.message_id) for m in due]


def _enqueue_conversations_on_commit(messages: Iterable[Message]) -> None:
    first_of_room: dict[int, str] = {}
    for message in messages:
        first_of_room.setdefault(message.room_id, str(message.message_id))
    for room_id, message_id in first_of_room.items():
        transaction.on_commit(
            partial(
                outbox.enqueue_publish,
                room_id=room_id,
                message_id=message_id,
                force=True,
            )
        )


def client_ids_expire(*, now: datetime | None = None) -> int:
    """Forget idempotency keys older than CHAT_CLIENT_ID_WINDOW (the sweep calls
    this), so a client may use a key again after the window; returns how many."""
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.CHAT_CLIENT_ID_WINDOW)
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


def message_redrive(*, message_ids: Iterable[str]) -> list[str]:
    """Put dead messages back in the pipeline (after the cause was fixed)."""
    ids = [str(i) for i in message_ids]
    with transaction.atomic():
        dead = list(
            Message.objects.select_for_update().filter(
                message_id__in=ids, status=Message.Status.DEAD
            )
        )
        for message in dead:
            message.status = Message.Status.PENDING
            message.sweep_count = 0
            message.next_sweep_at = timezone.now() + _grace()
        Message.objects.bulk_update(dead, ["status", "sweep_count", "next_sweep_at"])
        _enqueue_conversations_on_commit(dead)
    for message in dead:
        logger.warning(
            "Re-driving dead message_id=%s",
            message.message_id,
            extra={"message_id": str(message.message_id)},
        )
    return [str(m.message_id) for m in dead]


# --- Notifications (written by the NotificationAgent from the Kafka stream) ---------

# "@name" where name is a Django username (letters, digits and @.+-_), not part of a
# longer word or address; a trailing sentence dot is tried without it too.
MENTION = re.compile(r"(?<![\w@.+-])@([\w.@+-]{1,150})")

Key = TypeVar("Key")


def mentioned_usernames(content: str) -> set[str]:
    """Usernames a message @mentions."""
    names: set[str] = set()
    for match in MENTION.finditer(content):
        name = match.group(1)
        names.add(name)
        names.add(name.rstrip(".-+@"))
    names.discard("")
    return names


@dataclass
class NotificationOutcome(Generic[Key]):
    """What recording a batch of chat events did."""

    # valid events, in the order given (their room activity is pushed live)
    accepted: list[ChatEvent] = field(default_factory=list)
    # new notifications (none for an event handled before) with their event and the
    # sender's username
    created: list[tuple[Notification, ChatEvent, str]] = field(default_factory=list)
    # events that cannot be handled: (the caller's key, why)
    skipped: list[tuple[Key, str]] = field(default_factory=list)


def notifications_record(
    *, events: Sequence[tuple[Key, ChatEvent]]
) -> NotificationOutcome[Key]:
    """Store the notifications of a batch of chat events, idempotently per
    (user, message_id): a DM notifies its receiver, a room message the members it
    @mentions (never its sender). One transaction, a fixed number of statements for
    the whole batch whatever the rooms' sizes.

    An event that names an unknown room, sender or receiver is skipped with its
    reason, and the rest of the batch is recorded.
    """
    outcome: NotificationOutcome[Key] = NotificationOutcome()
    if not events:
        return outcome
    User = get_user_model()
    mentions = {
        key: mentioned_usernames(event.content) if event.receiver_id is None else set()
        for key, event in events
    }
    room_ids = dict(
        Room.objects.filter(name__in={e.room for _, e in events}).values_list(
            "name", "id"
        )
    )
    named = {n for names in mentions.values() for n in names}
    user_ids = {e.sender_id for _, e in events} | {
        e.receiver_id for _, e in events if e.receiver_id is not None
    }
    users = dict(
        User.objects.filter(Q(pk__in=user_ids) | Q(username__in=named)).values_list(
            "pk", "username"
        )
    )
    by_name = {name: pk for pk, name in users.items()}
    mentioned_ids = {by_name[n] for n in named if n in by_name}
    members = set(
        RoomMembership.objects.filter(
            room_id__in=room_ids.values(), user_id__in=mentioned_ids
        ).values_list("room_id", "user_id")
    )
    wanted: list[tuple[Notification, ChatEvent, str]] = []
    for key, event in events:
        room_id = room_ids.get(event.room)
        if room_id is None:
            outcome.skipped.append((key, f"unknown room {event.room!r}"))
            continue
        unknown = [
            f"unknown {role} {user_id}"
            for role, user_id in (
                ("sender", event.sender_id),
                ("receiver", event.receiver_id),
            )
            if user_id is not None and user_id not in users
        ]
        if unknown:
            outcome.skipped.append((key, ", ".join(unknown)))
            continue
        outcome.accepted.append(event)
        if event.receiver_id is not None:
            targets = {event.receiver_id: Notification.Kind.DM}
        else:
            targets = {
                by_name[n]: Notification.Kind.MENTION
                for n in mentions[key]
                if n in by_name and (room_id, by_name[n]) in members
            }
        targets.pop(event.sender_id, None)
        for user_id, kind in targets.items():
            notification = Notification(
                user_id=user_id,
                message_id=event.message_id,
                room_id=room_id,
                seq=event.seq,
                kind=kind,
            )
            wanted.append((notification, event, users[event.sender_id]))
    with transaction.atomic():
        existing = set(
            Notification.objects.filter(
                message_id__in={n.message_id for n, _, _ in wanted}
            ).values_list("user_id", "message_id")
        )
        for notification, event, sender in wanted:
            mark = (notification.user_id, notification.message_id)
            if mark not in existing:  # also a repeat within this batch
                existing.add(mark)
                outcome.created.append((notification, event, sender))
        Notification.objects.bulk_create(
            [n for n, _, _ in outcome.created], ignore_conflicts=True
        )
    return outcome
