"""GET /chat/<room>/members.json: the usernames of a room's members, for the message
box's @-autocomplete; members of the room only."""

from __future__ import annotations

from typing import cast

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from chat import selectors
from chat.web.api import _error, _logged_in

MAX_MEMBERS = 1000


@require_GET
@_logged_in
def room_member_list(request: HttpRequest, room: str) -> JsonResponse:
    """`{"room", "members": [username…]}` by name (at most 1000): 403 `forbidden`
    unless the user is a member, 404 `unknown_room`."""
    room_obj = selectors.room_get(name=room)
    if room_obj is None:
        return _error(404, "unknown_room", f"There is no room named {room!r}.")
    user_id = cast(int, request.user.pk)
    if not selectors.room_is_member(user_id=user_id, room=room_obj):
        return _error(
            403, "forbidden", f"Only members of {room!r} may see who is in it."
        )
    names = selectors.room_member_names(room=room_obj, limit=MAX_MEMBERS)
    return JsonResponse({"room": room, "members": names})
