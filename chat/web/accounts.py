"""Accounts: sign-up with Django's UserCreationForm, and what the login page says."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.forms import UserCreationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme

# `make run` creates these (manage.py create_demo_users) when they are missing.
DEMO_USERS = ("alice", "bob", "carol")
DEMO_PASSWORD = "chatdemo"


def _next_url(request: HttpRequest) -> str:
    wanted = request.POST.get("next") or request.GET.get("next") or "/"
    safe = url_has_allowed_host_and_scheme(
        wanted, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return wanted if safe else "/"


def signup(request: HttpRequest) -> HttpResponse:
    """/accounts/signup/: create an account, log in, go on to `next`."""
    if request.user.is_authenticated:
        return redirect(_next_url(request))
    form: UserCreationForm[Any] = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
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
