"""docs/schemas/chat-event.schema.json describes the Kafka event as it is published
(ChatEvent.value), and refuses what breaks it (no servers, no database)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from chat.schemas import EVENT_SCHEMA_VERSION, ChatEvent

SCHEMA_PATH = (
    Path(__file__).resolve().parents[2] / "docs" / "schemas" / "chat-event.schema.json"
)


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    """The schema file, itself checked against draft 2020-12."""
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def event(**changes: object) -> ChatEvent:
    """A room message as a worker publishes it; `changes` override its fields."""
    fields: dict[str, object] = {
        "message_id": uuid.uuid4(),
        "room": "lobby",
        "seq": 12,
        "sender_id": 1,
        "receiver_id": None,
        "content": "hi",
        "created_at": datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC),
    }
    fields.update(changes)
    return ChatEvent(**fields)  # type: ignore[arg-type]


def published(chat_event: ChatEvent) -> dict[str, object]:
    """The record value exactly as the producer sends it, decoded."""
    value = json.loads(chat_event.value.decode("utf-8"))
    assert isinstance(value, dict)
    return value


def errors(validator: Draft202012Validator, value: object) -> list[str]:
    return [e.message for e in validator.iter_errors(value)]


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"receiver_id": 2, "room": "dm-1-2"},  # a direct message
        {"seq": 1, "room": "a.b_c-9", "content": "مرحبًا!\nline two\ttab"},
        {
            "created_at": datetime(
                2026, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=3))
            )
        },
        {"sender_id": 2**63 - 1, "seq": 2**63 - 1, "content": "x" * 4000},
    ],
    ids=["room", "dm", "unicode", "other-zone-whole-second", "largest"],
)
def test_published_events_validate(validator, changes):
    """Every kind of event the producer publishes is valid against the schema."""
    value = published(event(**changes))
    assert errors(validator, value) == []
    assert value["schema_version"] == EVENT_SCHEMA_VERSION


def test_schema_names_exactly_the_fields_of_the_event(validator):
    """The schema's properties are the event's: a field added to ChatEvent must be
    documented here (and stay optional for consumers within the version)."""
    assert set(validator.schema["properties"]) == set(published(event()))
    assert set(validator.schema["required"]) == set(ChatEvent.model_fields)


def test_unknown_fields_are_allowed(validator):
    """Consumers must ignore unknown fields, so the schema lets them through: a
    dead-letter copy (with content_length and error) validates too."""
    value = published(event())
    value |= {"content_length": 2, "error": "MessageSizeTooLargeError: too big"}
    assert errors(validator, value) == []


@pytest.mark.parametrize("missing", sorted(ChatEvent.model_fields))
def test_a_missing_required_field_is_refused(validator, missing):
    """Removing any field of the event makes it invalid."""
    value = published(event())
    del value[missing]
    assert errors(validator, value) == [f"'{missing}' is a required property"]


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("schema_version", 2),
        ("schema_version", "1"),
        ("message_id", 42),
        ("message_id", "not-a-uuid"),
        ("room", None),
        ("room", "has a space"),
        ("seq", "12"),
        ("seq", 1.5),
        ("seq", 0),
        ("sender_id", None),
        ("sender_id", True),
        ("receiver_id", "2"),
        ("receiver_id", 0),
        ("content", 7),
        ("content", ""),
        ("created_at", 1764072000),
        ("created_at", "2026-11-25T12:00:00+03:00"),
        ("created_at", "25/11/2026 12:00"),
    ],
)
def test_a_wrong_type_or_value_is_refused(validator, field, bad):
    """A field of the wrong type, or outside its documented form, is refused."""
    value = published(event())
    value[field] = bad
    found = list(validator.iter_errors(value))
    assert found, f"{field}={bad!r} was accepted"
    assert all(list(e.absolute_path) == [field] for e in found)


def test_a_value_that_is_not_an_object_is_refused(validator):
    """A JSON array or string is not an event."""
    assert errors(validator, [published(event())])
    assert errors(validator, "hi")
