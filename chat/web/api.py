"""JSON endpoints of the pages: read marks, older history and the people search."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, cast

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET, require_POST
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chat import selectors
from chat.models import Room
from chat.schemas import MAX_DB_ID, message_payload
from chat.services.rooms import (
    RoomAccessDenied,
    RoomError,
    room_mark_read,
    room_require_member,
)

MAX_PAGE = 100
MAX_SEARCH_RESULTS = 20


def _error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail}, status=status)


def _logged_in(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
    # A JSON client gets a 401 it can read, not the login page's redirect.
    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        if not request.user.is_authenticated:
            return _error(401, "not_authenticated", "Log in first.")
        return view(request, *args, **kwargs)

    return wrapper


def _user_id(request: HttpRequest) -> int:
    return cast(int, request.user.pk)


class _ReadMark(BaseModel):
    model_config = ConfigDict(strict=False, extra="ignore")

    up_to_seq: int = Field(ge=0, le=MAX_DB_ID)


@require_POST
@_logged_in
def room_read(request: HttpRequest, room: str) -> JsonResponse:
    """POST /chat/<room>/read/ with `up_to_seq` (form field or JSON body): the user
    has read the room up to there. Answers the room's new read state as JSON."""
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body)
        except (ValueError, RecursionError):
            return _error(400, "invalid_json", "The body is not valid JSON.")
    else:
        data = request.POST.dict()
    if not isinstance(data, dict):
        return _error(400, "invalid_message", 'Send {"up_to_seq": <int>}.')
    try:
        mark = _ReadMark.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        return _error(400, "invalid_message", f"up_to_seq: {first['msg']}.")
    try:
        state = room_mark_read(
            user_id=_user_id(request), room_name=room, up_to_seq=mark.up_to_seq
        )
    except Room.DoesNotExist:
        return _error(404, "unknown_room", f"There is no room named {room!r}.")
    except RoomError as exc:  # a private room's outsider, or not a member yet
        return _error(exc.status, exc.code, exc.detail)
    return JsonResponse(state._asdict())


class _Page(BaseModel):
    model_config = ConfigDict(extra="forbid")

    before_seq: int | None = Field(default=None, ge=1, le=MAX_DB_ID)
    after_seq: int | None = Field(default=None, ge=0, le=MAX_DB_ID)
    limit: int = Field(default=settings.CHAT_HISTORY_SIZE, ge=1, le=MAX_PAGE)


@require_GET
@_logged_in
def room_messages(request: HttpRequest, room: str) -> JsonResponse:
    """GET /chat/<room>/messages/?before_seq=n (older, "load older") or ?after_seq=n
    (newer, gap filling), &limit=k (at most 100): messages oldest first, and whether
    more exist in that direction."""
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
    user_id = _user_id(request)
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
@_logged_in
def users_search(request: HttpRequest) -> JsonResponse:
    """GET /api/users/?q=<text>: up to 20 other users whose name contains it, to
    start a direct conversation with."""
    text = request.GET.get("q", "").strip()
    if len(text) > 150:
        return _error(400, "invalid_message", "q: at most 150 characters.")
    found = selectors.users_search(
        text=text, exclude_id=_user_id(request), limit=MAX_SEARCH_RESULTS
    )
    return JsonResponse({"users": [{"id": i, "username": n} for i, n in found]})
