"""Flood protection: at most CHAT_RATE_LIMIT chat messages per user (moving window)."""

from __future__ import annotations

from functools import cache

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from limits import RateLimitItem, parse, storage, strategies


class MessageRateLimiter:
    """Counts each user's messages in this process (one ASGI server process)."""

    def __init__(self, rate: str) -> None:
        try:
            self.item: RateLimitItem | None = parse(rate) if rate else None
        except ValueError:
            raise ImproperlyConfigured(
                f"CHAT_RATE_LIMIT {rate!r} is not a rate like '30/10seconds' "
                "(empty: no limit)."
            ) from None
        self.limiter = strategies.MovingWindowRateLimiter(storage.MemoryStorage())

    def allow(self, user_id: int) -> bool:
        """Take one message from the user's allowance; False when it is used up."""
        return self.item is None or self.limiter.hit(self.item, "chat", str(user_id))

    def describe(self) -> str:
        """The limit in words, for the error frame."""
        return str(self.item) if self.item else "no limit"


@cache
def message_rate_limiter() -> MessageRateLimiter:
    """The process's limiter, configured from settings on first use."""
    return MessageRateLimiter(settings.CHAT_RATE_LIMIT)
