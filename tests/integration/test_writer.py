"""Group commit: messages_create stores several senders' messages in one
transaction, and chat.realtime.writer batches a server's frames into it."""

from __future__ import annotations

import asyncio

import pytest
import redis
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext

from chat.models import Message, Room
from chat.realtime import writer
from chat.services import publish_queue
from chat.services.messages import NewMessage, message_create, messages_create
from chat.services.storage import _take_seqs

from ..support import queued_tasks

# messages_create broadcasts and enqueues on commit: Redis must be there.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("stack")]


def new(room: str, sender: int, content: str, **kwargs) -> NewMessage:
    return NewMessage(
        room_name=room, sender_id=sender, receiver_id=None, content=content, **kwargs
    )


def test_a_batch_takes_each_rooms_seqs_in_order_in_one_insert(chat_users):
    """Messages for two rooms in one call: each room's seqs follow the order given,
    and each caller gets its own message. One statement takes both rooms' seqs, one
    INSERT stores the messages; on Postgres they are one statement, outside any
    transaction (one round trip)."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    requests = [
        new("wa", alice, "0"),
        new("wb", bob, "1"),
        new("wa", bob, "2"),
        new("wa", alice, "3"),
        new("wb", alice, "4"),
    ]
    messages_create(requests[:2])  # the rooms exist: no room creation below
    with CaptureQueriesContext(connection) as queries:
        results = messages_create(requests)
    assert all(isinstance(m, Message) for m in results)
    assert [(m.room.name, m.seq, m.content, m.sender_id) for m in results] == [
        ("wa", 2, "0", alice),
        ("wb", 2, "1", bob),
        ("wa", 3, "2", bob),
        ("wa", 4, "3", alice),
        ("wb", 3, "4", alice),
    ]
    stored = Message.objects.filter(pk__in=[m.pk for m in results])
    assert sorted(stored.values_list("room__name", "seq", "content")) == sorted(
        (m.room.name, m.seq, m.content) for m in results
    )
    sql = [q["sql"] for q in queries.captured_queries]
    if connection.vendor == "postgresql":  # one statement, its own transaction
        # (the broadcasts read the senders, which the requests did not give)
        (statement,) = [q for q in sql if "auth_user" not in q]
        assert "SET next_seq" in statement
        assert "INSERT INTO" in statement
        assert connection.get_autocommit()
    else:
        assert len([q for q in sql if "SET next_seq" in q]) == 1
        assert len([q for q in sql if q.startswith("INSERT")]) == 1


def test_one_publication_per_room_is_asked_for_by_its_last_message(
    chat_users, redis_url
):
    """With no task waiting, a batch enqueues one task per room, naming the room's
    last message of the batch."""
    redis.Redis.from_url(redis_url).delete("celery")
    alice = chat_users["alice"].id
    results = messages_create(
        [new("q1", alice, "a"), new("q2", alice, "b"), new("q1", alice, "c")]
    )
    assert sorted(queued_tasks(redis_url)) == sorted(
        [f"['{results[2].message_id}']", f"['{results[1].message_id}']"]
    )


def test_a_resend_in_a_batch_gets_its_original_and_leaves_no_gap(chat_users):
    """A client_id the sender already used makes the batch roll back; each request
    then goes alone: the resend gets the original, the others seqs with no gap."""
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    first = message_create(
        room_name="rs", sender_id=alice, receiver_id=None, content="hi", client_id="k"
    )
    results = messages_create(
        [
            new("rs", bob, "before"),
            new("rs", alice, "hi again", client_id="k"),
            new("rs", alice, "after", client_id="k2"),
        ]
    )
    assert isinstance(results[1], Message) and results[1].replayed
    assert results[1].message_id == first.message_id
    assert [(r.seq, r.content) for r in results] == [
        (2, "before"),
        (1, "hi"),
        (3, "after"),
    ]
    assert Room.objects.get(name="rs").next_seq == 4


def test_a_batch_inside_a_transaction_is_part_of_it(chat_users, redis_url):
    """Inside the caller's transaction a batch is written in it (on Postgres not as
    the one statement, which would commit on its own): a resend rolls back only its
    savepoint, and when the caller rolls back, nothing is stored, broadcast or
    enqueued."""
    from django.db import transaction

    redis.Redis.from_url(redis_url).delete("celery")
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    with transaction.atomic():
        first = message_create(
            room_name="tx",
            sender_id=alice,
            receiver_id=None,
            content="hi",
            client_id="k",
        )
        results = messages_create(
            [new("tx", alice, "hi again", client_id="k"), new("tx", bob, "other")]
        )
        assert isinstance(results[0], Message) and results[0].replayed
        assert results[0].message_id == first.message_id
        assert isinstance(results[1], Message) and results[1].seq == 2
        transaction.set_rollback(True)
    assert not Message.objects.filter(room__name="tx").exists()
    assert queued_tasks(redis_url) == []


def test_a_request_that_breaks_a_constraint_fails_alone(chat_users):
    """A receiver that does not exist: that request gets the IntegrityError, the
    others are stored."""
    alice = chat_users["alice"].id
    results = messages_create(
        [
            new("fa", alice, "ok"),
            NewMessage(
                room_name="fa", sender_id=alice, receiver_id=987654, content="no"
            ),
            new("fa", alice, "ok too"),
        ]
    )
    assert isinstance(results[1], IntegrityError)
    assert [(r.seq, r.content) for r in (results[0], results[2])] == [
        (1, "ok"),
        (2, "ok too"),
    ]
    assert Message.objects.filter(room__name="fa").count() == 2


def test_callers_hear_of_the_commit_before_the_enqueue(chat_users, monkeypatch):
    """on_stored runs after the commit (the messages are there for everyone), before
    the Redis round trip that asks for the publication."""
    order: list[str] = []

    def on_stored(messages: list[Message]) -> None:
        assert not connection.in_atomic_block
        order.append(f"stored {len(messages)}")

    real = publish_queue.enqueue_publishes
    monkeypatch.setattr(
        publish_queue,
        "enqueue_publishes",
        lambda marks: (order.append("enqueue"), real(marks)),
    )
    messages_create(
        [new("cs", chat_users["alice"].id, str(n)) for n in range(3)],
        on_stored=on_stored,
    )
    assert order == ["stored 3", "enqueue"]


async def test_concurrent_frames_share_transactions_and_each_gets_its_own(
    chat_users, monkeypatch
):
    """Many senders at once on one loop: fewer transactions than messages, each
    caller gets the message it asked for, the room's seqs are 1..N with no gap, and a
    caller whose request fails gets its own error."""
    batches: list[int] = []
    real = messages_create

    def counting(requests, **kwargs):
        batches.append(len(requests))
        return real(requests, **kwargs)

    monkeypatch.setattr("chat.realtime.writer.messages_create", counting)
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    requests = [new("cc", (alice, bob)[n % 2], f"m{n}") for n in range(40)]
    requests[7] = NewMessage(
        room_name="cc", sender_id=alice, receiver_id=987654, content="bad"
    )
    results = await asyncio.gather(
        *(writer.message_create(r) for r in requests), return_exceptions=True
    )
    assert isinstance(results[7], IntegrityError)
    good = [r for n, r in enumerate(results) if n != 7]
    assert [m.content for m in good] == [
        r.content for n, r in enumerate(requests) if n != 7
    ]
    assert sorted(m.seq for m in good) == list(range(1, 40))
    assert sum(batches) >= 40 and len(batches) < 40


async def test_a_cancelled_caller_still_has_its_message_stored(chat_users):
    """A sender that leaves while its batch is written: the message is stored (it may
    already be in the transaction), and other callers are not disturbed."""
    alice = chat_users["alice"].id
    leaving = asyncio.ensure_future(writer.message_create(new("cx", alice, "bye")))
    await asyncio.sleep(0)  # one turn of the loop: the task runs up to its await
    leaving.cancel()
    staying = await writer.message_create(new("cx", alice, "still here"))
    assert staying.content == "still here"

    def stored() -> list[str]:
        return list(
            Message.objects.filter(room__name="cx")
            .order_by("seq")
            .values_list("content", flat=True)
        )

    assert await asyncio.to_thread(stored) == ["bye", "still here"]


def test_a_batch_takes_its_rooms_seqs_in_one_statement_in_name_order(chat_users):
    """Whatever order the senders came in, a batch takes all its rooms' seqs in one
    statement, in room-name order (on Postgres the rows are locked in that order), so
    two servers' batches never deadlock and hold the rows for one round trip."""
    alice = chat_users["alice"].id
    rooms = ("zz", "mm", "aa")
    messages_create([new(room, alice, "first") for room in rooms])
    with CaptureQueriesContext(connection) as queries:
        results = messages_create([new(room, alice, room) for room in rooms])
    (taking,) = [
        q["sql"] for q in queries.captured_queries if "SET next_seq" in q["sql"]
    ]
    at = [taking.index(f"'{room}'") for room in ("aa", "mm", "zz")]
    assert at == sorted(at)
    if connection.vendor == "postgresql":
        assert "ORDER BY name FOR NO KEY UPDATE" in taking
    assert [(m.room.name, m.seq) for m in results] == [("zz", 2), ("mm", 2), ("aa", 2)]


