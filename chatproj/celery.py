"""Celery application; configuration comes from Django settings (CELERY_*)."""

import os
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_init

from chatproj import kombu_poison
from chatproj.process_tuning import shorter_gil_turns

# An undecodable queue entry is moved aside instead of stopping the worker.
kombu_poison.install()

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproj.settings")

app = Celery("chatproj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def use_django_logging(**_: Any) -> None:
    """Workers and beat log through Django's LOGGING (Celery's own setup is skipped)."""
    import logging.config

    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@worker_init.connect
def tune_worker(**_: Any) -> None:
    """Before the pool forks: its children run a task, the Kafka client's network
    thread and a channel-layer loop, which hand the GIL to each other all the time."""
    shorter_gil_turns()
