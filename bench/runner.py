"""One benchmark run: load steps (fixed, closed loop, or the saturation search),
draining between them, then the ceilings, and the report's data."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from typing import Any

from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from . import analysis, ceilings
from .analysis import Step
from .config import BenchConfig
from .cpu import CpuMonitor, cpu_delta
from .ledger import KafkaReader, Ledger, reread
from .load import BenchClient, Sample, Sampler, closed_loop, open_loop
from .stack import BenchUser, Stack, bench_rooms, vacuum_database

logger = logging.getLogger(__name__)

QUIET_SETTLED = 2.0  # s without progress once all is in Kafka: status frames are lost
QUIET_STALLED = 15.0  # s without any progress: the pipeline is stuck


class Runner:
    """Drives the clients through the steps and collects everything for the report."""

    def __init__(self, config: BenchConfig, stack: Stack, users: list[BenchUser]):
        from django.conf import settings

        self.config, self.stack, self.users = config, stack, users
        self.cookie_name = settings.SESSION_COOKIE_NAME
        self.ledger = Ledger(config.clients)
        self.rooms = bench_rooms(config)
        self.steps: list[Step] = []
        self.saturation: dict[str, Any] | None = None
        self.warnings: list[str] = []
        self.cpu = CpuMonitor(
            stack.process_roles(), postgres=config.database_kind == "postgres"
        )
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<22}"),
            BarColumn(bar_width=24),
            TimeElapsedColumn(),
            TextColumn("{task.fields[stats]}"),
            disable=not config.progress,
            transient=False,
        )
        self._current: tuple[TaskID, float] | None = None
        self.ceilings_window: tuple[float, float] | None = None

    # --- the run ----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Everything, in order; returns the report's data."""
        from chatproj.celery import app

        config, stack = self.config, self.stack
        await asyncio.to_thread(lambda: stack.vacuums)  # a query: not in the loop
        reader = KafkaReader(
            stack.kafka, stack.topic, self.ledger, from_end=config.use_running
        )
        reader.start()
        if not await asyncio.to_thread(reader.ready.wait, 60):
            reader.stop()
            raise RuntimeError(
                f"Kafka topic {stack.topic} has no partitions after 60 s: is it the "
                "topic the workers publish to (--topic)?"
            )
        if reader.error:
            raise RuntimeError(f"Kafka reader failed: {reader.error}")
        clients = [
            BenchClient(
                i,
                user,
                self.rooms[i],
                stack.web[i % len(stack.web)],
                self.ledger,
                self.cookie_name,
            )
            for i, user in enumerate(self.users)
        ]
        await asyncio.gather(*(c.connect() for c in clients))
        self.sampler = Sampler(
            self.ledger, stack.redis_url, app.conf.task_default_queue
        )
        self.sampler.listeners.append(self._show)
        sampling = asyncio.create_task(self.sampler.run())
        self.t_start = time.monotonic()
        cpu_start = self.cpu.snapshot()
        results: dict[str, Any] = {}
        try:
            with self.progress:
                await self._step(clients, "warmup", "warmup", 5.0, 2.0)
                if config.search:
                    await self._search(clients)
                elif config.closed_loop:
                    await self._step(
                        clients, "closed loop", "closed", None, config.duration
                    )
                else:
                    rate = float(config.rate or 0)
                    await self._step(
                        clients, f"fixed {rate:g}/s", "fixed", rate, config.duration
                    )
                if config.ceilings:
                    t0 = time.monotonic()
                    results = await self._ceilings(app)
                    self.ceilings_window = (t0, time.monotonic())
        finally:
            cpu_end = self.cpu.snapshot()
            t_end = time.monotonic()
            await asyncio.gather(*(c.close() for c in clients))
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
            await asyncio.to_thread(reader.stop)
        passed_over = await asyncio.to_thread(
            reread, stack.kafka, stack.topic, self.ledger
        )
        if passed_over:
            self.warnings.append(
                f"the live Kafka reader passed over {passed_over} record(s) that were "
                "in Kafka (found when the topic was read again after the run; not "
                "lost, and without a Kafka time)"
            )
        for client in clients:
            if client.closed_unexpectedly:
                self.warnings.append(
                    f"client {client.index} was disconnected "
                    f"(code {client.closed_unexpectedly})"
                )
        return analysis.run_report(
            ledger=self.ledger,
            samples=self.sampler.samples,
            steps=self.steps,
            rooms=self.rooms,
            saturation=self.saturation,
            ceilings=results,
            cpu=cpu_delta(cpu_start, cpu_end, t_end - self.t_start),
            warnings=self.warnings,
            t_start=self.t_start,
            t_end=t_end,
            ceilings_window=self.ceilings_window,
        )

    async def _search(self, clients: list[BenchClient]) -> None:
        config = self.config
        good: tuple[float, dict[str, Any]] | None = None
        bad: float | None = None
        rate = config.search_start

        async def probe(rate: float) -> dict[str, Any]:
            return await self._step(
                clients, f"search {rate:g}/s", "search", rate, config.step_duration
            )

        async def judge(rate: float) -> None:
            nonlocal good, bad
            summary = await probe(rate)
            if summary["sustained"]:
                good = (rate, summary)
            else:
                bad = rate

        while rate <= config.search_max:
            summary = await probe(rate)
            if not summary["sustained"]:
                bad = rate
                break
            good, rate = (rate, summary), round(rate * 2, 1)
        while good is None and rate >= 2:
            rate = round(rate / 2, 1)
            await judge(rate)
        for _ in range(config.search_bisections):
            if good is None or bad is None or bad / good[0] < 1.1:
                break
            await judge(round((good[0] + bad) / 2, 1))
        if good is None:
            self.warnings.append("no search step was sustained: no saturation rate")
            return
        if bad is None:
            self.warnings.append(
                "every step up to --search-max was sustained: "
                f"saturation >= {good[0]:g}"
            )
        self.saturation = {
            "rate": good[0],
            "step": good[1]["index"],
            "first_unsustained_rate": bad,
        }
        await self._step(
            clients, "overload 2x", "overload", 2 * good[0], config.overload_duration
        )
        await self._step(
            clients, "half 0.5x", "half", good[0] / 2, config.step_duration
        )

    async def _step(
        self,
        clients: list[BenchClient],
        name: str,
        kind: str,
        rate: float | None,
        duration: float,
    ) -> dict[str, Any]:
        # As timeit does: no pause of the cyclic collector in the measuring process
        # while messages are in flight (its full collections over the ledger took
        # 0.2 s late in a run, and every frame read meanwhile looked that much later).
        # It runs once the pipeline has drained.
        gc.disable()
        try:
            index = len(self.steps)
            cpu0 = self.cpu.snapshot()
            t0 = time.monotonic()
            task = self.progress.add_task(name, total=duration, stats="")
            self._current = (task, t0)
            size = self.config.message_size
            if rate is None:
                await closed_loop(clients, duration=duration, step=index, size=size)
            else:
                await open_loop(
                    clients,
                    rate=rate,
                    duration=duration,
                    step=index,
                    size=size,
                    poisson=self.config.poisson,
                )
            t1 = time.monotonic()
            self._current = None
            self.progress.update(task, completed=duration)
            step = Step(
                index,
                name,
                kind,
                rate,
                t0,
                t1,
                cpu_delta(cpu0, self.cpu.snapshot(), t1 - t0),
            )
            self.steps.append(step)
            await asyncio.sleep(0.6)  # one more sample after the window closes
            summary = analysis.step_summary(
                self.ledger, self.sampler.samples, step, self.rooms
            )
            step.drained, step.drain_seconds = await self._drain()
            if self.stack.vacuums:
                await asyncio.to_thread(vacuum_database)  # as autovacuum would
            self.progress.console.print(_step_line(summary, step))
            return summary
        finally:
            gc.enable()
            gc.collect()

    async def _drain(self) -> tuple[bool, float]:
        """Wait until the pipeline caught up (or stalls, or the timeout)."""
        ledger = self.ledger
        task = self.progress.add_task("  drain", total=None, stats="")
        start = time.monotonic()
        last: tuple[int, ...] = ()
        since = start
        drained = False
        while True:
            now = time.monotonic()
            queue = self.sampler.last.queue if self.sampler.last else 0
            state = (
                ledger.n_acked,
                ledger.n_published,
                ledger.n_kafka,
                sum(ledger.statuses.values()),
                sum(ledger.errors.values()),
                queue,
            )
            if state != last:
                last, since = state, now
            if ledger.settled() and queue == 0:
                drained = True
                break
            if now - since > QUIET_SETTLED and ledger.settled(statuses=False):
                drained = True
                break
            if now - since > QUIET_STALLED or now - start > self.config.drain_timeout:
                self.warnings.append(
                    f"step {len(self.steps) - 1}: the pipeline did not catch up "
                    f"within {now - start:.0f}s "
                    f"(backlog {ledger.n_acked - ledger.n_published})"
                )
                break
            self.progress.update(task, stats=self._stats())
            await asyncio.sleep(0.2)
        self.progress.update(task, total=1, completed=1, stats=self._stats())
        return drained, round(time.monotonic() - start, 2)

    async def _ceilings(self, app: Any) -> dict[str, Any]:
        config, stack = self.config, self.stack
        results: dict[str, Any] = {}
        published = list(self.ledger.published_at)[:500]
        celery_runs: list[tuple[str, str, Any]] = [
            ("noop_task", "bench.tasks.noop", None),
            ("publish_only_task", "bench.tasks.publish_only", None),
        ]
        if published:
            celery_runs.append(
                (
                    "repeat_publish_task",
                    config.publish_task,
                    lambda i: [published[i % len(published)]],
                )
            )
            # again after the repeat: the two are compared with the mean of the
            # no-op's runs either side, as this machine's speed drifts within a run
            celery_runs.append(("noop_task_again", "bench.tasks.noop", None))
        names = [task for _, task, _ in celery_runs]
        if config.use_running and not await asyncio.to_thread(
            ceilings.worker_knows, app, names
        ):
            self.warnings.append(
                "the running worker does not know bench.tasks (start it with "
                "-I bench.tasks): Celery ceilings skipped"
            )
            celery_runs = []
        for key, name, args in celery_runs:
            results[key] = await self._ceiling(
                key,
                ceilings.celery_ceiling,
                app,
                stack.redis_url,
                name,
                config.ceiling_tasks,
                args=args,
                snapshot=self.cpu.snapshot,
            )
        results.update(
            await self._ceiling(
                "kafka",
                ceilings.kafka_ceiling,
                stack.kafka,
                stack.topic,
                config.ceiling_kafka,
            )
        )
        task = self.progress.add_task("ceiling channels", total=None, stats="")
        try:
            results["channels_round_trip"] = await ceilings.channel_layer_ceiling(
                config.ceiling_round_trips
            )
        except Exception as exc:
            self.warnings.append(f"ceiling channels_round_trip failed: {exc}")
        self.progress.update(task, total=1, completed=1)
        return results

    async def _ceiling(self, key: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        task = self.progress.add_task(f"ceiling {key}", total=None, stats="")
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except Exception as exc:
            logger.exception("ceiling %s failed", key)
            self.warnings.append(f"ceiling {key} failed: {exc}")
            return {"error": str(exc)}
        finally:
            self.progress.update(task, total=1, completed=1)

    # --- progress ---------------------------------------------------------------------

    def _stats(self, sample: Sample | None = None) -> str:
        ledger = self.ledger
        queue = (
            sample.queue
            if sample
            else (self.sampler.last.queue if self.sampler.last else 0)
        )
        return (
            f"sent {ledger.n_sent} acked {ledger.n_acked} "
            f"published {ledger.n_published} "
            f"kafka {ledger.n_kafka} backlog {ledger.n_acked - ledger.n_published} "
            f"queue {queue}"
        )

    def _show(self, sample: Sample) -> None:
        if self._current is not None:
            task, t0 = self._current
            self.progress.update(
                task, completed=sample.t - t0, stats=self._stats(sample)
            )

    # --- report data ------------------------------------------------------------------

    def reference_step(self) -> Step | None:
        """The step whose latencies the plot shows: 0.5x saturation, else the main."""
        for kind in ("half", "fixed", "closed"):
            for step in self.steps:
                if step.kind == kind:
                    return step
        return self.steps[-1] if self.steps else None


def _step_line(summary: dict[str, Any], step: Step) -> str:
    """One line per step, printed with or without the progress display."""
    latency = summary["latency_ms"]
    sustained = summary.get("sustained")
    verdict = (
        "" if sustained is None else (" sustained" if sustained else " NOT sustained")
    )
    return (
        f"{step.name}: sent {summary['sent_rate']:g}/s, published "
        f"{summary['published_rate']:g}/s, backlog slope {summary['backlog_slope']}/s,"
        f" p99 ack {latency['ack'].get('p99')} ms, p99 published "
        f"{latency['published'].get('p99')} ms;{verdict}; drained in "
        f"{step.drain_seconds}s"
    )
