"""Ceilings measured on the same servers: what the parts can do on their own.

- Celery: a no-op task, a task that only publishes, and the chat's publish task on a
  message already published (a cheap repeat), each with the run's worker flags.
- kafka-python: one record per acknowledgement, and pipelined (send all, one flush).
- Channels: a group_send → receive round trip through the Redis channel layer.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from .cpu import cpu_delta
from .tasks import CEILING_KEY, ceiling_event

logger = logging.getLogger(__name__)

CEILING_QUEUE = "bench.ceiling"  # a queue of its own: filled first, then consumed
UNACKED_KEY = "unacked"  # kombu's Redis transport keeps fetched, unacked tasks here


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def worker_knows(app: Any, names: Sequence[str], timeout: float = 3.0) -> bool:
    """Whether a running worker has all these tasks registered."""
    replies = app.control.inspect(timeout=timeout).registered() or {}
    known = {name for tasks in replies.values() for name in tasks}
    return bool(replies) and all(name in known for name in names)


def celery_ceiling(
    app: Any,
    redis_url: str,
    task: str,
    count: int,
    *,
    args: Callable[[int], list[Any]] | None = None,
    snapshot: Callable[[], dict[str, float]] | None = None,
    timeout: float = 180.0,
) -> dict[str, Any]:
    """Fill a queue no worker consumes with `count` tasks, let the workers consume it
    (add_consumer), and time until it and the unacked set are empty again: tasks are
    acked late, so that is "all done". Filling is not timed (Celery's send is slow)."""
    client = redis.Redis.from_url(redis_url)

    def outstanding() -> tuple[int, int]:
        pipe = client.pipeline(transaction=False)
        pipe.llen(CEILING_QUEUE)
        pipe.hlen(UNACKED_KEY)
        length, unacked = pipe.execute()
        return int(length), int(unacked)

    def run(n: int, offset: int) -> tuple[float, float, dict[str, float]]:
        start = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for i in range(n):
                app.send_task(
                    task,
                    args=args(offset + i) if args else (),
                    queue=CEILING_QUEUE,
                    producer=producer,
                )
        filled = time.perf_counter() - start
        base_unacked = outstanding()[1]
        asked = time.perf_counter()
        app.control.add_consumer(CEILING_QUEUE, reply=False)
        try:
            # The worker takes up the queue within its poll interval (about 1 s):
            # the clock starts when the first task leaves the queue.
            while outstanding()[0] >= n:
                if time.perf_counter() > asked + timeout:
                    raise TimeoutError(f"no worker consumed {CEILING_QUEUE}")
                time.sleep(0.001)
            before = snapshot() if snapshot else {}
            start = time.perf_counter()
            done_once = False
            while True:
                length, unacked = outstanding()
                if length == 0 and unacked <= base_unacked:
                    if done_once:  # twice in a row: none was between pop and unacked
                        return time.perf_counter() - start, filled, before
                    done_once = True
                else:
                    done_once = False
                if time.perf_counter() > start + timeout:
                    raise TimeoutError(f"{task}: {length} queued after {timeout:g}s")
                time.sleep(0.005)
        finally:
            # (waits the whole timeout for replies: the worker's last poll of the
            # queue ends meanwhile, so the next fill is not consumed early)
            app.control.cancel_consumer(CEILING_QUEUE, reply=True, timeout=1.5)

    warmup = max(20, count // 20)
    run(warmup, 0)  # every prefork child imports the task and builds its producer
    seconds, filled, before = run(count, warmup)
    result: dict[str, Any] = {
        "task": task,
        "tasks": count,
        "seconds": round(seconds, 3),
        "rate": round(count / seconds, 1),
        "fill_seconds": round(filled, 3),
    }
    if snapshot:
        cpu = cpu_delta(before, snapshot(), seconds)
        result["cpu"] = cpu
        if "worker" in cpu:
            result["worker_cpu_ms_per_task"] = round(
                1000 * cpu["worker"]["cpu_seconds"] / count, 3
            )
    return result


def kafka_ceiling(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    """Raw kafka-python with the agent's producer settings: per-ack and pipelined."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="bench-raw",
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
    )
    value = ceiling_event().value
    try:
        producer.send(topic, key=CEILING_KEY, value=value).get(timeout=10)
        latencies = []
        start = time.perf_counter()
        for _ in range(count):
            sent = time.perf_counter()
            producer.send(topic, key=CEILING_KEY, value=value).get(timeout=10)
            latencies.append(time.perf_counter() - sent)
        per_ack = time.perf_counter() - start
        start = time.perf_counter()
        futures = [
            producer.send(topic, key=CEILING_KEY, value=value) for _ in range(count)
        ]
        producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=10)
        pipelined = time.perf_counter() - start
    finally:
        producer.close(timeout=5)
    return {
        "kafka_per_ack": {
            "records": count,
            "seconds": round(per_ack, 3),
            "rate": round(count / per_ack, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 2),
            "p99_ms": round(1000 * percentile(latencies, 99), 2),
        },
        "kafka_pipelined": {
            "records": count,
            "seconds": round(pipelined, 3),
            "rate": round(count / pipelined, 1),
        },
    }


async def channel_layer_ceiling(count: int) -> dict[str, Any]:
    """group_send then receive on one channel, `count` times, with the run's layer."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()  # the run's layer (list- or pubsub-based)
    assert layer is not None
    group = "bench.ceiling"
    channel = await layer.new_channel()
    await layer.group_add(group, channel)
    try:
        for _ in range(5):
            await layer.group_send(group, {"type": "bench.ping"})
            await layer.receive(channel)
        latencies = []
        start = time.perf_counter()
        for _ in range(count):
            sent = time.perf_counter()
            await layer.group_send(group, {"type": "bench.ping"})
            await layer.receive(channel)
            latencies.append(time.perf_counter() - sent)
        seconds = time.perf_counter() - start
    finally:
        await layer.group_discard(group, channel)
        close = getattr(layer, "close_pools", None) or getattr(layer, "flush", None)
        if close is not None:
            await close()
    return {
        "round_trips": count,
        "seconds": round(seconds, 3),
        "rate": round(count / seconds, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2),
        "p99_ms": round(1000 * percentile(latencies, 99), 2),
    }
