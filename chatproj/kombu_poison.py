"""A Redis broker transport that moves undecodable queue entries aside.

kombu's Redis transport decodes each BRPOP reply inside `Channel._brpop_read`, before
any consumer callback, so an entry that is not a kombu envelope (`not json`, `[]`,
`"hello"`, a body that is not base64, ...) raises out of the worker's event loop and
Celery stops with "Unrecoverable error". Celery's `on_decode_error` only sees bodies of
well-formed envelopes, and kombu 5.7.0 (the newest release) still decodes unguarded
(celery/celery#4308 is open; kombu#2421 is the same for SQS).

This module subclasses the transport instead of patching kombu's code, and registers
the subclass as kombu's `redis` transport (its alias table), so redis:// URLs stay
redis:// for Flower and in logs (Celery's `broker_transport` setting would show the
class path as the URL scheme, which Flower cannot read). The channel wraps the BRPOP
reply parser
of its consuming client (redis-py's public `set_response_callback`) and checks the
entry the way kombu is about to use it. A bad entry is logged once, pushed onto the
Redis list `poison_list` (a transport option, CELERY_POISON_LIST) and reported to
kombu as an empty poll, the path an idle BRPOP timeout takes. Good entries pass on
unchanged, so nothing else in the queue is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import kombu
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

logger = logging.getLogger(__name__)

# kombu releases whose BRPOP path was read (5.5.4, 5.6.2 and 5.7.0: the same code) and
# that tests/integration/test_kombu_poison.py runs on. Outside them: the stock
# transport, and a warning.
VERIFIED_KOMBU = ((5, 5), (5, 7))
TRANSPORT = "chatproj.kombu_poison:Transport"
# The dead-letter list is capped so a flood of poison cannot fill the broker's memory.
POISON_LIST_MAX = 10_000
LOGGED_BYTES = 200


def kombu_verified(version: str = kombu.__version__) -> bool:
    """Whether this kombu release is one the transport was verified against."""
    major, minor = (int(part) for part in version.split(".")[:2])
    return VERIFIED_KOMBU[0] <= (major, minor) <= VERIFIED_KOMBU[1]


def envelope_problem(channel: Any, item: bytes | str) -> str | None:
    """Why kombu could not deliver this queue entry, or None when it can."""
    try:
        payload = loads(bytes_to_str(item))
        message = channel.Message(payload, channel=channel)
        delivery = message.delivery_info
        delivery["exchange"], delivery["routing_key"]  # QoS.append reads both
        if not isinstance(message.delivery_tag, str | int):
            return f"delivery_tag is a {type(message.delivery_tag).__name__}"
    except Exception as exc:  # anything kombu would have raised
        return f"{type(exc).__name__}: {exc}"
    return None


class Channel(kombu_redis.Channel):
    """kombu's Redis channel whose consuming client sets poison aside, and that
    reuses one client for its commands."""

    poison_list = "celery.poison"
    _command_client: Any = None
    # kombu types this tuple by its exact length, so one more option needs the ignore.
    from_transport_options = (  # type: ignore[assignment]
        *kombu_redis.Channel.from_transport_options,
        "poison_list",
    )

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        """One command client per channel. kombu builds a new redis-py client object
        for every command (a publish, an ack, a task event), and building its table
        of reply parsers is costly (docs/PERFORMANCE.md).
        The client shares kombu's connection pool either way, so reusing it changes
        no connection; a new pool (after fork) gets a new client."""
        if client:
            yield client
            return
        pool = self.pool
        if (
            self._command_client is None
            or self._command_client.connection_pool is not pool
        ):
            self._command_client = self._create_client()
        yield self._command_client

    def _create_client(self, asynchronous: bool = False) -> Any:
        """kombu's client; the consuming (asynchronous) one checks BRPOP replies."""
        client = super()._create_client(asynchronous=asynchronous)
        if asynchronous:
            original = client.response_callbacks.get("BRPOP")
            client.set_response_callback("BRPOP", self._brpop_checker(original))
        return client

    def _brpop_checker(self, original: Callable[..., Any] | None) -> Callable[..., Any]:
        def check(response: Any, **options: Any) -> Any:
            reply = original(response, **options) if original else response
            if not reply:
                return reply
            queue, item = reply
            problem = envelope_problem(self, item)
            if problem is None:
                return reply
            self._set_aside(bytes_to_str(queue), item, problem)
            return None  # kombu reads a falsy reply as an empty poll and polls again

        return check

    def _set_aside(self, queue: str, item: bytes, problem: str) -> None:
        """Push a poison entry onto the dead-letter list and log it once."""
        raw = item if isinstance(item, bytes) else str(item).encode()
        try:
            with self.conn_or_acquire() as client:
                client.pipeline().lpush(self.poison_list, raw).ltrim(
                    self.poison_list, 0, POISON_LIST_MAX - 1
                ).execute()
        except Exception as exc:  # the log line is then the only copy
            logger.error(
                "Dropped an undecodable entry of queue %s (%s); could not move it to "
                "%s (%s), so here it is in full: %r",
                queue, problem, self.poison_list, exc, raw,
            )  # fmt: skip
            return
        logger.error(
            "Moved an undecodable entry of queue %s to the Redis list %s (%s): %r%s",
            queue, self.poison_list, problem, raw[:LOGGED_BYTES],
            "..." if len(raw) > LOGGED_BYTES else "",
        )  # fmt: skip


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the poison-safe channel."""

    Channel = Channel


def install() -> bool:
    """Make redis:// broker URLs use this transport (verified kombu releases only).

    Called from chatproj/celery.py, before any broker connection is made."""
    if not kombu_verified():
        logger.warning(
            "kombu %s is outside the releases the poison-safe transport was "
            "checked against (%s to %s): using kombu's own Redis transport, so an "
            "undecodable queue entry stops the worker. Run "
            "tests/integration/test_kombu_poison.py and widen VERIFIED_KOMBU in %s.",
            kombu.__version__, VERIFIED_KOMBU[0], VERIFIED_KOMBU[1], __name__,
        )  # fmt: skip
        return False
    # rediss://, sentinel:// and the others keep their stock transports.
    TRANSPORT_ALIASES["redis"] = TRANSPORT
    return True
