"""Chart of the per-library benchmark results: one small bar panel per metric, as a PNG.

``python -m benchmarks._chart [results.json] [out.png]`` redraws it from a results file
(defaults: benchmarks/results.json -> benchmarks/results.png); ``write_chart`` is the same
thing for a results dict already in memory.

The metric list (labels, which direction is better, number formats) comes from
benchmarks._report, so rows added there show up here without changes; a metric found in
the JSON but not in that list is still drawn, under its key and without a direction.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The Agg canvas is attached explicitly (no pyplot): headless, and no global figure state
# left behind when run.py calls write_chart in the middle of a benchmark process.
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from benchmarks._report import HOME, INFO_METRICS, METRICS

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_JSON = BENCH_DIR / "results.json"
DEFAULT_PNG = BENCH_DIR / "results.png"

DPI = 110
HOME_COLOUR = "#1f5fbf"  # aioqueue itself
HOME_VARIANT_COLOUR = "#86a9df"  # aioqueue run another way ("aioqueue -E"): same hue, lighter
PEER_COLOUR = "#a3a3a3"
MUTED_TEXT = "#6b6b6b"

# Above this max/min ratio a linear axis squeezes the small bars to nothing.
LOG_SCALE_SPREAD = 10.0
# Share of each panel's width kept free right of the longest bar for its printed value.
LABEL_HEADROOM = 0.22

# Keys of a library's entry in results.json that are bookkeeping, not metrics.
NON_METRIC_KEYS = frozenset({"errors", "notes"})


@dataclass(frozen=True)
class PanelMetric:
    """What one panel needs to know about its metric, known to _report.METRICS or not."""

    key: str
    label: str
    higher_is_better: bool | None  # None: a metric _report does not know; no arrow shown
    fmt: str | None  # None: decimals chosen per panel (decimals_for)


def decimals_for(values: Sequence[float]) -> int:
    """Decimals that give the panel's smallest non-zero value two significant digits, so
    one panel's numbers line up (0.55 / 0.80, not 0.55 / 0.8) when no format is known."""
    magnitudes = [abs(v) for v in values if v]
    if not magnitudes:
        return 0
    return min(4, max(0, 1 - math.floor(math.log10(min(magnitudes)))))


def format_value(value: float, metric: PanelMetric, fallback_decimals: int) -> str:
    if metric.fmt is not None:
        text = metric.fmt.format(value)
        # A fixed "{:.2f}" prints a small but real value (0.004 s) as "0.00": that reads
        # as zero, so such values get significant digits instead.
        if value == 0 or re.search(r"[1-9]", text):
            return text
        return f"{value:.2g}"
    return f"{value:,.{fallback_decimals}f}"


def format_tick(value: float, _position: float | None = None) -> str:
    """Compact axis ticks (10k, 0.5): the exact values are printed beside the bars."""
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:g}M"
    if magnitude >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def median_of(cell: Any) -> float | None:
    """The median of one results cell, or None when it is missing, null, NaN or not a number."""
    value = cell.get("median") if isinstance(cell, Mapping) else cell
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def panel_metrics(per_library: Mapping[str, Mapping[str, Any]]) -> list[PanelMetric]:
    """_report's metrics in its order, then unknown ones in order of first appearance.

    A metric no library has at all (an older results file) gets no panel; one every
    library has as null (all failed) keeps its panel, where the n/a cells say so.
    """
    present: dict[str, None] = {}  # an ordered set
    for entry in per_library.values():
        for key, cell in entry.items():
            if key not in NON_METRIC_KEYS and (
                isinstance(cell, Mapping) or median_of(cell) is not None
            ):
                present[key] = None
    known = [
        PanelMetric(m.key, m.label, m.higher_is_better, m.fmt) for m in METRICS if m.key in present
    ]
    # Not rows: the settings a row used (INFO_METRICS: rates, sizes) and notes.
    known_keys = {m.key for m in METRICS} | {m.key for m in INFO_METRICS}
    unknown = [
        PanelMetric(key, key.replace("_", " "), None, None)
        for key in present
        if key not in known_keys and _is_cell(per_library, key)
    ]
    return known + unknown


