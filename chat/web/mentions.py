"""/mentions/: the user's recent @mentions and direct messages, each linking to the
message in its conversation (the notice on every page shows only the latest)."""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from chat import selectors
from chat.schemas import notification_payload

MENTIONS_SHOWN = 50


@require_GET
@login_required
def mentions(request: HttpRequest) -> HttpResponse:
    """The user's latest notifications, newest first, read or not."""
    user_id = cast(int, request.user.pk)
    notifications = selectors.notifications_recent(
        user_id=user_id, limit=MENTIONS_SHOWN
    )
    messages = selectors.messages_by_id(
        message_ids=[n.message_id for n in notifications]
    )
    entries: list[dict[str, Any]] = []
    for notification in notifications:
        message = messages.get(str(notification.message_id))
        if message is None:  # deleted since
            continue
        entry = notification_payload(
            kind=notification.kind,
            message_id=notification.message_id,
            room=notification.room.name,
            seq=notification.seq,
            sender_id=message.sender_id,
            sender=message.sender.get_username(),
            content=message.content,
            created_at=message.created_at,
        )
        entries.append(
            {**entry, "unread": notification.read_at is None, "at": message.created_at}
        )
    return render(request, "chat/mentions.html", {"entries": entries})
