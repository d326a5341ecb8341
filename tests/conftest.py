"""Fixtures: real servers on free ports, a real Celery worker, a real ASGI server.

Two tiers. A test that requests a server fixture (SERVER_FIXTURES, directly or through
`stack`, `process_env`, `start_worker`, `asgi_server`, ...) is marked `servers`; every
other test is server-free (`make test-fast`, `-m "not servers"`), and a guard fails it
if it starts a server or connects to Redis anyway.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio.connection
import redis.connection
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

from chat.models import LOBBY, Room
from chatproj import netns
from chatproj.embedded import (
    EmbeddedServer,
    embedded_kafka,
    embedded_redis,
    free_port,
    port_answers,
)
from chatproj.kafka_cluster import KafkaCluster, KafkaUnavailable, fetch_kafka

from .support import (
    AGENT_ENV,
    Agent,
    ChatUser,
    ManagedProcess,
    celery_worker_args,
    unique_group,
    unique_topic,
    wait_for,
    web_server_args,
)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """pytest-django's, and before it drops the Postgres test database: close the
    sessions still on it. Sockets' writes run in the event loop's thread pool, whose
    threads keep their connections (CONN_MAX_AGE) after a test's loop is gone, and a
    database cannot be dropped while a session is connected."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL when given, else an embedded Redis-compatible server on a free port."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    port = free_port()
    with embedded_redis(port):
        yield f"redis://127.0.0.1:{port}/0"


def session_transactions() -> str:
    """KAFKA_TRANSACTIONS of the session's broker: on for Apache Kafka, off for the
    embedded Tansu (as under `make run`: Tansu never ends the transaction a killed
    worker left open), unless the environment says."""
    if os.environ.get("KAFKA_TRANSACTIONS"):
        return os.environ["KAFKA_TRANSACTIONS"]
    real = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or (
        os.environ.get("CHAT_TEST_BROKER") == "kafka"
    )
    return "True" if real else "False"


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS when given; a real one-node Apache Kafka under
    CHAT_TEST_BROKER=kafka (make test-kafka's integration tier); else an embedded
    Tansu broker on a free port."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        return
    if os.environ.get("CHAT_TEST_BROKER") == "kafka":
        yield request.getfixturevalue("kafka_cluster_1").bootstrap
        return
    port = free_port()
    with embedded_kafka(port):
        yield f"127.0.0.1:{port}"


def _real_kafka(
    size: int,
    tmp_path_factory: pytest.TempPathFactory,
    extra_config: dict[str, str] | None = None,
    isolated_network: bool = False,
) -> Iterator[KafkaCluster]:
    """A real Apache Kafka cluster of `size` nodes (chatproj.kafka_cluster); skipped
    without Java or Maven, except under CI=true, where that fails."""
    try:
        fetch_kafka()
    except KafkaUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no real Kafka: {exc}")
        pytest.skip(str(exc))
    cluster = KafkaCluster(
        size,
        base_dir=tmp_path_factory.mktemp(f"kafka-{size}"),
        extra_config=extra_config,
        isolated_network=isolated_network,
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def kafka_cluster_1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """One real Apache Kafka node (KRaft); tests using it are marked `kafka`."""
    yield from _real_kafka(1, tmp_path_factory)


@pytest.fixture(scope="session")
def kafka_cluster_3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three real Apache Kafka nodes, min.insync.replicas=2, replication factor 3;
    marked `kafka`. Shared by the session: a test that kills, stops or freezes a
    node calls `kafka_cluster_3.heal()` when it ends. A producer id expires after
    8 s idle (a day by default), so an idle producer meets it within a test. Each
    node has a network namespace of its own where this machine allows it, so that a
    test can cut one off the network (chatproj.netns)."""
    yield from _real_kafka(
        3,
        tmp_path_factory,
        extra_config={"producer.id.expiration.ms": "8000"},
        isolated_network=netns.available(),
    )


# Fixtures that start (or stand for) a real server; whoever depends on one is `servers`.
SERVER_FIXTURES = frozenset(
    {"redis_url", "kafka_bootstrap", "kafka_cluster_1", "kafka_cluster_3"}
)
# Fixtures of a real Apache Kafka: whoever depends on one is also `kafka`.
KAFKA_FIXTURES = frozenset({"kafka_cluster_1", "kafka_cluster_3"})
# Tests marked `kafka` run only with CHAT_TEST_KAFKA=1 (make test-kafka); without it
# they are skipped, so `make test` and `make test-fast` start no real Kafka.
RUN_KAFKA_TESTS = os.environ.get("CHAT_TEST_KAFKA") == "1"


@pytest.fixture(scope="session")
def stack(redis_url: str, kafka_bootstrap: str) -> None:
    """Point this process's channel layer, Celery producer and agent at the test
    servers: for in-process tests whose code broadcasts or enqueues (message_create)."""
    from channels.layers import channel_layers

    from chatproj.celery import app

    settings.REDIS_URL = redis_url
    settings.CHANNEL_LAYERS = {
        "default": {
            **settings.CHANNEL_LAYERS["default"],
            "CONFIG": {"hosts": [redis_url]},
        }
    }
    channel_layers.backends = {}
    settings.CELERY_BROKER_URL = redis_url
    app.conf.broker_url = redis_url
    settings.KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.KAFKA_TRANSACTIONS = session_transactions() == "True"


@pytest.fixture
def in_memory_channel_layer(settings: Any) -> Iterator[None]:
    """channels' InMemoryChannelLayer, not Redis: for server-free consumer tests."""
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    }
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}  # rebuilt from the restored settings on next use


