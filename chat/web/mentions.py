"""/mentions/: the user's recent @mentions and direct messages, each linking to the
message in its conversation (the notice on every page shows only the latest)."""

from __future__ import annotations

from typing import cast

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from chat import selectors
from chat.schemas import notification_payload_of

MENTIONS_SHOWN = 50


@require_GET
@login_required
def mentions(request: HttpRequest) -> HttpResponse:
    """The user's latest notifications, newest first, read or not."""
    user_id = cast(int, request.user.pk)
    notifications = selectors.notifications_recent(
        user_id=user_id, limit=MENTIONS_SHOWN
    )
    entries = [
        {
            **notification_payload_of(notification, message),
            "unread": notification.read_at is None,
            "at": message.created_at,
        }
        for notification, message in selectors.notifications_with_messages(
            notifications
        )
    ]
    return render(request, "chat/mentions.html", {"entries": entries})
