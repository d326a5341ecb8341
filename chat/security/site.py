"""Site-wide guards: who may read the operator endpoints, and password reset only
when mail is really delivered."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse


def operator_refusal(request: HttpRequest) -> HttpResponse | None:
    """None if the request may read /metrics and /readyz's detail, else the answer:
    401 without the right bearer token when METRICS_TOKEN is set, 403 from an address
    outside METRICS_ALLOWED_IPS when it is not."""
    token = settings.METRICS_TOKEN
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            return None
        response = JsonResponse(
            {"error": "unauthorized", "detail": "Send Authorization: Bearer <token>."},
            status=401,
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if request.META.get("REMOTE_ADDR") in settings.METRICS_ALLOWED_IPS:
        return None
    return JsonResponse(
        {
            "error": "forbidden",
            "detail": "Not from an allowed address: set METRICS_TOKEN and send it as "
            "a bearer token, or list the scraper in METRICS_ALLOWED_IPS.",
        },
        status=403,
    )


def only_with_mail(view: Callable[..., Any]) -> Callable[..., Any]:
    """A 404 instead of the view unless mail is delivered (PASSWORD_RESET_ENABLED)."""

    @wraps(view)
    def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if not settings.PASSWORD_RESET_ENABLED:
            raise Http404("Password reset needs a mail server (EMAIL_URL).")
        return view(request, *args, **kwargs)

    return guarded
