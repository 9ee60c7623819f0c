"""What the zoo scores besides the monitor: the outcome of a run (broken or not, from which
epoch) and the detectors a user would pick instead, all replayed from a cached run record.

``rows[k]`` are the per-epoch records of :class:`~experiments.alert_zoo.recording.
ZooEpochRecorder` (after k epochs; k = 0 the initial weights, which have no training loss);
``probe[k]`` the rows of :class:`~experiments.alert_zoo.recording.ProbeRecorder`.

Every detector returns a :class:`Firing`: the analyses (epochs k) at which it reports a problem
and what it said. Loss baselines: a chance-accuracy check, Lightning's ``EarlyStopping``, a
no-progress check, a non-finite-loss check. Published training-problem detectors, implemented
from their papers' code (read, not copied): AUTOTRAINER (Zhang et al., ICSE 2021,
github.com/shiningrain/AUTOTRAINER, ``AutoTrainer/utils/monitor.py`` and ``utils.py``) and
DeepDiagnosis (Wardat et al., ICSE 2022, github.com/DeepDiagnosis/ICSE2022,
``callback/callbacks.py``), with their thresholds; and their symptom checks on their own,
every epoch, without the published gating.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

PLATEAU_POINTS = 0.005
"""Best validation accuracy must improve by more than this (0.5 points) to count as progress."""
BROKEN_MARGIN = 0.03
"""An injected failure is *broken* when its best validation accuracy over the failure window is
at least this far (3 points) below the median best accuracy of the healthy runs of the same
pair and seed, or its loss is not finite."""
CHANCE = 0.1
"""Chance accuracy of the ten-class pairs."""
CHANCE_MARGIN = 0.05
"""The chance-accuracy check fires at validation accuracy <= chance + 5 points."""

Rows = Sequence[dict[str, Any]]


@dataclass(frozen=True)
class Firing:
    """The analyses at which a detector reports a problem (ascending) and, per analysis, what
    it said."""

    epochs: tuple[int, ...] = ()
    said: dict[int, str] = field(default_factory=dict)

    def first(self, start: int = 0) -> int | None:
        """The first analysis >= ``start`` at which it fires (None: never)."""
        return next((k for k in self.epochs if k >= start), None)

    def before(self, end: int) -> list[int]:
        """The analyses <= ``end`` at which it fires."""
        return [k for k in self.epochs if k <= end]


def at(epochs: Sequence[int], said: str | dict[int, str] = "") -> Firing:
    epochs = tuple(sorted(set(int(k) for k in epochs)))
    if isinstance(said, str):
        said = {k: said for k in epochs}
    return Firing(epochs, said)


def _finite(value: Any) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


# ---------------------------------------------------------------------- outcomes
def first_non_finite(rows: Rows) -> int | None:
    """The first epoch whose training or validation loss is not finite (None: all finite)."""
    for row in rows[1:]:
        if not (_finite(row["train_loss"]) and _finite(row["val_loss"])):
            return int(row["epoch"])
    return None


def best_accuracy(rows: Rows, start: int = 1) -> float:
    """Best validation accuracy over the trained epochs k >= max(1, ``start``); NaN counts
    as 0."""
    values = [row["val_acc"] if _finite(row["val_acc"]) else 0.0 for row in rows
              if int(row["epoch"]) >= max(1, start)]
    return max(values, default=0.0)


def decided_epoch(rows: Rows, start: int = 1) -> int:
    """The epoch from which a run's outcome is decided: the first non-finite loss, else the first
    epoch k >= max(1, ``start``) after which the best validation accuracy (over k >= ``start``)
    never improves by more than :data:`PLATEAU_POINTS` (the last epoch when it still improves
    at the end)."""
    nan_epoch = first_non_finite(rows)
    if nan_epoch is not None and nan_epoch >= start:
        return nan_epoch
    window = [row for row in rows if int(row["epoch"]) >= max(1, start)]
    accs = [row["val_acc"] if _finite(row["val_acc"]) else 0.0 for row in window]
    for k in range(len(accs)):
        if max(accs[k + 1:], default=-1.0) <= max(accs[:k + 1]) + PLATEAU_POINTS:
            return int(window[k]["epoch"])
    return int(rows[-1]["epoch"])


# ---------------------------------------------------------------------- loss baselines
def chance_accuracy(rows: Rows, chance: float | None = CHANCE,
                    margin: float = CHANCE_MARGIN) -> Firing:
    """Every epoch k >= 1 whose validation accuracy is at most chance + ``margin`` (a
    non-finite accuracy counts); silent without an accuracy (``chance`` None)."""
    if chance is None:
        return Firing()
    fired = [int(r["epoch"]) for r in rows[1:]
             if not _finite(r["val_acc"]) or r["val_acc"] <= chance + margin]
    if all(not _finite(r["val_acc"]) and _finite(r["val_loss"]) for r in rows[1:]):
        return Firing()  # a model that logs no accuracy
    return at(fired, f"val accuracy <= {chance + margin:.2f}")


def early_stopping_epoch(rows: Rows, patience: int = 3) -> int | None:
    """The epoch at which Lightning's ``EarlyStopping(monitor="val_loss", patience=3)`` (mode
    min, ``min_delta=0``, ``check_finite=True``) stops: a non-finite loss at once, else when the
    loss has not improved on its best for ``patience`` validations. None: it does not stop."""
    best, wait = math.inf, 0
    for row in rows[1:]:
        value = row["val_loss"]
        if not _finite(value):
            return int(row["epoch"])
        if value < best:
            best, wait = value, 0
        else:
            wait += 1
            if wait >= patience:
                return int(row["epoch"])
    return None


def no_progress_epoch(rows: Rows, window: int = 3, min_drop: float = 0.01,
                      chance: float | None = CHANCE, margin: float = 0.05) -> int | None:
    """The first epoch k >= ``window`` at which the training loss fell by less than
    ``min_drop`` (1%) over the last ``window`` epochs, or the validation accuracy is at most
    chance + ``margin`` (5 points). The epoch-0 training loss is unknown, so the loss test starts
    at k = window + 1. None: never."""
    for index in range(window, len(rows)):
        row = rows[index]
        k = int(row["epoch"])
        acc = row["val_acc"]
        if chance is not None and _finite(acc) and acc <= chance + margin:
            return k
        if index - window >= 1:
            now, before = row["train_loss"], rows[index - window]["train_loss"]
            if _finite(now) and _finite(before) and now > (1.0 - min_drop) * before:
                return k
    return None


def _single(epoch: int | None, said: str) -> Firing:
    return Firing() if epoch is None else at([epoch], said)


# ---------------------------------------------------------------------- probe helpers
def _kernels(probe_row: dict[str, Any]) -> list[dict[str, Any]]:
    """The trainable weight matrices (ndim >= 2) in registration order."""
    return [p for p in probe_row["params"].values() if p["ndim"] >= 2]


def gradient_ratio(probe_row: dict[str, Any]) -> tuple[float, float]:
    """(||grad W_first|| / ||grad W_last||, ||grad W_first||) over the trainable weight
    matrices: AUTOTRAINER's ``gra_rate`` and ``norm_kernel[0]``; NaN where undefined."""
    kernels = _kernels(probe_row)
    if not kernels:
        return math.nan, math.nan
    first = kernels[0]["grad_norm"]
    last = kernels[-1]["grad_norm"]
    first = math.nan if first is None else float(first)
    last = math.nan if last is None else float(last)
    if last == 0:
        return (math.inf if first > 0 else math.nan), first
    return first / last, first


