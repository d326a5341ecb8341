"""What every chatproj socket shares: no frame or event can crash it, it always
cleans up, it ends with the session, and it cannot flood.

- Any unexpected exception while handling a frame, a channel-layer event, the connect
  or the disconnect ends only that connection: the ASGI server logs it once and closes
  the socket with 1011 (accepted first, so the client sees the code).
- Leaving is idempotent and guaranteed: on the normal disconnect, and in a `finally`
  around the consumer (a task cancelled or a crash escaping), the groups are left and
  the subclass releases what it holds (the connections gauge, presence, the per-user
  connection count).
- CHAT_CONNECT_RATE connects per user per window (close 4429 past it, logged once
  per window, nothing in the server's log per attempt);
  CHAT_MAX_CONNECTIONS_PER_USER sockets per user at once (close 4429 past it,
  logged once per PRESENCE_TTL);
  CHAT_FRAME_RATE frames per connection (`rate_limited` past it), and close 4429 after
  CHAT_FLOOD_CLOSE_AFTER refusals for rate in a row.
- A `session.ended` event (chat.security.session_end) closes the socket with 4401,
  and every CHAT_SESSION_CHECK_INTERVAL seconds the socket checks that its user may
  go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from chat.infra import metrics
from chat.realtime.channels_hooks import dispatch_without_connection_check
from chat.realtime.frames import client_id_of
from chat.schemas import ChatValidationError
from chat.security import connection_limits, session_end, throttles
from chat.security.rate_limit import (
    OncePerWindow,
    frame_rate_limiter,
    limited_log,
)
from chat.security.server_log import quiet_socket

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FLOODING = 4429
CLOSE_INTERNAL_ERROR = 1011
GROUP_LEAVE_TIMEOUT = 5.0

_cap_logged = OncePerWindow()  # users refused for the connection cap


class SocketCrashed(Exception):
    """A bug ended one socket; its cause is chained."""


class GuardedConsumer(AsyncJsonWebsocketConsumer):
    """Base of ChatConsumer and NotificationConsumer (see the module docstring)."""

    user_id: int
    accepted = False
    closing = False  # a close was sent: later frames and events are dropped
    released = False
    connection_counted = False
    rate_strikes = 0  # refusals for rate in a row
    keepalive_task: asyncio.Task[None] | None = None
    auth_hash = ""
    session_key: str | None = None
    session_ref: str | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """The consumer, and whatever happens, its groups and counts released."""
        try:
            await self.run(scope, receive, send)
        finally:
            await self._release()

    async def run(self, scope: Any, receive: Any, send: Any) -> None:
        """Channels' consumer loop (ChatConsumer has its own)."""
        await super().__call__(scope, receive, send)

    # --- Crash safety --------------------------------------------------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch; an unexpected exception ends only this socket.

        The socket is closed with 1011 (a socket that fails before it was accepted
        is accepted first, so the client sees 1011 too), and the exception leaves the
        application as SocketCrashed (naming the user, the cause chained), after the
        `finally` of __call__ released everything: the ASGI server logs it once.
        uvicorn would only drop the connection (the client sees 1006); daphne refuses
        an application's 1011 and closes with 1011 itself.
        """
        if self.closing and message.get("type") != "websocket.disconnect":
            return
        try:
            await self._handle(message)
        except StopConsumer:
            raise
        except Exception as exc:
            if type(exc).__name__ == "ClientDisconnected":
                # A send to a client that has left (uvicorn raises this OSError; daphne
                # drops the send): end quietly, as its disconnect would have.
                self.closing = True
                raise StopConsumer from None
            if message.get("type") != "websocket.disconnect":
                with contextlib.suppress(Exception):  # the client may be gone
                    await self.close_with(CLOSE_INTERNAL_ERROR)
            if not self.closing:
                self.closing = True
                metrics.SOCKETS_CLOSED.labels(code=str(CLOSE_INTERNAL_ERROR)).inc()
            raise SocketCrashed(
                f"Socket of {self._who()} closed (1011) after "
                f"{type(exc).__name__} handling {message.get('type')}"
            ) from exc

    async def _handle(self, message: dict[str, Any]) -> None:
        await dispatch_without_connection_check(self, message)

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        """Accept once (a socket refused later must be accepted to see its code)."""
        if not self.accepted:
            self.accepted = True
            await super().accept(subprotocol, headers)

    async def close_with(self, code: int, reason: str | None = None) -> None:
        """Close this socket with `code` and `reason` (once), accepting it first if
        need be."""
        if self.closing:
            return
        self.closing = True
        metrics.SOCKETS_CLOSED.labels(code=str(code)).inc()
        await self.accept()
        await self.close(code=code, reason=reason)

    def _who(self) -> str:
        user_id = getattr(self, "user_id", None)
        return f"user {user_id}" if user_id is not None else "an unauthenticated socket"

    # --- Connect: who, how many ----------------------------------------------------

    async def admit_user(self) -> bool:
        """Refuse anonymous users (4401), users past their connects per window or
        over the connection cap (4429); remember what the session check compares."""
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close_with(CLOSE_UNAUTHENTICATED)
            return False
        self.user_id = user.pk
        if not await sync_to_async(throttles.connects.hit, thread_sensitive=False)(
            str(self.user_id)
        ):
            quiet_socket()  # the throttle logged it once for the window
            await self.close_with(
                CLOSE_FLOODING,
                f"Too many connects: at most {throttles.connects.describe()} per "
                "user; wait before reconnecting.",
            )
            return False
        self.auth_hash = user.get_session_auth_hash()
        if self.scope.get("chat_auth") == "ticket":
            self.session_ref = self.scope.get("chat_session_ref")
        else:
            session = self.scope.get("session")
            self.session_key = getattr(session, "session_key", None)
            self.session_ref = session_end.session_ref(self.session_key)
        count = await sync_to_async(
            connection_limits.connection_open, thread_sensitive=False
        )(user_id=self.user_id, connection=self.channel_name)
        self.connection_counted = True
        cap = settings.CHAT_MAX_CONNECTIONS_PER_USER
        if cap and count > cap:
            if _cap_logged.first(str(self.user_id), settings.PRESENCE_TTL):
                logger.warning(
                    "User %s has %d sockets open; refusing more (at most %d), "
                    "logged once per %g s",
                    self.user_id,
                    count - 1,
                    cap,
                    settings.PRESENCE_TTL,
                )
            quiet_socket()
            await self.close_with(
                CLOSE_FLOODING,
                f"Too many open sockets: at most {cap} per user; close one first.",
            )
            return False
        return True

    def start_keepalive(self) -> None:
        """Refresh this socket's Redis entries and check its session until it ends."""
        self.keepalive_task = asyncio.create_task(self._keepalive())

    async def _keepalive(self) -> None:
        interval = settings.PRESENCE_TTL / 3
        checked = time.monotonic()
        while True:
            try:
                await sync_to_async(self.refresh, thread_sensitive=False)()
            except Exception as exc:  # a hint; the entries expire by themselves
                logger.warning("Socket entries not refreshed: %s", exc)
            check = settings.CHAT_SESSION_CHECK_INTERVAL
            if check and time.monotonic() - checked >= check:
                checked = time.monotonic()
                if not await self._still_signed_in():
                    with contextlib.suppress(Exception):  # the client may be gone
                        await self.session_ended({"session": None})
                    return
            await asyncio.sleep(min(interval, check) if check else interval)

    async def _still_signed_in(self) -> bool:
        try:
            valid: bool = await database_sync_to_async(
                session_end.still_signed_in, thread_sensitive=False
            )(
                user_id=self.user_id,
                auth_hash=self.auth_hash,
                session_key=self.session_key,
            )
        except Exception as exc:  # the database is down: keep the socket for now
            logger.warning("Session of user %s not checked: %s", self.user_id, exc)
            return True
        return valid

    def refresh(self) -> None:
        """Sync, in a thread: this socket is still open (subclasses add theirs)."""
        if self.connection_counted:
            connection_limits.connection_refresh(
                user_id=self.user_id, connection=self.channel_name
            )

    # --- Session end ---------------------------------------------------------------

    async def session_ended(self, event: dict[str, Any]) -> None:
        """The user logged out of this socket's session, changed password or was
        deactivated: close with 4401."""
        session = event.get("session")
        if session is not None and session != self.session_ref:
            return  # another session of the same user logged out
        await self.close_with(CLOSE_UNAUTHENTICATED)

    # --- Frames: rate and refusals -------------------------------------------------

    async def admit_frame(self, message: dict[str, Any]) -> bool:
        """CHAT_FRAME_RATE per connection: False (and `rate_limited`) past it."""
        limiter = frame_rate_limiter()
        if await limiter.allow(self.channel_name):
            return True
        await self.refuse(
            ChatValidationError(
                "rate_limited",
                f"You are sending too fast (at most {limiter.describe()} on one "
                "connection): this was not handled; wait a moment and try again.",
            ),
            message,
            window=limiter.item.get_expiry() if limiter.item else 0,
        )
        return False

    async def refuse(
        self, error: ChatValidationError, message: dict[str, Any], window: float = 0
    ) -> None:
        """Answer a bad frame with an error frame: counted, not logged (a user being
        rate limited is logged once per window); close 4429 for a flood."""
        if error.client_id is None:
            error.client_id = client_id_of(message.get("text"))
        metrics.FRAMES_REFUSED.labels(code=error.code).inc()
        await self.send_json(error.as_frame())
        if error.code != "rate_limited":
            self.rate_strikes = 0
            return
        self.rate_strikes += 1
        limited_log.limited(self.user_id, error.detail, window)
        flood = settings.CHAT_FLOOD_CLOSE_AFTER
        if flood and self.rate_strikes >= flood:
            logger.info(
                "Closing a socket of user %s: %d refusals for rate in a row",
                self.user_id,
                self.rate_strikes,
            )
            await self.close_with(CLOSE_FLOODING)

    # --- Leaving -------------------------------------------------------------------

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Release everything, then the subclass's disconnect()."""
        await self._release()
        try:
            await self.disconnect(message.get("code", 1000))
        except Exception:
            logger.exception("disconnect() of %s failed", self._who())
        raise StopConsumer()

    async def _release(self) -> None:
        """Leave the groups and release what this socket holds (once)."""
        if self.released:
            return
        self.released = True
        self.closing = True
        if self.keepalive_task is not None:
            self.keepalive_task.cancel()
        layer: Any = getattr(self, "channel_layer", None)
        for group in list(getattr(self, "groups", None) or []) if layer else []:
            try:
                await asyncio.wait_for(
                    layer.group_discard(group, self.channel_name), GROUP_LEAVE_TIMEOUT
                )
            except Exception as exc:
                logger.warning("Group %s not left: %s", group, exc)
        try:
            await self.release_resources()
        except Exception as exc:
            logger.warning("Socket of %s not fully released: %s", self._who(), exc)
        if self.connection_counted:
            self.connection_counted = False
            try:
                await sync_to_async(
                    connection_limits.connection_close, thread_sensitive=False
                )(user_id=self.user_id, connection=self.channel_name)
            except Exception as exc:  # the entry expires by itself
                logger.warning("Connection count not released: %s", exc)

    async def release_resources(self) -> None:
        """What a subclass holds beyond its groups (idempotent)."""
