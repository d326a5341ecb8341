"""Template filters of the chat pages (sidebar labels)."""

from typing import Any

from django import template

from chat.models import DM_ROOM_PREFIX

register = template.Library()


@register.filter
def is_dm(room: str) -> bool:
    """Whether a room name is a DM conversation (`dm-<low>-<high>`)."""
    return str(room).startswith(DM_ROOM_PREFIX)


@register.filter
def dict_get(mapping: Any, key: str) -> Any:
    """mapping[key], or "" when the mapping or the key is missing."""
    if not hasattr(mapping, "get"):
        return ""
    return mapping.get(key, "")
