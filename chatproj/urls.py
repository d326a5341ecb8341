"""URL configuration: auth views at Django's default paths, then the chat pages."""

from django.contrib import admin
from django.contrib.auth import urls as auth_urls
from django.templatetags.static import static
from django.urls import URLPattern, URLResolver, include, path
from django.views.generic.base import RedirectView

from chat.security import tickets
from chat.security.site import only_with_mail
from chat.web import health

# Password reset sends mail: served only when mail is delivered (chat.security.site).
PASSWORD_RESET_VIEWS = {
    "password_reset",
    "password_reset_done",
    "password_reset_confirm",
    "password_reset_complete",
}
account_urls: list[URLPattern | URLResolver] = [
    path(str(p.pattern), only_with_mail(p.callback), name=p.name)
    if isinstance(p, URLPattern) and p.name in PASSWORD_RESET_VIEWS
    else p
    for p in auth_urls.urlpatterns
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
