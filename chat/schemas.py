"""Payloads that cross a boundary, written once: the validation error a client is
sent, the content rules of a message, the message and notification payloads, and
the Kafka event (docs/protocol.md; docs/schemas/chat-event.schema.json)."""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from chat.models import Message, Notification

EVENT_SCHEMA_VERSION: Literal[1] = 1
MAX_DB_ID = 2**63 - 1


def iso_utc(moment: datetime) -> str:
    """ISO-8601 in UTC with a `Z` suffix."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class ChatValidationError(Exception):
    """A client frame was rejected; `code` is a WebSocket protocol error code."""

    def __init__(self, code: str, detail: str, client_id: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.client_id = client_id

    def as_frame(self) -> dict[str, Any]:
        """The `error` frame sent back to the client."""
        return {
            "type": "error",
            "code": self.code,
            "detail": self.detail,
            "client_id": self.client_id,
        }


# --- Content rules: what a message may contain -------------------------------------
# C0 and C1 control characters (and DEL) other than newline and tab: terminal escapes
# (ANSI "\x1b[31m"), bells, NUL, carriage returns. Refused, never stripped, so what is
# stored, broadcast and published is exactly what the sender sent.
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Bidi embeddings, overrides (U+202A-U+202E) and isolates (U+2066-U+2069) reorder the
# text around them ("\u202egnp.exe" shows as "exe.png"), in our page and in every
# system reading the Kafka stream. Refused; the marks LRM/RLM/ALM stay allowed.
BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")
# Characters that draw nothing: separators, format characters (zero-width space and
# joiners, U+2060, U+FEFF, ...), controls, combining marks with no base, and the
# blank letters that render as space (Hangul fillers, the braille blank).
INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Mn", "Me"})
BLANK_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def has_visible_character(text: str) -> bool:
    """Whether the text draws at least one glyph (not only blanks and format chars)."""
    return any(
        not ch.isspace()
        and ch not in BLANK_CHARACTERS
        and unicodedata.category(ch) not in INVISIBLE_CATEGORIES
        for ch in text
    )


def content_check(text: str, *, client_id: str | None = None) -> None:
    """Apply the content rules to a message; raise ChatValidationError with its code.

    Controls other than newline and tab, and bidi embeddings, overrides and isolates
    are `invalid_message`; a message with no visible character is `empty`.
    """
    if match := CONTROL_CHARACTERS.search(text):
        raise ChatValidationError(
            "invalid_message",
            f"The message contains the control character U+{ord(match[0]):04X}; "
            "only newline and tab are allowed.",
            client_id,
        )
    if match := BIDI_CONTROLS.search(text):
        raise ChatValidationError(
            "invalid_message",
            f"The message contains the bidi control U+{ord(match[0]):04X}, which "
            "would reorder the text around it; remove it.",
            client_id,
        )
    if not has_visible_character(text):
        raise ChatValidationError(
            "empty", "The message is empty (no visible character).", client_id
        )


class ChatEvent(BaseModel):
    """The Kafka event of one chat message (value of a record on KAFKA_CHAT_TOPIC)."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = EVENT_SCHEMA_VERSION
    message_id: UUID
    room: str
    seq: int
    sender_id: int
    receiver_id: int | None
    content: str
    created_at: datetime

    @classmethod
    def from_message(cls, message: Message) -> ChatEvent:
        """Build the event of a persisted message."""
        return cls(
            message_id=message.message_id,
            room=message.room.name,
            seq=message.seq,
            sender_id=message.sender_id,
            receiver_id=message.receiver_id,
            content=message.content,
            created_at=message.created_at,
        )

    @property
    def key(self) -> bytes:
        """The conversation: one partition per conversation keeps its order."""
        if self.receiver_id is None:
            return f"room:{self.room}".encode()
        low, high = sorted((self.sender_id, self.receiver_id))
        return f"dm:{low}:{high}".encode()

    @property
    def value(self) -> bytes:
        """UTF-8 JSON with an ISO-8601 UTC timestamp."""
        data = self.model_dump(mode="json")
        data["created_at"] = iso_utc(self.created_at)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        """`message_id` for de-duplication downstream, and the content type."""
        return [
            ("message_id", str(self.message_id).encode()),
            ("content-type", b"application/json"),
        ]


def message_payload(message: Message) -> dict[str, Any]:
    """The `<message>` object of the WebSocket protocol."""
    return {
        "message_id": str(message.message_id),
        "room": message.room.name,
        "seq": message.seq,
        "sender_id": message.sender_id,
        "sender": message.sender.get_username(),
        "receiver_id": message.receiver_id,
        "content": message.content,
        "created_at": iso_utc(message.created_at),
        "status": message.status,
    }


NOTIFICATION_EXCERPT = 200


def notification_payload(
    *,
    kind: str,
    message_id: Any,
    room: str,
    seq: int,
    sender_id: int,
    sender: str,
    content: str,
    created_at: datetime,
) -> dict[str, Any]:
    """The body of a `notification` frame (and of each of the `unread` frame's)."""
    excerpt = content[:NOTIFICATION_EXCERPT]
    return {
        "kind": kind,
        "message_id": str(message_id),
        "room": room,
        "seq": seq,
        "sender_id": sender_id,
        "sender": sender,
        "excerpt": excerpt + ("…" if len(content) > len(excerpt) else ""),
        "created_at": iso_utc(created_at),
    }


def notification_payload_of(
    notification: Notification, message: Message
) -> dict[str, Any]:
    """notification_payload of a stored notification and its message."""
    return notification_payload(
        kind=notification.kind,
        message_id=notification.message_id,
        room=notification.room.name,
        seq=notification.seq,
        sender_id=message.sender_id,
        sender=message.sender.get_username(),
        content=message.content,
        created_at=message.created_at,
    )
