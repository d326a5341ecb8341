"""JSON endpoints of the pages: older history and the people search."""

from __future__ import annotations

from typing import cast

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import selectors
from .rooms import RoomAccessDenied, room_require_member
from .schemas import MAX_DB_ID, message_payload

MAX_PAGE = 100
MAX_SEARCH_RESULTS = 20


def _error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail}, status=status)


class _Page(BaseModel):
    model_config = ConfigDict(extra="forbid")

    before_seq: int | None = Field(default=None, ge=1, le=MAX_DB_ID)
    after_seq: int | None = Field(default=None, ge=0, le=MAX_DB_ID)
    limit: int = Field(default=settings.CHAT_HISTORY_SIZE, ge=1, le=MAX_PAGE)


@require_GET
def room_messages(request: HttpRequest, room: str) -> JsonResponse:
    """GET /chat/<room>/messages/?before_seq=n (older, "load older") or ?after_seq=n
    (newer, gap filling), &limit=k (at most 100): messages oldest first, and whether
    more exist in that direction."""
    if not request.user.is_authenticated:
        return _error(401, "not_authenticated", "Log in first.")
    try:
        page = _Page.model_validate(request.GET.dict())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "query"
        return _error(400, "invalid_message", f"{where}: {first['msg']}.")
    if page.before_seq is not None and page.after_seq is not None:
        return _error(400, "invalid_message", "Give before_seq or after_seq, not both.")
    room_obj = selectors.room_get(name=room)
    if room_obj is None:
        return _error(404, "unknown_room", f"There is no room named {room!r}.")
    user_id = cast(int, request.user.pk)
    try:
        room_require_member(user_id=user_id, room=room_obj)
    except RoomAccessDenied as exc:
        return _error(403, exc.code, exc.detail)
    if page.after_seq is not None:
        messages = selectors.room_messages_after(
            room_name=room,
            user_id=user_id,
            after_seq=page.after_seq,
            limit=page.limit + 1,
        )
        has_more = len(messages) > page.limit
        messages = messages[: page.limit]
    else:
        messages, has_more = selectors.room_messages_before(
            room_name=room,
            user_id=user_id,
            before_seq=page.before_seq,
            limit=page.limit,
        )
    return JsonResponse(
        {
            "room": room,
            "messages": [message_payload(m) for m in messages],
            "has_more": has_more,
        }
    )


@require_GET
def users_search(request: HttpRequest) -> JsonResponse:
    """GET /api/users/?q=<text>: up to 20 other users whose name contains it, to
    start a direct conversation with."""
    if not request.user.is_authenticated:
        return _error(401, "not_authenticated", "Log in first.")
    text = request.GET.get("q", "").strip()
    if len(text) > 150:
        return _error(400, "invalid_message", "q: at most 150 characters.")
    found = selectors.users_search(
        text=text, exclude_id=cast(int, request.user.pk), limit=MAX_SEARCH_RESULTS
    )
    return JsonResponse({"users": [{"id": i, "username": n} for i, n in found]})
