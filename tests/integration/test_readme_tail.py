"""README's snippet that tails the Kafka stream follows the configured broker."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from chat.services.messages import message_create

from ..support import ROOT, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def readme_tail_snippet() -> str:
    """The Python of README's "watch the Kafka stream" block."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("To watch the Kafka stream") :]
    match = re.search(r"<<'PY'\n(.*?)\nPY\n", section, re.S)
    assert match, "README has no Kafka tail snippet"
    return match[1]


def test_readme_kafka_tail_reads_the_configured_broker(
    start_worker, chat_users, kafka_bootstrap, process_env, log_dir
):
    """Run as written against this test's broker (not the default 127.0.0.1:9092):
    it prints the published message."""
    worker = start_worker()
    message = message_create(
        room_name="tail", sender_id=chat_users["alice"].id, receiver_id=None,
        content="seen by the README tail",
    )  # fmt: skip
    out = log_dir / "readme-tail.log"
    env = {**process_env, "KAFKA_CHAT_TOPIC": worker.topic}
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == kafka_bootstrap != "127.0.0.1:9092"
    with out.open("w") as sink:
        tail = subprocess.Popen(
            [sys.executable, "-"], cwd=ROOT, env=env, stdin=subprocess.PIPE,
            stdout=sink, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            assert tail.stdin is not None
            tail.stdin.write(readme_tail_snippet())
            tail.stdin.close()
            wait_for(
                lambda: str(message.message_id) in out.read_text(),
                60,
                what="the README tail printing the message",
            )
        finally:
            tail.kill()
            tail.wait(10)
