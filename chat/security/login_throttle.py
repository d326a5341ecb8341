"""Throttled account forms: failed logins per address across usernames, and the
429 page that a throttled login or sign-up shows.

django-axes locks one username from one address (LOGIN_FAILURE_LIMIT); a password
tried across many usernames from one address never trips it. So every failed login
is also counted per address (LOGIN_FAILURES_PER_ADDRESS, chat.security.throttles),
whatever the username, and a successful login does not reset that count; past it, the
login form answers 429 for every username from that address until the window moves
on. The address is the request's REMOTE_ADDR (behind a proxy, run uvicorn with
--proxy-headers, docs/security.md).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.signals import user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from chat.security.throttles import Throttle, login_failures


def client_address(request: HttpRequest) -> str:
    """The address a throttle counts the request under."""
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def throttled_page(
    request: HttpRequest, throttle: Throttle, detail: str
) -> HttpResponse:
    """HTTP 429: what was refused and when to try again, in plain words."""
    minutes = max(1, round(throttle.window() / 60))
    response = render(
        request,
        "registration/throttled.html",
        {"detail": detail, "minutes": minutes},
        status=429,
    )
    response["Retry-After"] = str(throttle.window())
    return response


def throttle_login(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The login view, refusing a POST (429) from an address past its failures."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "POST" and not login_failures.allows(
            client_address(request)
        ):
            return throttled_page(
                request,
                login_failures,
                "Too many failed logins from your address, for any username.",
            )
        return view(request, *args, **kwargs)

    return guarded


@receiver(user_login_failed, dispatch_uid="chat.security.login_throttle.failed")
def _count_failure(
    sender: Any, credentials: Any, request: HttpRequest | None = None, **_: Any
) -> None:
    if request is not None:  # a login through a request (not a script's authenticate)
        login_failures.hit(client_address(request))
