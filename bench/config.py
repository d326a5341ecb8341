"""Options of the benchmark (`python -m bench --help`)."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
POSTGRES_DEFAULT = "postgres://postgres@127.0.0.1:5432/chatproj_bench"


@dataclass
class BenchConfig:
    """Everything a run needs; the parsed command line, with --quick applied."""

    clients: int = 20
    rooms: int = 5
    rate: float | None = None
    search: bool = False
    closed_loop: bool = False
    poisson: bool = False
    duration: float = 10.0
    step_duration: float = 10.0
    overload_duration: float = 20.0
    search_start: float = 10.0
    search_max: float = 5000.0
    search_bisections: int = 3
    message_size: int = 100
    database_url: str = "sqlite"
    server: str = "uvicorn"
    web_processes: int = 1
    workers: int = 1
    concurrency: int = 2
    task_events: bool = True
    beat: bool = True
    partitions: int = 6
    kafka_cluster: int = 0
    ceiling_tasks: int = 2000
    ceiling_kafka: int = 1000
    ceiling_round_trips: int = 500
    ceilings: bool = True
    drain_timeout: float = 120.0
    use_running: bool = False
    redis_url: str | None = None
    kafka: str | None = None
    web: list[str] = field(default_factory=list)
    topic: str | None = None
    publish_task: str = "chat.tasks.publish_chat_message"
    output_dir: Path = RESULTS_DIR
    run_dir: Path | None = None
    label: str | None = None
    tag: str | None = None
    progress: bool = True
    quick: bool = False

    @property
    def database_kind(self) -> str:
        """`sqlite` or `postgres`: names the result files."""
        return "postgres" if self.database_url.startswith("postgres") else "sqlite"

    def as_json(self) -> dict[str, Any]:
        """The options as written into the report."""
        data = asdict(self)
        data["output_dir"] = str(self.output_dir)
        data["run_dir"] = str(self.run_dir) if self.run_dir else None
        return data


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m bench`."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Throughput benchmark of chatproj. Starts the stack the way `make run` "
            "does (embedded valkey and Tansu, daphne, a prefork Celery worker, beat) "
            "on free ports, or uses a running one (--use-running), drives it with "
            "WebSocket clients, reads the Kafka topic, measures the ceilings on the "
            "same servers, and writes JSON, markdown and a PNG plot."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    load = p.add_argument_group("load")
    load.add_argument("--clients", type=int, default=20, help="WebSocket clients")
    load.add_argument("--rooms", type=int, default=5, help="rooms (clients spread)")
    mode = load.add_mutually_exclusive_group()
    mode.add_argument(
        "--rate", type=float, help="fixed offered rate, messages/s (all clients)"
    )
    mode.add_argument(
        "--search",
        action="store_true",
        help="find the saturation rate, then run 2x saturation and 0.5x saturation",
    )
    mode.add_argument(
        "--closed-loop",
        action="store_true",
        help="each client sends its next message once the previous one's status "
        "arrives (no offered rate)",
    )
    load.add_argument(
        "--poisson", action="store_true", help="Poisson arrivals (default: even)"
    )
    load.add_argument(
        "--duration", type=float, default=10.0, help="seconds of --rate/--closed-loop"
    )
    load.add_argument(
        "--step-duration", type=float, default=10.0, help="seconds per search step"
    )
    load.add_argument(
        "--overload-duration", type=float, default=20.0, help="seconds at 2x saturation"
    )
    load.add_argument("--search-start", type=float, default=10.0, help="first rate")
    load.add_argument("--search-max", type=float, default=5000.0, help="highest rate")
    load.add_argument(
        "--search-bisections", type=int, default=3, help="steps after doubling"
    )
    load.add_argument(
        "--message-size", type=int, default=100, help="characters per message"
    )
    stack = p.add_argument_group("stack")
    stack.add_argument(
        "--database-url",
        default="sqlite",
        help="'sqlite' (a fresh file in the run directory), 'postgres' "
        f"({POSTGRES_DEFAULT}), or a postgres:// URL whose database is DROPPED and "
        "created afresh (its name must contain 'bench')",
    )
    stack.add_argument(
        "--server",
        choices=["uvicorn", "daphne"],
        default="uvicorn",
        help="ASGI server: uvicorn as the Procfile runs it, or daphne for comparison",
    )
    stack.add_argument(
        "--web-processes", type=int, default=1, help="web processes, one port each"
    )
    stack.add_argument(
        "--workers", type=int, default=1, help="Celery worker processes (own node name)"
    )
    stack.add_argument(
        "--concurrency", type=int, default=2, help="prefork children per worker (-c)"
    )
    stack.add_argument(
        "--no-task-events",
        dest="task_events",
        action="store_false",
        help="start the worker without -E (Flower needs it; this measures its cost)",
    )
    stack.add_argument(
        "--no-beat", dest="beat", action="store_false", help="do not start beat"
    )
    stack.add_argument(
        "--partitions", type=int, default=6, help="partitions of the fresh topic"
    )
    stack.add_argument(
        "--kafka-cluster",
        type=int,
        default=0,
        metavar="N",
        help="a real Apache Kafka cluster of N KRaft nodes (chatproj.kafka_cluster; "
        "replication factor min(N, 3), min.insync.replicas 2 from 3 nodes, acks=all) "
        "instead of the embedded Tansu broker",
    )
    stack.add_argument(
        "--use-running",
        action="store_true",
        help="start nothing: use --redis-url, --kafka, --web and --database-url "
        "(not recreated) of a running stack, started with CHAT_RATE_LIMIT= (empty)",
    )
    stack.add_argument("--redis-url", help="with --use-running: REDIS_URL")
    stack.add_argument("--kafka", help="with --use-running: KAFKA_BOOTSTRAP_SERVERS")
    stack.add_argument(
        "--web",
        action="append",
        default=[],
        help="with --use-running: host:port of a web process (repeat for several)",
    )
    stack.add_argument("--topic", help="Kafka topic (default: a fresh bench-* topic)")
    stack.add_argument(
        "--publish-task",
        default="chat.tasks.publish_chat_message",
        help="name of the chat's publish task (for the cheap-repeat ceiling)",
    )
    ceil = p.add_argument_group("ceilings")
    ceil.add_argument("--no-ceilings", dest="ceilings", action="store_false")
    ceil.add_argument("--ceiling-tasks", type=int, default=2000, help="tasks per run")
    ceil.add_argument("--ceiling-kafka", type=int, default=1000, help="raw records")
    ceil.add_argument(
        "--ceiling-round-trips", type=int, default=500, help="channel-layer trips"
    )
    out = p.add_argument_group("output")
    out.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    out.add_argument(
        "--run-dir", type=Path, help="database file and process logs (default: tmp)"
    )
    out.add_argument("--label", help="free text written into the report")
    out.add_argument(
        "--tag",
        help="suffix of the result files: latest-<db>-<tag>.* (e.g. 2web-2workers)",
    )
    out.add_argument("--no-progress", dest="progress", action="store_false")
    out.add_argument(
        "--drain-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the pipeline to catch up after a step",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="short steps and small ceilings (a smoke run, not a measurement)",
    )
    return p


def parse_config(argv: list[str] | None = None) -> BenchConfig:
    """Parse the command line; --quick shortens whatever was not given explicitly."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config = BenchConfig(**vars(args))
    if config.database_url == "postgres":
        config.database_url = POSTGRES_DEFAULT
    if config.use_running and not (config.redis_url and config.kafka and config.web):
        parser.error("--use-running needs --redis-url, --kafka and --web")
    if config.use_running and config.database_url == "sqlite":
        parser.error("--use-running needs the running stack's --database-url")
    for name in ("clients", "rooms", "web_processes", "workers", "concurrency"):
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if config.kafka_cluster < 0 or (config.kafka_cluster and config.use_running):
        parser.error("--kafka-cluster N: N >= 1, and not with --use-running")
    if config.clients < config.rooms:
        parser.error("--clients must be at least --rooms (one client per room)")
    if config.tag and not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", config.tag):
        parser.error("--tag: 1-40 of letters, digits, '.', '_', '-'")
    if config.server == "uvicorn" and importlib.util.find_spec("uvicorn") is None:
        parser.error("--server uvicorn: uvicorn is not installed")
    if config.quick:
        given = {arg.split("=")[0] for arg in (sys.argv[1:] if argv is None else argv)}
        quick = {
            "step_duration": 3.0,
            "overload_duration": 5.0,
            "duration": 3.0,
            "search_bisections": 1,
            "ceiling_tasks": 200,
            "ceiling_kafka": 100,
            "ceiling_round_trips": 100,
            "drain_timeout": 30.0,
        }
        for name, value in quick.items():
            if f"--{name.replace('_', '-')}" not in given:
                setattr(config, name, value)
    if config.rate is None and not config.search and not config.closed_loop:
        config.rate = 20.0
    return config
