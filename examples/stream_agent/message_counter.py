"""MessageCounterAgent: an example stream agent (docs/agents.md), not registered."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from chat.agents.records import Outcome, RecordRef
from chat.agents.stream import StreamAgent
from chat.schemas import ChatEvent

logger = logging.getLogger(__name__)


class MessageCounterAgent(StreamAgent):
    """Counts the chat messages of each room in this process's memory. Settings
    KAFKA_MESSAGE_COUNTER_* (group: chat-message-counter unless set)."""

    name = "message-counter"

    def __init__(self, **overrides: Any) -> None:
        super().__init__(**overrides)
        self.per_room: Counter[str] = Counter()

    def handle(self, events: Sequence[tuple[RecordRef, ChatEvent]]) -> Outcome:
        """Count a batch; every event is accepted."""
        rooms = Counter(event.room for _, event in events)
        self.per_room.update(rooms)
        for room in sorted(rooms):
            logger.info("%s: %d message(s)", room, self.per_room[room])
        return Outcome(accepted=[event for _, event in events])
