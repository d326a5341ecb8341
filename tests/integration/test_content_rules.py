"""Content rules of chat/schemas.py: invisible messages are `empty`, controls and bidi
overrides `invalid_message`; what is accepted reaches the database, the room and
Kafka exactly as sent."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async

from chat.models import Message
from chat.realtime.frames import parse_chat_frame
from chat.schemas import ChatValidationError

from ..support import WSClient, event_of, read_topic

REFUSED = [
    ("\u200b", "empty"),  # zero-width space
    ("\u200c\u200d\u2060\ufeff", "empty"),  # ZWNJ, ZWJ, word joiner, BOM
    ("\u00a0\u3000\u2003 \n\t", "empty"),  # no-break, ideographic, em space
    ("\u034f\u0301\ufe0f", "empty"),  # combining marks and a selector with no base
    ("\u3164\u115f\u2800", "empty"),  # Hangul fillers, braille blank
    ("\u2028\u2029", "empty"),  # line and paragraph separators
    ("\x07\x07", "invalid_message"),  # bells
    ("\x1b[31mred\x1b[0m", "invalid_message"),  # ANSI escape
    ("a\rb", "invalid_message"),  # carriage return
    ("del \x7f", "invalid_message"),
    ("c1 \x85 \x9b", "invalid_message"),
    ("nul \x00", "invalid_message"),
    ("\u202egnp.exe", "invalid_message"),  # right-to-left override
    ("a\u202ab\u202c", "invalid_message"),  # embedding
    ("x\u2066y\u2069", "invalid_message"),  # isolate
    ("\u202d\u202c", "invalid_message"),
]

ACCEPTED = [
    "hello",
    "tab\tand\nnewline",
    "👩‍👩‍👧 family (ZWJ inside)",
    "e\u0301 combining after a base",
    "مرحبًا بالعالم",
    "mixed مرحبًا \u200f mark",  # RLM is a mark, not an override
    "  padded  ",
    "\u200bzero width then text",
]


@pytest.mark.parametrize(("text", "code"), REFUSED)
def test_refused_content(text, code):
    """Invisible messages are `empty`; controls and bidi controls `invalid_message`."""
    with pytest.raises(ChatValidationError) as refused:
        parse_chat_frame(
            json.dumps({"message": text, "client_id": "k"}), max_length=100
        )
    assert (refused.value.code, refused.value.client_id) == (code, "k")
    assert refused.value.detail


@pytest.mark.parametrize("text", ACCEPTED)
def test_accepted_content_is_kept_as_sent(text):
    """Visible text, newline, tab, joiners inside text and RTL marks pass unchanged."""
    assert (
        parse_chat_frame(json.dumps({"message": text}), max_length=100).message == text
    )


@pytest.mark.django_db(transaction=True)
async def test_content_rules_through_the_server(
    asgi_server, start_worker, kafka_bootstrap, chat_users
):
    """Through uvicorn, a worker and the broker: refused content gets its code and is
    neither stored nor published; accepted content is the same string in the ack'd
    row, the broadcast and the Kafka event."""
    worker = await database_sync_to_async(start_worker)()
    alice = await WSClient.connect(asgi_server, "content", chat_users["alice"].cookie)
    await alice.expect("history")
    for n, (text, code) in enumerate(REFUSED):
        await alice.send({"message": text, "client_id": f"r{n}"})
        error = await alice.expect("error")
        assert (error["code"], error["client_id"]) == (code, f"r{n}")
    acked = {}
    for n, text in enumerate(ACCEPTED):
        await alice.send({"message": text, "client_id": f"a{n}"})
        ack = await alice.expect("message.ack")
        seen = await alice.expect("chat.message")
        assert seen["content"] == text
        acked[ack["message_id"]] = text
    rows = await database_sync_to_async(
        lambda: {
            str(m): c for m, c in Message.objects.values_list("message_id", "content")
        }
    )()
    assert rows == acked
    records = await database_sync_to_async(read_topic)(
        kafka_bootstrap, worker.topic, expected=len(acked)
    )
    assert {event_of(r)["message_id"]: event_of(r)["content"] for r in records} == acked
    await alice.close()
