"""Results bookkeeping and output: the rich table, results.json and results.md."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.table import Table


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    fmt: str
    #: aioqueue's target for the row (shown in the "aioqueue target" column), if any.
    target: str = ""


# The main table's rows, in order: the one place their keys, labels, units and targets
# are defined (the chart helper imports this list). results.json has, per library and
# key, {"median": x, "samples": [...]} (+ "dist" for the latency rows with a distribution).
METRICS: list[Metric] = [
    Metric("enqueue", "enqueue tasks/s", True, "{:,.0f}"),
    Metric("enqueue_batch", "enqueue (batch API) tasks/s", True, "{:,.0f}"),
    Metric("throughput", "worker tasks/s", True, "{:,.0f}"),
    Metric("rtt_p50", "round trip p50 ms", False, "{:.2f}"),
    Metric("rtt_p99", "round trip p99 ms", False, "{:.2f}"),
    Metric("sleep_wall", "sleep test wall s", False, "{:.2f}"),
    Metric("worker_cpu", "worker CPU s / 10k tasks", False, "{:.2f}"),
    Metric("redis_cpu", "redis CPU s / 10k tasks", False, "{:.2f}"),
    Metric("closed_rate", "closed loop, 100 producers: tasks/s", True, "{:,.0f}", ">= 25,000"),
    Metric("closed_p50", "closed loop p50 ms", False, "{:.2f}"),
    Metric("closed_p99", "closed loop p99 ms", False, "{:.2f}", "<= 5"),
    Metric("load_p50", "round trip under load p50 ms", False, "{:.2f}"),
    Metric("load_p99", "round trip under load p99 ms", False, "{:.2f}", "<= 2"),
    Metric("load_max", "round trip under load max ms", False, "{:.2f}"),
    Metric("drain", "drain of a pre-filled queue tasks/s", True, "{:,.0f}", ">= 60,000"),
    Metric("drain_worker_cpu", "drain: worker CPU s / 10k tasks", False, "{:.2f}"),
    Metric("drain_redis_cpu", "drain: redis CPU s / 10k tasks", False, "{:.2f}"),
    Metric("lowload_cpu_us", "worker CPU µs / task at low load", False, "{:,.0f}", "<= 50"),
    Metric("mem_per_handle", "producer memory B / awaited handle", False, "{:,.0f}", "<= 500"),
    Metric("mem_released_mb", "producer RSS after release - baseline MB", False, "{:.1f}",
           "~ 0"),
    Metric("mem_set_per_handle", "producer memory B / handle, awaited as one set", False,
           "{:,.0f}", "<= 500"),
    Metric("mem_set_released_mb", "as one set: RSS after release - baseline MB", False,
           "{:.1f}", "~ 0"),
    Metric("startup", "worker start-up s (spawn -> first task)", False, "{:.2f}", "<= 0.25"),
    Metric("big_enqueue", "1 MB argument: enqueue tasks/s", True, "{:,.1f}",
           "within 2x of SET"),
    Metric("big_drain", "1 MB argument: drain tasks/s", True, "{:,.1f}", "within 2x of GET"),
]
#: Recorded beside the rows (JSON, notes under the md table), not rows themselves.
INFO_METRICS: list[Metric] = [
    Metric("load_rate", "background send rate used by 'under load' tasks/s", True, "{:,.0f}"),
    Metric("lowload_rate", "send rate used by 'low load' tasks/s", True, "{:,.0f}"),
    Metric("drain_n", "tasks in the drain row", True, "{:,.0f}"),
    Metric("rtt_n", "round trips timed in the round-trip row", True, "{:,.0f}"),
]
#: The phase (run.py) that produces each scenario row: a phase the library's API cannot do
#: makes all its rows "—" with a footnote.
METRIC_PHASE = {
    "closed_rate": "closed loop", "closed_p50": "closed loop", "closed_p99": "closed loop",
    "load_p50": "under load", "load_p99": "under load", "load_max": "under load",
    "drain": "drain", "drain_worker_cpu": "drain", "drain_redis_cpu": "drain",
    "lowload_cpu_us": "low load", "mem_per_handle": "memory", "mem_released_mb": "memory",
    "mem_set_per_handle": "memory as a set", "mem_set_released_mb": "memory as a set",
    "startup": "start-up", "big_enqueue": "1 MB argument", "big_drain": "1 MB argument",
}
#: Rows whose per-round latency distribution is kept (JSON "dist", md section).
DIST_KEYS = {"load_p99": "round trip under load", "closed_p99": "closed loop"}
#: The redis-py reference of the 1 MB row: key -> (label, the row it is compared with).
REFERENCE = {"set_1mb": ("redis-py SET 1 MB /s", "big_enqueue"),
             "get_1mb": ("redis-py GET 1 MB /s", "big_drain"),
             "bare_task_bytes": ("memory calibration: B per plain asyncio Future awaited by its "
                                 "own task (the floor under every handle of the memory row)",
                                 "mem_per_handle")}

HOME = "aioqueue"
# Peers have no batch enqueue API, so aioqueue's batch row is compared with the best
# peer's plain enqueue rate (marked with * in the table).
RATIO_FALLBACK = {"enqueue_batch": "enqueue"}

# "Flow control costs" (benchmarks/_flow.py): one row per variant, medians over rounds.
FLOW_METRICS: list[Metric] = [
    Metric("throughput", "tasks/s", True, "{:,.0f}"),
    Metric("worker_cpu", "worker CPU s / 10k tasks", False, "{:.2f}"),
    Metric("redis_cpu", "redis CPU s / 10k tasks", False, "{:.2f}"),
]

# "Redis Cluster vs single server" (benchmarks/_cluster.py): one row per metric, one
# column per broker, medians over rounds, plus the median of per-round cluster / single.
CLUSTER_METRICS: list[Metric] = [
    Metric("throughput", "worker tasks/s (drain)", True, "{:,.0f}"),
    Metric("rtt_p50", "round trip p50 ms", False, "{:.2f}"),
    Metric("rtt_p99", "round trip p99 ms", False, "{:.2f}"),
    Metric("worker_cpu", "worker CPU s / 10k tasks (drain)", False, "{:.2f}"),
    Metric("redis_cpu", "redis CPU s / 10k tasks (drain)", False, "{:.2f}"),
]


@dataclass
class Results:
    libs: list[str]
    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Flow-control section: (key, label) of each variant, the first being the baseline;
    #: empty when the section did not run.
    flow_variants: list[tuple[str, str]] = field(default_factory=list)
    #: round number -> variant -> metric -> value (rounds kept apart for paired ratios).
    flow: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    flow_errors: dict[str, list[str]] = field(default_factory=dict)
    #: Cluster section: (key, label) of each broker, the first being the baseline; empty
    #: when the section did not run.
    cluster_targets: list[tuple[str, str]] = field(default_factory=list)
    #: round number -> broker -> metric -> value.
    cluster: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    cluster_errors: dict[str, list[str]] = field(default_factory=dict)
    #: lib -> metric -> one distribution dict per round (_scenarios.distribution).
    dists: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    #: lib -> phase -> why the library's API cannot do it (cells show "—" + a footnote).
    unsupported_rows: dict[str, dict[str, str]] = field(default_factory=dict)
    #: The 1 MB row's redis-py reference: key -> one rate per round.
    reference: dict[str, list[float]] = field(default_factory=dict)

    def add_dist(self, lib: str, metric: str, dist: dict[str, Any]) -> None:
        if dist:
            self.dists.setdefault(lib, {}).setdefault(metric, []).append(dist)

    def unsupported(self, lib: str, phase: str, why: str) -> None:
        self.unsupported_rows.setdefault(lib, {})[phase] = why

    def median_dist(self, lib: str, metric: str) -> dict[str, Any] | None:
        """The round whose p99 is the median one (a real distribution, not a blend)."""
        dists = sorted(self.dists.get(lib, {}).get(metric, []), key=lambda d: d["p99"])
        return dists[(len(dists) - 1) // 2] if dists else None

    def add(self, lib: str, metric: str, value: float) -> None:
        if not math.isnan(value):
            self.samples.setdefault(lib, {}).setdefault(metric, []).append(value)

    def error(self, lib: str, phase: str, exc: BaseException) -> None:
        msg = (str(exc).strip().splitlines() or [""])[0][:160]
        self.errors.setdefault(lib, []).append(f"{phase}: {type(exc).__name__}: {msg}")

    def median(self, lib: str, metric: str) -> float | None:
        vals = self.samples.get(lib, {}).get(metric)
        return statistics.median(vals) if vals else None

    def ratio(self, m: Metric) -> tuple[float | None, bool]:
        """aioqueue / best peer for one row, and whether the fallback row was used."""
        home = self.median(HOME, m.key)
        peers = [lib for lib in self.libs if not lib.startswith(HOME)]  # not aioqueue -E
        peer_key, fallback = m.key, False
        if not any(self.median(p, m.key) is not None for p in peers) and m.key in RATIO_FALLBACK:
            peer_key, fallback = RATIO_FALLBACK[m.key], True
        vals = [v for p in peers if (v := self.median(p, peer_key)) is not None]
        if home is None or not vals:
            return None, fallback
        best = max(vals) if m.higher_is_better else min(vals)
        # A best of 0 or below (e.g. RSS back under the baseline) makes no ratio.
        return (home / best if best > 0 else None), fallback

    def footnotes(self) -> list[tuple[str, str]]:
        """(marker, text) for every "not supported" reason, in a stable order."""
        seen: dict[str, list[str]] = {}
        for lib in self.libs:
            for phase, why in self.unsupported_rows.get(lib, {}).items():
                seen.setdefault(f"{phase}: {why}", []).append(lib)
        return [(f"[{i}]", f"{', '.join(libs)} — {text}")
                for i, (text, libs) in enumerate(seen.items(), 1)]

    def _marker(self, lib: str, phase: str) -> str:
        why = self.unsupported_rows.get(lib, {}).get(phase)
        for marker, text in self.footnotes():
            if why is not None and text.endswith(f"— {phase}: {why}"):
                return marker
        return ""

    def cell(self, lib: str, m: Metric) -> str:
        v = self.median(lib, m.key)
        if v is not None:
            return m.fmt.format(v)
        if m.key == "enqueue_batch" and lib != HOME:
            return "—"
        phase = METRIC_PHASE.get(m.key)
        if phase and phase in self.unsupported_rows.get(lib, {}):
            return "—" + self._marker(lib, phase)
        errs = self.errors.get(lib)
        # Short in the table (it has to fit a terminal); the full lines are listed below it.
        return f"error: {errs[0].split(': ', 1)[-1][:40]}" if errs else "—"

    def ratio_cell(self, m: Metric) -> str:
        r, fallback = self.ratio(m)
        if r is None:
            return "—"
        return f"{r:.2f}x" + ("*" if fallback else "")

    def rows(self) -> list[list[str]]:
        out = []
        for m in METRICS:
            arrow = "↑" if m.higher_is_better else "↓"
            out.append(
                [
                    f"{m.label} {arrow}",
                    *(self.cell(lib, m) for lib in self.libs),
                    self.ratio_cell(m),
                    m.target,
                ]
            )
        return out

    def header(self) -> list[str]:
        return ["metric", *self.libs, "aioqueue / best peer", "aioqueue target"]

    # -- flow control costs ----------------------------------------------------------------
    def flow_add(self, rnd: int, variant: str, metric: str, value: float) -> None:
        if not math.isnan(value):
            self.flow.setdefault(rnd, {}).setdefault(variant, {})[metric] = value

    def flow_error(self, rnd: int, variant: str, exc: BaseException) -> None:
        msg = (str(exc).strip().splitlines() or [""])[0][:160]
        self.flow_errors.setdefault(variant, []).append(
            f"round {rnd}: {type(exc).__name__}: {msg}")

    def flow_samples(self, variant: str, metric: str) -> list[float]:
        return [v[variant][metric] for _, v in sorted(self.flow.items())
                if metric in v.get(variant, {})]

    def flow_ratios(self, variant: str) -> list[float]:
        """variant / baseline tasks/s of each round where both ran (paired: a round's
        variant is compared with the baseline measured minutes, not rounds, apart)."""
        base = self.flow_variants[0][0]
        out = []
        for _, v in sorted(self.flow.items()):
            a, b = v.get(variant, {}).get("throughput"), v.get(base, {}).get("throughput")
            if a is not None and b:
                out.append(a / b)
        return out

    def flow_header(self) -> list[str]:
        return ["flow control", *(m.label for m in FLOW_METRICS[:1]), "vs plain",
                *(m.label for m in FLOW_METRICS[1:]), "tasks/s per round"]

    def flow_rows(self) -> list[list[str]]:
        rows = []
        for i, (key, label) in enumerate(self.flow_variants):
            cells = []
            for m in FLOW_METRICS:
                vals = self.flow_samples(key, m.key)
                cells.append(m.fmt.format(statistics.median(vals)) if vals else (
                    "error" if key in self.flow_errors else "—"))
            ratios = self.flow_ratios(key)
            if i == 0:
                vs = "1.00x" if ratios else "—"
            elif ratios:
                r = statistics.median(ratios)
                vs = f"{r:.2f}x ({(r - 1) * 100:+.0f} %)"
            else:
                vs = "—"
            per_round = " / ".join(
                f"{v[key]['throughput']:,.0f}" if "throughput" in v.get(key, {}) else "err"
                for _, v in sorted(self.flow.items()))
            rows.append([label, cells[0], vs, *cells[1:], per_round])
        return rows

    def flow_rich_table(self, title: str) -> Table:
        table = Table(title=title, show_lines=False)
        for i, h in enumerate(self.flow_header()):
            table.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
        for row in self.flow_rows():
            table.add_row(*row)
        return table

    def flow_markdown_table(self) -> str:
        header = self.flow_header()
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---", *["---:"] * (len(header) - 1)]) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.flow_rows()]
        return "\n".join(lines)

    def flow_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, (key, label) in enumerate(self.flow_variants):
            entry: dict[str, Any] = {"label": label}
            for m in FLOW_METRICS:
                vals = self.flow_samples(key, m.key)
                entry[m.key] = {"median": statistics.median(vals) if vals else None,
                                "samples": vals}
            ratios = self.flow_ratios(key)
            entry["vs_plain"] = {
                "median": statistics.median(ratios) if ratios else None,
                "samples": ratios,
                "baseline": i == 0,
            }
            entry["errors"] = self.flow_errors.get(key, [])
            out[key] = entry
        return out

    # -- Redis Cluster vs single server ------------------------------------------------------
    def cluster_add(self, rnd: int, target: str, metric: str, value: float) -> None:
        if not math.isnan(value):
            self.cluster.setdefault(rnd, {}).setdefault(target, {})[metric] = value

    def cluster_error(self, rnd: int, target: str, exc: BaseException) -> None:
        msg = (str(exc).strip().splitlines() or [""])[0][:160]
        self.cluster_errors.setdefault(target, []).append(
            f"round {rnd}: {type(exc).__name__}: {msg}")

    def cluster_samples(self, target: str, metric: str) -> list[float]:
        return [v[target][metric] for _, v in sorted(self.cluster.items())
                if metric in v.get(target, {})]

    def cluster_ratios(self, target: str, metric: str) -> list[float]:
        """target / baseline of each round where both have the metric (paired)."""
        base = self.cluster_targets[0][0]
        out = []
        for _, v in sorted(self.cluster.items()):
            a, b = v.get(target, {}).get(metric), v.get(base, {}).get(metric)
            if a is not None and b:
                out.append(a / b)
        return out

    def cluster_header(self) -> list[str]:
        base, *others = self.cluster_targets
        return ["metric", *(label for _, label in self.cluster_targets),
                *(f"{k} / {base[0]}" for k, _ in others),
                "per round (" + " / ".join(k for k, _ in self.cluster_targets) + ")"]

    def cluster_rows(self) -> list[list[str]]:
        rows = []
        keys = [k for k, _ in self.cluster_targets]
        for m in CLUSTER_METRICS:
            arrow = "↑" if m.higher_is_better else "↓"
            cells = []
            for k in keys:
                vals = self.cluster_samples(k, m.key)
                cells.append(m.fmt.format(statistics.median(vals)) if vals else (
                    "error" if k in self.cluster_errors else "—"))
            ratios = []
            for k in keys[1:]:
                rs = self.cluster_ratios(k, m.key)
                if rs:
                    r = statistics.median(rs)
                    ratios.append(f"{r:.2f}x ({(r - 1) * 100:+.0f} %)")
                else:
                    ratios.append("—")
            per_round = " · ".join(
                " / ".join(m.fmt.format(v[k][m.key]) if m.key in v.get(k, {}) else "err"
                           for k in keys)
                for _, v in sorted(self.cluster.items()))
            rows.append([f"{m.label} {arrow}", *cells, *ratios, per_round])
        return rows

    def cluster_rich_table(self, title: str) -> Table:
        table = Table(title=title, show_lines=False)
        for i, h in enumerate(self.cluster_header()):
            table.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
        for row in self.cluster_rows():
            table.add_row(*row)
        return table

    def cluster_markdown_table(self) -> str:
        header = self.cluster_header()
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---", *["---:"] * (len(header) - 1)]) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.cluster_rows()]
        return "\n".join(lines)

    def cluster_json(self) -> dict[str, Any]:
        base = self.cluster_targets[0][0]
        out: dict[str, Any] = {}
        for key, label in self.cluster_targets:
            entry: dict[str, Any] = {"label": label}
            for m in CLUSTER_METRICS:
                vals = self.cluster_samples(key, m.key)
                entry[m.key] = {"median": statistics.median(vals) if vals else None,
                                "samples": vals}
                if key != base:
                    rs = self.cluster_ratios(key, m.key)
                    entry[m.key][f"vs_{base}"] = {
                        "median": statistics.median(rs) if rs else None, "samples": rs}
            entry["errors"] = self.cluster_errors.get(key, [])
            out[key] = entry
        return out

    def rich_table(self, title: str) -> Table:
        table = Table(title=title, show_lines=False)
        for i, h in enumerate(self.header()):
            table.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
        for row in self.rows():
            table.add_row(*row)
        return table

    def markdown_table(self) -> str:
        header = self.header()
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---", *["---:"] * (len(header) - 1)]) + "|",
        ]
        lines += [
            "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows()
        ]
        return "\n".join(lines)

    def _metric_json(self, lib: str, key: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"median": self.median(lib, key),
                                 "samples": self.samples.get(lib, {}).get(key, [])}
        if key in DIST_KEYS:
            entry["dist"] = self.dists.get(lib, {}).get(key, [])
        return entry

    def to_json(self) -> dict[str, Any]:
        return {
            lib: {m.key: self._metric_json(lib, m.key) for m in [*METRICS, *INFO_METRICS]}
            | {"errors": self.errors.get(lib, []), "notes": self.notes.get(lib, {}),
               "unsupported": self.unsupported_rows.get(lib, {})}
            for lib in self.libs
        }

    def reference_json(self) -> dict[str, Any]:
        return {k: {"label": REFERENCE[k][0],
                    "median": statistics.median(v) if v else None, "samples": v}
                for k, v in self.reference.items()}

    def reference_lines(self) -> list[str]:
        """The 1 MB row's reference (redis-py on the same server) and aioqueue's ratio."""
        lines = []
        for key, (label, row) in REFERENCE.items():
            vals = self.reference.get(key)
            if not vals:
                continue
            ref = statistics.median(vals)
            home = self.median(HOME, row)
            ratio = f"; aioqueue {home:,.1f} = {home / ref:.2f}x of it" if home and ref else ""
            lines.append(f"- {label}: {ref:,.1f}{ratio}")
        return lines

    def dist_lines(self) -> list[str]:
        """Per library, the latency distribution of the median round (ms): deciles, p99,
        max and histogram, so a bimodal (polling) library is visible, not only its median."""
        out = []
        for key, label in DIST_KEYS.items():
            rows = []
            for lib in self.libs:
                d = self.median_dist(lib, key)
                if not d:
                    continue
                dec = d["deciles"]
                rows.append(f"| {lib} | {d['n']} | {dec[0]:.2f} | {dec[4]:.2f} | "
                            f"{dec[8]:.2f} | {d['p99']:.2f} | {d['max']:.2f} | "
                            f"{histogram_cell(d)} |")
            if rows:
                out += [f"**{label}**, latency distribution (ms; the round with the median "
                        "p99):", "",
                        "| library | n | p10 | p50 | p90 | p99 | max | histogram (bucket: "
                        "count) |", "|---|---:|---:|---:|---:|---:|---:|---|", *rows, ""]
        return out


def histogram_cell(dist: dict[str, Any]) -> str:
    return " · ".join(f"{k}: {v}" for k, v in dist.get("histogram_ms", {}).items())


def machine_info(redis_version: str) -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for dist in (
        "aioqueue",
        "arq",
        "saq",
        "taskiq",
        "taskiq-redis",
        "celery",
        "kombu",
        "streaq",
        "coredis",
        "dramatiq",
        "pydocket",
        "redis",
        "hiredis",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "python": platform.python_version(),
        "redis_server": redis_version,
        "platform": platform.platform(),
        **{f"pkg:{k}": v for k, v in versions.items()},
    }


def write_outputs(
    res: Results,
    out_dir: Path,
    machine: dict[str, str],
    command: str,
    config: dict[str, Any],
    started: str,
) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    payload = {
        "started": started,
        "command": command,
        "config": config,
        "machine": machine,
        "results": res.to_json(),
        "reference": res.reference_json(),
        "metrics": [{"key": m.key, "label": m.label, "higher_is_better": m.higher_is_better,
                     "target": m.target} for m in METRICS],
    }
    if res.flow_variants:
        payload["flow_control"] = {
            "n": config.get("flow_n"),
            "rounds": config.get("flow_rounds"),
            "variants": res.flow_json(),
        }
    if res.cluster_targets:
        payload["cluster"] = {
            "n": config.get("cluster_n"),
            "k": config.get("cluster_k"),
            "rounds": config.get("cluster_rounds"),
            "targets": res.cluster_json(),
        }
    json_path.write_text(json.dumps(payload, indent=2) + "\n")

    pkgs = ", ".join(f"{k[4:]} {v}" for k, v in machine.items() if k.startswith("pkg:"))
    md = [
        "# aioqueue vs peers — benchmark results",
        "",
        f"Run started {started}.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine['nproc']} CPUs, {machine['cpu']}; Python {machine['python']}; "
        f"redis-server {machine['redis_server']}; {machine['platform']}.",
        "",
        f"Packages: {pkgs}.",
        "",
    ]
    if res.libs:
        md += [
            f"Settings: N={config['n']} tasks per throughput/enqueue run, K={config['k']} "
            f"round trips, sleep test {config['sleep_n']} x 50 ms at concurrency "
            f"{config['sleep_concurrency']} where configurable, {config['rounds']} interleaved "
            "rounds; cells are medians over rounds. Scenario sizes: "
            + ", ".join(f"{k}={v}" for k, v in (config.get("sizes") or {}).items()) + ".",
            "",
            res.markdown_table(),
            "",
            "↑ higher is better, ↓ lower is better; `aioqueue / best peer` is aioqueue's value "
            "divided by the best peer's, so > 1 wins on ↑ rows and < 1 wins on ↓ rows "
            "(aioqueue -E is not a peer). \\* no peer has a batch enqueue API in this run: "
            "compared with the best peer's plain enqueue. `aioqueue target`: the goal the "
            "row is tracked against.",
            "",
        ]
        md += [f"{marker} {text}" + "  " for marker, text in res.footnotes()]
        md += [
            "",
            "References, median of rounds (redis-py on the same server, sequential; the "
            "calibration in a fresh process with aioqueue's H):",
            "",
            *res.reference_lines(),
            "",
            "Tasks per drain row (N, or the library's own worker tasks/s x "
            f"{(config.get('sizes') or {}).get('drain_seconds')} s if fewer): "
            + "; ".join(f"{lib} {res.cell(lib, INFO_METRICS[2])}" for lib in res.libs) + ".",
            "",
            f"Round trips timed per round (K={config['k']}, or as many as fit in "
            f"{(config.get('sizes') or {}).get('rt_budget')} s): "
            + "; ".join(f"{lib} {res.cell(lib, INFO_METRICS[3])}" for lib in res.libs) + ".",
            "",
            "Background send rates (tasks/s achieved, median of rounds): "
            + "; ".join(
                f"{lib} under load {res.cell(lib, INFO_METRICS[0])}, low load "
                f"{res.cell(lib, INFO_METRICS[1])}" for lib in res.libs),
            "",
            *res.dist_lines(),
            "Worker settings per library (throughput / round trip; sleep test):",
            "",
        ]
        for lib in res.libs:
            n = res.notes.get(lib, {})
            mem = f"; memory row: H={n['memory_handles']}" if n.get("memory_handles") else ""
            md.append(f"- **{lib}**: {n.get('default', '?')}; sleep test: "
                      f"{n.get('sleep', '?')}{mem}")
        errs = [(lib, e) for lib in res.libs for e in res.errors.get(lib, [])]
        if errs:
            md += ["", "Errors:", ""] + [f"- {lib}: {e}" for lib, e in errs]
    if res.flow_variants:
        if res.libs:
            md.append("")
        md += [
            "## Flow control costs",
            "",
            f"aioqueue's worker draining a pre-filled queue of {config.get('flow_n', 0):,} "
            f"no-op tasks (one default worker process), {config.get('flow_rounds')} "
            "interleaved rounds; cells are medians over rounds, `vs plain` is the median of "
            "each round's variant / plain tasks/s.",
            "",
            res.flow_markdown_table(),
        ]
        errs = [(v, e) for v, _ in res.flow_variants for e in res.flow_errors.get(v, [])]
        if errs:
            md += ["", "Errors:", ""] + [f"- {v}: {e}" for v, e in errs]
    if res.cluster_targets:
        if res.libs or res.flow_variants:
            md.append("")
        md += [
            "## Redis Cluster vs single server",
            "",
            "aioqueue on a local Redis Cluster of 3 masters (no replicas; the app's keys in "
            "the slot of `{aioqueue}`) and on the single redis-server, same machine, "
            f"{config.get('cluster_rounds')} interleaved rounds: per broker and round, one "
            f"default worker drains a pre-filled queue of {config.get('cluster_n', 0):,} "
            f"no-ops, then serves {config.get('cluster_k')} sequential round trips "
            "`await (await add.delay(1, 2))`. Cells are medians over rounds; `cluster / "
            "single` is the median of each round's ratio; redis CPU is the server (on the "
            "cluster: the master owning the slot).",
            "",
            res.cluster_markdown_table(),
        ]
        errs = [(t, e) for t, _ in res.cluster_targets for e in res.cluster_errors.get(t, [])]
        if errs:
            md += ["", "Errors:", ""] + [f"- {t}: {e}" for t, e in errs]
    md += ["", "Method: see benchmarks/README.md.", ""]
    md_path.write_text("\n".join(md))
    return json_path, md_path