def zero_gradient_ratio(probe_row: dict[str, Any]) -> float:
    """Fraction of all trainable parameter entries whose probe gradient is exactly 0
    (AUTOTRAINER's ``gradient_zero_radio`` total)."""
    params = list(probe_row["params"].values())
    size = sum(p["size"] for p in params)
    zeros = sum((p["grad_zero"] or 0.0) * p["size"] for p in params)
    return zeros / size if size else math.nan


def gradients_finite(probe_row: dict[str, Any]) -> bool:
    return all(p["grad_finite"] for p in probe_row["params"].values())


def weights_finite(probe_row: dict[str, Any]) -> bool:
    return all(_finite(p.get("w_mean")) for p in probe_row["params"].values()
               if p["ndim"] >= 2)


# ---------------------------------------------------------------------- AUTOTRAINER
AT_PARAMS = {"beta_1": 1e-3, "beta_2": 1e-4, "beta_3": 70.0, "gamma": 0.7, "zeta": 0.03,
             "eta": 0.2, "delta": 0.01, "Theta": 0.7, "omega_1": 10.0, "omega_2": 1.0}
"""AUTOTRAINER's ``default_param`` (``utils.py``)."""
AT_PRIORITY = {"abnormal_data": 4, "loss_issue": 3, "activation_issue": 3, "vanish": 2,
               "explode": 2, "relu": 2, "not_converge": 1, "unstable": 1}


