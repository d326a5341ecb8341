"""Login throttling, operator endpoints' access, Content-Security-Policy and password
reset: server-free with Django's test client, and /metrics and /readyz on a real
uvicorn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import timedelta
from html.parser import HTMLParser

import pytest
from axes.models import AccessAttempt
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import call_command
from django.db.models import F
from django.test import Client, RequestFactory

from chat.security.site import operator_refusal
from chat.services.room_lifecycle import room_create_private
from chat.services.rooms import room_invite

from ..support import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


# --- login throttling (django-axes) ---------------------------------------------------


def log_in(password: str, username: str = "alice", address: str = "127.0.0.1"):
    """POST the login form as a browser at `address` would; the response."""
    client = Client(REMOTE_ADDR=address)
    response = client.post(
        "/accounts/login/", {"username": username, "password": password}
    )
    response.logged_in = "_auth_user_id" in client.session
    return response


@pytest.fixture
def throttled(chat_users, settings):
    """A lockout after 3 wrong passwords, for a 10-minute cool-off."""
    settings.AXES_FAILURE_LIMIT = 3
    settings.AXES_COOLOFF_TIME = timedelta(minutes=10)
    return chat_users


def fail(times: int, **who: str) -> None:
    """Wrong passwords: the login form again with an error, and the 3rd in a row
    (the limit) is answered with the lockout (429) at once."""
    for attempt in range(1, times + 1):
        response = log_in("wrong", **who)
        assert response.status_code == (429 if attempt >= 3 else 200), attempt
        assert not response.logged_in


def test_a_locked_out_login_is_refused_even_with_the_right_password(throttled):
    """After N wrong passwords the next attempt gets 429, right password or not;
    another username from that address and that username from another address
    still log in."""
    assert log_in("pw-alice").logged_in  # the right password works
    fail(3)
    refused = log_in("pw-alice")
    assert refused.status_code == 429 and not refused.logged_in
    assert b"Too many failed logins" in refused.content
    assert log_in("pw-bob", username="bob").logged_in
    assert log_in("pw-alice", address="10.0.0.9").logged_in


def test_a_lockout_ends_after_the_cool_off(throttled):
    """Moving the recorded failures past the cool-off (no sleeping) lifts it."""
    fail(3)
    assert log_in("pw-alice").status_code == 429
    AccessAttempt.objects.update(
        attempt_time=F("attempt_time") - timedelta(minutes=10, seconds=1)
    )
    assert log_in("pw-alice").logged_in


def test_a_lockout_is_lifted_by_axes_reset_and_a_success_resets_the_count(throttled):
    """`manage.py axes_reset` unlocks; a successful login starts the count again."""
    fail(3)
    assert log_in("pw-alice").status_code == 429
    call_command("axes_reset")
    assert log_in("pw-alice").logged_in
    fail(2)
    assert log_in("pw-alice").logged_in
    fail(2)
    assert log_in("pw-alice").logged_in  # 2 + 2 failures, never 3 in a row


def test_throttling_settings_come_from_the_environment():
    """LOGIN_FAILURE_LIMIT and LOGIN_COOLOFF_MINUTES set the lockout."""
    assert settings_in_subprocess(
        "AXES_FAILURE_LIMIT", "AXES_COOLOFF_TIME", "AXES_LOCKOUT_PARAMETERS",
        LOGIN_FAILURE_LIMIT="7", LOGIN_COOLOFF_MINUTES="0.5",
    ) == ["7", "0:00:30", "[['username', 'ip_address']]"]  # fmt: skip


def settings_in_subprocess(*names: str, **env: str) -> list[str]:
    """str() of settings as a fresh process with this environment reads them."""
    code = (
        "import django; django.setup(); from django.conf import settings; "
        f"print('\\n'.join(str(getattr(settings, n)) for n in {names!r}))"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("EMAIL_")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, "DEBUG": "True", "DJANGO_SETTINGS_MODULE": "chatproj.settings"}
        | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.splitlines()


# --- /metrics and /readyz: operators only ---------------------------------------------


@pytest.mark.parametrize(
    ("token", "allowed", "address", "authorization", "status"),
    [
        ("", ["127.0.0.1", "::1"], "127.0.0.1", None, None),
        ("", ["127.0.0.1", "::1"], "::1", None, None),
        ("", ["127.0.0.1", "::1"], "10.0.0.7", None, 403),
        ("", ["127.0.0.1"], "10.0.0.7", "Bearer anything", 403),  # no token set
        ("", [], "127.0.0.1", None, 403),
        ("s3cret", ["127.0.0.1"], "127.0.0.1", None, 401),  # a token beats the list
        ("s3cret", [], "10.0.0.7", "Bearer s3cret", None),
        ("s3cret", [], "10.0.0.7", "bearer s3cret", None),
        ("s3cret", [], "10.0.0.7", "Bearer s3cret-not", 401),
        ("s3cret", [], "10.0.0.7", "Bearer ", 401),
        ("s3cret", [], "10.0.0.7", "Bearer", 401),
        ("s3cret", [], "10.0.0.7", "Basic czNjcmV0", 401),
        ("s3cret", [], "10.0.0.7", "s3cret", 401),
        ("s3cret", [], "10.0.0.7", "Bearer s3cret\u00e9", 401),
    ],
)
def test_operator_access_rule(settings, token, allowed, address, authorization, status):
    """METRICS_TOKEN set: the bearer token, from anywhere; empty: the allow-list."""
    settings.METRICS_TOKEN = token
    settings.METRICS_ALLOWED_IPS = allowed
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    request = RequestFactory().get("/metrics", REMOTE_ADDR=address, **headers)
    refusal = operator_refusal(request)
    assert (refusal.status_code if refusal else None) == status
    if status == 401:
        assert refusal["WWW-Authenticate"].startswith("Bearer")


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    """Status and body of a GET (with a bearer token)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_metrics_and_readyz_detail_need_the_token(start_web, kafka_port_down):
    """With METRICS_TOKEN: /metrics is 401 without it and served with it; /readyz
    gives everyone its status code but names failures and addresses only to the
    token's holder."""
    base = start_web(
        METRICS_TOKEN="s3cret-token",
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{kafka_port_down}",
    )
    assert get(f"{base}/metrics")[0] == 401
    assert get(f"{base}/metrics", "wrong")[0] == 401
    status, body = get(f"{base}/metrics", "s3cret-token")
    assert status == 200 and b"chat_websocket_connections" in body
    status, body = get(f"{base}/readyz")
    assert (status, json.loads(body)) == (503, {"status": "unavailable"})
    assert str(kafka_port_down).encode() not in body
    status, body = get(f"{base}/readyz", "s3cret-token")
    assert status == 503 and json.loads(body)["failed"] == ["kafka"]
    assert str(kafka_port_down) in json.loads(body)["checks"]["kafka"]["error"]
    assert get(f"{base}/healthz")[0] == 200  # liveness stays open