def _is_cell(per_library: Mapping[str, Mapping[str, Any]], key: str) -> bool:
    """A metric's cell holds a median (a dict of notes, like "unsupported", does not)."""
    return any((isinstance(entry.get(key), Mapping) and "median" in entry[key])
               or median_of(entry.get(key)) is not None for entry in per_library.values())


def bar_colour(library: str) -> str:
    if library == HOME:
        return HOME_COLOUR
    # Same test as _report.Results.ratio: "aioqueue -E" is aioqueue, not a peer.
    if library.startswith(HOME):
        return HOME_VARIANT_COLOUR
    return PEER_COLOUR


def draw_panel(
    ax: Axes,
    metric: PanelMetric,
    libraries: Sequence[str],
    per_library: Mapping[str, Mapping[str, Any]],
) -> None:
    medians = {lib: median_of(per_library[lib].get(metric.key)) for lib in libraries}
    values = [v for v in medians.values() if v is not None]
    rows = range(len(libraries))

    ax.set_title(metric.label, loc="left", fontsize=9.5, fontweight="bold")

    ax.set_yticks(list(rows))
    # Library names on every panel: across a three-column grid the eye cannot trace a
    # row back to the first column.
    ax.set_yticklabels(libraries, fontsize=8.5)
    ax.set_ylim(len(libraries) - 0.5, -0.5)  # first library at the top, as in the table
    ax.tick_params(axis="y", length=0)
    ax.tick_params(axis="x", labelsize=7, colors=MUTED_TEXT, length=2)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_color("#cccccc")
    ax.xaxis.grid(True, color="#eeeeee", linewidth=0.8)
    ax.set_axisbelow(True)

    positive = [v for v in values if v > 0]
    # Log only when every value can sit on it: a zero or negative median would vanish.
    use_log = (
        len(positive) == len(values) >= 2 and max(positive) / min(positive) > LOG_SCALE_SPREAD
    )
    if use_log:
        ax.set_xscale("log")
        low, high = min(positive), max(positive)
        # The axis starts below the smallest value so its bar is visible too.
        axis_start = bar_base = low / 3
        decades = math.log10(high / axis_start)
        axis_end = high * 10 ** (decades * LABEL_HEADROOM / (1 - LABEL_HEADROOM))
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=6))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        bar_base = 0.0
        # Medians here are rates, times and sizes; a negative one would still get its bar.
        axis_start = min([0.0, *values])
        high = max(values, default=0.0)
        axis_end = high / (1 - LABEL_HEADROOM) if high > 0 else 1.0
    ax.set_xlim(axis_start, axis_end)
    direction = {True: "↑ better", False: "↓ better", None: ""}[metric.higher_is_better]
    scale_note = "log scale" if use_log else ""
    ax.set_title(" · ".join(filter(None, (direction, scale_note))), loc="right", fontsize=8.5,
                 color=MUTED_TEXT)
    ax.xaxis.set_major_formatter(FuncFormatter(format_tick))

    if not values:
        ax.tick_params(axis="x", labelbottom=False)  # nothing measured: no scale to read
    fallback_decimals = decimals_for(values)
    best: float | None = None
    if values and metric.higher_is_better is not None:
        best = max(values) if metric.higher_is_better else min(values)

    errors_of = {lib: per_library[lib].get("errors") for lib in libraries}
    for row, lib in zip(rows, libraries, strict=True):
        value = medians[lib]
        if value is None:
            # Not measured (no batch API, not in this --only run) or the phase failed.
            text = "n/a (error)" if errors_of[lib] else "n/a"
            ax.annotate(text, (0, row), xycoords=("axes fraction", "data"),
                        xytext=(3, 0), textcoords="offset points", va="center",
                        fontsize=8, color=MUTED_TEXT, style="italic")
            continue
        ax.barh(row, value - bar_base, left=bar_base, height=0.7, color=bar_colour(lib))
        ax.annotate(format_value(value, metric, fallback_decimals), (value, row),
                    xytext=(3, 0), textcoords="offset points", va="center", fontsize=8,
                    fontweight="bold" if value == best and len(values) > 1 else "normal")


