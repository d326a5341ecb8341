"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the Compose
schema, real entry points, environment wiring, pinned images and the shared service."""

from __future__ import annotations

import json
import re
import shlex
from itertools import takewhile
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import environ
import jsonschema
import pytest
import yaml
from django.urls import Resolver404, resolve

from ..compose_support import (
    ANCHOR,
    CELERY_SUBCOMMANDS,
    COMPOSE,
    EXPECTED_DEPENDS_ON,
    LOCAL_ADDRESS,
    MAY_DIFFER,
    MIGRATE_MAY_DIFFER,
    REQUIRED_DJANGO_SERVICES,
    ROOT,
    SCHEMA,
    argv,
    code_string_constants,
    compose,
    container_port,
    django_env,
    django_services,
    dockerfile,
    dockerfile_args,
    entry_point_problems,
    env_example,
    image_tag,
    raw_compose,
    services,
    settings_env_reads,
    shell_commands,
    uvicorn_args,
)

# --- Compose file --------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification():
    """docker-compose.yml is valid against the Compose specification's JSON schema."""
    schema = json.loads(SCHEMA.read_text())
    document = compose()
    assert "version" not in document, "the Compose spec has no `version:` key"
    errors = sorted(
        jsonschema.Draft7Validator(schema).iter_errors(document),
        key=lambda e: list(e.absolute_path),
    )
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def test_django_services_reuse_the_shared_anchor():
    """Every Django service merges `<<: *django` and changes only the allowed keys."""
    root = yaml.compose(COMPOSE.read_text())
    top = {key.value: value for key, value in root.value}
    anchor = top[ANCHOR]
    merges = {
        key.value: any(
            k.tag == "tag:yaml.org,2002:merge" and v is anchor for k, v in node.value
        )
        for key, node in top["services"].value
    }
    shared = compose()[ANCHOR]
    found = django_services()
    assert set(found) >= REQUIRED_DJANGO_SERVICES, set(found)
    for name, service in found.items():
        assert merges[name], f"{name} does not use `<<: *django`"
        allowed = MIGRATE_MAY_DIFFER if name == "migrate" else MAY_DIFFER
        differs = {
            key
            for key in set(shared) | set(service)
            if service.get(key) != shared.get(key)
        }
        assert differs <= allowed, f"{name} changes {sorted(differs - allowed)}"
        assert "command" in service, f"{name} has no command"


def test_service_commands_name_real_entry_points():
    """Each Django service's command starts a real celery app, ASGI app or command."""
    problems = {
        name: entry_point_problems(argv(service["command"]))
        for name, service in django_services().items()
    }
    assert not any(problems.values()), problems
    subcommands = {
        argv(s["command"])[3]
        for s in django_services().values()
        if argv(s["command"])[0] == "celery"
    }
    assert subcommands == CELERY_SUBCOMMANDS


def test_entry_point_check_rejects_wrong_commands():
    """The command check itself fails on a typo, an unknown app or command."""
    wrong = [
        "celery -A chatproj workr",
        "celery -A chatproj worker --concurency 2",
        "celery -A chatproj.nowhere worker",
        "celery -A chatproj flower --no-such-option=1",
        "uvicorn chatproj.asgi:nothing_here --host 0.0.0.0 --port 8000",
        "uvicorn chatproj.asgi:application --lifespan on",
        "python manage.py migrat",
        "gunicorn chatproj.wsgi",
    ]
    for command in wrong:
        try:
            problems = entry_point_problems(argv(command))
        except Exception as exc:  # an import error is a failure too
            problems = [repr(exc)]
        assert problems, f"{command!r} passed the entry point check"


def test_dockerfile_default_command_is_the_web_server():
    """The image's CMD is the web service's uvicorn command and resolves."""
    cmds = [rest for keyword, rest in dockerfile() if keyword == "CMD"]
    assert cmds, "no CMD"
    args = dockerfile_args(cmds[-1])
    assert args[0] == "uvicorn" and not entry_point_problems(args), args
    assert args == argv(services()["web"]["command"])


def test_migrations_run_only_in_the_migrate_service():
    """`migrate` runs once, in the migrate service; no other process migrates."""
    for name, service in services().items():
        command = " ".join(argv(service.get("command") or []))
        if name == "migrate":
            assert argv(service["command"])[:3] == ["python", "manage.py", "migrate"]
            assert "--noinput" in command or "--no-input" in command
        else:
            assert "migrate" not in command, f"{name} runs migrations"
    for keyword, rest in dockerfile():
        assert keyword not in ("CMD", "ENTRYPOINT") or "migrate" not in rest


# --- Environment ---------------------------------------------------------------------


