"""App config for chat."""

from django.apps import AppConfig


class ChatConfig(AppConfig):
    """Registers the chat app and its worker signal handlers."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "chat"

    def ready(self) -> None:
        """Connect worker lifecycle signals; check settings read lazily elsewhere."""
        from . import signals  # noqa: F401
        from .rate_limit import message_rate_limiter

        message_rate_limiter()  # a bad CHAT_RATE_LIMIT fails at start-up