def test_metrics_refused_outside_the_allow_list(start_web):
    """No token, and this host not in METRICS_ALLOWED_IPS: /metrics is 403 and
    /readyz only says whether it is ready."""
    base = start_web(METRICS_TOKEN="", METRICS_ALLOWED_IPS="10.255.0.1")
    assert get(f"{base}/metrics")[0] == 403
    status, body = get(f"{base}/readyz")
    assert (status, json.loads(body)) == (200, {"status": "ready"})


# --- Content-Security-Policy -----------------------------------------------------------


class _ScriptAudit(HTMLParser):
    """Collects what a CSP without 'unsafe-inline' would block: inline scripts and
    inline event handlers (a json_script data block is not a script)."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.problems += [f"<{tag} {k}=...>" for k in named if k.startswith("on")]
        if tag == "script":
            self.scripts += 1
            if "src" not in named and named.get("type") != "application/json":
                self.problems.append("inline <script>")
        if "style" in named:
            self.problems.append(f"<{tag} style=...>")


def test_every_page_has_a_csp_that_forbids_inline_script(
    chat_users, in_memory_channel_layer, settings
):
    """Login, room list, a private room (owner view), error and lockout pages: the
    header forbids inline script and the page has none, nor inline handlers."""
    settings.AXES_FAILURE_LIMIT = 1
    alice = Client()
    alice.force_login(get_user_model().objects.get(username="alice"))
    room_create_private(name="team", created_by_id=chat_users["alice"].id)
    room_invite(room_name="team", username="bob", by_user_id=chat_users["alice"].id)
    pages = {
        "login": Client().get("/accounts/login/"),
        "index": alice.get("/"),
        "room": alice.get("/chat/team/"),
        "error": alice.post("/rooms/private/", {"name": "bad name"}),
        "healthz": Client().get("/healthz"),
    }
    log_in("wrong", username="carol")
    pages["lockout"] = log_in("pw-carol", username="carol")
    assert pages["lockout"].status_code == 429
    scripts = 0
    for name, response in pages.items():
        policy = response["Content-Security-Policy"]
        directives = dict(
            (d.split()[0], d.split()[1:]) for d in policy.split(";") if d.strip()
        )
        assert directives["script-src"] == ["'self'"], (name, policy)
        assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
        assert directives["object-src"] == ["'none'"]
        if response["Content-Type"].startswith("text/html"):
            audit = _ScriptAudit()
            audit.feed(response.content.decode())
            assert audit.problems == [], name
            scripts += audit.scripts
    assert scripts >= 4  # the audit did see the pages' (external) scripts


def test_templates_have_no_inline_script():
    """Every template, rendered or not: no inline <script>, no on*= handler."""
    audited = 0
    for path in (ROOT / "chat" / "templates").rglob("*.html"):
        audit = _ScriptAudit()
        audit.feed(path.read_text())
        assert audit.problems == [], path
        audited += 1
    assert audited >= 6


# --- password reset only with mail -----------------------------------------------------

RESET_PATHS = [
    "/accounts/password_reset/",
    "/accounts/password_reset/done/",
    "/accounts/reset/MQ/set-password/",
    "/accounts/reset/done/",
]


def test_password_reset_is_a_404_without_mail(chat_users, settings):
    """With no mail server configured every reset URL is a 404 and sends nothing."""
    settings.PASSWORD_RESET_ENABLED = False
    client = Client()
    for path in RESET_PATHS:
        assert client.get(path).status_code == 404, path
    response = client.post(RESET_PATHS[0], {"email": "alice@example.com"})
    assert response.status_code == 404 and mail.outbox == []


def test_password_reset_works_with_mail(chat_users, settings):
    """With mail delivered, the reset form sends the user a link."""
    settings.PASSWORD_RESET_ENABLED = True
    get_user_model().objects.filter(username="alice").update(email="alice@example.com")
    client = Client()
    assert client.get(RESET_PATHS[0]).status_code == 200
    response = client.post(RESET_PATHS[0], {"email": "alice@example.com"})
    assert response.status_code == 302 and response.url == RESET_PATHS[1]
    assert len(mail.outbox) == 1 and "/accounts/reset/" in mail.outbox[0].body
    assert client.get(RESET_PATHS[1]).status_code == 200


@pytest.mark.parametrize(
    ("email_url", "enabled"),
    [
        ("", "False"),
        ("consolemail://", "False"),
        ("filemail:///tmp/mail", "False"),
        ("memorymail://", "False"),
        ("smtp://mail.example.com:25", "True"),
        ("smtp+tls://user:pass@mail.example.com:587", "True"),
    ],
)
def test_password_reset_rule(email_url, enabled):
    """Reset is on only when EMAIL_URL names a server that really delivers mail."""
    assert settings_in_subprocess("PASSWORD_RESET_ENABLED", EMAIL_URL=email_url) == [
        enabled
    ]
