"""CHAT_RATE_LIMIT on a real uvicorn: floods are refused per user, nothing is lost."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from channels.db import database_sync_to_async
from django.core.exceptions import ImproperlyConfigured

from chat.models import Message
from chat.security.rate_limit import MessageRateLimiter

from ..support import ROOT, WSClient

pytestmark = pytest.mark.django_db(transaction=True)


async def test_flood_gets_rate_limited_and_the_connection_stays(
    start_web, start_worker, chat_users
):
    """Past 3 messages per window the user gets `rate_limited` (with client_id) and
    nothing is stored; another user is unaffected."""
    await database_sync_to_async(start_worker)()
    base = await database_sync_to_async(start_web)(CHAT_RATE_LIMIT="3/minute")
    server = base.removeprefix("http://")
    alice = await WSClient.connect(server, "flood", chat_users["alice"].cookie)
    bob = await WSClient.connect(server, "flood", chat_users["bob"].cookie)
    for client in (alice, bob):
        await client.expect("history")
    for n in range(5):
        await alice.send({"message": f"spam {n}", "client_id": f"s{n}"})
    acked = [(await alice.expect("message.ack"))["client_id"] for _ in range(3)]
    refused = [await alice.expect("error") for _ in range(2)]
    assert acked == ["s0", "s1", "s2"]
    assert [(e["code"], e["client_id"]) for e in refused] == [
        ("rate_limited", "s3"),
        ("rate_limited", "s4"),
    ]
    assert "3 per 1 minute" in refused[0]["detail"]
    await alice.send({"message": "", "client_id": "bad"})  # validation still answers
    assert (await alice.expect("error"))["code"] == "empty"
    await bob.send({"message": "bob is fine", "client_id": "b"})
    assert (await bob.expect("message.ack"))["client_id"] == "b"
    stored = await database_sync_to_async(
        lambda: sorted(Message.objects.values_list("content", flat=True))
    )()
    assert stored == ["bob is fine", "spam 0", "spam 1", "spam 2"]
    await alice.close()
    await bob.close()


def test_bad_rate_limit_setting_fails_at_start_up():
    """A CHAT_RATE_LIMIT that is not a rate stops Django from starting."""
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**os.environ, "DEBUG": "True", "CHAT_RATE_LIMIT": "lots",
             "DJANGO_SETTINGS_MODULE": "chatproj.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "CHAT_RATE_LIMIT 'lots' is not a rate" in result.stderr


async def test_rate_is_parsed_and_counted_per_user():
    """'3/minute' lets each user send 3, then refuses; empty means no limit."""
    limiter = MessageRateLimiter("3/minute")
    assert [await limiter.allow(1) for _ in range(4)] == [True, True, True, False]
    assert await limiter.allow(2)  # another user has their own allowance
    assert limiter.describe() == "3 per 1 minute"
    unlimited = MessageRateLimiter("")
    assert all([await unlimited.allow(1) for _ in range(100)])
    assert unlimited.describe() == "no limit"
    with pytest.raises(ImproperlyConfigured, match="'lots' is not a rate"):
        MessageRateLimiter("lots")
