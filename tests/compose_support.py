"""Reading docker-compose.yml, the Dockerfile and the settings for test_compose.py."""

from __future__ import annotations

import ast
import json
import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import click
import yaml
from django.core.management import get_commands, load_command_class

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
SETTINGS = ROOT / "chatproj" / "settings.py"
ENV_EXAMPLE = ROOT / ".env.example"
CODE_DIRS = (ROOT / "chat", ROOT / "chatproj")

ANCHOR = "x-django"
REQUIRED_DJANGO_SERVICES = {
    "migrate",
    "web",
    "worker",
    "beat",
    "flower",
    "agents",
}
# What a Django service may change in the shared definition.
MAY_DIFFER = {"command", "ports", "healthcheck", "expose"}
MIGRATE_MAY_DIFFER = MAY_DIFFER | {"depends_on", "restart"}
CELERY_SUBCOMMANDS = {"worker", "beat", "flower"}
EXPECTED_DEPENDS_ON = {
    "postgres": "service_healthy",
    "redis": "service_healthy",
    "kafka": "service_healthy",
    "migrate": "service_completed_successfully",
    "kafka-init": "service_completed_successfully",
}
LOCAL_ADDRESS = re.compile(r"127\.0\.0\.1|localhost|sqlite:")


# --- Loading -------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose variable interpolation: values from `env`, else defaults, else ""."""
    env = env or {}
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        if env.get(name):
            return env[name]
        operator, argument = match.group(2) or "", match.group(3) or ""
        if operator.endswith("-"):
            return argument
        return f"required-{name}" if operator.endswith("?") else ""

    return _VARIABLE.sub(substitute, value)


@cache
def raw_compose() -> dict[str, Any]:
    """docker-compose.yml as YAML (merge keys applied, variables not interpolated)."""
    return yaml.safe_load(COMPOSE.read_text())


def compose(**env: str) -> dict[str, Any]:
    """docker-compose.yml as Compose sees it with this .env (else the defaults)."""
    return interpolate(raw_compose(), env)


def services(**env: str) -> dict[str, dict[str, Any]]:
    """The services, interpolated."""
    return compose(**env)["services"]


def django_services(**env: str) -> dict[str, dict[str, Any]]:
    """The services built from this repository (the Django image)."""
    return {name: s for name, s in services(**env).items() if "build" in s}


def django_env(**env: str) -> dict[str, str]:
    """The environment of the shared Django definition, interpolated."""
    return {k: str(v) for k, v in compose(**env)[ANCHOR]["environment"].items()}


def argv(command: str | list[str]) -> list[str]:
    """A Compose `command` as an argument list (Compose splits strings shell-like)."""
    return shlex.split(command) if isinstance(command, str) else list(command)


def container_port(service: dict[str, Any]) -> int:
    """The container side of the service's single published port."""
    (mapping,) = service["ports"]
    return int(str(mapping).rsplit(":", 1)[-1].split("/")[0])


# --- Entry points --------------------------------------------------------------------


def celery_problems(args: list[str]) -> list[str]:
    """Why `celery <args>` would not start one of our processes (empty: it would)."""
    from celery import Celery
    from celery.app.utils import find_app
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery as celery_cli

    app_name, rest = None, list(args)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option in ("-A", "--app") and rest:
            app_name = rest.pop(0)
        elif option.startswith("--app="):
            app_name = option.split("=", 1)[1]
        else:
            return [f"unexpected celery option {option!r} before the subcommand"]
    if app_name is None or not rest:
        return ["celery needs `-A <app> <subcommand>`"]
    app = find_app(app_name)
    if not isinstance(app, Celery):
        return [f"-A {app_name} does not name a Celery app"]
    sub, sub_args = rest[0], rest[1:]
    if sub not in CELERY_SUBCOMMANDS or sub not in celery_cli.commands:
        return [f"celery {sub!r} is not one of {sorted(CELERY_SUBCOMMANDS)}"]
    if sub == "flower":
        from flower.options import options

        names = [a[2:].split("=", 1)[0] for a in sub_args if a.startswith("--")]
        return [f"flower has no option --{n}" for n in names if n not in options]
    parent = click.Context(
        celery_cli, obj=CLIContext(app=app, no_color=True, workdir=None, quiet=True)
    )
    try:
        celery_cli.commands[sub].make_context(sub, list(sub_args), parent=parent)
    except click.ClickException as exc:
        return [f"celery {sub}: {exc.format_message()}"]
    return []


# What the Procfile, compose and the image give uvicorn: no lifespan (Channels has no
# handler), frames up to 1 MiB (docs/protocol.md's 1009), a minute for a keepalive pong (a
# backpressured client's pong waits behind its own frames), addresses not taken from
# headers.
UVICORN_SETTINGS = {
    "lifespan": "off",
    "ws_max_size": 1048576,
    "ws_ping_timeout": 60.0,
    "proxy_headers": False,
}


def uvicorn_args(args: list[str]) -> dict[str, Any]:
    """uvicorn's own parse of its command line (AssertionError when it rejects it)."""
    from uvicorn.main import main as uvicorn_cli

    try:
        return dict(uvicorn_cli.make_context("uvicorn", list(args)).params)
    except click.ClickException as exc:
        raise AssertionError(
            f"uvicorn rejects its arguments {args}: {exc.format_message()}"
        ) from None


