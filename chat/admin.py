"""Admin: rooms and messages with their delivery status."""

from django.contrib import admin

from chat.models import Message, Room


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    """Rooms."""

    list_display = ("name", "next_seq", "created_at")


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    """Messages, filterable by delivery status."""

    list_display = (
        "message_id",
        "room",
        "seq",
        "sender",
        "receiver",
        "status",
        "attempts",
    )
    list_filter = ("status",)
    search_fields = ("message_id", "content")