def _database_url(db: dict[str, Any]) -> str:
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where subprocess logs go (printed on failure)."""
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def process_env(
    django_db_setup: None,
    django_db_blocker: Any,
    stack: None,
    redis_url: str,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """Environment of subprocesses: the test database and the test servers; web and
    workers share one Prometheus multiprocess directory, as under `make run`."""
    with django_db_blocker.unblock():
        db = dict(connection.settings_dict)
    return {
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("prometheus")),
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatproj.settings",
        "DATABASE_URL": _database_url(db),
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TRANSACTIONS": session_transactions(),
        "KAFKA_SEND_TIMEOUT": "2",
        # Load tests send faster than a person; test_rate_limit sets its own.
        "CHAT_RATE_LIMIT": "1000/second",
        "CHAT_FRAME_RATE": "1000/second",
        "CHAT_MAX_CONNECTIONS_PER_USER": "100",
        "CHAT_CONNECT_RATE": "1000/second",
        # Test clients (WSClient, the fault load) send no heartbeat and may wait
        # minutes for a status: no idle timeout, unless a test sets its own.
        "CHAT_IDLE_TIMEOUT": "0",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def start_worker(
    process_env: dict[str, str],
    log_dir: Path,
    redis_url: str,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., ManagedProcess]]:
    """Start a real `celery worker -P prefork` subprocess; env overrides by keyword."""
    workers: list[ManagedProcess] = []

    def start(concurrency: int = 2, beat: bool = False, **env: str) -> ManagedProcess:
        if not workers:
            # Tasks and publish marks left by earlier tests (room ids are reused after
            # each test's flush) must not reach this test's worker; clients already
            # connected keep their groups.
            client = redis.Redis.from_url(redis_url)
            client.delete("celery", "unacked", "unacked_index")
            for key in client.scan_iter("chat:publish:*"):
                client.delete(key)
        env.setdefault("KAFKA_CHAT_TOPIC", unique_topic())
        name = f"worker-{request.node.name[:60]}-{len(workers)}"
        schedule = log_dir / f"{name}.beat" if beat else None
        worker = ManagedProcess(
            name,
            celery_worker_args(concurrency, schedule),
            {**process_env, **env},
            log_dir,
        ).start()
        worker.topic = env["KAFKA_CHAT_TOPIC"]  # type: ignore[attr-defined]
        workers.append(worker)
        wait_for(lambda: " ready." in worker.log(), 60, what=f"{name} ready")
        return worker

    yield start
    for worker in workers:
        worker.stop()
    if getattr(request.node, "rep_call_failed", False):
        for worker in workers:
            sys.stderr.write(f"--- {worker.name} ---\n{worker.log()[-6000:]}\n")
    # Leftover tasks (scheduled retries) must not leak into the next test's worker.
    redis.Redis.from_url(redis_url).flushdb()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `servers` every test whose fixtures start a server (before `-m` selects),
    and `kafka` those of a real Kafka; skip `kafka` tests without CHAT_TEST_KAFKA=1."""
    skip_kafka = pytest.mark.skip(
        reason="needs real Apache Kafka: make test-kafka (CHAT_TEST_KAFKA=1)"
    )
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if SERVER_FIXTURES & fixtures:
            item.add_marker(pytest.mark.servers)
        if KAFKA_FIXTURES & fixtures:
            item.add_marker(pytest.mark.kafka)
        if item.get_closest_marker("kafka") and not RUN_KAFKA_TESTS:
            item.add_marker(skip_kafka)