def uvicorn_problems(args: list[str]) -> list[str]:
    """Why `uvicorn <args>` would not serve our ASGI application as `make run` does
    (lifespan off, 1 MiB frames, 60 s pong timeout, no proxy headers unless asked)."""
    from channels.routing import ProtocolTypeRouter
    from uvicorn.importer import ImportFromStringError, import_from_string

    try:
        parsed = uvicorn_args(args)
    except AssertionError as exc:
        return [str(exc)]
    try:
        application = import_from_string(parsed["app"])
    except ImportFromStringError as exc:
        return [f"uvicorn application {parsed['app']!r}: {exc}"]
    if not isinstance(application, ProtocolTypeRouter):
        return [f"{parsed['app']} is not the Channels router"]
    return [
        f"uvicorn {name}={parsed[name]!r}, not {expected!r}"
        for name, expected in UVICORN_SETTINGS.items()
        if parsed[name] != expected
    ]


def manage_problems(args: list[str]) -> list[str]:
    """Why `python manage.py <args>` would not run a management command."""
    if not args or args[0] not in get_commands():
        return [f"manage.py {args[:1]}: no such management command"]
    command = load_command_class(get_commands()[args[0]], args[0])
    try:
        command.create_parser("manage.py", args[0]).parse_args(args[1:])
    except Exception as exc:  # CommandError: unrecognized arguments
        return [f"manage.py {args[0]}: {exc}"]
    return []


def entry_point_problems(args: list[str]) -> list[str]:
    """Why this command line would not start a process of this project."""
    if args[:1] == ["celery"]:
        return celery_problems(args[1:])
    if args[:1] == ["uvicorn"]:
        return uvicorn_problems(args[1:])
    if args[:2] == ["python", "manage.py"]:
        return manage_problems(args[2:])
    return [f"{shlex.join(args)!r} is not a known entry point"]


# --- Settings and code ---------------------------------------------------------------


def _has_default(call: ast.Call, positional_index: int) -> bool:
    """The call passes a real default (not environ's NOTSET) for the variable."""
    default = next((k.value for k in call.keywords if k.arg == "default"), None)
    if default is None and len(call.args) > positional_index:
        default = call.args[positional_index]
    if default is None:
        return False
    names = {getattr(n, "attr", getattr(n, "id", None)) for n in ast.walk(default)}
    return "NOTSET" not in names


def _env_read(node: ast.AST, env_objects: set[str]) -> tuple[str, bool] | None:
    """(variable, has default) when this node reads an environment variable."""
    if isinstance(node, ast.Subscript):  # os.environ["NAME"]
        if ast.unparse(node.value) == "os.environ" and isinstance(
            node.slice, ast.Constant
        ):
            return str(node.slice.value), False
        return None
    if not isinstance(node, ast.Call) or not node.args:
        return None
    first = node.args[0]
    if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
        return None
    func = ast.unparse(node.func)
    if func in env_objects:  # env(var, cast=None, default=NOTSET)
        return first.value, _has_default(node, 2)
    if func.split(".")[0] in env_objects or func in ("os.environ.get", "os.getenv"):
        return first.value, _has_default(node, 1)  # env.bool(var, default=NOTSET)
    return None


@cache
def settings_env_reads() -> dict[str, bool]:
    """Each environment variable settings.py reads: True when every read has a default."""
    tree = ast.parse(SETTINGS.read_text())
    env_objects, scheme_defaults = {"env"}, set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and ast.unparse(node.value.func).endswith("Env")
        ):
            env_objects |= {ast.unparse(t) for t in node.targets}
            scheme_defaults |= {  # environ.Env(NAME=(cast, default))
                k.arg
                for k in node.value.keywords
                if isinstance(k.value, ast.Tuple) and len(k.value.elts) == 2
            }
    reads: dict[str, bool] = {}
    for node in ast.walk(tree):
        found = _env_read(node, env_objects)
        if found and re.fullmatch(r"[A-Z][A-Z0-9_]*", found[0]):
            name, has_default = found
            reads[name] = reads.get(name, True) and (
                has_default or name in scheme_defaults
            )
    return reads


@cache
def code_string_constants() -> frozenset[str]:
    """Every string literal in the project's Python code (chat/ and chatproj/)."""
    found: set[str] = set()
    for directory in CODE_DIRS:
        for path in directory.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    found.add(node.value)
    return frozenset(found)


def env_example() -> dict[str, str | None]:
    """Variables .env.example lists: value when set, None when only commented out."""
    listed: dict[str, str | None] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"\s*(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            name, value = match.group(2), match.group(3).strip()
            if match.group(1):
                listed.setdefault(name, None)
            else:
                listed[name] = value
    return listed


# --- Dockerfile ----------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = "\n".join(
        line
        for line in DOCKERFILE.read_text().splitlines()
        if not line.lstrip().startswith("#")
    )
    instructions = []
    for logical in re.sub(r"\\\n", " ", text).splitlines():
        if logical.strip():
            keyword, _, rest = logical.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_args(instruction: str) -> list[str]:
    """Arguments of a CMD/ENTRYPOINT in exec (JSON) or shell form."""
    if instruction.startswith("["):
        return list(json.loads(instruction))
    return shlex.split(instruction)


def image_tag(image: str) -> str:
    """The tag of an image reference ("" when there is none)."""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.partition(":")[2]


def shell_commands(run: str) -> Iterator[list[str]]:
    """The simple commands of a RUN line (split on && ; ||)."""
    for part in re.split(r"&&|\|\||;", run):
        if part.strip():
            yield shlex.split(part)
