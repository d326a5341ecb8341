"""Flower, the Celery monitor, shows an operator the retries of a Kafka publish."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chat.models import Message
from chat.services.messages import message_create
from chatproj.embedded import embedded_kafka, free_port, port_answers

from ..support import ROOT, ManagedProcess, wait_for

pytestmark = pytest.mark.django_db(transaction=True)
ARTIFACTS = ROOT / "test-artifacts"
PUBLISH_TASK = "chat.tasks.publish_chat_message"
# Flower's tasks page hides args, retries and exception unless asked (docs/operations.md, "Finding retried and failed publishes in Flower").
TASKS_COLUMNS = "name,state,retries,exception,args,received,uuid,worker"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


class Flower:
    """A running Flower process and a basic-auth client of its HTTP API."""

    user = "ops"

    def __init__(self, process: ManagedProcess, port: int, password: str) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self.password = password

    def get(self, path: str, password: str | None = None) -> tuple[int, bytes]:
        """GET a path with basic auth (this Flower's password unless given)."""
        secret = self.password if password is None else password
        token = base64.b64encode(f"{self.user}:{secret}".encode()).decode()
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"Basic {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def get_json(self, path: str) -> Any:
        """GET a JSON API path; anything but 200 fails the test."""
        status, body = self.get(path)
        assert status == 200, f"GET {path}: HTTP {status} {body[:300]!r}"
        return json.loads(body)

    def publish_task_of(self, message_id: str) -> dict[str, Any] | None:
        """Flower's record of the publish task whose args hold this message_id."""
        query = urllib.parse.urlencode({"taskname": PUBLISH_TASK})
        tasks = self.get_json(f"/api/tasks?{query}")
        found = [t for t in tasks.values() if message_id in (t.get("args") or "")]
        assert len(found) <= 1, found
        return found[0] if found else None


@pytest.fixture
def flower(
    process_env: dict[str, str], log_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Flower]:
    """A real `celery flower` subprocess with basic auth, up and answering."""
    port, password = free_port(), secrets.token_urlsafe(16)
    process = ManagedProcess(
        "flower",
        [sys.executable, "-m", "celery", "-A", "chatproj", "flower", f"--port={port}",
         "--address=127.0.0.1", f"--basic-auth={Flower.user}:{password}",
         f"--tasks_columns={TASKS_COLUMNS}"],
        process_env,
        log_dir,
    ).start()  # fmt: skip
    try:
        flower = Flower(process, port, password)
        wait_for(lambda: port_answers("127.0.0.1", port), 30, what="Flower listening")
        wait_for(lambda: flower.get("/healthcheck")[0] == 200, 10, what="healthcheck")
        yield flower
    finally:
        process.stop()
        if getattr(request.node, "rep_call_failed", False):
            sys.stderr.write(f"--- flower ---\n{process.log()[-6000:]}\n")


def wait_for_task(
    flower: Flower,
    message_id: str,
    state: str,
    seen: list[tuple[str, int]],
    min_retries: int = 0,
    timeout: float = 20,
) -> dict[str, Any]:
    """Poll Flower until the message's publish task is in `state` with enough retries;
    every (state, retries) seen on the way is appended to `seen` for the failure text."""

    def shown() -> dict[str, Any] | None:
        task = flower.publish_task_of(message_id)
        if task is None:
            return None
        now = (task["state"], task["retries"] or 0)
        if not seen or seen[-1] != now:
            seen.append(now)
        return task if now[0] == state and now[1] >= min_retries else None

    try:
        return wait_for(shown, timeout, interval=0.02, what=f"{state} in Flower")
    except AssertionError as error:
        raise AssertionError(f"{error}; Flower showed {seen}") from None


def chromium_path() -> str | None:
    """Debian's Chromium (never a downloaded browser); fails in CI when missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and os.environ.get("CI"):
        pytest.fail("Chromium is missing: apt-get install chromium")
    return path


def screenshot_task(flower: Flower, task_id: str, chromium: str) -> list[Path]:
    """Screenshots of the task's own page (state, retries, exception, timestamps)
    and of Flower's tasks page (a row with the retries and exception columns)."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    shots = [ARTIFACTS / "flower-tasks.png", ARTIFACTS / "flower-tasks-list.png"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                http_credentials={"username": flower.user, "password": flower.password},
                viewport={"width": 1400, "height": 1060},
            )
            page = context.new_page()
            page.goto(f"{flower.url}/task/{task_id}")
            page.get_by_text("RetriablePublishError(").first.wait_for()
            page.screenshot(path=str(shots[0]))
            page.set_viewport_size({"width": 1800, "height": 460})
            page.goto(f"{flower.url}/tasks")
            row = page.locator("#tasks-table tbody tr", has_text=task_id[:8])
            row.get_by_text("RetriablePublishError").wait_for()
            page.screenshot(path=str(shots[1]), full_page=True)
        finally:
            browser.close()
    return shots


def test_wrong_password_gets_401(flower):
    """Flower's API and pages refuse a wrong basic-auth password with HTTP 401."""
    assert flower.get("/api/tasks")[0] == 200
    assert flower.get("/api/tasks", password="not-" + flower.password)[0] == 401
    assert flower.get("/tasks", password="")[0] == 401


def test_flower_shows_publish_retries_then_success(
    flower, start_worker, chat_users, kafka_port_down
):
    """Kafka down: Flower shows the publish task RETRY with the error; then SUCCESS."""
    chromium = chromium_path()
    start_worker(
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{kafka_port_down}",
        KAFKA_SEND_TIMEOUT="0.5",
        KAFKA_RETRY_TRIES="4",
        KAFKA_RETRY_DELAY="1",
        KAFKA_RETRY_BACKOFF="2",
        KAFKA_BREAKER_FAILURES="100",
    )
    # Flower knows only tasks whose events it saw: wait until it hears the worker.
    wait_for(
        lambda: any(flower.get_json("/api/workers?status=true").values()),
        20,
        interval=0.2,
        what="Flower receiving the worker's events",
    )
    message = message_create(
        room_name="flower", sender_id=chat_users["alice"].id, receiver_id=None,
        content="retried until Kafka is back",
    )  # fmt: skip
    message_id = str(message.message_id)
    seen: list[tuple[str, int]] = []  # (state, retries) as Flower showed them

    retrying = wait_for_task(flower, message_id, "RETRY", seen, min_retries=1)
    assert retrying["name"] == PUBLISH_TASK
    assert "RetriablePublishError" in retrying["exception"]
    assert "Kafka unreachable" in retrying["exception"]
    message.refresh_from_db()
    assert message.status == Message.Status.PENDING and message.attempts >= 1

    with embedded_kafka(kafka_port_down):
        done = wait_for_task(flower, message_id, "SUCCESS", seen, min_retries=1)
        message.refresh_from_db()
    assert done["uuid"] == retrying["uuid"] and done["retried"], seen
    assert message.status == Message.Status.PUBLISHED

    if chromium is None:
        warnings.warn("Chromium is not installed: no Flower screenshot", stacklevel=1)
        return
    for shot in screenshot_task(flower, done["uuid"], chromium):
        assert shot.stat().st_size > 10_000
