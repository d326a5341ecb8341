"""Consumer side of the chat stream: each message once, in seq order per room.

Delivery to Kafka is at least once, and two workers (or a retry of message n racing
message n+1) can put a room's events on its partition out of seq order. A consumer
feeds every event it reads to `ChatStreamReorderer.push()` and handles what it returns:
each `message_id` exactly once, and per room in increasing `seq`. A missing seq is
waited for within a bounded window (`window` buffered events or `max_wait` seconds);
after that the gap is skipped and counted, and the missing event, if it still comes,
is released late rather than dropped.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Event = dict[str, Any]


def decode_record(record: Any) -> Event:
    """The JSON event of a Kafka record (kafka-python ConsumerRecord or similar)."""
    return json.loads(record.value.decode("utf-8"))


@dataclass
class _Room:
    next_seq: int
    buffered: dict[int, Event] = field(default_factory=dict)
    gap_since: float | None = None


@dataclass
class ReorderStats:
    """What the reorderer saw."""

    received: int = 0
    released: int = 0
    duplicates: int = 0
    gaps_skipped: int = 0
    late: int = 0


class ChatStreamReorderer:
    """De-duplicates chat events by message_id and reorders them by seq per room."""

    def __init__(
        self,
        *,
        window: int = 1000,
        max_wait: float = 30.0,
        remember: int = 1_000_000,
        start_seqs: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window < 1 or max_wait < 0 or remember < 1:
            raise ValueError("window and remember must be >= 1 and max_wait >= 0")
        self.window = window
        self.max_wait = max_wait
        self.remember = remember
        self.start_seqs = dict(start_seqs or {})
        self.clock = clock
        self.stats = ReorderStats()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._rooms: dict[str, _Room] = {}

    def push(self, event: Mapping[str, Any]) -> list[Event]:
        """Take one event; return the events now ready, in order (maybe none)."""
        self.stats.received += 1
        message_id = str(event["message_id"])
        if message_id in self._seen:
            self._seen.move_to_end(message_id)
            self.stats.duplicates += 1
            return []
        self._seen[message_id] = None
        if len(self._seen) > self.remember:
            self._seen.popitem(last=False)

        room_name, seq = str(event["room"]), int(event["seq"])
        room = self._rooms.get(room_name)
        if room is None:
            room = self._rooms[room_name] = _Room(self.start_seqs.get(room_name, 1))
        if seq < room.next_seq:  # its gap was already skipped
            self.stats.late += 1
            return self._released([dict(event)])
        room.buffered[seq] = dict(event)
        ready = self._release_in_order(room)
        if len(room.buffered) > self.window:
            ready += self._skip_gap(room)
        return self._released(ready)

    def expire(self) -> list[Event]:
        """Skip gaps that have waited longer than max_wait; return what that frees."""
        now = self.clock()
        ready: list[Event] = []
        for room in self._rooms.values():
            while room.gap_since is not None and now - room.gap_since >= self.max_wait:
                ready += self._skip_gap(room)
        return self._released(ready)

    def drain(self) -> list[Event]:
        """End of stream: release everything still buffered, skipping gaps."""
        ready: list[Event] = []
        for room in self._rooms.values():
            while room.buffered:
                ready += self._skip_gap(room)
        return self._released(ready)

    @property
    def buffered(self) -> int:
        """Events held back waiting for a missing seq."""
        return sum(len(room.buffered) for room in self._rooms.values())

    def _release_in_order(self, room: _Room) -> list[Event]:
        ready = []
        while room.next_seq in room.buffered:
            ready.append(room.buffered.pop(room.next_seq))
            room.next_seq += 1
        if not room.buffered:
            room.gap_since = None
        elif ready or room.gap_since is None:  # a new gap starts waiting now
            room.gap_since = self.clock()
        return ready

    def _skip_gap(self, room: _Room) -> list[Event]:
        room.next_seq = min(room.buffered)
        room.gap_since = None
        self.stats.gaps_skipped += 1
        return self._release_in_order(room)

    def _released(self, events: list[Event]) -> list[Event]:
        self.stats.released += len(events)
        return events
