"""Sockets end with the session: logout, a password change, a deactivated user.

Django's signals say when a session ends, in whichever process ends it (web, worker,
`manage.py`); on commit, a `session.ended` event goes to the user's personal groups
(chat and notifications), sent before the commit returns, and every socket it concerns
closes with 4401. Logout ends the sockets of that session (a ticket socket belongs to
the session that asked for its ticket); a password change or `is_active=False` ends
all of the user's sockets, as Django ends all of their sessions. Sessions that end
some other way (flushed, expired, deleted by an admin) are caught by each socket's
periodic check (CHAT_SESSION_CHECK_INTERVAL).
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import (
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
)
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver
from django.utils.crypto import constant_time_compare, salted_hmac

from chat.services.broadcast import notify_user_group, send_events, user_group

logger = logging.getLogger(__name__)

SESSION_ENDED = "session.ended"


def session_ref(session_key: str | None) -> str | None:
    """A name for a session that reveals nothing of its key (safe in events and
    tickets, which are signed but readable)."""
    if not session_key:
        return None
    return salted_hmac("chat.session-ref", session_key).hexdigest()[:32]


# How long the commit waits for Redis to take a session.ended event.
SEND_WAIT = 2.0


def end_sockets(*, user_id: int, session: str | None = None) -> None:
    """After the commit, close the user's sockets (of one session, or all: None).

    The event is sent before the commit returns (waiting for Redis at most SEND_WAIT
    seconds), not in the background: a short process (`manage.py changepassword`,
    `manage.py shell`) may exit right after its save, and its sockets must still
    close at once, not at their next periodic check."""
    event = {"type": SESSION_ENDED, "session": session}

    def send() -> None:
        send_events(
            ((group, event) for group in _personal_groups(user_id)), wait=SEND_WAIT
        )

    transaction.on_commit(send, robust=True)


def _personal_groups(user_id: int) -> list[str]:
    return [user_group(user_id), notify_user_group(user_id)]


@receiver(user_logged_out, dispatch_uid="chat.security.session_end.logged_out")
def _logged_out(sender: Any, request: Any, user: Any, **_: Any) -> None:
    if user is None:  # logout of an anonymous request
        return
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None)
    end_sockets(user_id=user.pk, session=session_ref(key))


@receiver(pre_save, dispatch_uid="chat.security.session_end.pre_save")
def _remember_credentials(
    sender: Any, instance: Any, update_fields: Any = None, **_: Any
) -> None:
    if sender is not get_user_model() or instance.pk is None:
        return
    if update_fields is not None and not {"password", "is_active"} & set(update_fields):
        return  # e.g. login's last_login update: nothing that ends sessions
    before = (
        sender._default_manager.filter(pk=instance.pk)
        .values("password", "is_active")
        .first()
    )
    instance._chat_credentials_before = before


@receiver(post_save, dispatch_uid="chat.security.session_end.post_save")
def _credentials_changed(sender: Any, instance: Any, created: bool, **_: Any) -> None:
    if sender is not get_user_model() or created:
        return
    before = instance.__dict__.pop("_chat_credentials_before", None)
    if before is None:
        return
    if before["password"] != instance.password or (
        before["is_active"] and not instance.is_active
    ):
        end_sockets(user_id=instance.pk)


def still_signed_in(*, user_id: int, auth_hash: str, session_key: str | None) -> bool:
    """Whether a socket's user may go on: active, same password, and (for a session
    socket) its session still exists and still belongs to the user."""
    user = get_user_model()._default_manager.filter(pk=user_id).first()
    if user is None or not user.is_active:
        return False
    if not constant_time_compare(auth_hash, user.get_session_auth_hash()):
        return False
    if session_key is None:  # a ticket socket: the ticket was checked at connect
        return True
    engine = import_module(settings.SESSION_ENGINE)
    data = engine.SessionStore(session_key).load()
    return (
        str(data.get(SESSION_KEY)) == str(user_id)
        and BACKEND_SESSION_KEY in data
        and constant_time_compare(data.get(HASH_SESSION_KEY, ""), auth_hash)
    )
