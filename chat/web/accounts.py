"""Accounts: sign-up with Django's UserCreationForm (throttled per address; no
look-alike usernames, Django's password validators), and what the login page says."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.forms import UserCreationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme

from chat.security import throttles, usernames
from chat.security.login_throttle import client_address, throttled_page

# `make run` creates these (manage.py create_demo_users) when they are missing.
DEMO_USERS = ("alice", "bob", "carol")
DEMO_PASSWORD = "chatdemo"


def _next_url(request: HttpRequest) -> str:
    wanted = request.POST.get("next") or request.GET.get("next") or "/"
    safe = url_has_allowed_host_and_scheme(
        wanted, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return wanted if safe else "/"


class SignUpForm(UserCreationForm):  # type: ignore[type-arg]
    """UserCreationForm refusing look-alike usernames (chat.security.usernames)."""

    class Meta(UserCreationForm.Meta):  # type: ignore[name-defined,misc]
        help_texts = {"username": usernames.RULE}

    def clean_username(self) -> str:
        """Django's checks (NFKC, letters, taken in any case), then the look-alikes."""
        username = super().clean_username()
        if username is not None:  # None: Django's check refused it already
            usernames.username_check(username)
        return username


def signup(request: HttpRequest) -> HttpResponse:
    """/accounts/signup/: create an account, log in, go on to `next`; 429 when the
    address created SIGNUP_RATE_PER_ADDRESS accounts already."""
    if request.user.is_authenticated:
        return redirect(_next_url(request))
    address = client_address(request)
    if request.method == "POST" and not throttles.signups.allows(address):
        return throttled_page(
            request,
            throttles.signups,
            "Too many accounts were created from your address.",
        )
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        throttles.signups.hit(address)
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect(_next_url(request))
    return render(
        request,
        "registration/signup.html",
        {"form": form, "next": _next_url(request)},
        status=400 if request.method == "POST" else 200,
    )


def account_hints(request: HttpRequest) -> dict[str, Any]:
    """Template context: the demo accounts are advertised in development only."""
    if not settings.DEBUG:
        return {"show_demo_hint": False}
    return {
        "show_demo_hint": True,
        "demo_users": ", ".join(DEMO_USERS),
        "demo_password": DEMO_PASSWORD,
    }
