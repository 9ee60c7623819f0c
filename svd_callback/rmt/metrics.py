"""Per-layer ESD metrics (WeightWatcher names; Martin & Mahoney, JMLR 2021 and Nature Comm. 2021;
docs/methods.md#per-layer-metrics), from eigenvalues lambda = sigma^2 already normalised by the
caller.

| metric | formula (log = log10) |
|---|---|
| spectral_norm, frobenius_norm | sqrt(lambda_max), sqrt(sum lambda) |
| log_norm | log(sum lambda) |
| log_spectral_norm | log(lambda_max) |
| alpha, xmin, D, alpha_sigma, n_tail | power-law tail fit (:func:`fit_power_law`) |
| alpha_weighted | alpha * log(lambda_max) |
| log_alpha_norm | log(sum lambda^alpha), over all lambda |
| stable_rank | sum lambda / lambda_max |
| entropy | -sum p ln p / ln(matrix_rank), p = lambda / sum lambda |
| matrix_rank, rank_loss | #sigma > sigma_max * N * eps(float32), n_values - matrix_rank |
| mp_softrank, num_spikes, lambda_plus, mp_s2 | Marchenko-Pastur bulk (:func:`fit_mp_bulk`) |

With ``ww_compat=True`` the norm metrics are WeightWatcher 0.7.7's own arithmetic
(:func:`svd_callback.rmt.ww_compat.norm_metrics`: float64 eps in the rank, its 1e-10 entropy
offset), the fit is its ``WWFit`` (``num_pl_spikes``: ``n_tail`` under WeightWatcher's name)
and the MP bulk is its ``mp_fit`` (:func:`svd_callback.rmt.ww_compat.mp_fit`), which adds
WeightWatcher's ``sigma_mp``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from svd_callback.rmt import ww_compat as ww_ref
from svd_callback.rmt.mp import fit_mp_bulk
from svd_callback.rmt.powerlaw import PowerLawFit, fit_power_law, hill_alpha

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)
MIN_FIT_EIGS = 20
"""Fewest positive eigenvalues the default fit accepts: below WeightWatcher's own small-sample
cutoff (20) a tail of a handful of points gives alpha with a standard error of 30% or more, and
alerts on it would be noise (e.g. a first conv with 1 input channel and a 3x3 kernel has 9)."""


@dataclass(frozen=True)
class QualityThresholds:
    """Published alpha heuristics (WeightWatcher labels; docs/methods.md#power-law-fit).

    alpha + confidence * sigma < over_trained: over-trained; alpha - confidence * sigma >
    under_trained: under-trained (sigma = (alpha - 1) / sqrt(n_tail), the fit's standard
    error, as the alpha alert rules judge it; ``confidence=0`` gives the plain published
    labels); alpha > suspicious_alpha or D > suspicious_D: the fit itself is suspect. A matrix
    of fewer than ``min_eigs`` eigenvalues (its smaller side) is ``undetermined``, as the alpha
    rules do not judge it either (``min_eigs=0``: every size).
    """

    over_trained: float = 2.0
    under_trained: float = 6.0
    suspicious_alpha: float = 8.0
    suspicious_D: float = 0.3
    confidence: float = 2.0
    min_eigs: int = 100


QUALITY_LABELS = ("ok", "over-trained", "under-trained", "suspicious-fit", "undetermined")


def quality_label(fit: PowerLawFit, thresholds: QualityThresholds = QualityThresholds(),
                  n_eigs: int | None = None) -> str:
    """One of :data:`QUALITY_LABELS` from a fit's alpha, its standard error sigma and D, for a
    matrix of ``n_eigs`` eigenvalues (None: any size): ``over-trained`` when
    alpha + confidence sigma < over_trained, ``under-trained`` when
    alpha - confidence sigma > under_trained (docs/methods.md#measurements-behind-the-choices:
    why the margin)."""
    alpha, D = fit.alpha, fit.D
    if fit.reason is not None or not math.isfinite(alpha) or alpha <= 1:
        return "undetermined"
    if n_eigs is not None and n_eigs < thresholds.min_eigs:
        return "undetermined"
    if alpha > thresholds.suspicious_alpha or (math.isfinite(D) and thresholds.suspicious_D < D):
        return "suspicious-fit"
    sigma = fit.sigma if math.isfinite(fit.sigma) and fit.sigma > 0 else 0.0
    margin = thresholds.confidence * sigma
    if alpha + margin < thresholds.over_trained:
        return "over-trained"
    if alpha - margin > thresholds.under_trained:
        return "under-trained"
    return "ok"


@dataclass
class ESDMetrics:
    """Metrics of one ESD: ``values`` (NaN where undefined), a quality label, per-metric
    ``notes`` giving the reason for NaN values, and the power-law ``fit`` (None if not fitted)."""

    values: dict[str, float] = field(default_factory=dict)
    quality: str = "undetermined"
    notes: dict[str, str] = field(default_factory=dict)
    fit: PowerLawFit | None = None


def esd_metrics(
    eigs: torch.Tensor,
    *,
    N: int,
    M: int,
    ww_compat: bool = False,
    fit: str | None = "ks",
    mp_fit: bool = False,
    thresholds: QualityThresholds | None = None,
    min_fit_eigs: int | None = None,
) -> ESDMetrics:
    """Every metric of the module table for one layer's eigenvalues.

    Args:
        eigs: lambda = sigma^2 (any order, any device), normalised by the caller.
        N, M: shape of the analysed matrix (N >= M); Q = N / M for the MP bulk and N for the
            rank tolerance.
        ww_compat: WeightWatcher 0.7.7's fit and norm arithmetic.
        fit: ``"ks"``, ``"hill"`` or None (no power-law metrics).
        mp_fit: also fit the Marchenko-Pastur bulk.
        thresholds: for the quality label.
        min_fit_eigs: fewer positive eigenvalues than this get no power-law fit (NaN alpha and a
            reason); default :data:`MIN_FIT_EIGS`, or WeightWatcher's own rules with
            ``ww_compat``.

    Never raises on bad data: NaN values and a reason in ``notes``.
    """
    thresholds = thresholds or QualityThresholds()
    out = ESDMetrics()
    x = torch.as_tensor(eigs).detach().reshape(-1).to(torch.float64)
    if x.numel() == 0 or not bool(torch.isfinite(x).all()):
        out.notes["all"] = "empty spectrum" if x.numel() == 0 else "non-finite eigenvalues"
        out.values.update(dict.fromkeys(_metric_keys(fit, mp_fit, ww_compat), math.nan))
        return out
    x = x.clamp_min(0).sort(descending=True).values
    if float(x[0]) == 0.0:
        out.notes["all"] = "zero spectrum (every singular value is 0)"
        out.values.update(dict.fromkeys(_metric_keys(fit, mp_fit, ww_compat), math.nan),
                          matrix_rank=0.0,
                          rank_loss=float(x.numel()), spectral_norm=0.0, frobenius_norm=0.0)
        return out

    power = None
    min_eigs = (0 if ww_compat else MIN_FIT_EIGS) if min_fit_eigs is None else min_fit_eigs
    n_positive = int((x > 0).sum())
    if fit is not None and n_positive < min_eigs:
        power = PowerLawFit.failed(fit, f"too few eigenvalues for a tail fit ({n_positive} < "
                                        f"{min_eigs})", n_positive)
        out.fit = power
    elif fit is not None:
        power = fit_power_law(x, ww_compat=ww_compat, method=fit)
        out.fit = power
        out.quality = quality_label(power, thresholds, M)
        if thresholds.min_eigs > M and out.quality == "undetermined" and power.reason is None:
            out.notes["quality"] = (f"{M} eigenvalues per analysed matrix (< "
                                    f"{thresholds.min_eigs}): the alpha labels are not judged "
                                    f"on a tail this short")
    if ww_compat:
        out.values.update(_ww_norms(x, power, N))
    else:
        out.values.update(_norms(x, N))
    if power is not None:
        _add_fit(out, x, power, ww_compat)
    if mp_fit and ww_compat:
        _add_ww_mp(out, x, N, M)
    elif mp_fit:
        _add_mp(out, x, N, M)
    _note_nans(out)
    return out


def _metric_keys(fit: str | None, mp_fit: bool, ww_compat: bool = False) -> tuple[str, ...]:
    """Every key :func:`esd_metrics` reports for these options."""
    keys = ("spectral_norm", "frobenius_norm", "log_norm", "log_spectral_norm", "stable_rank",
            "matrix_rank", "rank_loss", "entropy")
    if fit is not None:
        keys += ("alpha", "xmin", "D", "alpha_sigma", "n_tail", "alpha_weighted",
                 "log_alpha_norm") + (("alpha_hill",) if fit == "hill" else ())
    if mp_fit:
        keys += ("mp_s2", "lambda_plus", "num_spikes", "mp_softrank")
    if fit is not None and ww_compat:
        keys += ("num_pl_spikes",)
    if mp_fit and ww_compat:
        keys += ("sigma_mp",)
    return keys


def _norms(x: torch.Tensor, N: int) -> dict[str, float]:
    total, top = x.sum(), x[0]
    svals = x.sqrt()
    rank = (svals > svals[0] * N * FLOAT32_EPS).sum()
    p = x / total
    plogp = torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum()
    entropy = -plogp / rank.double().log()
    values = torch.stack([top.sqrt(), total.sqrt(), total.log10(), top.log10(), total / top,
                          rank.double(), x.new_tensor(x.numel()) - rank, entropy]).tolist()
    names = ("spectral_norm", "frobenius_norm", "log_norm", "log_spectral_norm", "stable_rank",
             "matrix_rank", "rank_loss", "entropy")
    result = dict(zip(names, values, strict=True))
    if result["matrix_rank"] <= 1:
        result["entropy"] = math.nan
    return result


def _ww_norms(x: torch.Tensor, power: PowerLawFit | None, N: int) -> dict[str, float]:
    evals = x.cpu().numpy()
    alpha = power.alpha if power is not None else math.nan
    values = ww_ref.norm_metrics(evals, alpha, N)
    values["spectral_norm"] = math.sqrt(float(evals.max()))
    values["frobenius_norm"] = math.sqrt(float(evals.sum()))
    values["rank_loss"] = float(evals.size - values["matrix_rank"])
    if power is None:
        values.pop("alpha_weighted", None)
        values.pop("log_alpha_norm", None)
    return values


def _add_fit(out: ESDMetrics, x: torch.Tensor, power: PowerLawFit, ww_compat: bool) -> None:
    values = out.values
    values.update(alpha=power.alpha, xmin=power.xmin, D=power.D, alpha_sigma=power.sigma,
                  n_tail=float(power.n_tail))
    if power.method == "hill":
        values["alpha_hill"] = power.alpha
    if power.reason is not None:
        out.notes["alpha"] = power.reason
    if ww_compat:  # WeightWatcher's own alpha_weighted / log_alpha_norm are already in values
        values["num_pl_spikes"] = float(power.n_tail)  # its name for the tail count
        return
    alpha = power.alpha
    if power.reason is None and math.isfinite(alpha):
        positive = x[x > 0]
        values["alpha_weighted"] = alpha * values["log_spectral_norm"]
        log_sum = torch.logsumexp(alpha * positive.log(), dim=0) / math.log(10)
        values["log_alpha_norm"] = float(log_sum)
    else:
        values["alpha_weighted"] = math.nan
        values["log_alpha_norm"] = math.nan


def _add_mp(out: ESDMetrics, x: torch.Tensor, N: int, M: int) -> None:
    Q = N / M if M > 0 else math.nan
    mp = fit_mp_bulk(x[x > 0], Q, M)
    values = out.values
    values["mp_s2"] = mp.s2
    values["lambda_plus"] = mp.lambda_plus
    values["num_spikes"] = float(mp.num_spikes) if mp.reason is None else math.nan
    values["mp_softrank"] = mp.lambda_plus / float(x[0]) if mp.reason is None else math.nan
    if mp.reason is not None:
        for key in ("mp_s2", "lambda_plus", "num_spikes", "mp_softrank"):
            out.notes[key] = mp.reason


WW_MP_NOTE = ("WeightWatcher 0.7.7 mp_fit: ESD rescaled to mean 1, sigma_mp by brute-force + "
              "Nelder-Mead fit to a linear KDE (bw 0.1; quarter circle of sqrt(lambda) when "
              "Q = 1), spikes above bulk_max + sqrt(TW); lambda_plus and mp_s2 = "
              "sigma_mp^2 / W_scale^2 in the layer's eigenvalue units")


def _add_ww_mp(out: ESDMetrics, x: torch.Tensor, N: int, M: int) -> None:
    """WeightWatcher's ``mp_fit`` on every eigenvalue (zeros included, as WeightWatcher)."""
    values = out.values
    keys = ("mp_s2", "lambda_plus", "num_spikes", "mp_softrank", "sigma_mp")
    try:
        mp = ww_ref.mp_fit(x.flip(0).cpu().numpy(), N, M)  # ascending, as WeightWatcher
    except Exception as error:  # WeightWatcher catches every error of its fit, reports -1
        reason = (f"WeightWatcher's mp_fit fails here ({type(error).__name__}: {error}); "
                  "it reports -1")
        values.update(dict.fromkeys(keys, math.nan))
        out.notes.update(dict.fromkeys(keys, reason))
        return
    scale2 = mp.W_scale * mp.W_scale
    values.update(mp_s2=mp.sigma_mp**2 / scale2, lambda_plus=mp.bulk_max,
                  num_spikes=float(mp.num_spikes), mp_softrank=mp.mp_softrank,
                  sigma_mp=mp.sigma_mp)
    out.notes["mp_fit"] = WW_MP_NOTE


def _note_nans(out: ESDMetrics) -> None:
    """Give every NaN value a reason."""
    for key, value in out.values.items():
        if isinstance(value, float) and math.isnan(value) and key not in out.notes:
            if key == "entropy":
                out.notes[key] = "matrix rank <= 1: entropy undefined"
            elif key in ("log_norm", "log_spectral_norm", "stable_rank"):
                out.notes[key] = "zero spectrum"
            else:
                out.notes[key] = out.notes.get("alpha", "undefined for this spectrum")


__all__ = ["ESDMetrics", "QUALITY_LABELS", "QualityThresholds", "esd_metrics", "quality_label",
           "hill_alpha"]