def test_settings_variables_are_set_in_compose_or_have_defaults():
    """Each variable settings.py reads is set in the Django environment or defaulted."""
    reads = settings_env_reads()
    assert {"SECRET_KEY", "DEBUG", "DATABASE_URL", "REDIS_URL"} <= set(reads)
    environment = raw_compose()[ANCHOR]["environment"]
    unset = [n for n, has_default in reads.items() if not has_default]
    missing = [n for n in unset if n not in environment]
    assert not missing, f"set in the x-django environment or give a default: {missing}"


def test_settings_variables_are_listed_in_env_example():
    """.env.example lists (set or commented out) every variable settings.py reads."""
    listed = env_example()
    missing = sorted(set(settings_env_reads()) - set(listed))
    assert not missing, f"add to .env.example: {missing}"


def test_compose_runs_django_in_production_mode():
    """DEBUG is off and SECRET_KEY must come from .env (`:?`), never a default."""
    environment = raw_compose()[ANCHOR]["environment"]
    assert environ.Env.parse_value(str(environment["DEBUG"]), bool) is False
    assert re.fullmatch(r"\$\{SECRET_KEY:\?[^}]+\}", environment["SECRET_KEY"])
    assert django_env()["LOG_FORMAT"] == "json"
    assert django_env()["PROMETHEUS_MULTIPROC_DIR"] in {
        str(t).split(":")[0] for t in raw_compose()[ANCHOR]["tmpfs"]
    }, "the multiprocess metrics directory is a per-container tmpfs"


def test_compose_overrides_every_local_address_of_env_example():
    """.env reaches the containers (env_file): its local addresses are overridden."""
    environment = raw_compose()[ANCHOR]["environment"]
    local = [
        name
        for name, value in env_example().items()
        if value is not None and LOCAL_ADDRESS.search(value)
    ]
    assert "DATABASE_URL" in local
    assert not [n for n in local if n not in environment], local
    for name, value in django_env().items():
        # ALLOWED_HOSTS holds 127.0.0.1 on purpose: the healthcheck's Host header.
        assert name == "ALLOWED_HOSTS" or not LOCAL_ADDRESS.search(value), name


def test_every_compose_variable_is_read_by_the_code():
    """Each Django variable in compose is read by settings, the code or Flower."""
    from flower.options import options

    known = set(settings_env_reads()) | code_string_constants()
    unread = [
        name
        for name in django_env()
        if name not in known
        and not (name.startswith("FLOWER_") and name[7:].lower() in options)
    ]
    assert not unread, f"nothing reads {unread} (a typo?)"


def test_urls_point_at_the_compose_services():
    """DATABASE_URL, REDIS_URL, the broker and Kafka name services of this file."""
    probe = {"POSTGRES_PASSWORD": "probe-pw", "POSTGRES_DB": "probe_db"}
    env, postgres = django_env(**probe), services(**probe)["postgres"]["environment"]
    database = environ.Env.db_url_config(env["DATABASE_URL"])
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert (database["HOST"], database["PORT"]) == ("postgres", 5432)
    assert database["NAME"] == postgres["POSTGRES_DB"] == "probe_db"
    assert database["PASSWORD"] == postgres["POSTGRES_PASSWORD"] == "probe-pw"
    assert database["USER"] == postgres["POSTGRES_USER"]
    for name in ("REDIS_URL", "CELERY_BROKER_URL"):
        assert re.fullmatch(r"redis://:[^@]+@redis:6379/\d+", env[name]), name
    hosts = {s.rsplit(":", 1)[0] for s in env["KAFKA_BOOTSTRAP_SERVERS"].split(",")}
    assert hosts <= set(services()), hosts


# --- Images and Dockerfile -----------------------------------------------------------


def test_images_are_pinned_to_a_tag_that_is_not_latest():
    """Every service names its image with an explicit tag other than `latest`."""
    for name, service in services().items():
        image = service.get("image", "")
        assert image, f"{name} has no image name"
        assert image_tag(image) not in ("", "latest"), f"{name}: {image}"
    assert image_tag("postgres") == "" and image_tag("r:5000/kafka") == ""


def test_dockerfile_base_image_is_pinned():
    """Each FROM names an image with a tag other than `latest`."""
    stages: set[str] = set()
    froms = [rest for keyword, rest in dockerfile() if keyword == "FROM"]
    assert froms
    for rest in froms:
        words = [w for w in rest.split() if not w.startswith("--")]
        if words[0] not in stages:
            assert image_tag(words[0]) not in ("", "latest"), words[0]
            assert words[0].startswith("python:3.11"), words[0]
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])


