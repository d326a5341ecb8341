"""One LOGGING for web and workers: JSON lines on request, message_id on each line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chat.models import Message
from chat.services.messages import message_create

from ..support import ROOT, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_worker_logs_json_lines_with_message_id(start_worker, chat_users):
    """LOG_FORMAT=json: Celery's lines and ours are JSON; the pipeline's carry message_id."""
    worker = start_worker(
        LOG_FORMAT="json", CELERY_TASK_LOG_LEVEL="INFO", LOG_LEVEL="DEBUG"
    )
    message = message_create(
        room_name="logs",
        sender_id=chat_users["alice"].id,
        receiver_id=None,
        content="x",
    )
    wait_for(lambda: Message.objects.get(pk=message.pk).status == "published", 20)
    wait_for(lambda: "succeeded" in worker.log(), 10)
    records = [
        json.loads(line) for line in worker.log().splitlines() if line.startswith("{")
    ]
    assert any(r["logger"].startswith("celery.") for r in records)  # not hijacked
    ours = [r for r in records if r["message_id"] == str(message.message_id)]
    assert {r["logger"] for r in ours} >= {"chat.publishing.conversation"}
    assert all({"time", "level", "process"} <= set(r) for r in records)


def test_plain_lines_carry_message_id(start_worker, chat_users):
    """The default format ends every line with [message_id=...] (the per-batch
    "Published" line is DEBUG: the default output has no line per message)."""
    worker = start_worker(LOG_LEVEL="DEBUG")
    message = message_create(
        room_name="logs", sender_id=chat_users["bob"].id, receiver_id=None, content="y"
    )
    wait_for(lambda: Message.objects.get(pk=message.pk).status == "published", 20)

    def published_line() -> str | None:  # written just after the status is stored
        lines = worker.log().splitlines()
        return next((line for line in lines if "Published 1 message(s)" in line), None)

    line = wait_for(published_line, 10, what="the Published line")
    assert line.endswith(f"[message_id={message.message_id}]")


def settings_in_subprocess(**env: str) -> subprocess.CompletedProcess[str]:
    """Load the settings in a fresh process with exactly this environment, and no
    development .env (a deployment has none: the Docker image leaves it out)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY")}
    code = (
        "import environ; environ.Env.read_env = lambda *a, **k: None; "
        "import django; from django.conf import settings; django.setup(); "
        "print(settings.DEBUG, settings.SESSION_COOKIE_SECURE, "
        "settings.SECURE_SSL_REDIRECT, settings.ALLOWED_HOSTS)"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "chatproj.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_settings_fail_fast():
    """DEBUG is off by default and then SECRET_KEY is required; bad LOG_FORMAT refused."""
    missing = settings_in_subprocess()
    assert missing.returncode != 0
    assert "SECRET_KEY is not set and DEBUG is off" in missing.stderr
    prod = settings_in_subprocess(SECRET_KEY="k" * 50, ALLOWED_HOSTS="chat.example.org")
    assert prod.stdout.split(" ", 3) == [
        "False",
        "False",
        "False",
        "['chat.example.org']\n",
    ]
    tls = settings_in_subprocess(SECRET_KEY="k" * 50, BEHIND_TLS_PROXY="True")
    assert tls.stdout.startswith("False True True")
    bad = settings_in_subprocess(DEBUG="True", LOG_FORMAT="xml")
    assert bad.returncode != 0 and "LOG_FORMAT must be" in bad.stderr
    short = settings_in_subprocess(DEBUG="True", KAFKA_RETRY_TRIES="4",
                                   KAFKA_RETRY_DELAY="1000", CELERY_VISIBILITY_TIMEOUT="60")  # fmt: skip
    assert short.returncode != 0 and "CELERY_VISIBILITY_TIMEOUT" in short.stderr
