"""How far each layer's weights moved between analyses: the motion of the decomposition.

Singular values alone miss a weight that rotates at constant norm (plain SGD moves the singular
vectors while the norms stay within 1e-3); these metrics see it. For a weight matrix W (a conv
weight as its ``out x (in kh kw)`` unfolding, an attention or recurrent block as that block) at
analyses t-1 and t, and W_0 at the run's first analysis:

- ``weight_motion``   = ||W_t - W_{t-1}||_F / ||W_{t-1}||_F, the relative distance moved;
- ``weight_rotation`` = the angle between W_t and W_{t-1} as vectors of R^{N M}, in radians,
  2 asin(||W_t/||W_t|| - W_{t-1}/||W_{t-1}|| ||_F / 2): blind to rescaling, so weight decay that
  only shrinks a layer reads 0 and a layer that rotates at constant norm does not;
- ``weight_drift``    = ||W_t - W_0||_F / ||W_0||_F, the relative distance from the first analysis.

Nothing but a sketch is kept: S = W Omega, Omega = sqrt(M / k) Q with Q the M x k orthonormal
factor of a Gaussian matrix drawn from a per-layer seed (a uniformly random k-frame), so that
||X Omega||_F^2 is an unbiased estimate of ||X||_F^2 and inner products are preserved in
expectation (Johnson & Lindenstrauss 1984; Halko, Martinsson & Tropp 2011, section 4). Every
quantity above is a norm or an inner product of W_t, W_{t-1}, W_0 and their differences, all
linear in W, so each is read from the sketches. The relative standard deviation of
||X Omega||_F^2 is at most sqrt(2 / k) (a rank-one X; less for an orthonormal than a Gaussian
Omega) and about sqrt(2 / (k r)) for an X of stable rank r; the norm's is half that. When M <= k
the sketch is W itself and the values are exact. The product is formed in float64 on the weight's
device and kept in float32 on the host (a float32 weight resolves no relative change below
~1e-7 either): two sketches of N x min(M, k) values per layer, 8 k bytes per row of W. An
unchanged weight reads exactly 0.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "DEFAULT_SKETCH_SIZE",
    "MOTION_METRICS",
    "MotionTracker",
    "motion_metrics",
    "sketch_omega",
    "sketch_rows",
    "sketch_seed",
    "weight_sketch",
]

MOTION_METRICS = ("weight_motion", "weight_rotation", "weight_drift")
"""The per-layer metrics of the ``"motion"`` group, in logging order."""
DEFAULT_SKETCH_SIZE = 64
"""k, the columns of the sketch: one standard deviation of the squared norm's estimate is at
most 18% (a rank-one change), 1% for a change of stable rank 300."""
MOTION_STATE_VERSION = 1
_ROW_CHUNK_ELEMS = 1 << 22
"""Rows of W are sketched in blocks of at most this many float64 elements (32 MiB)."""


def sketch_seed(name: str, columns: int, seed: int = 0) -> int:
    """A 63-bit seed of Omega for one layer: the same in every process and after a resume
    (Python's own ``hash`` is salted per process)."""
    digest = hashlib.sha256(f"{seed}:{name}:{columns}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def sketch_omega(columns: int, k: int = DEFAULT_SKETCH_SIZE, seed: int = 0,
                 device: torch.device | str | None = None) -> torch.Tensor | None:
    """Omega = sqrt(M / k) Q for a matrix of M = ``columns`` columns, Q the orthonormal factor
    of an M x k Gaussian drawn on the CPU from ``seed`` (the same on every device and rank),
    float64 on ``device``; None when M <= k (the sketch is the matrix itself).

    Raises:
        ValueError: ``k`` < 1.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"the sketch size k must be a positive integer, got {k!r}")
    if columns <= k:
        return None
    generator = torch.Generator(device="cpu").manual_seed(seed)
    gaussian = torch.randn(columns, k, generator=generator, dtype=torch.float64)
    return (torch.linalg.qr(gaussian).Q * math.sqrt(columns / k)).to(device)


def sketch_rows(rows: torch.Tensor, omega: torch.Tensor | None) -> torch.Tensor:
    """``rows.flatten(1) @ omega`` formed in float64 on ``rows``' device, in blocks of rows
    (:data:`_ROW_CHUNK_ELEMS`) to bound the float64 copy, returned in float32 on that device
    (``rows`` itself in float32 when ``omega`` is None)."""
    w = rows.detach().flatten(1)
    if omega is None:
        return w.to(torch.float32, copy=True)
    step = max(1, _ROW_CHUNK_ELEMS // max(1, w.shape[1]))
    blocks = [(w[i:i + step].to(torch.float64) @ omega).to(torch.float32)
              for i in range(0, w.shape[0], step)]
    return torch.cat(blocks) if blocks else w.new_zeros((0, omega.shape[1]), dtype=torch.float32)


def weight_sketch(matrix: torch.Tensor, k: int = DEFAULT_SKETCH_SIZE, seed: int = 0
                  ) -> torch.Tensor:
    """S = W Omega, float32 on the host (W itself when it has at most ``k`` columns):
    :func:`sketch_rows` with :func:`sketch_omega`. ``matrix`` is read as
    ``matrix.flatten(1)`` (N rows, M columns).

    Raises:
        ValueError: ``k`` < 1 or a weight with fewer than 2 dimensions.
    """
    if matrix.dim() < 2:
        raise ValueError(f"a weight matrix needs at least 2 dimensions, got {tuple(matrix.shape)}")
    omega = sketch_omega(math.prod(matrix.shape[1:]), k, seed, matrix.device)
    return sketch_rows(matrix, omega).cpu()


def _norm(x: torch.Tensor) -> float:
    """||x||_F accumulated in float64."""
    return float(torch.linalg.vector_norm(x, dtype=torch.float64))


def _angle(a: torch.Tensor, b: torch.Tensor, norm_a: float, norm_b: float) -> float:
    """2 asin(||a/|a| - b/|b| || / 2): the angle between a and b, accurate for small angles."""
    chord = _norm(a.double() / norm_a - b.double() / norm_b)
    return 2.0 * math.asin(min(1.0, chord / 2.0))


def motion_metrics(
    current: torch.Tensor,
    previous: torch.Tensor | None,
    initial: torch.Tensor | None,
) -> tuple[dict[str, float], dict[str, str]]:
    """``weight_motion``, ``weight_rotation`` and ``weight_drift`` from the sketches of the
    weight now, at the previous analysis and at the first one (module docstring), with a note
    for every NaN. The sketches must share one Omega (the same layer, seed and k).
    """
    values = dict.fromkeys(MOTION_METRICS, math.nan)
    notes: dict[str, str] = {}
    norm_now = _norm(current)
    if previous is None:
        notes["weight_motion"] = notes["weight_rotation"] = "first analysis of this layer"
    else:
        norm_before = _norm(previous)
        if norm_before == 0.0:
            notes["weight_motion"] = "the weight was zero at the previous analysis"
        else:
            values["weight_motion"] = _norm(current.double() - previous) / norm_before
        if norm_before == 0.0 or norm_now == 0.0:
            notes["weight_rotation"] = "the weight is zero now or was at the previous analysis"
        else:
            values["weight_rotation"] = _angle(current, previous, norm_now, norm_before)
    if initial is None:
        notes["weight_drift"] = "first analysis of this layer"
    else:
        norm_initial = _norm(initial)
        if norm_initial == 0.0:
            notes["weight_drift"] = "the weight was zero at the first analysis"
        else:
            values["weight_drift"] = _norm(current.double() - initial) / norm_initial
    return values, notes


@dataclass
class _Kept:
    """The sketches kept for one layer (same shape and Omega)."""

    shape: tuple[int, ...]
    previous: torch.Tensor
    initial: torch.Tensor


class MotionTracker:
    """Keeps each layer's weight sketch between analyses and returns its motion metrics.

    :meth:`update` takes the weights of one analysis by layer name and returns, per name, the
    metrics of :func:`motion_metrics` and the notes of its NaN values. A layer seen for the first
    time (or whose weight changed shape) starts afresh. A weight with NaN or Inf entries is not
    kept (its values are NaN with a note), so the motion after it is measured from the last
    finite weight. The state (sketches, float32 tensors) goes into a checkpoint through
    :meth:`state_dict`; a resumed run measures its first motion from the checkpoint's weights.

    Args:
        k: sketch columns (:data:`DEFAULT_SKETCH_SIZE`).
        seed: mixed into every layer's Omega seed (:func:`sketch_seed`).

    Example:
        >>> tracker = MotionTracker(k=4)
        >>> w = torch.eye(3)
        >>> tracker.update({"fc": w})["fc"][0]["weight_motion"]
        nan
        >>> round(tracker.update({"fc": 2 * w})["fc"][0]["weight_motion"], 6)
        1.0
        >>> round(tracker.update({"fc": 2 * w})["fc"][0]["weight_rotation"], 6)
        0.0
    """

    def __init__(self, k: int = DEFAULT_SKETCH_SIZE, seed: int = 0) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"the sketch size k must be a positive integer, got {k!r}")
        self.k = k
        self.seed = int(seed)
        self._kept: dict[str, _Kept] = {}

    def reset(self) -> None:
        """Forget every layer (a new run)."""
        self._kept.clear()

    def omega(self, name: str, columns: int,
              device: torch.device | str | None = None) -> torch.Tensor | None:
        """The layer's Omega (:func:`sketch_omega`) for a matrix of ``columns`` columns."""
        return sketch_omega(columns, self.k, sketch_seed(name, columns, self.seed), device)

    def update(
        self, weights: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]]
    ) -> dict[str, tuple[dict[str, float], dict[str, str]]]:
        """The motion metrics and notes of each named weight; keeps their sketches."""
        items = weights.items() if isinstance(weights, Mapping) else weights
        return self.update_sketches(
            (name, tuple(weight.shape),
             sketch_rows(weight, self.omega(name, math.prod(weight.shape[1:]),
                                            weight.device)).cpu())
            for name, weight in items)

    def update_sketches(
        self, sketches: Iterable[tuple[str, tuple[int, ...], torch.Tensor]]
    ) -> dict[str, tuple[dict[str, float], dict[str, str]]]:
        """:meth:`update` from sketches already made with :meth:`omega` (name, the weight's
        shape, its float32 host sketch), as a sharded model's rows are sketched where they
        live."""
        out: dict[str, tuple[dict[str, float], dict[str, str]]] = {}
        for name, shape, sketch in sketches:
            shape = tuple(int(d) for d in shape)
            kept = self._kept.get(name)
            if kept is not None and kept.shape != shape:
                kept = None
            if not bool(torch.isfinite(sketch).all()):
                reason = "the weight holds NaN or Inf (not kept: the next motion is measured " \
                         "from the last finite weight)"
                out[name] = (dict.fromkeys(MOTION_METRICS, math.nan),
                             dict.fromkeys(MOTION_METRICS, reason))
                continue
            out[name] = motion_metrics(sketch, None if kept is None else kept.previous,
                                       None if kept is None else kept.initial)
            initial = sketch if kept is None else kept.initial
            self._kept[name] = _Kept(shape, sketch, initial)
        return out

    def state_dict(self) -> dict[str, Any]:
        """The sketch size, seed and each layer's shape and sketches (float32 CPU tensors)."""
        return {
            "version": MOTION_STATE_VERSION,
            "k": self.k,
            "seed": self.seed,
            "layers": {name: {"shape": list(kept.shape), "previous": kept.previous,
                              "initial": kept.initial} for name, kept in self._kept.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output. Sketches made with another ``k`` or seed are
        dropped (their Omega differs): the next analysis starts those layers afresh.

        Raises:
            ValueError: ``state`` is not a motion state of a known version.
        """
        version = state.get("version") if isinstance(state, Mapping) else None
        if version != MOTION_STATE_VERSION:
            raise ValueError(f"not a MotionTracker state of version {MOTION_STATE_VERSION} "
                             f"(got version {version!r})")
        self._kept.clear()
        if state.get("k") != self.k or state.get("seed") != self.seed:
            return
        for name, item in state.get("layers", {}).items():
            self._kept[str(name)] = _Kept(tuple(int(d) for d in item["shape"]),
                                          item["previous"].to("cpu", torch.float32),
                                          item["initial"].to("cpu", torch.float32))
