"""Chat page routes."""

from django.urls import re_path

from chat.web import accounts, api, members, mentions, room_views, views

ROOM = r"(?P<room>[A-Za-z0-9_.\-]{1,64})"

app_name = "chat"
urlpatterns = [
    re_path(r"^$", views.room_index, name="index"),
    re_path(rf"^chat/{ROOM}/$", views.room_detail, name="room"),
    re_path(rf"^chat/{ROOM}/read/$", api.room_read, name="room-read"),
    re_path(rf"^chat/{ROOM}/messages/$", api.room_messages, name="room-messages"),
    re_path(r"^dm/(?P<username>[\w.@+-]{1,150})/$", views.dm_open, name="dm"),
    re_path(r"^api/users/$", api.users_search, name="users-search"),
    re_path(
        rf"^chat/{ROOM}/members\.json$", members.room_member_list, name="room-members"
    ),
    re_path(r"^mentions/$", mentions.mentions, name="mentions"),
    re_path(r"^accounts/signup/$", accounts.signup, name="signup"),
    re_path(r"^rooms/private/$", views.room_create_private, name="room-create-private"),
    re_path(r"^rooms/new/$", room_views.room_new, name="room-new"),
    re_path(rf"^chat/{ROOM}/leave/$", room_views.room_leave, name="room-leave"),
    re_path(rf"^chat/{ROOM}/topic/$", room_views.room_topic, name="room-topic"),
    re_path(rf"^chat/{ROOM}/members/$", views.room_member_invite, name="room-invite"),
    re_path(
        rf"^chat/{ROOM}/members/remove/$",
        views.room_member_remove,
        name="room-remove-member",
    ),
]
