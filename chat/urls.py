"""Chat page routes."""

from django.urls import re_path

from . import views

ROOM = r"(?P<room>[A-Za-z0-9_.\-]{1,64})"

app_name = "chat"
urlpatterns = [
    re_path(r"^$", views.room_index, name="index"),
    re_path(rf"^chat/{ROOM}/$", views.room_detail, name="room"),
    re_path(rf"^chat/{ROOM}/read/$", views.room_read, name="room-read"),
]
