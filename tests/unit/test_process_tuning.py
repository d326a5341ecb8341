"""chatproj.process_tuning, applied where the servers start: the web process's
start-up objects are kept out of full collections, and the GIL changes hands after
1 ms in the web process and the worker's children."""

from __future__ import annotations

import os
import subprocess
import sys

from chatproj.process_tuning import SWITCH_INTERVAL


def python(script: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "chatproj.settings"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


def test_the_web_process_freezes_its_start_up_objects_and_takes_short_gil_turns():
    """A full collection walked them all: ~80 ms every ~9 s under load."""
    frozen, interval = python(
        "import gc, sys, chatproj.asgi; "
        "print(gc.get_freeze_count(), sys.getswitchinterval())"
    )
    assert int(frozen) > 50_000
    assert float(interval) == SWITCH_INTERVAL


def test_a_worker_takes_short_gil_turns_before_its_pool_forks():
    (before, after) = python(
        "import sys; from celery.signals import worker_init; "
        "from chatproj.celery import app; print(sys.getswitchinterval()); "
        "worker_init.send(sender=None); print(sys.getswitchinterval())"
    )
    assert float(before) == 0.005  # importing the app alone changes nothing
    assert float(after) == SWITCH_INTERVAL
