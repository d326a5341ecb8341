"""Chat page routes."""

from django.urls import re_path

from . import views

app_name = "chat"
urlpatterns = [
    re_path(r"^$", views.room_index, name="index"),
    re_path(r"^chat/(?P<room>[A-Za-z0-9_.\-]{1,64})/$", views.room_detail, name="room"),
]
