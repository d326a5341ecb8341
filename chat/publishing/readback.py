"""Whether records the producer wrote were committed: read them back.

A transaction whose commit went unanswered is in doubt: the coordinator may have
committed it or may abort it. Once a new producer with the same transactional id has
initialised, the cluster has decided, and a `read_committed` consumer returns the
records at their offsets only if they were committed (it skips aborted ones).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaConsumer, TopicPartition


def records_committed(
    *,
    bootstrap_servers: list[str],
    records: Iterable[tuple[str, int, int]],
    timeout: float,
    client_options: dict[str, Any] | None = None,
) -> set[tuple[str, int, int]] | None:
    """Which of the (topic, partition, offset) records a read_committed consumer
    sees (committed; the others were aborted), or None when that was not decided
    within `timeout` seconds: the cluster did not answer, or a transaction is
    still open before the last of them."""
    wanted: dict[TopicPartition, set[int]] = {}
    for topic, partition, offset in records:
        wanted.setdefault(TopicPartition(topic, partition), set()).add(offset)
    if not wanted:
        return set()
    timeout_ms = max(int(timeout * 1000), 1000)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
        request_timeout_ms=timeout_ms + 1000,
        fetch_max_wait_ms=100,
        **(client_options or {}),
    )
    seen: set[tuple[TopicPartition, int]] = set()
    try:
        consumer.assign(list(wanted))
        for tp, offsets in wanted.items():
            consumer.seek(tp, min(offsets))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for tp, batch in consumer.poll(timeout_ms=200).items():
                seen.update((tp, r.offset) for r in batch if r.offset in wanted[tp])
            # The position moves past aborted records too: past the last offset
            # wanted, every committed one has been returned.
            if all(
                (consumer.position(tp, timeout_ms=200) or 0) > max(offsets)
                for tp, offsets in wanted.items()
            ):
                break
        else:
            return None
    finally:
        consumer.close()
    return {(tp.topic, tp.partition, offset) for tp, offset in seen}
