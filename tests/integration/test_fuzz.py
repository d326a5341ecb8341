"""Fuzzing a live ChatConsumer through a real uvicorn (hypothesis).

At least 10,000 generated frames (CHAT_FUZZ_EXAMPLES examples of 100 frames; 100 by
default) go over four sockets of one user: random JSON, chat-shaped objects with wrong
types, deep nesting, huge numbers, lone surrogates as JSON escapes, control and bidi
characters, non-JSON text, binary frames, and a few 1 MB frames. Every frame must be
answered with an ack or an error frame with a documented code, in order; frames that
are bad by construction must be refused; no socket may close; and exactly the acked
messages are stored and published to Kafka, with the content that was sent.

    .venv/bin/python -m pytest tests/integration/test_fuzz.py                      # ~10,000 frames
    CHAT_FUZZ_EXAMPLES=1000 .venv/bin/python -m pytest tests/integration/test_fuzz.py  # 100,000
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.models import Message
from chat.realtime.frames import FRAME_TYPES

from ..support import WSClient, event_of, read_topic, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

DOCUMENTED_CODES = {
    "invalid_json",
    "invalid_message",
    "empty",
    "too_long",
    "unknown_receiver",
    "rate_limited",
    "forbidden",
}
EXAMPLES = int(os.environ.get("CHAT_FUZZ_EXAMPLES", "100"))
FRAMES_PER_EXAMPLE = 100
SOCKETS = 4
MB = 1_000_000  # under the server's 1 MiB frame limit (larger frames: close 1009)


@dataclass(frozen=True)
class Frame:
    """A frame to send, and whether it is bad by construction (must be refused)."""

    payload: str | bytes
    must_refuse: bool = False


_ids = itertools.count()


def unique_client_ids(value: Any) -> Any:
    """Give every string client_id a fresh value: a resent client_id is the protocol's
    idempotency key (same ack, nothing new), which the oracle does not model."""
    if isinstance(value, dict) and isinstance(value.get("client_id"), str):
        return {**value, "client_id": f"fz-{next(_ids)}"}
    return value


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
visible_text = st.text(
    alphabet=st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=60
)
any_text = st.text(max_size=200)  # every code point but surrogates
controls = st.sampled_from(
    [chr(c) for c in [*range(0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)]]
)
bidi = st.sampled_from(
    [chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]]
)


def dumps(value: Any) -> str:
    """JSON as a client may send it (NaN and Infinity included)."""
    return json.dumps(unique_client_ids(value))


chat_shaped = st.fixed_dictionaries(
    {"message": st.one_of(visible_text, any_text, json_values)},
    optional={
        "type": st.one_of(
            st.sampled_from(["chat.message", "chat.delete", ""]), json_values
        ),
        "receiver_id": st.one_of(st.none(), st.integers(-5, 10), json_values),
        "client_id": st.one_of(st.text(max_size=5), json_values),
        "sender_id": json_values,
        "sender": st.text(max_size=10),
    },
).map(lambda d: Frame(dumps(d)))

valid = st.builds(
    lambda text, cid: Frame(json.dumps({"message": text, "client_id": cid})),
    visible_text,
    st.builds(lambda: f"fz-{next(_ids)}"),
)


def _nest(n: int, shape: str) -> str:
    return {
        "list": "[" * n + "]" * n,
        "object": '{"a":' * n + "1" + "}" * n,
        "message": '{"message":' * n + '"x"' + "}" * n,
        "open": "[" * n,
    }[shape]


deep = st.builds(
    lambda n, shape: Frame(_nest(n, shape), must_refuse=True),
    st.integers(min_value=200, max_value=20_000),
    st.sampled_from(["list", "object", "message", "open"]),
)
huge_numbers = st.builds(
    lambda digits, where: Frame(
        {
            "receiver": '{"message": "hi", "receiver_id": %s}',
            "message": '{"message": %s}',
            "type": '{"message": "hi", "type": %s}',
        }[where]
        % digits,
        must_refuse=True,
    ),
    st.one_of(
        st.integers(min_value=20, max_value=6000).map(lambda n: "9" * n),
        st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "-0.0", "1.5"]),
    ),
    st.sampled_from(["receiver", "message", "type"]),
)
lone_surrogates = st.builds(
    lambda before, code, after: Frame(
        f'{{"message": {json.dumps(before)[:-1]}\\u{code:04x}{json.dumps(after)[1:]}}}',
        must_refuse=True,
    ),
    visible_text,
    st.integers(min_value=0xD800, max_value=0xDFFF),
    any_text,
)
with_controls = st.builds(
    lambda before, bad, after: Frame(
        json.dumps({"message": before + bad + after}), must_refuse=True
    ),
    visible_text,
    st.one_of(controls, bidi),
    any_text,
)
invisible = st.builds(
    lambda text: Frame(json.dumps({"message": text}), must_refuse=True),
    st.text(
        alphabet=st.sampled_from(" \n\t\u00a0\u200b\u200c\u200d\u2060\ufeff\u3000"),
        max_size=20,
    ),
)


def _is_control_frame(text: str) -> bool:
    """A frame of a type other than chat.message (read, resume, ping, pong,
    typing): answered without an error, or not at all, so not garbage."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        return False
    kind = raw.get("type") if isinstance(raw, dict) else None
    return kind in FRAME_TYPES and kind != "chat.message"


