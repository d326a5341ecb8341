"""Web pages: the room list and a room."""

import re

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from . import selectors
from .models import ROOM_NAME_PATTERN


@login_required
def room_index(request: HttpRequest) -> HttpResponse:
    """List rooms; a room name typed in the form opens that room."""
    name = request.GET.get("room", "").strip()
    error = ""
    if name and re.fullmatch(ROOM_NAME_PATTERN, name):
        return redirect("chat:room", room=name)
    if name:
        error = "A room name is 1-64 letters, digits, '-', '_' or '.'."
    return render(
        request, "chat/index.html", {"rooms": selectors.room_list(), "error": error}
    )


@login_required
def room_detail(request: HttpRequest, room: str) -> HttpResponse:
    """The chat page of one room (the room is created with its first message)."""
    others = get_user_model().objects.exclude(username=request.user.get_username())
    users = others.order_by("username")
    return render(
        request,
        "chat/room.html",
        {"room": room, "users": users, "room_pattern": ROOM_NAME_PATTERN},
    )
