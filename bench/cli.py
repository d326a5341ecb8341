"""`python -m bench`: start the stack (or use a running one), run, report, stop."""

from __future__ import annotations

import asyncio
import logging
import shlex
import sys
import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from .config import BenchConfig, parse_config

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (targets may still be not met)."""
    config = parse_config(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    console = Console(stderr=True)
    from .stack import (
        Stack,
        StackError,
        bench_rooms,
        create_rooms,
        create_users,
        make_run_dir,
    )

    run_dir = make_run_dir(config)
    console.print(f"[bold]chatproj bench[/]: run directory {run_dir} (database, logs)")
    stack = Stack(config, run_dir)
    started = datetime.now(UTC)
    try:
        stack.prepare()
        users = create_users(config.clients)
        create_rooms(bench_rooms(config))
        stack.start_app()
        console.print(
            f"stack up: web {', '.join(stack.web)}, Redis {stack.redis_url}, "
            f"Kafka {stack.kafka} topic {stack.topic}"
        )
        from .runner import Runner

        runner = Runner(config, stack, users)
        data = _run_async(runner)
        report = _assemble(config, stack, runner, data, started, argv)
    except StackError as exc:
        console.print(f"[red]The stack did not start:[/] {exc}")
        return 2
    finally:
        stack.stop()
    from .analysis import latencies_ms
    from .report import write_outputs

    ref = runner.reference_step()
    latencies = latencies_ms(runner.ledger, ref.index) if ref else {}
    paths = write_outputs(report, latencies, config.output_dir)
    _print_summary(console, report)
    console.print(f"written: {paths['json']}, {paths['md']}, {paths['png']}")
    return 0


def _run_async(runner: Any) -> dict[str, Any]:
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # uvloop is optional: plain asyncio works, a little slower
        factory = None
    with asyncio.Runner(loop_factory=factory) as loop_runner:
        result: dict[str, Any] = loop_runner.run(runner.run())
    return result


def _assemble(
    config: BenchConfig,
    stack: Any,
    runner: Any,
    data: dict[str, Any],
    started: datetime,
    argv: list[str] | None,
) -> dict[str, Any]:
    import platform

    import psutil

    from .report import SCHEMA, git_describe

    ref = runner.reference_step()
    args = sys.argv[1:] if argv is None else argv
    return {
        "schema": SCHEMA,
        "stamp": started.strftime("%Y%m%d-%H%M%S"),
        "started_at": started.strftime("%Y-%m-%d %H:%M UTC"),
        "finished_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "database_kind": config.database_kind,
        "command": shlex.join(["python", "-m", "bench", *args]),
        "git": git_describe(),
        "host": {
            "cpus": psutil.cpu_count(),
            "python": platform.python_version(),
            "load_average": [round(x, 2) for x in psutil.getloadavg()],
        },
        "config": config.as_json(),
        "stack": stack.describe(),
        "reference_step": ref.index if ref else None,
        **data,
        "elapsed_seconds": round(time.time() - started.timestamp(), 1),
    }


def _print_summary(console: Console, report: dict[str, Any]) -> None:
    table = Table(title="targets")
    for column in ("target", "status", "measured", "threshold"):
        table.add_column(column)
    colours = {"met": "green", "not met": "red"}
    for target in report["targets"]:
        colour = colours.get(target["status"], "yellow")
        table.add_row(
            target["target"],
            f"[{colour}]{target['status']}[/]",
            str(target["measured"]),
            target["threshold"],
        )
    console.print(table)
    totals = report["totals"]
    console.print(
        f"sent {totals['sent']}, acked {totals['acked']}, "
        f"in Kafka {totals['in_kafka']}, "
        f"lost {totals['lost']} (passed over by the reader, found again: "
        f"{totals['passed_over_by_reader']}), duplicates {totals['duplicates']}, "
        f"inversions {totals['inversions']}, "
        f"missed frames {totals['missed_frames']['total']}"
    )
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}")
