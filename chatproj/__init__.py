"""chatproj: Django chat whose messages are published to Kafka by Celery workers."""

from .celery import app as celery_app

__all__ = ("celery_app",)
