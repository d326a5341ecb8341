"""WebSocket tickets: how a non-browser client authenticates a socket.

A logged-in session asks `POST /api/ws-ticket/` (session cookie + CSRF token, like
any form) and gets a ticket: a TimestampSigner-signed object naming the user, a nonce
and the session that asked. It lives WS_TICKET_TTL seconds and opens one socket:
`/ws/chat/<room>/?ticket=...` or `/ws/notifications/?ticket=...`. The first use
takes its nonce in Redis (SET NX), so a replay is refused; so are expired, forged and
malformed tickets, and tickets of a user who has since changed password or been
deactivated: the socket is accepted and closed with 4401, like an anonymous one.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.core import signing
from django.http import HttpRequest, JsonResponse
from django.utils.crypto import constant_time_compare, salted_hmac
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from chat.infra.clients import redis_client
from chat.security.origins import query_params
from chat.security.session_end import session_ref

logger = logging.getLogger(__name__)

SALT = "chat.ws-ticket"
MAX_TICKET_LENGTH = 512  # a real one is about 150 characters


def _signer() -> signing.TimestampSigner:
    return signing.TimestampSigner(salt=SALT)


def _credential_ref(user: Any) -> str:
    # Changes with the password (Django's session auth hash), reveals nothing of it.
    return salted_hmac(SALT, user.get_session_auth_hash()).hexdigest()[:32]


def ticket_issue(*, user: Any, session_key: str | None) -> str:
    """A signed, single-use ticket for one socket of `user`."""
    return _signer().sign_object(
        {
            "u": user.pk,
            "n": secrets.token_urlsafe(16),
            "s": session_ref(session_key),
            "c": _credential_ref(user),
        },
        compress=False,
    )


def ticket_redeem(ticket: str) -> tuple[Any, str | None] | None:
    """(user, session ref) of a valid ticket, used up now; None if it is expired,
    forged, already used, or its user may no longer sign in."""
    if len(ticket) > MAX_TICKET_LENGTH:
        return None
    try:
        data = _signer().unsign_object(ticket, max_age=settings.WS_TICKET_TTL)
    except (signing.BadSignature, ValueError):  # SignatureExpired is a BadSignature
        return None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("n"), str)
        or not isinstance(data.get("u"), int)
    ):
        return None
    user = get_user_model()._default_manager.filter(pk=data["u"]).first()
    if user is None or not user.is_active:
        return None
    if not constant_time_compare(str(data.get("c")), _credential_ref(user)):
        return None  # the password changed since the ticket was issued
    first_use = redis_client().set(
        f"chat:ws-ticket:{data['n']}", 1, nx=True, ex=int(settings.WS_TICKET_TTL) + 1
    )
    if not first_use:
        return None
    return user, data.get("s")


@never_cache
@require_POST
def ws_ticket(request: HttpRequest) -> JsonResponse:
    """POST /api/ws-ticket/: a ticket for one socket of the logged-in user."""
    if not request.user.is_authenticated:
        return JsonResponse(
            {"error": "not_authenticated", "detail": "Log in first."}, status=401
        )
    ticket = ticket_issue(user=request.user, session_key=request.session.session_key)
    return JsonResponse({"ticket": ticket, "expires_in": settings.WS_TICKET_TTL})


class TicketAuthMiddleware:
    """ASGI middleware inside channels' AuthMiddlewareStack: a socket URL with
    `?ticket=` is authenticated by that ticket alone (a bad ticket makes it anonymous,
    whatever cookie it carries)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        """Replace scope["user"] when the socket carries a ticket."""
        tickets = query_params(scope).get("ticket")
        if tickets is None:
            return await self.application(scope, receive, send)
        redeemed = None
        if len(tickets) == 1:
            redeemed = await database_sync_to_async(
                ticket_redeem, thread_sensitive=False
            )(tickets[0])
        scope = dict(scope)
        if redeemed is None:
            scope["user"] = AnonymousUser()
            scope["chat_auth"] = "ticket-refused"
        else:
            scope["user"], scope["chat_session_ref"] = redeemed
            scope["chat_auth"] = "ticket"
        return await self.application(scope, receive, send)
