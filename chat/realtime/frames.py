"""Client frames of the chat socket: one pydantic discriminated union, parsed once.

`parse_frame()` turns a raw WebSocket text frame into a ChatFrame, a ReadFrame, a
ResumeFrame, a PingFrame, a PongFrame or a TypingFrame (by its `type`; a frame
without one is a chat message), or raises
ChatValidationError with the protocol's error code (docs/protocol.md). The consumer
keeps one table from frame type to handler (ChatConsumer.HANDLERS).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from chat.models import ROOM_NAME_PATTERN
from chat.schemas import MAX_DB_ID, ChatValidationError, content_check


class ChatFrame(BaseModel):
    """A chat message frame from a client (`sender` and unknown keys are ignored)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    type: Literal["chat.message"] = "chat.message"
    message: str
    receiver_id: int | None = Field(default=None, gt=0, le=MAX_DB_ID)
    client_id: str | None = Field(default=None, max_length=128)


class ReadFrame(BaseModel):
    """A read mark: the client has shown the room up to `up_to_seq`. On the chat
    socket the room is the socket's; on /ws/notifications/ it is named."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    type: Literal["read"]
    up_to_seq: int = Field(ge=0, le=MAX_DB_ID)
    room: str | None = Field(default=None, pattern=ROOM_NAME_PATTERN)


class ResumeFrame(BaseModel):
    """Catch up: send every message after `after_seq`, then live ones."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    type: Literal["resume"]
    after_seq: int = Field(ge=0, le=MAX_DB_ID)


class PingFrame(BaseModel):
    """The client's heartbeat: answered with a `pong` frame (docs/protocol.md)."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    type: Literal["ping"]


class PongFrame(BaseModel):
    """The client's answer to the server's `ping`: a sign of life."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    type: Literal["pong"]


class TypingFrame(BaseModel):
    """The user is typing in this socket's room: an ephemeral notice to the others."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    type: Literal["typing"]


AnyFrame = ChatFrame | ReadFrame | ResumeFrame | PingFrame | PongFrame | TypingFrame
ClientFrame = Annotated[AnyFrame, Field(discriminator="type")]
_CLIENT_FRAME: TypeAdapter[AnyFrame] = TypeAdapter(ClientFrame)
FRAME_TYPES = ("chat.message", "read", "resume", "ping", "pong", "typing")


def parse_frame(text_data: Any, *, max_length: int) -> AnyFrame:
    """The frame `text_data` holds; ChatValidationError with its code if it is not
    one (not JSON, not an object, an unknown type, a bad field, a message over
    `max_length` or against the content rules)."""
    raw = _decode_object(text_data)
    client_id = _valid_client_id(raw.get("client_id"))
    kind = raw.setdefault("type", "chat.message")
    if kind not in FRAME_TYPES:
        raise ChatValidationError(
            "invalid_message",
            f"Field 'type': should be one of {', '.join(FRAME_TYPES)}.",
            client_id,
        )
    try:
        frame = _CLIENT_FRAME.validate_python(raw)
    except ValidationError as exc:
        raise _invalid(exc, client_id) from None
    if isinstance(frame, ChatFrame):
        _check_message(frame, max_length=max_length, client_id=client_id)
    return frame


def parse_chat_frame(text_data: Any, *, max_length: int) -> ChatFrame:
    """A chat message frame (parse_frame, refusing the other types)."""
    frame = parse_frame(text_data, max_length=max_length)
    if not isinstance(frame, ChatFrame):
        raise ChatValidationError(
            "invalid_message", f"Field 'type': a {frame.type!r} frame is no message."
        )
    return frame


def parse_read_frame(text_data: Any, *, room_required: bool) -> ReadFrame:
    """A read-mark frame (the notification socket's one frame); `room_required`
    there."""
    raw = _decode_object(text_data)
    try:
        frame = ReadFrame.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(exc, _valid_client_id(raw.get("client_id"))) from None
    if room_required and frame.room is None:
        raise ChatValidationError("invalid_message", "Field 'room': required.")
    return frame


def client_id_of(text_data: Any) -> str | None:
    """The frame's client_id if it has a usable one (for an error frame)."""
    try:
        raw = json.loads(text_data)
    except (TypeError, ValueError, RecursionError):
        return None
    return _valid_client_id(raw.get("client_id")) if isinstance(raw, dict) else None


def _check_message(frame: ChatFrame, *, max_length: int, client_id: str | None) -> None:
    if len(frame.message) > max_length:
        raise ChatValidationError(
            "too_long",
            f"The message has {len(frame.message)} characters; "
            f"the limit is {max_length}.",
            client_id,
        )
    if not _is_unicode(frame.message):  # (pydantic already refuses such a client_id)
        raise ChatValidationError(
            "invalid_message", "The message is not valid Unicode.", client_id
        )
    content_check(frame.message, client_id=client_id)


def _decode_object(text_data: Any) -> dict[str, Any]:
    if not isinstance(text_data, str):
        raise ChatValidationError(
            "invalid_message", "Send JSON text frames, not binary."
        )
    try:
        raw = json.loads(text_data)
    except (ValueError, RecursionError) as exc:  # deep nesting: RecursionError
        raise ChatValidationError(
            "invalid_json", f"The frame is not valid JSON: {exc}"
        ) from None
    if not isinstance(raw, dict):
        raise ChatValidationError(
            "invalid_message", 'The frame must be a JSON object like {"message": "hi"}.'
        )
    return raw


def _invalid(exc: ValidationError, client_id: str | None) -> ChatValidationError:
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if loc and loc[0] in FRAME_TYPES:  # the union's tag leads the location
        loc = loc[1:]
    where = ".".join(loc) or "frame"
    return ChatValidationError(
        "invalid_message", f"Field '{where}': {first['msg']}.", client_id
    )


def _valid_client_id(value: Any) -> str | None:
    return value if isinstance(value, str) and len(value) <= 128 else None


def _is_unicode(text: str) -> bool:
    # JSON may carry lone surrogates ("\\ud800") that no database or UTF-8 can store.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