garbage_text = any_text.filter(lambda t: not _is_control_frame(t)).map(Frame)
binary = st.binary(max_size=200).map(lambda b: Frame(b, must_refuse=True))
random_json = json_values.map(lambda v: Frame(dumps(v)))

frames = st.one_of(
    valid,
    chat_shaped,
    random_json,
    deep,
    huge_numbers,
    lone_surrogates,
    with_controls,
    invisible,
    garbage_text,
    binary,
)

ONE_MB = [
    Frame(json.dumps({"message": "x" * (MB - 20)}), must_refuse=True),  # too_long
    Frame("x" * MB, must_refuse=True),  # not JSON
    Frame(b"\x00" * MB, must_refuse=True),  # binary
    Frame("[" * (MB // 2) + "]" * (MB // 2), must_refuse=True),  # deep
    Frame('{"message": "hi", "pad": "%s"}' % ("y" * (MB - 40))),  # a valid message
]


class Ledger:
    """What the server answered, for the final comparison with the DB and Kafka."""

    def __init__(self) -> None:
        self.sent = 0
        self.acked: dict[str, str] = {}  # message_id -> content sent
        self.codes: dict[str, int] = {}


async def send_batch(client: WSClient, batch: list[Frame], ledger: Ledger) -> None:
    """Send the frames, then read one ack-or-error per frame, in order, and judge it."""
    for frame in batch:
        await client.send(frame.payload)
    for frame in batch:
        reply = await client.expect(
            lambda f: f.get("type") in ("message.ack", "error"), timeout=60
        )
        ledger.sent += 1
        if reply["type"] == "error":
            assert reply["code"] in DOCUMENTED_CODES, (frame.payload[:200], reply)
            assert reply["code"] != "rate_limited", reply
            ledger.codes[reply["code"]] = ledger.codes.get(reply["code"], 0) + 1
            continue
        assert not frame.must_refuse, ("acked a bad frame", frame.payload[:200])
        sent = json.loads(frame.payload)
        assert isinstance(sent, dict) and isinstance(sent["message"], str)
        assert reply["message_id"] not in ledger.acked
        ledger.acked[reply["message_id"]] = sent["message"]
        ledger.codes["ack"] = ledger.codes.get("ack", 0) + 1
    # what is left is broadcasts and statuses: not judged here (the DB and Kafka are)
    assert not [f for f in client.unread if f.get("type") in ("message.ack", "error")]
    client.unread.clear()


def test_fuzzed_frames_never_crash_a_socket(
    start_web, start_worker, kafka_bootstrap, chat_users
):
    """≥10,000 generated frames: only acks and documented errors, bad frames refused,
    no socket closed, exactly the acked messages stored and published, as sent."""
    worker = start_worker()
    base = start_web(
        CHAT_RATE_LIMIT="1000000/second",
        CHAT_FRAME_RATE="",
        CHAT_FLOOD_CLOSE_AFTER="0",
        KAFKA_CHAT_TOPIC=worker.topic,
    )
    server = base.removeprefix("http://")
    loop = asyncio.new_event_loop()
    ledger = Ledger()

    async def open_all() -> list[WSClient]:
        clients = [
            await WSClient.connect(server, "fuzz", chat_users["alice"].cookie)
            for _ in range(SOCKETS)
        ]
        for client in clients:
            await client.expect("history")
        return clients

    clients = loop.run_until_complete(open_all())

    async def run(batch: list[Frame]) -> None:
        share = [batch[i::SOCKETS] for i in range(SOCKETS)]
        await asyncio.gather(
            *(
                send_batch(c, part, ledger)
                for c, part in zip(clients, share, strict=True)
            )
        )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(frames, min_size=FRAMES_PER_EXAMPLE, max_size=FRAMES_PER_EXAMPLE))
    def fuzz(batch: list[Frame]) -> None:
        loop.run_until_complete(run(batch))

    try:
        loop.run_until_complete(run(ONE_MB))
        fuzz()
        assert ledger.sent >= EXAMPLES * FRAMES_PER_EXAMPLE + len(ONE_MB)
        # every kind of outcome happened, so the oracle judged something
        assert ledger.codes.get("ack", 0) > 100, ledger.codes
        for code in ("invalid_json", "invalid_message", "empty", "too_long"):
            assert ledger.codes.get(code, 0) > 0, ledger.codes

        async def all_open() -> None:
            for n, client in enumerate(clients):
                await client.send({"message": "still open", "client_id": f"end-{n}"})
                ack = await client.expect("message.ack")
                ledger.acked[ack["message_id"]] = "still open"

        loop.run_until_complete(all_open())
    finally:
        for client in clients:
            loop.run_until_complete(client.close())
        loop.close()

    stored = dict(Message.objects.values_list("message_id", "content"))
    assert {str(k): v for k, v in stored.items()} == ledger.acked
    wait_for(
        lambda: Message.objects.filter(status="published").count() == len(ledger.acked),
        120,
        what="every acked message published",
    )
    records = read_topic(kafka_bootstrap, worker.topic, expected=len(ledger.acked))
    published = {event_of(r)["message_id"]: event_of(r)["content"] for r in records}
    assert published == ledger.acked
