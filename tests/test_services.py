"""Services: gap-free per-room seq under concurrency, on the configured database."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from chat import services
from chat.models import Message

pytestmark = pytest.mark.django_db(transaction=True)


def test_concurrent_senders_get_gap_free_unique_seq(chat_users, settings):
    """Threads writing to one room at once get seq 1..N with no gap or duplicate."""
    settings.CELERY_TASK_ALWAYS_EAGER = False
    errors: list[BaseException] = []
    per_thread, threads = 15, 6

    def send(sender_id: int) -> None:
        try:
            for i in range(per_thread):
                services.message_create(
                    room_name="busy",
                    sender_id=sender_id,
                    receiver_id=None,
                    content=f"{i}",
                )
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    users = list(chat_users.values())
    workers = [
        threading.Thread(target=send, args=(users[i % len(users)].id,))
        for i in range(threads)
    ]
    for t in workers:
        t.start()
    for t in workers:
        t.join(120)
    assert errors == []
    seqs = sorted(
        Message.objects.filter(room__name="busy").values_list("seq", flat=True)
    )
    assert seqs == list(range(1, per_thread * threads + 1))


def test_rooms_number_independently(chat_users):
    """Each room has its own sequence."""
    alice = chat_users["alice"].id
    for room in ("a", "b", "a"):
        services.message_create(
            room_name=room, sender_id=alice, receiver_id=None, content="x"
        )
    assert list(Message.objects.order_by("id").values_list("room__name", "seq")) == [
        ("a", 1), ("b", 1), ("a", 2),
    ]  # fmt: skip


def test_mark_failed_ignores_unknown_and_published(chat_users):
    """Marking an unknown id does nothing; a published message is never downgraded."""
    assert services.message_mark_failed(message_id="nope", error="x") is None
    message = services.message_create(
        room_name="a", sender_id=chat_users["alice"].id, receiver_id=None, content="x"
    )
    Message.objects.filter(pk=message.pk).update(status="published")
    services.message_mark_failed(
        message_id=str(message.message_id), error="late failure"
    )
    message.refresh_from_db()
    assert message.status == "published"