def test_a_batch_creates_the_rooms_nobody_wrote_to_yet(chat_users):
    alice = chat_users["alice"].id
    messages_create([new("old", alice, "first")])
    results = messages_create(
        [new(room, alice, room) for room in ("new-b", "old", "new-a", "new-b")]
    )
    assert [(m.room.name, m.seq) for m in results] == [
        ("new-b", 1),
        ("old", 2),
        ("new-a", 1),
        ("new-b", 2),
    ]


def test_rows_that_refer_to_a_room_are_written_while_a_batch_holds_its_seq(
    chat_users,
):
    """Postgres: the batch locks the room row as an UPDATE does (NO KEY), which a
    foreign key's check (KEY SHARE) does not wait for; FOR UPDATE would hold a new
    membership or notification of that room until the batch commits."""
    import threading

    from django.db import connections, transaction

    from chat.models import RoomMembership

    if connection.vendor != "postgresql":
        pytest.skip("row locks are Postgres's; SQLite has one write lock")
    alice, bob = chat_users["alice"].id, chat_users["bob"].id
    messages_create([new("held", alice, "first")])
    room = Room.objects.get(name="held")
    holding, release = threading.Event(), threading.Event()

    def batch_holding_the_row() -> None:  # another server's batch, mid-transaction
        try:
            with transaction.atomic():
                _take_seqs({"held": 1})
                holding.set()
                release.wait(10)
                transaction.set_rollback(True)
        finally:
            connections.close_all()

    holder = threading.Thread(target=batch_holding_the_row)
    holder.start()
    try:
        assert holding.wait(10)
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '3s'")
        RoomMembership.objects.create(user_id=bob, room=room)  # no lock timeout
    finally:
        release.set()
        holder.join(10)
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
