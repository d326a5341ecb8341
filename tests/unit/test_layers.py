"""The web path never loads Kafka (the layer contracts themselves are checked by
`make lint`: lint-imports)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ..support import ROOT


def kafka_loaded_after(code: str) -> bool:
    """Whether a fresh process has imported kafka-python after running `code`."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import django, sys; django.setup(); {code}; "
            "print(any(m == 'kafka' or m.startswith('kafka.') for m in sys.modules))",
        ],
        env={
            **os.environ,
            "DEBUG": "True",
            "DJANGO_SETTINGS_MODULE": "chatproj.settings",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize(
    "code",
    [
        "import chatproj.asgi",
        "import chatproj.urls",
        "from chat.agents import KafkaChatAgent, ChatValidationError, ChatEvent",
        "from chat.agents import KafkaChatAgent; KafkaChatAgent.get_instance()",
        "from chat.consumers import ChatConsumer",
    ],
)
def test_the_web_path_loads_no_kafka_client(code):
    """The ASGI app, the URLs, the agent API and its facade (until it publishes)
    import no Kafka client."""
    assert not kafka_loaded_after(code)


def test_publishing_does_load_kafka():
    """The probe sees kafka-python when it is loaded (so the test above can fail)."""
    assert kafka_loaded_after(
        "from chat.agents import KafkaChatAgent; KafkaChatAgent.get_instance().chat_producer"
    )