def _ol_judge(acc: Sequence[float], threshold: float, rate: float) -> bool:
    """AUTOTRAINER's oscillating-accuracy test (``ol_judge``)."""
    maximum, minimum = [], []
    for i in range(1, len(acc) - 1):
        if acc[i] - acc[i - 1] >= 0 and acc[i] - acc[i + 1] >= 0:
            maximum.append(acc[i])
        if acc[i] - acc[i - 1] <= 0 and acc[i] - acc[i + 1] <= 0:
            minimum.append(acc[i])
    count = sum(1 for i in range(min(len(maximum), len(minimum)))
                if maximum[i] - minimum[i] >= threshold)
    return count >= rate * len(acc)


def _max_delta(acc: Sequence[float]) -> float:
    return max([0.0] + [acc[i + 1] - acc[i] for i in range(len(acc) - 1)])


def _extended(rows: Rows, probe: Rows, total: int) -> tuple[list[dict], list[dict | None]]:
    """A run that ended at a non-finite loss, continued to ``total`` epochs with NaN losses and
    weights (what the monitors would see had it not been cut: NaN weights stay NaN)."""
    rows, probe = list(rows), list(probe)
    last = int(rows[-1]["epoch"])
    if first_non_finite(rows) is None or last >= total:
        return rows, probe
    for k in range(last + 1, total + 1):
        rows.append({"epoch": k, "val_loss": math.nan, "val_acc": math.nan,
                     "train_loss": math.nan, "train_acc": math.nan})
        probe.append(None)
    return rows, probe


def autotrainer(rows: Rows, probe: Rows, total: int, checkgap: int = 1,
                params: dict[str, float] | None = None, has_accuracy: bool = True) -> Firing:
    """AUTOTRAINER's issue determination (``IssueMonitor.determine`` and ``judge_issue``),
    replayed: a check after every ``checkgap``-th epoch (Keras epoch e = k - 1 with
    e % checkgap == 0; the published default is 3), features that persist across checks,
    layer outputs examined only when a previous check saw a NaN/abnormal loss or saturated
    accuracy, or once at mid-training; vanishing/exploding gradients and dying ReLUs are
    reported only for a run that has not converged (max accuracy < Theta = 0.7) or whose
    accuracy stopped rising (largest epoch-to-epoch gain < delta = 0.01), from 30% of the
    planned epochs on. The first check with an issue is its detection (it stops training
    there). Adaptations: the output layer's softmax is applied to the logits (PyTorch models
    fold it into the loss; AUTOTRAINER would otherwise read every such model as having the wrong
    output activation); a run cut at a non-finite loss is continued with NaN (:func:`_extended`);
    a model without an accuracy (``has_accuracy`` False) gets no accuracy-based feature.
    """
    p = {**AT_PARAMS, **(params or {})}
    rows, probe = _extended(rows, probe, total)
    feature: dict[str, Any] = {"not_converge": False, "unstable_loss": False, "nan_loss": False,
                               "abnormal_loss": False, "sc_accuracy": False, "died_relu": 0,
                               "vanish_gradient": 0, "explode_gradient": 0,
                               "nan_gradient": False, "nan_weight": False,
                               "activation_output": False, "abnormal_output": False}
    mid_check = True
    for index in range(1, len(rows)):
        e = index - 1
        if e % checkgap:
            continue
        history = rows[1:index + 1]
        with_outputs = (feature["abnormal_loss"] or feature["nan_loss"] or feature["sc_accuracy"]
                        or (total * 0.5 <= e and mid_check))
        if total * 0.5 <= e and mid_check:
            mid_check = False
        row = probe[index]
        issues = _at_determine(feature, history, row, with_outputs, total, checkgap, p,
                               has_accuracy)
        if issues:
            best = max(issues, key=lambda name: AT_PRIORITY.get(name, 0))
            return at([int(rows[index]["epoch"])], f"AUTOTRAINER: {best}")
    return Firing()


