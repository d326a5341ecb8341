"""Throttles of costly or abusable actions, by address or user: sign-ups per address
(SIGNUP_RATE_PER_ADDRESS), failed logins per address across usernames
(LOGIN_FAILURES_PER_ADDRESS), socket connects per user (CHAT_CONNECT_RATE).

Each is a moving window of the `limits` library on the shared storage of the message
rate limit (CHAT_RATE_LIMIT_STORAGE, by default the shared Redis), so it holds across
web replicas; if the storage does not answer, each process counts in its own memory
until it does. Being over a limit is logged once per key per window (per process),
never per attempt.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import cache

from django.conf import settings
from limits import RateLimitItem, strategies
from limits.storage import MemoryStorage, Storage, storage_from_string

from chat.security.rate_limit import (
    STORAGE_ERRORS,
    OncePerWindow,
    parse_rate,
    storage_uri,
)

logger = logging.getLogger(__name__)


@cache
def _shared_storage(uri: str) -> Storage:
    sync_uri = uri.removeprefix("async+")
    options = {}
    if sync_uri.startswith(("redis", "valkey")):
        options = {"socket_timeout": 2, "socket_connect_timeout": 2}
    storage = storage_from_string(sync_uri, key_prefix="chat:throttle", **options)
    assert isinstance(storage, Storage)
    return storage


_fallback = strategies.MovingWindowRateLimiter(MemoryStorage())
_fallback_logged = [0.0]


@dataclass
class Throttle:
    """One limit: `setting` names a rate like '10/hour' (empty: no limit)."""

    setting: str
    what: str  # in words, for the log: "sign-ups from address %s"
    logged: OncePerWindow = field(default_factory=OncePerWindow)

    @property
    def item(self) -> RateLimitItem | None:
        """The parsed rate of the setting (None: no limit)."""
        return _parsed(self.setting, getattr(settings, self.setting))

    def _call(self, method: str, key: str) -> bool:
        item = self.item
        if item is None:
            return True
        try:
            limiter = strategies.MovingWindowRateLimiter(_shared_storage(storage_uri()))
            return bool(getattr(limiter, method)(item, self.setting, key))
        except STORAGE_ERRORS as exc:
            now = time.monotonic()
            if now - _fallback_logged[0] > 60:  # one line a minute
                _fallback_logged[0] = now
                logger.warning(
                    "Throttle storage unavailable (%s); counting in this process", exc
                )
            return bool(getattr(_fallback, method)(item, self.setting, key))

    def allows(self, key: str) -> bool:
        """Whether one more is allowed for `key` now (takes nothing); logs the
        refusal once per window."""
        allowed = self._call("test", key)
        if not allowed:
            self._log_once(key)
        return allowed

    def hit(self, key: str) -> bool:
        """Count one for `key`; False (logged once per window) if it was over."""
        allowed = self._call("hit", key)
        if not allowed:
            self._log_once(key)
        return allowed

    def window(self) -> int:
        """The window's length in seconds."""
        item = self.item
        return item.get_expiry() if item else 0

    def describe(self) -> str:
        """The limit in words ('10 per 1 hour')."""
        return str(self.item) if self.item else "no limit"

    def _log_once(self, key: str) -> None:
        window = self.window()
        if not self.logged.first(key, window):
            return
        logger.warning(
            "Throttled: %s (%s); further refusals in the next %d s are not logged",
            self.what % key,
            self.describe(),
            window,
        )


@cache
def _parsed(name: str, rate: str) -> RateLimitItem | None:
    return parse_rate(name, rate)


signups = Throttle("SIGNUP_RATE_PER_ADDRESS", "sign-ups from address %s")
login_failures = Throttle(
    "LOGIN_FAILURES_PER_ADDRESS", "failed logins from address %s, any usernames"
)
connects = Throttle("CHAT_CONNECT_RATE", "socket connects of user %s")


def throttles_reset() -> None:
    """Forget every throttle's counts: the shared storage's and this process's."""
    _fallback.storage.reset()
    try:
        _shared_storage(storage_uri()).reset()
    except STORAGE_ERRORS as exc:
        logger.warning("Throttle storage not reset: %s", exc)


def check_settings() -> None:
    """Fail at start-up on a throttle rate that is not a rate."""
    for throttle in (signups, login_failures, connects):
        parse_rate(throttle.setting, getattr(settings, throttle.setting))
