"""Group commit for the sockets of one server process.

A process writes one batch at a time, not one transaction per frame in its own
thread (on SQLite such threads queue for the database's one write lock, and each
hand-over costs a wake-up and a GIL hand-over per statement). The messages
that arrive while a batch is written form the next one (messages_create: one
transaction, one UPDATE for all its rooms' seqs, one INSERT; on Postgres one
statement that is its own transaction). With little load a batch is one message and
nothing waits; under load batches grow and the cost per message falls.

A batch's callers get their messages as soon as it is committed and broadcast; the
next batch starts then too, while this one's publication is enqueued (a Redis round
trip) in its thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

from chat.infra.db import db_call
from chat.models import Message
from chat.services import broadcast
from chat.services.messages import NewMessage, messages_create

# Rows per INSERT: SQLite allows 32,766 parameters (16 per message).
MAX_BATCH = 200

_Waiting = tuple[NewMessage, "asyncio.Future[Message]"]


@dataclass
class _Writer:
    waiting: list[_Waiting] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    # batches whose transaction is done and whose enqueue may still run
    running: set[asyncio.Task[None]] = field(default_factory=set)


_writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Writer] = (
    weakref.WeakKeyDictionary()
)


async def message_create(new: NewMessage) -> Message:
    """message_create for a coroutine, in this loop's next batch.

    A caller that is cancelled stops waiting; its message is still written (it may
    already be in the batch's transaction), as a thread's insert was before.
    """
    loop = asyncio.get_running_loop()
    writer = _writers.setdefault(loop, _Writer())
    future: asyncio.Future[Message] = loop.create_future()
    writer.waiting.append((new, future))
    if writer.task is None:
        # A context of its own: the batch is no one frame's (log context, frame).
        writer.task = loop.create_task(_write(writer), context=contextvars.Context())
    return await future


async def _write(writer: _Writer) -> None:
    """Write batches until none waits, the next one once this one is committed."""
    loop = asyncio.get_running_loop()
    # Broadcasts from the batches' threads go to this loop (broadcast.server_loop).
    broadcast.server_loop.set(loop)
    try:
        while writer.waiting:
            batch = writer.waiting[:MAX_BATCH]
            del writer.waiting[:MAX_BATCH]
            committed: asyncio.Future[None] = loop.create_future()
            task = loop.create_task(_write_batch(batch, committed))
            writer.running.add(task)  # a reference, until it ends
            task.add_done_callback(writer.running.discard)
            await committed
    finally:
        writer.task = None


async def _write_batch(batch: list[_Waiting], committed: asyncio.Future[None]) -> None:
    loop = asyncio.get_running_loop()

    def on_stored(messages: list[Message]) -> None:  # in the batch's thread
        loop.call_soon_threadsafe(_settle, batch, messages, committed)

    results: Sequence[Message | Exception] = ()  # cancelled: the loop is closing
    try:
        results = await db_call(messages_create)(
            [new for new, _ in batch], on_stored=on_stored
        )
    except Exception as exc:  # the database refused the whole batch
        results = [exc] * len(batch)
    finally:
        _settle(batch, results, committed)


def _settle(
    batch: list[_Waiting],
    results: Sequence[Message | Exception],
    committed: asyncio.Future[None],
) -> None:
    """Give each caller its result, once (none: cancelled, nobody waits forever)."""
    for i, (_, future) in enumerate(batch):
        if future.done():  # settled already, or its caller was cancelled
            continue
        result = results[i] if i < len(results) else None
        if result is None:
            future.cancel()
        elif isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)
    if not committed.done():
        committed.set_result(None)