def _at_determine(feature: dict[str, Any], history: Rows, row: dict[str, Any] | None,
                  with_outputs: bool, total: int, checkgap: int, p: dict[str, float],
                  has_accuracy: bool) -> list[str]:
    if with_outputs:
        if row is None:
            feature["activation_output"] = True  # NaN output
        else:
            outputs = [v for v in row["layers"].values()]
            if any(not v["finite"] for v in outputs):
                feature["activation_output"] = True
            if not feature["activation_output"]:
                feature["abnormal_output"] = any(
                    (v["out_abs_mean"] or 0.0) >= p["omega_1"] for v in outputs[:-1])
    # gradient_issue
    if row is None or not gradients_finite(row):
        feature["nan_gradient"] = True
    else:
        ratio, first = gradient_ratio(row)
        if _finite(ratio) and ratio < p["beta_1"] and _finite(first) and first < p["beta_2"]:
            feature["vanish_gradient"] += 1
        if (ratio > p["beta_3"]) if not math.isnan(ratio) else False:
            feature["explode_gradient"] += 1
        if zero_gradient_ratio(row) >= p["gamma"]:
            feature["died_relu"] += 1
    # weights_issue
    if row is None or not weights_finite(row):
        feature["nan_weight"] = True
    # loss_issue
    train_loss = [r["train_loss"] for r in history]
    val_loss = [r["val_loss"] for r in history]
    train_acc = [r.get("train_acc", math.nan) for r in history]
    val_acc = [r["val_acc"] for r in history]
    losses = train_loss + val_loss
    if any(not _finite(v) for v in losses) or max(losses) >= 1e3:
        feature["nan_loss"] = True
    else:
        if min(losses) < 0:
            feature["abnormal_loss"] = True
        if has_accuracy and len(train_loss) >= 0.3 * total - checkgap:
            accs = [a if _finite(a) else 0.0 for a in train_acc]
            vals = [a if _finite(a) else 0.0 for a in val_acc]
            if _ol_judge(accs, p["zeta"], p["eta"]):
                feature["unstable_loss"] = True
            if max(vals) < p["Theta"] and max(accs) < p["Theta"]:
                feature["not_converge"] = True
            if _max_delta(vals) < p["delta"] and _max_delta(accs) < p["delta"]:
                feature["sc_accuracy"] = True
    # judge_issue
    issues: list[str] = []
    if not with_outputs:
        return issues
    if feature["abnormal_output"]:
        issues.append("abnormal_data")
    if feature["nan_loss"] or feature["abnormal_loss"]:
        if feature["abnormal_loss"]:
            issues.append("loss_issue")
        elif feature["activation_output"]:
            issues.append("activation_issue")
        elif feature["nan_weight"] or feature["nan_gradient"]:
            issues.append("explode")
    if feature["not_converge"] or feature["sc_accuracy"]:
        if feature["activation_output"]:
            issues.append("activation_issue")
        elif feature["died_relu"] >= 1:
            issues.append("relu")
        elif feature["explode_gradient"] >= 1:
            issues.append("explode")
        elif feature["vanish_gradient"] >= 1:
            issues.append("vanish")
        elif feature["not_converge"] and feature["sc_accuracy"] and \
                not feature["abnormal_output"]:
            issues.append("not_converge")
    if feature["unstable_loss"]:
        issues.append("activation_issue" if feature["activation_output"] else "unstable")
    return issues


