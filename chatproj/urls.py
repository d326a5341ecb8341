"""URL configuration: auth views at Django's default paths, then the chat pages."""

from django.contrib import admin
from django.contrib.auth import urls as auth_urls
from django.templatetags.static import static
from django.urls import URLPattern, URLResolver, include, path
from django.views.generic.base import RedirectView

from chat.security import tickets
from chat.security.login_throttle import throttle_login
from chat.security.site import only_with_mail
from chat.web import health

# Password reset sends mail: served only when mail is delivered (chat.security.site);
# failed logins are throttled per address too (chat.security.login_throttle).
PASSWORD_RESET_VIEWS = {
    "password_reset",
    "password_reset_done",
    "password_reset_confirm",
    "password_reset_complete",
}


def _guarded(pattern: URLPattern | URLResolver) -> URLPattern | URLResolver:
    """Password reset only with mail; login throttled per address."""
    if not isinstance(pattern, URLPattern):
        return pattern
    if pattern.name in PASSWORD_RESET_VIEWS:
        return path(
            str(pattern.pattern), only_with_mail(pattern.callback), name=pattern.name
        )
    if pattern.name == "login":
        return path(
            str(pattern.pattern), throttle_login(pattern.callback), name="login"
        )
    return pattern


account_urls: list[URLPattern | URLResolver] = [
    _guarded(p) for p in auth_urls.urlpatterns
]

urlpatterns = [
    # Browsers ask for /favicon.ico whatever the page links: the static file's URL.
    path("favicon.ico", RedirectView.as_view(url=static("chat/favicon.ico"))),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics_view, name="metrics"),
    path("api/ws-ticket/", tickets.ws_ticket, name="ws-ticket"),
    path("admin/", admin.site.urls),
    path("accounts/", include(account_urls)),
    path("", include("chat.web.urls")),
]