def title_line(payload: Mapping[str, Any]) -> str:
    """The run's date and machine, from the JSON's "started" and "machine" entries."""
    machine = payload.get("machine")
    machine = machine if isinstance(machine, Mapping) else {}
    parts = ["aioqueue vs peers"]
    if started := payload.get("started"):
        parts.append(str(started))
    host = []
    if nproc := machine.get("nproc"):
        host.append(f"{nproc} CPUs")
    if cpu := machine.get("cpu"):
        host.append(str(cpu))
    if host:
        parts.append(" ".join(host))
    if python := machine.get("python"):
        parts.append(f"Python {python}")
    if redis := machine.get("redis_server"):
        parts.append(f"Redis {redis}")
    return " · ".join(parts)


def footer_line(payload: Mapping[str, Any]) -> str:
    config = payload.get("config")
    config = config if isinstance(config, Mapping) else {}
    settings = []
    if rounds := config.get("rounds"):
        settings.append(f"bars: medians over {rounds} interleaved rounds")
    else:
        settings.append("bars: medians over rounds")
    if isinstance(n := config.get("n"), int):
        settings.append(f"N={n:,} tasks")
    if isinstance(k := config.get("k"), int):
        settings.append(f"K={k} round trips")
    return (
        ", ".join(settings)
        + f"; blue: {HOME} (lighter: with other options), grey: peers; bold: best; "
        "n/a: not measured or failed (see results.md)"
    )


def write_chart(results: dict[str, Any], png_path: Path) -> None:
    """Draw the payload of results.json (``results[lib][metric] = {"median", "samples"}``
    plus its run details) as a grid of per-metric bar panels and save it to ``png_path``.
    """
    raw = results.get("results")
    per_library: dict[str, Mapping[str, Any]] = (
        {lib: entry for lib, entry in raw.items() if isinstance(entry, Mapping)}
        if isinstance(raw, Mapping)
        else {}
    )
    libraries = list(per_library)  # run order, which is the table's column order
    metrics = panel_metrics(per_library)

    # Three columns keep the PNG about 1,450 px wide, which a README shows without
    # shrinking the text; more metrics add rows instead.
    columns = min(len(metrics), 3) or 1
    grid_rows = max(1, math.ceil(len(metrics) / columns))
    panel_height = 0.75 + 0.24 * max(len(libraries), 1)  # inches: title + one bar per library
    # At least two panels wide, so the title line (machine and date) fits a one-panel chart.
    figure_width = 4.4 * max(columns, 2)
    figure = Figure(figsize=(figure_width, 0.9 + panel_height * grid_rows), dpi=DPI,
                    layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title_line(results), fontsize=11.5, fontweight="bold")

    if not metrics:
        # A run with --only flow/cluster has no per-library section: say so rather than
        # leave an older chart that no longer matches results.json.
        figure.text(0.5, 0.5, "no per-library results in this run", ha="center",
                    va="center", fontsize=11, color=MUTED_TEXT)
    else:
        axes = figure.subplots(grid_rows, columns, squeeze=False)
        for index, ax in enumerate(axes.flat):
            if index >= len(metrics):
                ax.set_visible(False)
                continue
            draw_panel(ax, metrics[index], libraries, per_library)
        # Wrapped to the figure: constrained layout does not shrink text, so a one- or
        # two-panel chart (an --only run) would clip a one-line footer.
        footer = textwrap.fill(footer_line(results), width=int(figure_width * 16))
        figure.supxlabel(footer, fontsize=8, color=MUTED_TEXT)

    png_path.parent.mkdir(parents=True, exist_ok=True)
    # Flat colours at 110 dpi keep the file near 150 kB. No "Software" tag: without the
    # matplotlib version in it, the same results.json redraws to the same bytes.
    figure.savefig(png_path, format="png", dpi=DPI, facecolor="white",
                   metadata={"Software": None})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks._chart",
        description="Draw benchmarks/results.json as a PNG bar chart.",
    )
    parser.add_argument("results_json", nargs="?", type=Path, default=DEFAULT_JSON)
    parser.add_argument("png", nargs="?", type=Path, default=DEFAULT_PNG)
    args = parser.parse_args(argv)
    try:
        payload = json.loads(args.results_json.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read {args.results_json}: {exc}", file=sys.stderr)
        return 1
    if not isinstance(payload, dict):
        print(f"{args.results_json}: expected a JSON object", file=sys.stderr)
        return 1
    write_chart(payload, args.png)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
