"""/healthz and /readyz on a real uvicorn, with dependencies really going away."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from chatproj.embedded import embedded_kafka, free_port


def get(url: str) -> tuple[int, dict]:
    """Status and JSON body of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.django_db(transaction=True)
def test_healthz_and_readyz_when_all_is_up(asgi_server):
    """Liveness is 200; readiness is 200 with every check ok."""
    assert get(f"http://{asgi_server}/healthz") == (200, {"status": "ok"})
    status, body = get(f"http://{asgi_server}/readyz")
    assert status == 200, body
    assert body["failed"] == [] and set(body["checks"]) == {
        "database",
        "redis",
        "kafka",
    }


@pytest.mark.django_db(transaction=True)
def test_readyz_goes_503_without_kafka_and_200_when_it_is_back(
    start_web, kafka_port_down
):
    """The broker stopped: 503 naming kafka, quickly; started again: 200."""
    base = start_web(KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{kafka_port_down}")
    status, body = get(f"{base}/readyz")
    assert status == 503 and body["failed"] == ["kafka"], body
    assert "refused" in body["checks"]["kafka"]["error"].lower()
    assert get(f"{base}/healthz")[0] == 200  # alive, just not ready
    with embedded_kafka(kafka_port_down):
        assert get(f"{base}/readyz")[0] == 200
    assert get(f"{base}/readyz")[0] == 503


@pytest.mark.django_db(transaction=True)
def test_readyz_names_redis_when_it_is_down(start_web):
    """Redis unreachable: 503 naming redis, within the per-check bound."""
    import time

    base = start_web(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    status, body = get(f"{base}/readyz")
    assert time.monotonic() - started < 3
    assert status == 503 and body["failed"] == ["redis"], body


@pytest.mark.django_db(transaction=True)
def test_health_endpoints_refuse_other_methods(asgi_server):
    """Only GET is served."""
    request = urllib.request.Request(
        f"http://{asgi_server}/readyz", method="POST", data=b"x"
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)
    assert error.value.code == 405