# ---------------------------------------------------------------------- DeepDiagnosis
DD_DEAD = 0.7
"""DeepDiagnosis' ``threshold_layer_1``: a ReLU layer with >= 70% of its outputs <= 0 is dead."""
DD_SATURATED = 0.5
"""``threshold_layer``: a sigmoid/tanh input with > 50% of its values beyond +-5 is saturated."""
DD_VANISHING = 1e-7
"""``threshold_VG``: mean |gradient| of a dense layer's weights below this is vanishing."""
DD_WINDOW = 5
"""``N``: the unchanged-tensor and unchanged-loss checks compare blocks of 5 epochs."""
DD_ACC_WINDOW = 20
"""``FRQ``: the unchanged-accuracy check compares blocks of 20 epochs."""


def _dense(row: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(n, p) for n, p in row["params"].items() if p["ndim"] >= 2 and p["module"] == "linear"]


def _all_equal(values: Sequence[Any]) -> bool:
    return len(values) > 0 and all(v is not None and v == values[0] for v in values)


def deepdiagnosis(rows: Rows, probe: Rows, total: int, has_accuracy: bool = True) -> Firing:
    """DeepDiagnosis' ``mapFaluireToFix.on_epoch_end``, replayed epoch by epoch (counter k):
    a layer output whose mean is NaN, Inf or exactly 0; a ReLU layer with >= 70% of outputs
    <= 0 (checked at the last planned epoch only, as published); every 5th epoch, a sigmoid/
    tanh input saturated, a layer output, the training loss, a dense layer's mean gradient or
    mean weight unchanged over the block of 5 epochs; a non-finite loss or an accuracy NaN or
    0; every 20th epoch an unchanged accuracy; a dense layer's mean gradient NaN/Inf/0 or its
    mean |gradient| < 1e-7; a dense layer's mean weight NaN/Inf/0. The first message is its
    detection (it stops training). The weights of frozen dense layers are watched too (its
    ``get_weights`` reads every layer); gradients only of trainable ones."""
    rows, probe = _extended(rows, probe, total)
    forward: dict[str, list[Any]] = {}
    grads: dict[str, list[Any]] = {}
    weights: dict[str, list[Any]] = {}
    losses: list[Any] = []
    accs: list[Any] = []
    for index in range(1, len(rows)):
        k = int(rows[index]["epoch"])
        row, record = probe[index], rows[index]
        said = _dd_epoch(k, row, record, total, has_accuracy, forward, grads, weights, losses,
                         accs)
        if said:
            return at([k], f"DeepDiagnosis: {said}")
    return Firing()