def test_dockerfile_runs_as_non_root_user():
    """The image's final USER is not root."""
    users = [rest for keyword, rest in dockerfile() if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]


def test_dockerfile_installs_only_runtime_requirements_and_collects_static():
    """pip installs requirements.txt only; collectstatic runs with a build-only key."""
    instructions = dockerfile()
    assert not [r for _, r in instructions if "requirements-dev" in r]
    assert "requirements-dev" not in (ROOT / "requirements.txt").read_text()
    installs = [
        cmd[cmd.index("install") + 1 :]
        for keyword, rest in instructions
        if keyword == "RUN"
        for cmd in shell_commands(rest)
        if "pip" in " ".join(cmd[:3]) and "install" in cmd
    ]
    assert installs, "no pip install"
    for args in installs:
        files = [
            args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-r", "--requirement")
        ]
        positional = [a for a in args if not a.startswith("-") and a not in files]
        assert files and not positional, args
        assert all(Path(f).name == "requirements.txt" for f in files), files
    collects = [
        cmd
        for keyword, rest in instructions
        if keyword == "RUN"
        for cmd in shell_commands(rest)
        if "collectstatic" in cmd
    ]
    assert len(collects) == 1, "manage.py collectstatic runs once at build time"
    env = dict(t.split("=", 1) for t in takewhile(lambda t: "=" in t, collects[0]))
    command = collects[0][len(env) :]
    assert command[:3] == ["python", "manage.py", "collectstatic"], command
    assert "--noinput" in command or "--no-input" in command
    assert env.get("DEBUG") == "False" and env.get("SECRET_KEY"), env
    for keyword, rest in instructions:
        assert not (keyword in ("ENV", "ARG") and "SECRET_KEY" in rest), rest


def test_dockerignore_keeps_local_state_out():
    """The build context leaves out the venv, git, databases, secrets and artifacts."""
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", ".env", "db.sqlite3", "test-artifacts", ".run"):
        assert entry in ignored, entry


# --- Services ------------------------------------------------------------------------