@pytest.fixture(autouse=True)
def server_free_guard(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Fail a test not marked `servers` that starts a server or connects to Redis."""
    if request.node.get_closest_marker("servers"):
        yield
        return
    touched: list[str] = []
    hint = (
        f"{request.node.nodeid} is server-free (not marked `servers`) but %s: "
        "request `stack` (or redis_url, kafka_bootstrap, process_env), or mark it "
        "`servers`."
    )

    def no_start(self: Any, *args: Any, **kwargs: Any) -> Any:
        touched.append(f"starts {getattr(self, 'name', self)}")
        raise RuntimeError(hint % touched[-1])

    def no_redis(self: Any, *args: Any, **kwargs: Any) -> Any:
        touched.append(f"connects to Redis at {getattr(self, 'port', '?')}")
        raise redis.ConnectionError(hint % touched[-1])

    monkeypatch.setattr(EmbeddedServer, "start", no_start)
    monkeypatch.setattr(ManagedProcess, "start", no_start)
    for connection_class in (
        redis.connection.AbstractConnection,
        redis.asyncio.connection.AbstractConnection,
    ):
        for method in ("connect", "connect_check_health"):
            monkeypatch.setattr(connection_class, method, no_redis)
    yield
    # Code that swallows errors (robust on_commit callbacks) must not hide a touch.
    assert not touched, hint % ", ".join(touched)


@pytest.fixture(autouse=True)
def fresh_throttles(request: pytest.FixtureRequest, settings: Any) -> None:
    """Throttles (chat.security.throttles: sign-ups, failed logins per address,
    connects) count from zero in every test; a server-free test counts in memory."""
    from chat.security.throttles import throttles_reset

    if not request.node.get_closest_marker("servers"):
        settings.CHAT_RATE_LIMIT_STORAGE = "async+memory://"
    elif "stack" in request.fixturenames:
        request.getfixturevalue("stack")  # the test's Redis, where servers count
    else:
        return
    throttles_reset()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    """Remember whether the test body failed, so fixtures can print process logs."""
    report = yield
    if report.when == "call":
        item.rep_call_failed = report.failed  # type: ignore[attr-defined]
    return report


@pytest.fixture(scope="session")
def asgi_server(process_env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """A real web server (uvicorn, as `make run`) serving chatproj.asgi on a free
    port; yields its base URL."""
    port = free_port()
    server = ManagedProcess("web", web_server_args(port), process_env, log_dir).start()
    try:
        wait_for(lambda: port_answers("127.0.0.1", port), 30, what="web listening")
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def start_web(process_env, log_dir):
    """Start a dedicated web server with environment overrides; yields its base URL
    maker."""
    servers = []

    def start(app: str = "chatproj.asgi:application", **env: str) -> str:
        port = free_port()
        server = ManagedProcess(
            f"web-{port}", web_server_args(port, app), {**process_env, **env}, log_dir
        ).start()
        servers.append(server)
        wait_for(lambda: port_answers("127.0.0.1", port), 30, what="web server")
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop()


@functools.cache
def password_hash(password: str) -> str:
    """The stored form of a test password, hashed once per run (the hasher's cost,
    ~0.5 s a user, is paid by logins, not by every test's users)."""
    from django.contrib.auth.hashers import make_password

    return make_password(password)


@pytest.fixture
def chat_users(transactional_db: None) -> dict[str, ChatUser]:
    """alice, bob and carol, each with a logged-in session cookie, and the lobby (as
    `make run` sets them up; a transactional test's flush removed the migration's)."""
    Room.objects.get_or_create(name=LOBBY)
    users = {}
    for name in ("alice", "bob", "carol"):
        user = get_user_model().objects.create(
            username=name, password=password_hash("pw-" + name)
        )
        client = Client()
        client.force_login(user)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        users[name] = ChatUser(name=name, id=user.pk, cookie=cookie)
    return users


@pytest.fixture
def kafka_port_down() -> int:
    """A port where no Kafka broker listens (yet)."""
    port = free_port()
    assert not port_answers("127.0.0.1", port)
    return port


def pytest_addoption(parser: pytest.Parser) -> None:
    """--reliability-report PATH: write the fault tests' figures there (make reliability)."""
    parser.addoption("--reliability-report", default=None, metavar="PATH")


@pytest.fixture(scope="session")
def reliability_rows(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """Figures measured by the fault-injection tests, one row per scenario."""
    rows: list[dict[str, Any]] = []
    request.config.stash[RELIABILITY_ROWS] = rows
    return rows


RELIABILITY_ROWS = pytest.StashKey[list[dict[str, Any]]]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the SQLite test database's write-turn lock file (chat.infra.db)
    beside it, which pytest-django leaves; write docs/RELIABILITY.md when asked and
    every scenario ran."""
    test_db = settings.DATABASES["default"].get("TEST", {}).get("NAME")
    if test_db:
        Path(f"{test_db}.write-turn").unlink(missing_ok=True)
    path = session.config.getoption("--reliability-report")
    rows = session.config.stash.get(RELIABILITY_ROWS, [])
    if path and rows:
        from .faults import render_report

        Path(path).write_text(render_report(rows, failed=session.testsfailed))
        sys.stderr.write(f"\nreliability report written to {path}\n")


@pytest.fixture
def start_agent(
    process_env: dict[str, str],
    log_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., Agent]]:
    """Start `run_agent notifications` (or `run_agent <args>`) on a topic and group;
    env overrides by keyword."""
    agents: list[Agent] = []

    def start(
        topic: str,
        group: str | None = None,
        *,
        args: tuple[str, ...] = ("notifications",),
        **env: str,
    ) -> Agent:
        name = f"agent-{request.node.name[:50]}-{len(agents)}"
        metrics_dir = tmp_path / f"prometheus-{len(agents)}"
        metrics_dir.mkdir()
        agent = Agent(
            name,
            [sys.executable, "manage.py", "run_agent", *args],
            {
                **process_env,
                **AGENT_ENV,
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
                "KAFKA_CHAT_TOPIC": topic,
                "KAFKA_NOTIFICATIONS_GROUP": group or unique_group(),
                **env,
            },
            log_dir,
        )
        agent.metrics_dir = metrics_dir
        agent.start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()
    if getattr(request.node, "rep_call_failed", False):
        for agent in agents:
            sys.stderr.write(f"--- {agent.name} ---\n{agent.log()[-6000:]}\n")
