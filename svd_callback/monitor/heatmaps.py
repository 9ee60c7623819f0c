"""The heat-map store: every layer's spectrum at each analysis, resampled to a few rank
fractions, kept (bounded) in the callback's checkpointed state for the spectrum heat maps."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from svd_callback.report import Report
from svd_callback.sinks.figures import spectrum_quantiles

__all__ = ["HEATMAP_COLUMNS", "HEATMAP_POINTS", "SpectrumStore", "choose_figure_layers"]

HEATMAP_POINTS = 64
"""Rank fractions per stored spectrum (:func:`svd_callback.sinks.figures.spectrum_quantiles`)."""
HEATMAP_COLUMNS = 256
"""Analyses kept per layer: beyond it every other older column is dropped, so the figure spans
the whole run and the checkpointed state stays bounded."""


def choose_figure_layers(
    report: Report, primary_mode: str, figure_layers: int | tuple[str, ...]
) -> list[str]:
    """The layers with an ESD figure: the names given (those analysed), or ``figure_layers``
    layers of the primary mode spread evenly over the model, taken among those with a power-law
    fit (a finite ``alpha``) when any has one, else among the analysed layers (their figures
    say why there is no fit)."""
    analysed = list(report.by_mode(primary_mode).analysed())
    names = [r.name for r in analysed]
    if not isinstance(figure_layers, int):
        return [n for n in figure_layers if n in names]
    fitted = [r.name for r in analysed
              if isinstance(r.metrics.get("alpha"), float) and math.isfinite(r.metrics["alpha"])]
    names = fitted or names
    if len(names) <= figure_layers:
        return names
    picks = np.unique(np.linspace(0, len(names) - 1, figure_layers).round().astype(int))
    return [names[i] for i in picks]


class SpectrumStore:
    """Spectra by ``"<mode>/<layer>"``: the epochs trained of each column and a
    ``(columns, HEATMAP_POINTS)`` float32 tensor of quantiles; and the figure layers, chosen at
    the first analysis."""

    def __init__(self) -> None:
        self.spectra: dict[str, dict[str, Any]] = {}
        self.figure_names: list[str] | None = None

    def add(
        self,
        report: Report,
        epochs_trained: float,
        primary_mode: str,
        figure_layers: int | tuple[str, ...],
    ) -> None:
        """Store one analysis's spectra (records without singular values are left out)."""
        if self.figure_names is None:
            self.figure_names = choose_figure_layers(report, primary_mode, figure_layers)
        for record in report:
            if record.svals is None:
                continue
            key = f"{record.mode}/{record.name}"
            row = spectrum_quantiles(record.svals.detach().cpu().numpy(), HEATMAP_POINTS)
            row = torch.as_tensor(row, dtype=torch.float32).unsqueeze(0)
            store = self.spectra.get(key)
            if store is None:
                self.spectra[key] = {"epochs": [float(epochs_trained)], "quantiles": row}
                continue
            store["epochs"].append(float(epochs_trained))
            store["quantiles"] = torch.cat([store["quantiles"], row])
            if len(store["epochs"]) > HEATMAP_COLUMNS:
                keep = [*range(0, len(store["epochs"]) - 1, 2), len(store["epochs"]) - 1]
                store["epochs"] = [store["epochs"][i] for i in keep]
                store["quantiles"] = store["quantiles"][keep]

    def columns(self, mode: str, name: str) -> dict[str, Any] | None:
        """The stored columns of one layer and mode (None if none)."""
        return self.spectra.get(f"{mode}/{name}")

    def state_dict(self) -> dict[str, Any]:
        return {
            "spectra": {k: {"epochs": list(v["epochs"]), "quantiles": v["quantiles"].clone()}
                        for k, v in self.spectra.items()},
            "figure_names": None if self.figure_names is None else list(self.figure_names),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.spectra = {
            k: {"epochs": list(v["epochs"]), "quantiles": torch.as_tensor(v["quantiles"]).float()}
            for k, v in state["spectra"].items()
        }
        self.figure_names = state["figure_names"]
