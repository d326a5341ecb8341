"""Pure logic of the frame parser and the Kafka event (no servers needed)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from chat.realtime.frames import parse_chat_frame
from chat.schemas import ChatEvent, ChatValidationError


def test_frame_defaults_and_ignored_sender():
    """`type` defaults to chat.message; a sender in the frame is ignored."""
    frame = parse_chat_frame('{"message": "hi", "sender_id": 5}', max_length=10)
    assert (frame.type, frame.message, frame.receiver_id, frame.client_id) == (
        "chat.message", "hi", None, None,
    )  # fmt: skip


def test_limit_is_the_configured_one():
    """too_long uses the max_length given, counting characters, not bytes."""
    assert (
        parse_chat_frame(json.dumps({"message": "é" * 5}), max_length=5).message
        == "é" * 5
    )
    with pytest.raises(ChatValidationError) as exc:
        parse_chat_frame(json.dumps({"message": "é" * 6}), max_length=5)
    assert exc.value.code == "too_long" and "limit is 5" in exc.value.detail


def test_event_key_value_and_utc_timestamp():
    """Keys name the conversation; created_at is ISO-8601 UTC whatever the input zone."""
    local = datetime(2026, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=3)))
    event = ChatEvent(
        message_id=uuid.uuid4(), room="r", seq=1, sender_id=8, receiver_id=3,
        content="x", created_at=local,
    )  # fmt: skip
    assert event.key == b"dm:3:8"
    assert event.model_copy(update={"receiver_id": None}).key == b"room:r"
    value = json.loads(event.value)
    assert value["created_at"] == "2026-05-01T09:00:00Z"
    assert datetime.fromisoformat(value["created_at"]) == local.astimezone(UTC)


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deep_nesting_is_invalid_json_not_a_crash(depth):
    """json.loads raises RecursionError on deep nesting: it is answered invalid_json."""
    with pytest.raises(ChatValidationError) as exc:
        parse_chat_frame("[" * depth + "]" * depth, max_length=10)
    assert exc.value.code == "invalid_json"