def _dd_epoch(k: int, row: dict[str, Any] | None, record: dict[str, Any], total: int,
              has_accuracy: bool, forward: dict[str, list[Any]], grads: dict[str, list[Any]],
              weights: dict[str, list[Any]], losses: list[Any], accs: list[Any]) -> str:
    if row is None:
        return "numerical error (NaN) in the forward pass"
    layers = list(row["layers"].items())
    outputs = {**{n: v["out_mean"] for n, v in layers},
               **{f"{a['kind']}#{i}": a["out_mean"] for i, a in enumerate(row["activations"])}}
    final = layers[-1][0] if layers else None  # the model's output layer: not watched unchanged
    for name, mean in outputs.items():
        forward.setdefault(name, []).append(mean)
        if mean is None or mean == 0:
            return f"numerical error in the output of {name}"
    if k == total:
        for i, act in enumerate(row["activations"]):
            if act["kind"] == "relu" and (act["le0"] or 0.0) >= DD_DEAD:
                return f"dead nodes in relu#{i}"
    if k % DD_WINDOW == 0:
        for i, act in enumerate(row["activations"]):
            if act["kind"] in ("sigmoid", "tanh") and (act["saturated"] or 0.0) > DD_SATURATED:
                return f"saturated activation {act['kind']}#{i}"
        for name in forward:
            if name == final:
                continue
            if _all_equal(forward[name][-DD_WINDOW:]) and len(forward[name]) >= DD_WINDOW:
                return f"unchanged output of {name}"
        forward.clear()
    loss = record["train_loss"]
    losses.append(loss)
    if not _finite(loss):
        return "invalid (non-finite) loss"
    if k % DD_WINDOW == 0:
        if len(losses) >= DD_WINDOW and _all_equal(losses[-DD_WINDOW:]):
            return "loss not decreasing"
        losses.clear()
    if has_accuracy:
        acc = record.get("train_acc", math.nan)
        accs.append(acc)
        if not _finite(acc) or acc == 0:
            return "invalid accuracy"
        if k % DD_ACC_WINDOW == 0:
            if len(accs) >= DD_ACC_WINDOW and _all_equal(accs[-DD_ACC_WINDOW:]):
                return "accuracy not increasing"
            accs.clear()
    for name, p in reversed(_dense(row)):
        mean = p["grad_mean"]
        if mean is None or mean == 0 or not p["grad_finite"]:
            return f"numerical error in the gradient of {name}"
        if (p["grad_abs_mean"] or 0.0) < DD_VANISHING:
            return f"vanishing gradient in {name}"
        grads.setdefault(name, []).append(mean)
    dense_weights = {n: p["w_mean"] for n, p in _dense(row)}
    dense_weights.update({n: f["w_mean"] for n, f in row.get("frozen", {}).items()
                          if f["ndim"] >= 2 and f["module"] == "linear"})
    for name, mean in dense_weights.items():
        weights.setdefault(name, []).append(mean)
        if mean is None or mean == 0:
            return f"numerical error in the weights of {name}"
    if k % DD_WINDOW == 0:
        for name, values in grads.items():
            if len(values) >= DD_WINDOW and _all_equal(values[-DD_WINDOW:]):
                return f"unchanged gradient of {name}"
        for name, values in weights.items():
            if len(values) >= DD_WINDOW and _all_equal(values[-DD_WINDOW:]):
                return f"unchanged weights of {name}"
        grads.clear()
        weights.clear()
    return ""


# ---------------------------------------------------------------------- symptom checks
SYMPTOMS = ("vanishing gradient", "exploding gradient", "dead ReLUs", "saturated activations",
            "unchanged weights", "unchanged loss")


def symptom_checks(rows: Rows, probe: Rows) -> dict[str, Firing]:
    """The gradient and activation checks of AUTOTRAINER and DeepDiagnosis on their own, at
    every epoch k >= 1, without the published gating or cadence:

    - vanishing gradient: AUTOTRAINER's (||g_first|| / ||g_last|| < 1e-3 and ||g_first|| <
      1e-4) or DeepDiagnosis' (a weight matrix's mean |gradient| < 1e-7);
    - exploding gradient: ||g_first|| / ||g_last|| > 70 (AUTOTRAINER) or a non-finite gradient;
    - dead ReLUs: >= 70% of all trainable entries with a zero gradient (AUTOTRAINER) or a ReLU
      with >= 70% of its inputs <= 0 (DeepDiagnosis);
    - saturated activations: a sigmoid/tanh with > 50% of its inputs beyond +-5
      (DeepDiagnosis);
    - unchanged weights: a weight matrix (frozen ones included) whose mean weight is identical
      over the last 5 analyses (DeepDiagnosis' test on a sliding window);
    - unchanged loss: a training loss identical over the last 5 epochs (DeepDiagnosis).
    """
    fired: dict[str, dict[int, str]] = {name: {} for name in SYMPTOMS}
    means: dict[str, list[Any]] = {}
    for index in range(1, len(rows)):
        k = int(rows[index]["epoch"])
        row = probe[index] if index < len(probe) else None
        if row is None:
            continue
        ratio, first = gradient_ratio(row)
        dense = [p for p in row["params"].values() if p["ndim"] >= 2]
        small = [p for p in dense if p["grad_abs_mean"] is not None
                 and p["grad_abs_mean"] < DD_VANISHING]
        if (_finite(ratio) and ratio < AT_PARAMS["beta_1"] and _finite(first)
                and first < AT_PARAMS["beta_2"]) or small:
            fired["vanishing gradient"][k] = (f"gradient ratio {ratio:.3g}" if not small else
                                              "mean |gradient| < 1e-7")
        if not gradients_finite(row) or (not math.isnan(ratio) and ratio > AT_PARAMS["beta_3"]):
            fired["exploding gradient"][k] = f"gradient ratio {ratio:.3g}"
        zero = zero_gradient_ratio(row)
        dead = [a for a in row["activations"] if a["kind"] == "relu"
                and (a["le0"] or 0.0) >= DD_DEAD]
        if zero >= AT_PARAMS["gamma"] or dead:
            fired["dead ReLUs"][k] = f"zero gradients {zero:.2f}, {len(dead)} dead ReLU layers"
        if any(a["kind"] in ("sigmoid", "tanh") and (a["saturated"] or 0.0) > DD_SATURATED
               for a in row["activations"]):
            fired["saturated activations"][k] = "saturated sigmoid/tanh"
        current = {n: p["w_mean"] for n, p in row["params"].items() if p["ndim"] >= 2}
        current.update({n: f["w_mean"] for n, f in row.get("frozen", {}).items()
                        if f["ndim"] >= 2})
        for name, value in current.items():
            means.setdefault(name, []).append((k, value))
        unchanged = [n for n, v in means.items() if len(v) >= DD_WINDOW
                     and v[-1][0] == k and _all_equal([x for _, x in v[-DD_WINDOW:]])]
        if unchanged:
            fired["unchanged weights"][k] = f"{len(unchanged)} unchanged weight matrices"
        losses = [r["train_loss"] for r in rows[max(1, index - DD_WINDOW + 1):index + 1]]
        if len(losses) == DD_WINDOW and _all_equal(losses) and _finite(losses[0]):
            fired["unchanged loss"][k] = "training loss unchanged over 5 epochs"
    return {name: at(list(said), said) for name, said in fired.items()}


