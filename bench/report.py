"""The run's outputs under bench/results/: JSON, a markdown table and a PNG plot."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .analysis import STAGE_TITLES, STAGES
from .config import ROOT

SCHEMA = "chatproj-bench/1"


def git_describe() -> dict[str, str]:
    """Commit and branch of the checkout (empty when git is unavailable)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {
        "commit": git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else ""),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
    }


def write_outputs(
    report: dict[str, Any], latencies: dict[str, list[float]], output_dir: Path
) -> dict[str, Path]:
    """Write <stamp>-<db>[-tag].{json,md,png}, copied to latest-<db>[-tag].*."""
    output_dir.mkdir(parents=True, exist_ok=True)
    tag = report["config"].get("tag")
    name = report["database_kind"] + (f"-{tag}" if tag else "")
    base = f"{report['stamp']}-{name}"
    latest = f"latest-{name}"
    paths = {
        "json": output_dir / f"{base}.json",
        "md": output_dir / f"{base}.md",
        "png": output_dir / f"{base}.png",
    }
    paths["json"].write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    plot(report, latencies, paths["png"])
    paths["md"].write_text(markdown(report, paths["png"].name))
    shutil.copyfile(paths["json"], output_dir / f"{latest}.json")
    shutil.copyfile(paths["png"], output_dir / f"{latest}.png")
    (output_dir / f"{latest}.md").write_text(markdown(report, f"{latest}.png"))
    return paths


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) < 10:
            return f"{value:.3g}"
        return (
            f"{value:,.1f}".removesuffix(".0") if abs(value) < 1000 else f"{value:,.0f}"
        )
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def markdown(report: dict[str, Any], png_name: str) -> str:
    """The report as markdown tables, with the plot."""
    stack, config, totals = report["stack"], report["config"], report["totals"]
    out = [
        f"# chatproj benchmark: {stack['database']}, {report['started_at']}",
        "",
        f"Commit `{report['git']['commit']}` (branch `{report['git']['branch']}`)"
        + (f" — {config['label']}" if config.get("label") else ""),
        "",
        f"Command: `{report['command']}`",
        "",
        f"Stack: {stack['server']} ×{stack['web_processes']}, Celery worker "
        f"×{stack['workers']} ({stack['worker_flags']}), beat: "
        f"{_fmt(stack['beat'])}, Redis: {stack['redis']}, Kafka: {stack['kafka']} "
        f"(topic {stack['topic']}, partitions {_fmt(stack['partitions'])}), "
        f"database: {stack['database']}"
        + (
            " (autovacuum is off on this server: the benchmark vacuums the run's "
            "database after each step, as autovacuum would)"
            if stack.get("vacuum_after_steps")
            else ""
        )
        + f", DEBUG={stack['debug']}. Load: "
        f"{config['clients']} clients in {config['rooms']} rooms, "
        f"{config['message_size']}-character messages, "
        + (
            "closed loop."
            if config["closed_loop"]
            else f"open loop ({'Poisson' if config['poisson'] else 'even'} arrivals)."
        ),
        "",
        "## Targets",
        "",
        *_table(
            ["target", "status", "measured", "threshold"],
            [
                [t["target"], t["status"], t["measured"], t["threshold"]]
                for t in report["targets"]
            ],
        ),
    ]
    sat = report.get("saturation")
    if sat:
        out += [
            f"Saturation: **{_fmt(sat['rate'])} msgs/s offered**, "
            f"{_fmt(sat['published_rate'])} msgs/s published (first rate not "
            f"sustained: {_fmt(sat['first_unsustained_rate'])}).",
            "",
        ]
    out += ["## Ratios", ""]
    out += _table(["ratio", "value"], [[k, v] for k, v in report["ratios"].items()])
    out += [
        "## Steps",
        "",
        "Rates in msgs/s over each step (its first second skipped); "
        "backlog = acked − published status seen.",
        "",
    ]
    out += _table(
        [
            "step",
            "offered",
            "sent",
            "acked",
            "published",
            "kafka",
            "backlog slope",
            "queue max",
            "sustained",
            "p99 ack ms",
            "p99 published ms",
            "missed frames",
            "drained",
        ],
        [
            [
                s["name"],
                s["offered_rate"],
                s["sent_rate"],
                s["ack_rate"],
                s["published_rate"],
                s["kafka_rate"],
                s["backlog_slope"],
                s["queue_max"],
                s.get("sustained"),
                s["latency_ms"]["ack"].get("p99"),
                s["latency_ms"]["published"].get("p99"),
                s["missed_frames"]["total"],
                s["drained"],
            ]
            for s in report["steps"]
        ],
    )
    ref = report.get("reference_step")
    if ref is not None:
        step = report["steps"][ref]
        out += [f"## Latency (ms), step “{step['name']}”", ""]
        out += _table(
            ["stage", "count", "mean", "p50", "p90", "p99", "max"],
            [
                [
                    STAGE_TITLES[stage],
                    *(
                        step["latency_ms"][stage].get(k)
                        for k in ("count", "mean", "p50", "p90", "p99", "max")
                    ),
                ]
                for stage in STAGES
            ],
        )
    out += ["## Ceilings (same servers, same run)", ""]
    out += _table(["ceiling", "rate /s", "detail"], _ceiling_rows(report["ceilings"]))
    out += ["## Totals", ""]
    out += _table(
        [
            "sent",
            "acked",
            "published seen",
            "in Kafka",
            "lost",
            "passed over by the reader",
            "duplicates",
            "inversions",
            "seq gaps",
            "missed frames",
            "errors",
            "settled",
        ],
        [
            [
                totals["sent"],
                totals["acked"],
                totals["published_seen"],
                totals["in_kafka"],
                totals["lost"],
                totals["passed_over_by_reader"],
                totals["duplicates"],
                totals["inversions"],
                totals["seq_gaps"],
                totals["missed_frames"]["total"],
                sum(totals["errors"].values()),
                totals["settled"],
            ]
        ],
    )
    roles = list(report["cpu"]["roles"])
    out += ["## CPU (% of one core)", ""]
    out += _table(
        ["step", *roles],
        [
            [s["name"], *(s["cpu"].get(r, {}).get("percent") for r in roles)]
            for s in report["steps"]
        ]
        + [["whole run", *(report["cpu"]["roles"][r]["percent"] for r in roles)]],
    )
    if report["warnings"]:
        out += ["## Warnings", "", *(f"- {w}" for w in report["warnings"]), ""]
    out += [f"![latency, throughput and backlog]({png_name})", ""]
    return "\n".join(out)


