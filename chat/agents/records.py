"""Records of the chat stream as a stream agent sees them: where a record is
(RecordRef), why one is not a chat event (BadRecord, from decode_event), and what
handling a batch did (Outcome)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from chat.schemas import EVENT_SCHEMA_VERSION, MAX_DB_ID, ChatEvent


@dataclass(frozen=True)
class RecordRef:
    """Where a record is: what every log line about it names."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


class BadRecord(Exception):
    """A record that is not a chat event this agent can handle; `reason` labels the
    skipped-records counter (a short fixed word), `detail` goes to the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_event(value: bytes | None) -> ChatEvent:
    """The ChatEvent of a record's value, or BadRecord saying why not."""
    if value is None:
        raise BadRecord("empty", "the record has no value")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRecord("not_utf8", str(exc)) from None
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadRecord("not_json", str(exc)[:200]) from None
    if not isinstance(raw, dict):
        raise BadRecord("invalid_event", f"a JSON {type(raw).__name__}, not an object")
    version = raw.get("schema_version")
    if type(version) is not int or version != EVENT_SCHEMA_VERSION:
        raise BadRecord(
            "wrong_schema_version",
            f"schema_version {version!r}, expected {EVENT_SCHEMA_VERSION}",
        )
    try:
        event = ChatEvent.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}"
            for e in exc.errors()[:5]
        )
        raise BadRecord("invalid_event", problems) from None
    for name in ("seq", "sender_id", "receiver_id"):
        number = getattr(event, name)
        if number is not None and not 0 < number <= MAX_DB_ID:
            raise BadRecord("invalid_event", f"{name} {number} is out of range")
    return event


@dataclass
class Outcome:
    """What `handle` did with a batch: the events whose effects are stored, and those
    it skipped, as (ref, why). An agent may return its own dataclass instead
    (`outcome_type`) with these two fields; every field of it must be a list (the
    base concatenates them when it handles a batch in parts)."""

    accepted: list[ChatEvent] = field(default_factory=list)
    skipped: list[tuple[RecordRef, str]] = field(default_factory=list)


def merge_outcomes(empty: Any, parts: Iterable[Any]) -> Any:
    """`empty` with every list field extended by the same field of each part."""
    for part in parts:
        for spec in dataclasses.fields(empty):
            getattr(empty, spec.name).extend(getattr(part, spec.name))
    return empty
