"""/metrics scraped from a real uvicorn while a real prefork worker publishes."""

from __future__ import annotations

import urllib.request

import pytest
from channels.db import database_sync_to_async
from prometheus_client.parser import text_string_to_metric_families

from ..support import WSClient, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def scrape(server: str) -> dict[str, float]:
    """Samples of one /metrics scrape, keyed by name and labels."""
    with urllib.request.urlopen(f"http://{server}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(
                f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "pid"
            )
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            samples[key] = samples.get(key, 0) + sample.value
    return samples


async def test_counters_move_across_web_and_worker_children(
    asgi_server, start_worker, chat_users
):
    """A message moves received (web), published and latency (worker child), the
    connection gauge, and the backlog gauge is read from the database."""
    await database_sync_to_async(start_worker)()
    before = await database_sync_to_async(scrape)(asgi_server)
    alice = await WSClient.connect(asgi_server, "metrics", chat_users["alice"].cookie)
    await alice.expect("history")
    during = await database_sync_to_async(scrape)(asgi_server)
    assert (
        during["chat_websocket_connections"]
        == before.get("chat_websocket_connections", 0) + 1
    )
    await alice.send({"message": "count me"})
    await alice.expect("message.ack")
    assert (await alice.expect("message.status"))["status"] == "published"

    def moved() -> dict[str, float] | None:
        after = scrape(asgi_server)
        done = (
            after.get("chat_messages_published_total", 0)
            == before.get("chat_messages_published_total", 0) + 1
        )
        return after if done else None

    after = await database_sync_to_async(wait_for)(moved, 10, what="published counter")
    assert (
        after["chat_messages_received_total"]
        == before.get("chat_messages_received_total", 0) + 1
    )
    assert (
        after["chat_publish_latency_seconds_count"]
        == before.get("chat_publish_latency_seconds_count", 0) + 1
    )
    assert after["chat_publish_latency_seconds_sum"] > before.get(
        "chat_publish_latency_seconds_sum", 0
    )
    assert after["chat_outbox_backlog{status=pending}"] == 0
    assert after["chat_outbox_backlog{status=failed}"] == 0
    await alice.close()
    gone = await database_sync_to_async(wait_for)(
        lambda: (
            scrape(asgi_server)["chat_websocket_connections"]
            == before.get("chat_websocket_connections", 0)
        ),
        10,
    )
    assert gone


async def test_backlog_and_retries_show_an_outage(
    asgi_server, start_worker, chat_users, kafka_port_down
):
    """With Kafka unreachable, retries and failures count up and the backlog shows it."""
    await database_sync_to_async(start_worker)(
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{kafka_port_down}",
        KAFKA_SEND_TIMEOUT="0.5",
        KAFKA_RETRY_TRIES="2",
        KAFKA_RETRY_DELAY="0.5",
    )
    before = await database_sync_to_async(scrape)(asgi_server)
    alice = await WSClient.connect(asgi_server, "metrics", chat_users["alice"].cookie)
    await alice.expect("history")
    await alice.send({"message": "stuck"})
    await alice.expect("message.ack")
    assert (await alice.expect("message.status", timeout=20))["status"] == "failed"
    after = await database_sync_to_async(scrape)(asgi_server)
    assert (
        after["chat_publish_retries_total"]
        == before.get("chat_publish_retries_total", 0) + 1
    )
    assert (
        after["chat_messages_failed_total"]
        == before.get("chat_messages_failed_total", 0) + 1
    )
    assert after["chat_outbox_backlog{status=failed}"] == 1
    await alice.close()


def test_a_scrape_skips_a_file_another_process_is_still_creating(tmp_path, monkeypatch):
    """A process's metrics file exists, still empty, while it is being created: the
    scrape leaves it out instead of failing (it raised struct.error, a 500)."""
    from prometheus_client import generate_latest
    from prometheus_client.values import MultiProcessValue

    from chat.infra.metrics import multiprocess_registry

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    value = MultiProcessValue(process_identifier=lambda: 4242)(
        "counter", "chat_test_total", "chat_test_total", (), (), "help"
    )
    value.inc(3)
    (tmp_path / "counter_4343.db").write_bytes(b"")  # just opened, not sized yet
    text = generate_latest(multiprocess_registry()).decode()
    assert "chat_test_total 3.0" in text