def _ceiling_rows(ceilings: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, data in ceilings.items():
        if "error" in data:
            rows.append([name, None, f"failed: {data['error']}"])
            continue
        detail = []
        if "p99_ms" in data:
            detail.append(f"p50 {data['p50_ms']} ms, p99 {data['p99_ms']} ms")
        if "worker_cpu_ms_per_task" in data:
            detail.append(f"worker CPU {data['worker_cpu_ms_per_task']} ms/task")
        if "task" in data:
            detail.append(f"`{data['task']}` ×{data['tasks']}")
        rows.append([name, data.get("rate"), "; ".join(detail)])
    return rows


def plot(report: dict[str, Any], latencies: dict[str, list[float]], path: Path) -> None:
    """Latency distribution per stage; throughput and backlog over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, thr, back) = plt.subplots(3, 1, figsize=(13, 12))
    ref = report.get("reference_step")
    title = report["steps"][ref]["name"] if ref is not None else "-"
    for stage in STAGES:
        values = sorted(v for v in latencies.get(stage, []) if v > 0)
        if values:
            ys = [(i + 1) / len(values) for i in range(len(values))]
            lat.step(values, ys, where="post", label=STAGE_TITLES[stage])
    lat.set_xscale("log")
    lat.set_xlabel("latency (ms, log scale)")
    lat.set_ylabel("fraction of messages")
    lat.set_title(f"Latency distribution per stage: step “{title}”")
    lat.grid(True, which="both", alpha=0.3)
    lat.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)

    series = report["timeseries"]
    t = [s["t"] for s in series]
    for key, label in (
        ("sent", "sent"),
        ("published", "published (status seen)"),
        ("kafka", "readable in Kafka"),
    ):
        # over 1 s (two samples), so a half-second's jitter does not look like a dip
        rates = [
            (b[key] - a[key]) / (b["t"] - a["t"]) if b["t"] > a["t"] else 0
            for a, b in zip(series, series[2:], strict=False)
        ]
        thr.plot(t[2:], rates, label=label, linewidth=1)
    for window in report["steps_window"]:
        step = report["steps"][window["index"]]
        if step["offered_rate"]:
            thr.hlines(
                step["offered_rate"],
                window["t0"],
                window["t1"],
                colors="k",
                linestyles="dashed",
                linewidth=1,
            )
    thr.set_ylabel("msgs/s")
    thr.set_title("Throughput (dashed: offered rate of each step)")
    back.plot(t, [s["backlog"] for s in series], label="backlog (acked − published)")
    back.plot(t, [s["queue"] for s in series], label="Celery queue length")
    back.set_ylabel("messages")
    back.set_xlabel("seconds since the first step")
    back.set_title("Backlog")
    ceilings = report.get("ceilings_window")
    for axis in (thr, back):
        for i, window in enumerate(report["steps_window"]):
            axis.axvspan(
                window["t0"],
                window["t1"],
                alpha=0.08 if i % 2 else 0.16,
                color="tab:blue",
            )
        if ceilings:  # the ceilings run without chat load: leave them out
            axis.set_xlim(0, ceilings[0])
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    for window in report["steps_window"]:
        thr.annotate(
            window["name"],
            (window["t0"], 0.98),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            rotation=90,
            va="top",
        )
    fig.suptitle(
        f"chatproj bench — {report['stack']['database']} — {report['started_at']} — "
        f"{report['git']['commit']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
