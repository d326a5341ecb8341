"""ChatStreamReorderer: pure logic (the fault tests run it on real Kafka data too)."""

from __future__ import annotations

import random
import uuid

import pytest

from chat.agents.reorderer import ChatStreamReorderer


def events(room: str, count: int) -> list[dict]:
    """`count` events of one room with seq 1..count."""
    return [
        {"message_id": str(uuid.uuid4()), "room": room, "seq": n}
        for n in range(1, count + 1)
    ]


def test_shuffled_with_duplicates_comes_out_once_and_in_order():
    """Within the window, any shuffle with repeats yields each event once, in seq order."""
    rng = random.Random(7)
    stream = events("a", 200) + events("b", 150)
    noisy = stream + rng.sample(stream, 80)  # 80 redeliveries
    rng.shuffle(noisy)
    reorderer = ChatStreamReorderer(window=1000)
    out = [e for event in noisy for e in reorderer.push(event)]
    assert reorderer.buffered == 0
    for room in ("a", "b"):
        assert [e["seq"] for e in out if e["room"] == room] == sorted(
            e["seq"] for e in stream if e["room"] == room
        )
    assert len(out) == len({e["message_id"] for e in out}) == len(stream)
    assert reorderer.stats.duplicates == 80
    assert reorderer.stats.gaps_skipped == 0


def test_gap_is_skipped_after_window_and_late_event_still_released():
    """A missing seq is waited for `window` events, then skipped; it comes late once."""
    stream = events("r", 6)
    reorderer = ChatStreamReorderer(window=3)
    out = []
    for event in stream[:1] + stream[2:]:  # seq 2 missing
        out += reorderer.push(event)
    assert [e["seq"] for e in out] == [1, 3, 4, 5, 6]
    assert reorderer.stats.gaps_skipped == 1
    assert [e["seq"] for e in reorderer.push(stream[1])] == [2]
    assert reorderer.push(stream[1]) == []  # and only once
    assert (reorderer.stats.late, reorderer.stats.duplicates) == (1, 1)


def test_gap_is_skipped_after_max_wait():
    """expire() releases a room whose gap waited longer than max_wait."""
    now = [0.0]
    stream = events("r", 3)
    reorderer = ChatStreamReorderer(max_wait=5, clock=lambda: now[0])
    assert reorderer.push(stream[2]) == []
    now[0] = 4.9
    assert reorderer.expire() == []
    now[0] = 5.0
    assert [e["seq"] for e in reorderer.expire()] == [3]
    assert [e["seq"] for e in reorderer.push(stream[0])] == [1]


def test_start_seqs_and_drain():
    """A consumer joining mid-stream passes start seqs; drain() flushes the rest."""
    stream = events("r", 10)
    reorderer = ChatStreamReorderer(start_seqs={"r": 8})
    assert [e["seq"] for e in reorderer.push(stream[8])] == []
    assert [e["seq"] for e in reorderer.push(stream[7])] == [8, 9]
    assert [e["seq"] for e in reorderer.push(stream[9])] == [10]
    assert reorderer.buffered == 0
    other = ChatStreamReorderer()
    other.push(stream[4])
    other.push(stream[2])
    assert [e["seq"] for e in other.drain()] == [3, 5]


def test_bad_parameters_are_refused():
    """Nonsense windows are a clear error."""
    with pytest.raises(ValueError, match="window"):
        ChatStreamReorderer(window=0)
