"""The room pages' own parts: the directory of public rooms on the home page, the page
of a room that does not exist, and the forms that create, leave and describe rooms
(rules: chat.services.room_lifecycle)."""

from __future__ import annotations

from typing import Any, cast

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from chat import selectors
from chat.models import DM_ROOM_PREFIX, ROOM_TOPIC_MAX_LENGTH, Room
from chat.services.room_lifecycle import (
    membership_leave,
    room_create,
    room_may_set_topic,
    room_set_topic,
)
from chat.services.rooms import RoomError

DIRECTORY_PAGE_SIZE = 20
MAX_FILTER_LENGTH = 64


def _user_id(request: HttpRequest) -> int:
    return cast(int, request.user.pk)


def room_directory(request: HttpRequest) -> dict[str, Any]:
    """The home page's context: the user's rooms and one page of the public rooms
    (`?q=` filters on name and topic, `?page=` pages)."""
    # NUL is no character of a name or topic (and Postgres refuses it in a query)
    text = request.GET.get("q", "").replace("\x00", "").strip()[:MAX_FILTER_LENGTH]
    paginator = Paginator(
        selectors.public_rooms(user_id=_user_id(request), text=text),
        DIRECTORY_PAGE_SIZE,
    )
    return {
        "my_rooms": selectors.rooms_joined(user_id=_user_id(request)),
        "directory": paginator.get_page(request.GET.get("page")),
        "directory_q": text,
        "topic_max": ROOM_TOPIC_MAX_LENGTH,
    }


def room_header(request: HttpRequest, room: Room) -> dict[str, Any]:
    """The room page's header context: its topic, and whether the user may change it
    and leave the room."""
    return {
        "topic": room.topic,
        "topic_max": ROOM_TOPIC_MAX_LENGTH,
        "may_set_topic": room_may_set_topic(user=request.user, room=room),
        "may_leave": not room.name.startswith(DM_ROOM_PREFIX),
    }


def room_missing(request: HttpRequest, name: str) -> HttpResponse:
    """The page of a room nobody created (404): offers to create it (but a dm- name,
    reserved for direct conversations). Writes nothing."""
    return render(
        request,
        "chat/room_missing.html",
        {
            "name": name,
            "topic_max": ROOM_TOPIC_MAX_LENGTH,
            "may_create": not name.startswith(DM_ROOM_PREFIX),  # reserved for DMs
        },
        status=404,
    )


def error_page(request: HttpRequest, error: RoomError) -> HttpResponse:
    """A refused room action, as a page with its HTTP status (400, 403 or 404)."""
    return render(
        request,
        "chat/error.html",
        {"code": error.code, "detail": error.detail, "status": error.status},
        status=error.status,
    )


@login_required
@require_POST
def room_new(request: HttpRequest) -> HttpResponse:
    """POST /rooms/new/ with `name`, `visibility` (`public` or `private`) and an
    optional `topic`: create the room, owned by the user, then open it."""
    name = request.POST.get("name", "").strip()
    visibility = request.POST.get("visibility", "public")
    try:
        if visibility not in ("public", "private"):
            raise RoomError("invalid_visibility", "A room is public or private.")
        room_create(
            name=name,
            created_by_id=_user_id(request),
            is_private=visibility == "private",
            topic=request.POST.get("topic", ""),
        )
    except RoomError as exc:
        return error_page(request, exc)
    return redirect("chat:room", room=name)


@login_required
@require_POST
def room_leave(request: HttpRequest, room: str) -> HttpResponse:
    """POST /chat/<room>/leave/: the user leaves the room, then sees the room list."""
    try:
        membership_leave(user_id=_user_id(request), room_name=room)
    except RoomError as exc:
        return error_page(request, exc)
    return redirect("chat:index")


@login_required
@require_POST
def room_topic(request: HttpRequest, room: str) -> HttpResponse:
    """POST /chat/<room>/topic/ with `topic`: change the room's topic (empty clears
    it), then show the room."""
    try:
        room_set_topic(
            room_name=room,
            topic=request.POST.get("topic", ""),
            by_user_id=_user_id(request),
        )
    except RoomError as exc:
        return error_page(request, exc)
    return redirect("chat:room", room=room)
