"""Web pages (the room list and a room) and the read-mark endpoint."""

import json
import re
from typing import cast

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import selectors, services
from .models import ROOM_NAME_PATTERN, Room
from .schemas import MAX_DB_ID


def _user_id(request: HttpRequest) -> int:
    return cast(int, request.user.pk)


@login_required
def room_index(request: HttpRequest) -> HttpResponse:
    """The user's rooms with their unread counts, and rooms to join; a room name
    typed in the form opens (and joins) that room."""
    name = request.GET.get("room", "").strip()
    error = ""
    if name and re.fullmatch(ROOM_NAME_PATTERN, name):
        return redirect("chat:room", room=name)
    if name:
        error = "A room name is 1-64 letters, digits, '-', '_' or '.'."
    states = selectors.read_states(user_id=_user_id(request))
    return render(
        request,
        "chat/index.html",
        {
            "rooms": states,
            "others": selectors.rooms_to_join(user_id=_user_id(request)),
            "error": error,
        },
    )


@login_required
def room_detail(request: HttpRequest, room: str) -> HttpResponse:
    """The chat page of one room; opening it makes the user a member."""
    services.membership_join(user_id=_user_id(request), room_name=room)
    others = get_user_model().objects.exclude(username=request.user.get_username())
    users = others.order_by("username")
    return render(
        request,
        "chat/room.html",
        {"room": room, "users": users, "room_pattern": ROOM_NAME_PATTERN},
    )


class _ReadMark(BaseModel):
    model_config = ConfigDict(strict=False, extra="ignore")

    up_to_seq: int = Field(ge=0, le=MAX_DB_ID)


def _error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail}, status=status)


@require_POST
def room_read(request: HttpRequest, room: str) -> JsonResponse:
    """POST /chat/<room>/read/ with `up_to_seq` (form field or JSON body): the user
    has read the room up to there. Answers the room's new read state as JSON."""
    if not request.user.is_authenticated:
        return _error(401, "not_authenticated", "Log in first.")
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
        state = services.room_mark_read(
            user_id=_user_id(request), room_name=room, up_to_seq=mark.up_to_seq
        )
    except Room.DoesNotExist:
        return _error(404, "unknown_room", f"There is no room named {room!r}.")
    return JsonResponse(state._asdict())
