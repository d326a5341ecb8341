"""Flood protection with the `limits` library.

- CHAT_RATE_LIMIT: chat messages per user, counted on the shared Redis (moving
  window), so the limit holds across every web replica. If Redis does not answer, each
  process counts in its own memory until it does (chatting needs Redis anyway: the
  channel layer and the Celery broker live there).
- CHAT_FRAME_RATE: frames of any kind per connection, counted in the process that
  holds the connection (a connection lives in one process).
- At most one log line per user per window says that the user is being limited; every
  refusal is counted in `chat_frames_refused_total{code="rate_limited"}`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from functools import cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from limits import RateLimitItem, parse
from limits.aio import strategies
from limits.aio.storage import MemoryStorage, Storage
from limits.errors import ConfigurationError, StorageError
from limits.storage import storage_from_string
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

STORAGE_ERRORS = (RedisError, StorageError, OSError, asyncio.TimeoutError)


def parse_rate(name: str, rate: str) -> RateLimitItem | None:
    """A rate setting like '30/10seconds' (empty: None, no limit)."""
    try:
        return parse(rate) if rate else None
    except ValueError:
        raise ImproperlyConfigured(
            f"{name} {rate!r} is not a rate like '30/10seconds' (empty: no limit)."
        ) from None


class MessageRateLimiter:
    """Counts each user's messages in `storage_uri` (an async `limits` storage URI;
    the shared Redis in production, `async+memory://` for one process)."""

    def __init__(self, rate: str, storage_uri: str = "async+memory://") -> None:
        self.item = parse_rate("CHAT_RATE_LIMIT", rate)
        self.storage_uri = storage_uri
        # redis.asyncio clients belong to one event loop: one limiter per loop (a server
        # has one; in-process tests make one per test).
        self._limiters: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, strategies.MovingWindowRateLimiter
        ] = weakref.WeakKeyDictionary()
        self._fallback: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, strategies.MovingWindowRateLimiter
        ] = weakref.WeakKeyDictionary()
        self._fallback_logged = 0.0

    def _limiter(
        self, cache: weakref.WeakKeyDictionary, uri: str
    ) -> strategies.MovingWindowRateLimiter:
        loop = asyncio.get_running_loop()
        limiter = cache.get(loop)
        if limiter is None:
            limiter = cache[loop] = strategies.MovingWindowRateLimiter(_storage(uri))
        return limiter

    async def allow(self, user_id: int) -> bool:
        """Take one message from the user's allowance; False when it is used up."""
        if self.item is None:
            return True
        try:
            return await self._limiter(self._limiters, self.storage_uri).hit(
                self.item, "chat", str(user_id)
            )
        except STORAGE_ERRORS as exc:
            now = time.monotonic()
            if now - self._fallback_logged > 60:  # one line a minute, not per frame
                self._fallback_logged = now
                logger.warning(
                    "Rate limit storage unavailable (%s); counting in this process",
                    exc,
                )
            return await self._limiter(self._fallback, "async+memory://").hit(
                self.item, "chat", str(user_id)
            )

    def describe(self) -> str:
        """The limit in words, for the error frame."""
        return str(self.item) if self.item else "no limit"


def _storage(uri: str) -> Storage:
    options: dict[str, Any] = {}
    if uri.startswith(("async+redis", "async+valkey")):
        # redis-py's asyncio client (already installed); bounded waits, so a hung
        # Redis costs a frame two seconds, not the connection.
        options = {
            "implementation": "redispy",
            "key_prefix": "chat:limits",
            "socket_timeout": 2,
            "socket_connect_timeout": 2,
        }
    storage = storage_from_string(uri, **options)
    if not isinstance(storage, Storage):
        raise ImproperlyConfigured(
            f"CHAT_RATE_LIMIT_STORAGE {uri!r} is a synchronous storage: prefix it "
            "with 'async+' (e.g. async+redis://host:6379/0, async+memory://)."
        )
    return storage


def storage_uri() -> str:
    """CHAT_RATE_LIMIT_STORAGE, or the shared Redis of REDIS_URL by default."""
    uri: str = settings.CHAT_RATE_LIMIT_STORAGE or f"async+{settings.REDIS_URL}"
    return uri


@cache
def _limiter_for(rate: str, uri: str) -> MessageRateLimiter:
    return MessageRateLimiter(rate, uri)


def message_rate_limiter() -> MessageRateLimiter:
    """The process's limiter, configured from settings on first use (the storage URI
    is read then, so tests that move REDIS_URL get a limiter on their server)."""
    return _limiter_for(settings.CHAT_RATE_LIMIT, storage_uri())


def check_settings() -> None:
    """Fail at start-up on a rate or storage setting that cannot work."""
    parse_rate("CHAT_RATE_LIMIT", settings.CHAT_RATE_LIMIT)
    parse_rate("CHAT_FRAME_RATE", settings.CHAT_FRAME_RATE)
    try:
        _storage(storage_uri())
    except ConfigurationError as exc:
        raise ImproperlyConfigured(
            f"CHAT_RATE_LIMIT_STORAGE {storage_uri()!r} is not an async `limits` "
            f"storage URI (e.g. async+redis://host:6379/0, async+memory://): {exc}"
        ) from None


class FrameRateLimiter:
    """CHAT_FRAME_RATE: frames per connection, counted in this process's memory."""

    def __init__(self, rate: str) -> None:
        self.item = parse_rate("CHAT_FRAME_RATE", rate)
        self.storage = MemoryStorage()
        self.limiter = strategies.MovingWindowRateLimiter(self.storage)

    async def allow(self, connection: str) -> bool:
        """Take one frame from the connection's allowance."""
        if self.item is None:
            return True
        return await self.limiter.hit(self.item, "frames", connection)

    def describe(self) -> str:
        """The limit in words, for the error frame."""
        return str(self.item) if self.item else "no limit"


_frame_limiters: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, FrameRateLimiter
] = weakref.WeakKeyDictionary()


def frame_rate_limiter() -> FrameRateLimiter:
    """This event loop's frame limiter (its memory storage's expiry is per loop)."""
    loop = asyncio.get_running_loop()
    limiter = _frame_limiters.get(loop)
    if limiter is None:
        limiter = _frame_limiters[loop] = FrameRateLimiter(settings.CHAT_FRAME_RATE)
    return limiter


class OncePerWindow:
    """Says whether to log about a key: once per key per window (per process)."""

    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def first(self, key: str, window: float) -> bool:
        """True if nothing was logged about `key` in the last `window` seconds."""
        now = time.monotonic()
        if now - self.logged.get(key, -window - 1) <= window:
            return False
        if len(self.logged) > 10_000:  # forget keys whose window is over
            self.logged = {k: t for k, t in self.logged.items() if now - t <= window}
        self.logged[key] = now
        return True


class LimitedLog:
    """Says "user N is being limited" at most once per user per window (per process),
    so a flood costs a few log lines, not one per refused frame."""

    def __init__(self) -> None:
        self.logged = OncePerWindow()

    def limited(self, user_id: int, what: str, window: float) -> None:
        """Log that `user_id` is limited, unless it was logged in the last window."""
        if not self.logged.first(str(user_id), window):
            return
        logger.warning(
            "User %s is being rate limited (%s); further refusals in the next %g s "
            "are only counted (chat_frames_refused_total)",
            user_id,
            what,
            window,
        )


limited_log = LimitedLog()
