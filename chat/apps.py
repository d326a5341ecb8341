"""App config for chat."""

from django.apps import AppConfig


class ChatConfig(AppConfig):
    """Registers the chat app and its worker signal handlers."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "chat"

    def ready(self) -> None:
        """Connect Celery worker lifecycle signals (producer shutdown)."""
        from . import signals  # noqa: F401
