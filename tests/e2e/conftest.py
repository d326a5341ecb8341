"""Fixtures of the browser tests: a headless Chromium, logged-in pages, and a web
server a test may restart."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chatproj.embedded import free_port, port_answers

from ..support import ManagedProcess, wait_for, web_server_args
from .browser import Pages, chromium_path


@pytest.fixture
async def browser():
    """A headless Chromium (required in CI, skipped elsewhere when absent)."""
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: apt-get install chromium")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        instance = await p.chromium.launch(
            executable_path=path,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )  # fmt: skip
        yield instance
        await instance.close()


@pytest.fixture
def pages(browser) -> Pages:
    """Logged-in pages of the test's users."""
    return Pages(browser)


@pytest.fixture
def restartable_web(
    process_env: dict[str, str], log_dir: Path
) -> Iterator[Callable[[], ManagedProcess]]:
    """A dedicated web server that a test stops and starts again on the same port."""
    port = free_port()
    server = ManagedProcess(
        f"web-ui-{port}", web_server_args(port), process_env, log_dir
    )
    server.address = f"127.0.0.1:{port}"  # type: ignore[attr-defined]

    def start() -> ManagedProcess:
        server.start()
        wait_for(lambda: port_answers("127.0.0.1", port), 30, what="web listening")
        return server

    yield start
    server.stop()