def union(firings: Sequence[Firing]) -> Firing:
    """The analyses at which any of ``firings`` fires (the first message per analysis)."""
    said: dict[int, str] = {}
    for firing in firings:
        for k in firing.epochs:
            said.setdefault(k, firing.said.get(k, ""))
    return at(list(said), said)


# ---------------------------------------------------------------------- the catalogue
Baseline = Callable[[dict[str, Any]], Firing]


def baselines(chance: float | None) -> dict[str, Baseline]:
    """Detector name -> function of a run record, for a pair whose chance accuracy is
    ``chance`` (None: no accuracy)."""
    def total(record: dict[str, Any]) -> int:
        return int(record["epochs_planned"])

    def probe(record: dict[str, Any]) -> Rows:
        return record.get("probe") or []

    return {
        "chance accuracy": lambda r: chance_accuracy(r["epochs"], chance),
        "EarlyStopping(val_loss)": lambda r: _single(early_stopping_epoch(r["epochs"]),
                                                     "EarlyStopping stops"),
        "no progress": lambda r: _single(no_progress_epoch(r["epochs"], chance=chance),
                                         "no progress"),
        "non-finite loss": lambda r: _single(first_non_finite(r["epochs"]), "non-finite loss"),
        "AUTOTRAINER": lambda r: autotrainer(r["epochs"], probe(r), total(r),
                                             has_accuracy=chance is not None)
        if probe(r) else Firing(),
        "AUTOTRAINER (every 3 epochs)": lambda r: autotrainer(
            r["epochs"], probe(r), total(r), checkgap=3, has_accuracy=chance is not None)
        if probe(r) else Firing(),
        "DeepDiagnosis": lambda r: deepdiagnosis(r["epochs"], probe(r), total(r),
                                                 chance is not None)
        if probe(r) else Firing(),
        "gradient/activation checks": lambda r: union(list(symptom_checks(r["epochs"],
                                                                           probe(r)).values()))
        if probe(r) else Firing(),
    }


LOSS_BASELINES = ("chance accuracy", "EarlyStopping(val_loss)", "no progress", "non-finite loss")
PROBE_BASELINES = ("AUTOTRAINER", "AUTOTRAINER (every 3 epochs)", "DeepDiagnosis",
                   "gradient/activation checks")


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson 1927), 95% for z = 1.96;
    (nan, nan) when ``total`` is 0."""
    if total == 0:
        return math.nan, math.nan
    p = successes / total
    denominator = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
