"""One client frame, one message: the consumer and the agent share the frame's message.

The original README's `ChatConsumerWithKafka` calls `agent.send_chat_message(...)` for
a frame and then `super().receive(text_data)` for the same frame. `ChatConsumer` marks
the frame it is handling (`handling_frame`); inside it, the first call that persists a
message for the frame's sender stores it here, and a later call with the same sender,
conversation, receiver and content gets that same message instead of a second one.
Calls with anything else create their own messages, as outside a frame.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chat.realtime import writer
from chat.services.messages import NewMessage

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from chat.models import Message

MessageKey = tuple[str, int, int | None, str]  # room, sender, receiver, content


@dataclass
class HandledFrame:
    """The client frame a consumer is handling, and the message made for it."""

    sender_id: int
    # Called once before the frame's first message is made (the rate limit); it
    # refuses by raising ChatValidationError.
    admit: Callable[[], Awaitable[None]] | None = None
    messages: dict[MessageKey, Message] = field(default_factory=dict)


_current_frame: ContextVar[HandledFrame | None] = ContextVar(
    "chat_current_frame", default=None
)


@contextmanager
def handling_frame(
    *, sender_id: int, admit: Callable[[], Awaitable[None]] | None = None
) -> Iterator[HandledFrame]:
    """Mark the frame of `sender_id` being handled by this task (ChatConsumer)."""
    frame = HandledFrame(sender_id=sender_id, admit=admit)
    token = _current_frame.set(frame)
    try:
        yield frame
    finally:
        _current_frame.reset(token)


async def message_create_once(
    *,
    room_name: str,
    sender: AbstractBaseUser,
    receiver_id: int | None,
    content: str,
    client_id: str | None = None,
) -> tuple[Message, bool]:
    """Persist a message, or return the one this frame already made; (msg, created).

    With a `client_id` the sender already used, it is that earlier message
    (`replayed`), and nothing is created.
    """
    sender_id = sender.pk
    frame = _current_frame.get()
    key: MessageKey = (room_name, sender_id, receiver_id, content)
    in_frame = frame is not None and frame.sender_id == sender_id
    if frame is not None and in_frame:
        if key in frame.messages:
            return frame.messages[key], False
        if frame.admit is not None and not frame.messages:
            await frame.admit()
    # In this process's next group commit (message_writer), not on the process's one
    # shared ORM thread: the insert also waits on Redis (the enqueue) after its
    # commit, and consumers must not queue behind it.
    message = await writer.message_create(
        NewMessage(
            room_name=room_name,
            sender_id=sender_id,
            receiver_id=receiver_id,
            sender=sender,
            content=content,
            client_id=client_id,
        )
    )
    if frame is not None and in_frame:
        frame.messages[key] = message
    return message, True
