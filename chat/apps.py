"""App config for chat."""

from django.apps import AppConfig


class ChatConfig(AppConfig):
    """Registers the chat app and its worker signal handlers."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "chat"

    def ready(self) -> None:
        """Connect worker lifecycle signals; check settings read lazily elsewhere."""
        from chat.infra import worker_hooks  # noqa: F401
        from chat.security import (  # noqa: F401
            login_throttle,
            session_end,
            throttles,
            usernames,
        )
        from chat.security.rate_limit import check_settings

        check_settings()  # a bad CHAT_RATE_LIMIT (or frame rate, storage) fails now
        throttles.check_settings()  # and a bad sign-up, login or connect rate
