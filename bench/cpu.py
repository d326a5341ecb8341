"""CPU seconds per process role (web, worker, beat, valkey, tansu, postgres, bench)."""

from __future__ import annotations

import os

import psutil


class CpuMonitor:
    """Sums user+system CPU time of each role's processes and their children."""

    def __init__(self, roles: dict[str, list[int]], *, postgres: bool = False) -> None:
        self.roles = roles
        self.postgres = postgres
        self._processes: dict[int, psutil.Process] = {}

    def _process(self, pid: int) -> psutil.Process:
        process = self._processes.get(pid)
        if process is None:
            process = self._processes[pid] = psutil.Process(pid)
        return process

    def _tree_seconds(self, pid: int) -> float:
        try:
            root = self._process(pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0.0
        for process in tree:
            try:
                times = self._process(process.pid).cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def snapshot(self) -> dict[str, float]:
        """Cumulative CPU seconds by role, now."""
        seconds = {
            role: sum(self._tree_seconds(pid) for pid in pids)
            for role, pids in self.roles.items()
        }
        times = psutil.Process(os.getpid()).cpu_times()
        seconds["bench"] = times.user + times.system
        if self.postgres:
            total = 0.0
            for process in psutil.process_iter(["name"]):
                if (process.info.get("name") or "").startswith("postgres"):
                    try:
                        cpu = process.cpu_times()
                    except psutil.Error:
                        continue
                    total += cpu.user + cpu.system
            seconds["postgres (all, shared)"] = total
        return seconds


def cpu_delta(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, dict[str, float]]:
    """CPU seconds and percent of one core, by role, between two snapshots."""
    return {
        role: {
            "cpu_seconds": round(after[role] - before.get(role, 0.0), 3),
            "percent": round(100 * (after[role] - before.get(role, 0.0)) / seconds, 1)
            if seconds > 0
            else 0.0,
        }
        for role in after
    }
