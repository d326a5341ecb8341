"""URL configuration: auth views at Django's default paths, then the chat pages."""

from django.contrib import admin
from django.urls import include, path

from chat import health, tickets

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics_view, name="metrics"),
    path("api/ws-ticket/", tickets.ws_ticket, name="ws-ticket"),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("chat.urls")),
]
