"""Web pages (the room list and a room), the read-mark endpoint, and the forms that
create private rooms and manage their members."""

import json
import re
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import selectors, services
from .models import DM_ROOM_PREFIX, ROOM_NAME_PATTERN, Room, dm_room_name
from .rooms import RoomNotFound, dm_pair
from .schemas import MAX_DB_ID


def _user_id(request: HttpRequest) -> int:
    return cast(int, request.user.pk)


def _sidebar(request: HttpRequest) -> dict[str, Any]:
    """The sidebar's context: the user's rooms and DM conversations with unread
    counts (kept live by /ws/notifications/), and each DM's other user."""
    states = selectors.read_states(user_id=_user_id(request))
    pairs = {s.room: dm_pair(s.room) for s in states}
    others = {
        room: pair[1] if pair[0] == _user_id(request) else pair[0]
        for room, pair in pairs.items()
        if pair is not None
    }
    names = selectors.usernames(user_ids=others.values())
    return {
        "sidebar_rooms": states,
        "dm_names": {room: names.get(user, "?") for room, user in others.items()},
    }


@login_required
def dm_open(request: HttpRequest, username: str) -> HttpResponse:
    """/dm/<username>/: the conversation with that user (created on first use)."""
    other = get_user_model().objects.filter(username=username, is_active=True).first()
    if other is None:
        return _error_page(
            request,
            RoomNotFound("unknown_user", f"There is no user {username!r}."),
        )
    return redirect("chat:room", room=dm_room_name(_user_id(request), other.pk))


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
            **_sidebar(request),
            "rooms": states,
            "private_rooms": selectors.private_room_names(user_id=_user_id(request)),
            "others": selectors.rooms_to_join(user_id=_user_id(request)),
            "error": error,
        },
    )


@login_required
def room_detail(request: HttpRequest, room: str) -> HttpResponse:
    """The chat page of one room; opening a public room makes the user a member, a
    private one is shown to its members only (403 for anyone else)."""
    try:
        services.membership_join(user_id=_user_id(request), room_name=room)
    except services.RoomError as exc:
        return _error_page(request, exc)
    room_obj = selectors.room_get(name=room)
    assert room_obj is not None  # membership_join created it
    return render(
        request,
        "chat/room.html",
        {
            **_sidebar(request),
            "max_length": settings.CHAT_MAX_MESSAGE_LENGTH,
            "room": room,
            "room_pattern": ROOM_NAME_PATTERN,
            "is_private": room_obj.is_private,
            "is_dm": room.startswith(DM_ROOM_PREFIX),
            "members": (
                selectors.room_members(room=room_obj) if room_obj.is_private else []
            ),
            "may_manage": room_obj.is_private
            and not room.startswith(DM_ROOM_PREFIX)
            and selectors.room_may_manage(user=request.user, room=room_obj),
        },
    )


def _error_page(request: HttpRequest, error: services.RoomError) -> HttpResponse:
    """A refused room action, as a page with its HTTP status (400, 403 or 404)."""
    return render(
        request,
        "chat/error.html",
        {"code": error.code, "detail": error.detail, "status": error.status},
        status=error.status,
    )


@login_required
@require_POST
def room_create_private(request: HttpRequest) -> HttpResponse:
    """POST /rooms/private/ with `name`: create a private room owned by the user,
    then open it."""
    name = request.POST.get("name", "").strip()
    try:
        services.room_create_private(name=name, created_by_id=_user_id(request))
    except services.RoomError as exc:
        return _error_page(request, exc)
    return redirect("chat:room", room=name)


def _username(request: HttpRequest) -> str:
    username = request.POST.get("username", "").strip()
    if not username:
        raise services.RoomError("invalid_message", "Give the member's username.")
    return username


@login_required
@require_POST
def room_member_invite(request: HttpRequest, room: str) -> HttpResponse:
    """POST /chat/<room>/members/ with `username`: the owner (or staff) invites a
    user into a private room."""
    try:
        services.room_invite(
            room_name=room, username=_username(request), by_user_id=_user_id(request)
        )
    except services.RoomError as exc:
        return _error_page(request, exc)
    return redirect("chat:room", room=room)


@login_required
@require_POST
def room_member_remove(request: HttpRequest, room: str) -> HttpResponse:
    """POST /chat/<room>/members/remove/ with `username`: the owner (or staff)
    removes a member from a private room; the member's sockets to it close."""
    try:
        services.room_remove_member(
            room_name=room, username=_username(request), by_user_id=_user_id(request)
        )
    except services.RoomError as exc:
        return _error_page(request, exc)
    return redirect("chat:room", room=room)


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
    except services.RoomAccessDenied as exc:
        return _error(403, exc.code, exc.detail)
    return JsonResponse(state._asdict())