def test_worker_can_be_scaled():
    """worker has no container_name or host ports and serves metrics internally."""
    worker = services()["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert django_env()["WORKER_METRICS_PORT"] == "9808"
    assert "--concurrency" in argv(worker["command"])
    assert "5" in argv(services(CELERY_CONCURRENCY="5")["worker"]["command"])


def test_the_agents_are_their_own_scalable_service():
    """agents runs every registered agent with the anchor's restart policy, can be
    scaled, serves metrics internally and is healthy while its --check passes."""
    service = services()["agents"]
    assert argv(service["command"]) == [
        "python", "manage.py", "run_agent", "--all",
    ]  # fmt: skip
    assert service["restart"] == compose()[ANCHOR]["restart"] == "unless-stopped"
    assert "container_name" not in service and "ports" not in service
    assert django_env()["AGENT_METRICS_PORT"] == "9809"
    assert service["expose"] == ["9809"]
    check = service["healthcheck"]["test"]
    assert check[0] == "CMD" and not entry_point_problems(check[1:])
    assert check[1:] == [
        "python", "manage.py", "run_agent", "--all", "--check", "--local",
    ]  # fmt: skip


def agent_wiring_problems(
    agents: dict[str, Any], procfile: dict[str, str], composed: dict[str, Any]
) -> list[str]:
    """What keeps the Procfile and compose from running every registered agent:
    each needs `agents: python manage.py run_agent --all` (a service of that name,
    healthy while `--all --check --local` passes); any other line or service that
    runs one agent must name a registered one."""
    from chat.agents.registry import ALL_AGENTS_CHECK, ALL_AGENTS_COMMAND

    problems = []
    if shlex.split(procfile.get("agents", "")) != ALL_AGENTS_COMMAND:
        problems.append(f"Procfile: no `agents: {shlex.join(ALL_AGENTS_COMMAND)}`")
    service = composed.get("agents")
    if service is None or argv(service.get("command") or []) != ALL_AGENTS_COMMAND:
        problems.append("docker-compose.yml: no service agents running them")
    elif service.get("healthcheck", {}).get("test") != ["CMD", *ALL_AGENTS_CHECK]:
        problems.append("docker-compose.yml: agents has no --all --check healthcheck")
    for where, commands in (
        ("Procfile", {n: shlex.split(c) for n, c in procfile.items()}),
        (
            "docker-compose.yml",
            {n: argv(s.get("command") or []) for n, s in composed.items()},
        ),
    ):
        for name, args in commands.items():
            if "run_agent" not in args or "--all" in args:
                continue
            named = args[args.index("run_agent") + 1 :][:1]
            if not named or named[0] not in agents:
                problems.append(f"{where}: {name} runs an unregistered agent")
    return problems


def test_the_procfile_and_compose_run_every_registered_agent():
    """chat/agents/registry.py is the list of agents: runstack starts each, and the
    Procfile's and compose's `agents` run them all (`run_agent --all`), so an agent
    added to the registry alone is run everywhere; a line for an unknown agent, or a
    missing `agents`, is reported."""
    from chat.agents.registry import AGENTS, ALL_AGENTS_COMMAND, RunnableAgent
    from chat.management.commands.runstack import PROCFILE_LINE, procfile_commands

    procfile = procfile_commands(ROOT / "Procfile")
    assert AGENTS
    assert agent_wiring_problems(AGENTS, procfile, services()) == []
    assert PROCFILE_LINE.match("agents: x") and not entry_point_problems(
        ALL_AGENTS_COMMAND
    )
    extra = RunnableAgent("word-count", "examples.x.WordCountAgent", "an example")
    assert (
        agent_wiring_problems({**AGENTS, "word-count": extra}, procfile, services())
        == []
    )
    stray = {**procfile, "stray": "python manage.py run_agent stray"}
    assert agent_wiring_problems(AGENTS, stray, services()) == [
        "Procfile: stray runs an unregistered agent"
    ]
    without = {n: c for n, c in procfile.items() if n != "agents"}
    assert agent_wiring_problems(AGENTS, without, services()) == [
        f"Procfile: no `agents: {shlex.join(ALL_AGENTS_COMMAND)}`"
    ]


def test_dependencies_wait_for_health_and_one_shots():
    """Django services wait for healthy servers and finished one-shots."""
    all_services = services()
    for name, service in django_services().items():
        conditions = {d: c["condition"] for d, c in service["depends_on"].items()}
        expected = (
            {"postgres": "service_healthy"}
            if name == "migrate"
            else EXPECTED_DEPENDS_ON
        )
        assert conditions == expected, name
    for service in all_services.values():
        for dep, spec in (service.get("depends_on") or {}).items():
            target = all_services[dep]
            if spec["condition"] == "service_healthy":
                assert target.get("healthcheck", {}).get("test"), f"{dep} unhealthy"
            if spec["condition"] == "service_completed_successfully":
                assert target.get("restart", "no") == "no", f"{dep} restarts"


def test_servers_have_healthchecks_and_volumes():
    """postgres, redis and kafka check themselves and keep data in named volumes."""
    document = services()
    probes = {
        "postgres": "pg_isready",
        "redis": "redis-cli ping",
        "kafka": r"kafka-(topics\.sh .*--list|broker-api-versions\.sh)",
    }
    for name, probe in probes.items():
        test = document[name]["healthcheck"]["test"]
        assert re.search(probe, " ".join(argv(test))), name
    volumes = set(compose().get("volumes") or {})
    for name in ("postgres", "kafka"):
        sources = {str(v).split(":")[0] for v in document[name]["volumes"]}
        assert sources & volumes, f"{name} has no named volume"


def test_every_long_running_service_restarts():
    """Each service but the one-shots (migrate, kafka-init: what others wait to
    complete) is restarted when it crashes; the one-shots never are."""
    all_services = services()
    one_shots = {
        dep
        for service in all_services.values()
        for dep, spec in (service.get("depends_on") or {}).items()
        if spec["condition"] == "service_completed_successfully"
    }
    assert one_shots == {"migrate", "kafka-init"}
    long_running = set(all_services) - one_shots
    assert {"web", "worker", "beat", "agents", "flower", "redis"} < long_running
    for name in long_running:
        policy = all_services[name].get("restart")
        assert policy in ("always", "unless-stopped", "on-failure"), (name, policy)
    for name in one_shots:
        assert all_services[name].get("restart") == "no", name


def test_redis_demands_the_password_everywhere():
    """Redis runs with requirepass REDIS_PASSWORD; every URL and the healthcheck carry
    it; without it compose stops with a message (`:?`), as for SECRET_KEY."""
    probe = "probe-Redis_pw-1"
    redis = services(REDIS_PASSWORD=probe)["redis"]
    assert redis["environment"]["REDIS_PASSWORD"] == probe
    script = argv(redis["command"])
    assert script[:2] == ["sh", "-c"]
    server = shlex.split(script[2].replace("$REDIS_PASSWORD", probe))
    assert server[:2] == ["exec", "redis-server"]
    assert server[server.index("--requirepass") + 1] == probe
    check = " ".join(argv(redis["healthcheck"]["test"]))
    assert re.search(r'REDISCLI_AUTH="\$REDIS_PASSWORD" redis-cli ping', check), check
    env = django_env(REDIS_PASSWORD=probe)
    for name in ("REDIS_URL", "CELERY_BROKER_URL"):
        assert urlparse(env[name]).password == probe, name
    raw = raw_compose()
    required = r"\$\{REDIS_PASSWORD:\?[^}]+\}"
    assert re.fullmatch(
        required, raw["services"]["redis"]["environment"]["REDIS_PASSWORD"]
    )
    for name in ("REDIS_URL", "CELERY_BROKER_URL"):
        assert re.search(f":{required}@redis:", raw[ANCHOR]["environment"][name]), name
    assert "required-REDIS_PASSWORD" in django_env()["REDIS_URL"]  # unset: an error
    assert env_example().get("REDIS_PASSWORD"), (
        "document REDIS_PASSWORD in .env.example"
    )


def test_web_port_and_healthcheck_match_the_server():
    """uvicorn listens on the published port; the healthcheck URL exists and is
    allowed."""
    web = services()["web"]
    args = argv(web["command"])
    parsed = uvicorn_args(args[1:])
    assert parsed["host"] == "0.0.0.0"
    assert parsed["port"] == container_port(web) == 8000
    assert services(WEB_PORT="8080")["web"]["ports"] == ["8080:8000"]
    check = " ".join(argv(web["healthcheck"]["test"]))
    assert "urllib" in check
    match = re.search(r"http://(127\.0\.0\.1|localhost):(\d+)(/[^'\"\s]*)", check)
    assert match, check
    host, port, path = match.groups()
    assert int(port) == parsed["port"]
    try:
        resolve(path)
    except Resolver404:
        pytest.fail(f"the healthcheck path {path} is not a Django URL")
    for allowed_hosts in ("", "chat.example.com"):
        env = django_env(ALLOWED_HOSTS=allowed_hosts)
        assert host in env["ALLOWED_HOSTS"].split(","), allowed_hosts


def test_flower_requires_basic_auth():
    """Flower listens on its published port and demands basic auth from .env."""
    flower = services()["flower"]
    args = argv(flower["command"])
    ports = [a.split("=", 1)[1] for a in args if a.startswith("--port=")]
    assert ports and int(ports[0]) == container_port(flower) == 5555
    auth = raw_compose()[ANCHOR]["environment"].get("FLOWER_BASIC_AUTH", "")
    assert any(a.startswith("--basic-auth") for a in args) or re.fullmatch(
        r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", auth
    ), "Flower without basic auth"


def test_kafka_is_a_single_kraft_node_reachable_as_kafka_9092():
    """The broker runs KRaft (broker+controller) and advertises what Django uses."""
    kafka = services()["kafka"]
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    advertised = {
        listener.split("://", 1)[1]
        for listener in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    bootstrap = django_env()["KAFKA_BOOTSTRAP_SERVERS"]
    assert bootstrap == "kafka:9092"
    assert set(bootstrap.split(",")) <= advertised


def test_kafka_init_creates_the_chat_topic_and_its_dlq():
    """kafka-init creates KAFKA_CHAT_TOPIC and <topic>.dlq with N partitions, once."""
    from chat.infra.config import KafkaSettings

    probe = {"KAFKA_CHAT_TOPIC": "probe_topic", "KAFKA_CHAT_PARTITIONS": "9"}
    for env, partitions in (({}, None), (probe, 9)):
        init = services(**env)["kafka-init"]
        topic = django_env(**env)["KAFKA_CHAT_TOPIC"]
        dlq = KafkaSettings.dlq_topic.fget(SimpleNamespace(topic=topic))
        script = " ".join(argv(init.get("entrypoint") or []) + argv(init["command"]))
        assert init["image"] == services()["kafka"]["image"]
        assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert init.get("restart", "no") == "no"
        assert "--create" in script and "--if-not-exists" in script
        for name in (topic, dlq):
            assert re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", script), name
        found = {int(n) for n in re.findall(r"--partitions\s+(\d+)", script)}
        assert found and min(found) >= 2, found
        assert partitions is None or found == {partitions}
    assert django_env()["KAFKA_CHAT_TOPIC"] == "chat_messages"


def test_make_run_serves_with_the_composed_web_command():
    """The Procfile's web line runs the server of the web service with its flags."""
    from chat.management.commands.runstack import procfile_web_command

    args = procfile_web_command(ROOT / "Procfile", 8000)
    assert not entry_point_problems(args), args
    composed = argv(services()["web"]["command"])
    local = [a for a in args if a != "127.0.0.1"]
    assert local == [a for a in composed if a != "0.0.0.0"]
