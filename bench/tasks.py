"""Celery tasks for the ceilings (the benchmark's worker loads them: `-I bench.tasks`).

They run in the same prefork worker, with the same flags, as the chat's own tasks.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Any

from celery import shared_task

CEILING_ROOM = "bench-ceiling"
CEILING_KEY = f"room:{CEILING_ROOM}".encode()


@shared_task(name="bench.tasks.noop")
def noop() -> None:
    """Do nothing: what a Celery task costs with the worker's flags."""


@shared_task(name="bench.tasks.publish_only")
def publish_only() -> None:
    """Publish one fixed event through the agent; no database, no status frame."""
    publish_event(ceiling_event())


@cache
def ceiling_event() -> Any:
    """The fixed event of the publish-only ceiling (its own room: readers skip it)."""
    from chat.schemas import ChatEvent

    return ChatEvent(
        message_id=uuid.UUID(int=0),
        room=CEILING_ROOM,
        seq=1,
        sender_id=1,
        receiver_id=None,
        content="x" * 100,
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


def publish_event(event: Any) -> None:
    """The one call into the agent's API: change it here if that API changes."""
    from chat.agents import KafkaChatAgent

    KafkaChatAgent.get_instance().publish(event)
