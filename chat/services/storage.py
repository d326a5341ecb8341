"""The SQL that takes a conversation's seqs and inserts messages: `store()` is the
one entry; the Postgres and SQLite statements differ behind it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Field

from chat.models import (
    Message,
    Room,
)
from chat.services.rooms import room_get_or_create

if TYPE_CHECKING:
    pass


def store(messages: Sequence[Message], rooms: Sequence[str]) -> None:
    """Give each of `messages` the next seq of its room (`rooms`, in the same order;
    each room's seqs in the order given, gap-free) and insert them all, committed on
    return unless the caller holds a transaction. Raises IntegrityError when a row
    breaks a constraint (a resent client_id, a receiver gone): nothing is stored."""
    if connection.vendor == "postgresql" and _store_in_one_statement(messages, rooms):
        return
    with transaction.atomic():
        _store_in_transaction(messages, rooms)


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
    compiler, whose cost is measured in docs/PERFORMANCE.md."""
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
