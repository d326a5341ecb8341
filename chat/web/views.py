"""Web pages (the room list and a room) and the forms that create private rooms and
manage their members. The JSON endpoints are in chat.web.api."""

import re
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from chat import selectors
from chat.models import DM_ROOM_PREFIX, ROOM_NAME_PATTERN, dm_room_name
from chat.services import room_lifecycle
from chat.services.room_lifecycle import room_member_add
from chat.services.rooms import (
    RoomError,
    RoomNotFound,
    dm_other,
    membership_join,
    room_remove_member,
)
from chat.web.room_views import error_page, room_directory, room_header, room_missing


def _user_id(request: HttpRequest) -> int:
    return cast(int, request.user.pk)


def _sidebar(request: HttpRequest) -> dict[str, Any]:
    """The sidebar's context: the user's rooms and DM conversations with unread
    counts (kept live by /ws/notifications/), and each DM's other user."""
    states = selectors.read_states(user_id=_user_id(request))
    others = {
        s.room: other
        for s in states
        if (other := dm_other(s.room, _user_id(request))) is not None
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
        return error_page(
            request,
            RoomNotFound("unknown_user", f"There is no user {username!r}."),
        )
    return redirect("chat:room", room=dm_room_name(_user_id(request), other.pk))


@login_required
def room_index(request: HttpRequest) -> HttpResponse:
    """The home page: the user's rooms, the public rooms (filtered by `q`, paged),
    and the form that creates a room; a room name given as `room` opens that room."""
    name = request.GET.get("room", "").strip()
    error = ""
    if name and re.fullmatch(ROOM_NAME_PATTERN, name):
        return redirect("chat:room", room=name)
    if name:
        error = "A room name is 1-64 letters, digits, '-', '_' or '.'."
    sidebar = _sidebar(request)
    return render(
        request,
        "chat/index.html",
        {
            **sidebar,
            **room_directory(request),
            "rooms": sidebar["sidebar_rooms"],
            "private_rooms": selectors.private_room_names(user_id=_user_id(request)),
            "error": error,
        },
    )


@login_required
def room_detail(request: HttpRequest, room: str) -> HttpResponse:
    """The chat page of one room; opening a public room makes the user a member, a
    private one is shown to its members only (403 for anyone else)."""
    try:
        membership_join(user_id=_user_id(request), room_name=room)
    except RoomNotFound as exc:
        if exc.code == "unknown_room" and not room.startswith(DM_ROOM_PREFIX):
            return room_missing(request, room)
        return error_page(request, exc)  # a dm- name says which names exist
    except RoomError as exc:
        return error_page(request, exc)
    room_obj = selectors.room_get(name=room)
    assert room_obj is not None  # membership_join found or created it
    sidebar = _sidebar(request)
    return render(
        request,
        "chat/room.html",
        {
            **sidebar,
            # where the reader left off: the page draws a "New messages" line after it
            "last_read_seq": next(
                (s.last_read_seq for s in sidebar["sidebar_rooms"] if s.room == room), 0
            ),
            "max_length": settings.CHAT_MAX_MESSAGE_LENGTH,
            "live": {  # the page's heartbeat and typing timings (room.js)
                "heartbeat_interval": settings.CHAT_HEARTBEAT_INTERVAL,
                "heartbeat_timeout": settings.CHAT_HEARTBEAT_TIMEOUT,
                "typing_interval": settings.CHAT_TYPING_INTERVAL,
            },
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
            **room_header(request, room_obj),
        },
    )


@login_required
@require_POST
def room_create_private(request: HttpRequest) -> HttpResponse:
    """POST /rooms/private/ with `name`: create a private room owned by the user,
    then open it."""
    name = request.POST.get("name", "").strip()
    try:
        room_lifecycle.room_create_private(name=name, created_by_id=_user_id(request))
    except RoomError as exc:
        return error_page(request, exc)
    return redirect("chat:room", room=name)


def _username(request: HttpRequest) -> str:
    username = request.POST.get("username", "").strip()
    if not username:
        raise RoomError("invalid_message", "Give the member's username.")
    return username


@login_required
@require_POST
def room_member_invite(request: HttpRequest, room: str) -> HttpResponse:
    """POST /chat/<room>/members/ with `username`: add a user to the room (a
    private room: its owner or staff only; a public one: any member)."""
    try:
        room_member_add(
            room_name=room, username=_username(request), by_user_id=_user_id(request)
        )
    except RoomError as exc:
        return error_page(request, exc)
    return redirect("chat:room", room=room)


@login_required
@require_POST
def room_member_remove(request: HttpRequest, room: str) -> HttpResponse:
    """POST /chat/<room>/members/remove/ with `username`: the owner (or staff)
    removes a member from a private room; the member's sockets to it close."""
    try:
        room_remove_member(
            room_name=room, username=_username(request), by_user_id=_user_id(request)
        )
    except RoomError as exc:
        return error_page(request, exc)
    return redirect("chat:room", room=room)
