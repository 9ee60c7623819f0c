"""Draw docs/architecture.png: the layers of the package and the path of one analysis.

    .venv/bin/python docs/make_figures.py
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

HERE = Path(__file__).resolve().parent

ARCHITECTURE = HERE / "architecture.md"
_LAYER_ROW = re.compile(r"^\| (\d+) \| ([\w ]+) \| ([^|]+) \|")


def layers(text: str) -> list[tuple[str, str]]:
    """(title, modules) of each row of architecture.md's layer table, top layer first (the
    table ``tests/test_imports.py`` holds the imports to)."""
    rows = []
    for line in text.splitlines():
        row = _LAYER_ROW.match(line)
        if row:
            units = re.findall(r"`(\w+)`", row.group(3))
            rows.append((int(row.group(1)), f"{row.group(1)}. {row.group(2).strip()}",
                         "  ·  ".join(units)))
    return [(title, body) for _, title, body in sorted(rows, reverse=True)]


PATH = [  # one analysis, in order
    ("hook", "on_train_start (epoch 0) / end of check_on hook /\non_train_batch_end: "
     "Schedule due? -> AnalysisRunner.run"),
    ("select", "layers.find_layers -> LayerSpec list;\nunder DDP distributed.split_work "
     "(LPT by ModeSpec.cost)"),
    ("decompose", "analysis.analyze: per ModeSpec, same-shape layers stacked ->\n"
     "ModeSpec.spectrum (one batched solver call)"),
    ("measure", "rmt.esd_metrics per layer and mode: norms, power-law fit,\nMP bulk, traps "
     "-> LayerReport (mode, normalisation, fit)"),
    ("gather", "distributed.gather_reports (all ranks) -> Report;\nclasses.analyze_classes "
     "on rank 0 (probe), broadcast"),
    ("judge", "analysis.summarize -> aggregates; AlertEngine.update;\nmonitor.gather -> "
     "frozen AnalysisResult"),
    ("publish", "monitor.scalars -> typed Scalars; Publisher: callback_metrics\n(every rank); "
     "rank 0: loggers, TensorBoard, history file"),
    ("stop vote", "on_alert per alert; a stop alert agreed on all ranks\n"
     "(reduce_boolean_decision) -> trainer.should_stop"),
]


def _box(axes, x, y, w, h, title, body, colour):
    axes.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.01,rounding_size=0.015",
                                  facecolor=colour, edgecolor="#333333", linewidth=1.0))
    axes.text(x + 0.012, y + h - 0.012, title, ha="left", va="top", fontsize=10,
              fontweight="bold")
    axes.text(x + 0.012, y + h - 0.045, body, ha="left", va="top", fontsize=7.6,
              linespacing=1.3)


def _arrow(axes, start, end):
    axes.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=11,
                                   color="#333333", linewidth=1.0))


def architecture_figure() -> Figure:
    """Left: the layers of architecture.md (imports only point down). Right: the path of one
    analysis."""
    figure = Figure(figsize=(13, 7.2), dpi=110)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.axis("off")
    axes.text(0.02, 0.975, "Layers of svd_callback (imports point down only)", fontsize=12,
              fontweight="bold", va="top")
    axes.text(0.50, 0.975, "The path of one analysis (SpectralMonitor)", fontsize=12,
              fontweight="bold", va="top")

    rows = layers(ARCHITECTURE.read_text())
    colours = ["#f6d5c9", "#f9e3c0", "#f9ecc0", "#e3edc8", "#d6e8d0", "#d2e6e6", "#cfe0f3",
               "#dcd6f0"]
    gap, top, bottom = 0.025, 0.93, 0.07
    height = (top - bottom - gap * (len(rows) - 1)) / len(rows)
    for i, (title, body) in enumerate(rows):
        y = top - (i + 1) * height - i * gap
        _box(axes, 0.02, y, 0.44, height, title, "\n".join(textwrap.wrap(body, 80)),
             colours[i % len(colours)])
        if i:
            _arrow(axes, (0.24, y + height + gap - 0.003), (0.24, y + height + 0.003))
    axes.text(0.02, 0.03, "experiments/ and configs/ sit outside the package and import only "
              "names in a module's __all__, nothing from monitor.", fontsize=8, style="italic")

    step_h, step_gap, y = 0.084, 0.029, 0.93
    for i, (title, body) in enumerate(PATH):
        y -= step_h
        _box(axes, 0.50, y, 0.48, step_h, f"{i + 1}. {title}", body, "#eeeeee")
        if i:
            _arrow(axes, (0.74, y + step_h + step_gap - 0.002), (0.74, y + step_h + 0.002))
        y -= step_gap
    return figure


def main() -> None:
    architecture_figure().savefig(HERE / "architecture.png")


if __name__ == "__main__":
    main()
