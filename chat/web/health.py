"""Liveness, readiness and metrics endpoints for operators and orchestrators."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import redis
from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from chat.infra import metrics
from chat.infra.config import parse_bootstrap_servers
from chat.models import Message
from chat.security.site import operator_refusal


class OutboxBacklogCollector:
    """Pending and failed messages, counted in the database at scrape time."""

    def collect(self) -> Iterator[Metric]:
        """One gauge labelled by status."""
        family = GaugeMetricFamily(
            "chat_outbox_backlog",
            "Messages not yet in Kafka, by status",
            labels=["status"],
        )
        counts = dict(
            Message.objects.filter(
                status__in=[Message.Status.PENDING, Message.Status.FAILED]
            )
            .values_list("status")
            .annotate(n=Count("id"))
        )
        for status in (Message.Status.PENDING, Message.Status.FAILED):
            family.add_metric([status], counts.get(status, 0))
        yield family


def exposition() -> bytes:
    """The text of a /metrics scrape: process metrics plus the outbox backlog."""
    backlog = CollectorRegistry()
    backlog.register(OutboxBacklogCollector())  # type: ignore[arg-type]
    return generate_latest(
        metrics.multiprocess_registry() or REGISTRY
    ) + generate_latest(backlog)


CHECK_TIMEOUT = 1.0  # seconds per dependency


def check_database() -> None:
    """The database answers a trivial query."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()  # this runs in a pool thread: do not leak its connection


def check_redis() -> None:
    """Redis (channel layer and Celery broker) answers PING."""
    client = redis.Redis.from_url(
        settings.REDIS_URL,
        socket_timeout=CHECK_TIMEOUT,
        socket_connect_timeout=CHECK_TIMEOUT,
    )
    try:
        client.ping()
    finally:
        client.close()


def check_kafka() -> None:
    """A Kafka bootstrap server accepts connections (skipped when Kafka is off)."""
    if not settings.KAFKA_ENABLED:
        return
    errors = []
    for host, port in parse_bootstrap_servers(settings.KAFKA_BOOTSTRAP_SERVERS):
        try:
            with socket.create_connection((host, port), timeout=CHECK_TIMEOUT):
                return
        except OSError as exc:
            errors.append(f"{host}:{port}: {exc}")
    raise ConnectionError("; ".join(errors) or "no bootstrap servers")


CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "redis": check_redis,
    "kafka": check_kafka,
}


@csrf_exempt  # no side effects; a POST gets 405, not a CSRF page
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process serves requests (no dependency is touched)."""
    return JsonResponse({"status": "ok"})


@csrf_exempt  # no side effects; a POST gets 405, not a CSRF page
@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: database, Redis and Kafka all answer within ~1 s each (else 503).
    Which check failed, and why, only for operators (chat.security.site)."""
    results: dict[str, dict[str, object]] = {}
    with ThreadPoolExecutor(max_workers=len(CHECKS)) as pool:
        started = time.monotonic()
        futures = {name: pool.submit(check) for name, check in CHECKS.items()}
        for name, future in futures.items():
            remaining = max(0.0, CHECK_TIMEOUT + 0.5 - (time.monotonic() - started))
            try:
                future.result(timeout=remaining)
                results[name] = {"ok": True}
            except FutureTimeout:
                results[name] = {"ok": False, "error": "timed out"}
            except Exception as exc:  # every failure is reported, none raised
                results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    ready = all(r["ok"] for r in results.values())
    failed = [name for name, r in results.items() if not r["ok"]]
    status = 200 if ready else 503
    if operator_refusal(request) is not None:
        # Orchestrators need only the code; errors name internal addresses.
        return JsonResponse(
            {"status": "ready" if ready else "unavailable"}, status=status
        )
    return JsonResponse(
        {
            "status": "ready" if ready else "unavailable",
            "failed": failed,
            "checks": results,
        },
        status=status,
    )


@csrf_exempt  # no side effects; a POST gets 405, not a CSRF page
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition of every process on this host plus the backlog
    (operators only: METRICS_TOKEN or METRICS_ALLOWED_IPS)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    refusal = operator_refusal(request)
    if refusal is not None:
        return refusal

    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
