"""``tempbalance_lrs`` and its fits and assignment functions against the reference TempBalance.

The oracle ``_ReferenceTempbalance`` below is a transcription of ``Tempbalance``
(``net_esd_estimator``, ``get_layer_temps``, ``build_optimizer_param_group``) from
https://github.com/YefanZhou/TempBalance/blob/9f0d9c7e86b70c6613ac3b44b5fd147873050823/tempbalance.py
(MIT License, Copyright (c) 2023 Yefan), with its ``.cuda()`` calls dropped so that it runs on
CPU. Setting ``TEMPBALANCE_REFERENCE`` to a copy of that file also runs the file itself.
"""

from __future__ import annotations

import importlib.util
import math
import os
from operator import itemgetter

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from svd_callback.balance import (
    BalanceError,
    BalanceOptions,
    balance_plan,
    compute_balance,
    fit_alpha,
    tempbalance_lrs,
)
from svd_callback.examples import ResNet, SmallCNN

# ---------------------------------------------------------------------------------------------
# Oracle: the reference, transcribed (MIT, see the module docstring).


class _ReferenceTempbalance:
    def __init__(self, net, EVALS_THRESH=0.00001, bins=100, conv_norm=0.5, pl_fitting="median",
                 xmin_pos=2, filter_zeros=False, remove_first_layer=True,
                 remove_last_layer=True, eigs_thresh=50, esd_metric_for_tb="alpha",
                 assign_func="tb_linear_map", lr_min_ratio=0.5, lr_max_ratio=1.5,
                 batchnorm=True, batchnorm_type="name"):
        self.net = net
        self.EVALS_THRESH = EVALS_THRESH
        self.bins = bins
        self.conv_norm = conv_norm
        self.pl_fitting = pl_fitting
        self.xmin_pos = xmin_pos
        self.filter_zeros = filter_zeros
        self.remove_first_layer = remove_first_layer
        self.remove_last_layer = remove_last_layer
        self.eigs_thresh = eigs_thresh
        self.esd_metric_for_tb = esd_metric_for_tb
        self.assign_func = assign_func
        self.lr_min_ratio = lr_min_ratio
        self.lr_max_ratio = lr_max_ratio
        self.batchnorm = batchnorm
        self.bn_to_conv = {}
        if batchnorm and batchnorm_type == "name":
            longname_lst = []
            for name, m in self.net.named_modules():
                if isinstance(m, nn.Conv2d) or isinstance(m, nn.Linear):  # noqa: SIM101
                    longname_lst.append(name)
            for name, module in self.net.named_modules():
                if isinstance(module, nn.BatchNorm2d) \
                        and name.replace("bn", "conv") in longname_lst:
                    self.bn_to_conv[name] = name.replace("bn", "conv")
        elif batchnorm and batchnorm_type == "order":
            longname_lst = []
            type_lst = []
            for name, module in self.net.named_modules():
                if isinstance(module, nn.Conv2d):
                    longname_lst.append(name)
                    type_lst.append("nn.Conv2d")
                if isinstance(module, nn.BatchNorm2d):
                    if type_lst[-1] == "nn.Conv2d":
                        self.bn_to_conv[name] = longname_lst[-1]
                    longname_lst.append(name)
                    type_lst.append("nn.BatchNorm2d")

    def build_optimizer_param_group(self, untuned_lr=0.1):
        metrics = self.net_esd_estimator()
        layer_stats = pd.DataFrame({key: metrics[key] for key in metrics if key != "eigs"})
        if self.remove_first_layer:
            layer_stats = layer_stats.drop(labels=0, axis=0)
            layer_stats.index = list(range(len(layer_stats[self.esd_metric_for_tb])))
        if self.remove_last_layer:
            layer_stats = layer_stats.drop(labels=len(layer_stats) - 1, axis=0)
            layer_stats.index = list(range(len(layer_stats[self.esd_metric_for_tb])))
        layer_stats = layer_stats[layer_stats["eigs_num"] >= self.eigs_thresh]
        layer_stats.index = list(range(len(layer_stats[self.esd_metric_for_tb])))
        metric_scores = np.array(layer_stats[self.esd_metric_for_tb])
        scheduled_lr = self.get_layer_temps(self.assign_func, metric_scores, untuned_lr)
        layer_stats["scheduled_lr"] = scheduled_lr
        layer_name_to_tune = list(layer_stats["longname"])
        opt_params_groups = []
        params_to_tune_ids = []
        for name, module in self.net.named_modules():
            if name in layer_name_to_tune:
                params_to_tune_ids += list(map(id, module.parameters()))
                lr = layer_stats[layer_stats["longname"] == name]["scheduled_lr"].item()
                opt_params_groups.append({"params": module.parameters(), "lr": lr})
            elif self.batchnorm and isinstance(module, nn.BatchNorm2d) \
                    and name in self.bn_to_conv and self.bn_to_conv[name] in layer_name_to_tune:
                params_to_tune_ids += list(map(id, module.parameters()))
                lr = layer_stats[layer_stats["longname"] == self.bn_to_conv[name]][
                    "scheduled_lr"].item()
                opt_params_groups.append({"params": module.parameters(), "lr": lr})
        untuned = filter(lambda p: id(p) not in params_to_tune_ids, self.net.parameters())
        opt_params_groups.append({"params": untuned, "lr": untuned_lr})
        return opt_params_groups

    def net_esd_estimator(self):
        results = {"alphahat": [], "alpha": [], "spectral_norm": [], "D": [], "longname": [],
                   "eigs": [], "norm": [], "eigs_num": []}
        for name, m in self.net.named_modules():
            if isinstance(m, nn.Conv2d) or isinstance(m, nn.Linear):  # noqa: SIM101
                matrix = m.weight.data.clone()
                if isinstance(m, nn.Conv2d):
                    matrix = torch.flatten(matrix, start_dim=2) * math.sqrt(self.conv_norm)
                    matrix = matrix.transpose(1, 2).transpose(0, 1)
                eigs = torch.square(torch.linalg.svdvals(matrix).flatten())
                eigs, _ = torch.sort(eigs, descending=False)
                spectral_norm = eigs[-1].item()
                fnorm = torch.sum(eigs).item()
                if self.filter_zeros:
                    nz_eigs = eigs[eigs > self.EVALS_THRESH]
                    N = len(nz_eigs)
                    if N == 0:
                        nz_eigs = eigs
                        N = len(nz_eigs)
                else:
                    nz_eigs = eigs
                    N = len(nz_eigs)
                log_nz_eigs = torch.log(nz_eigs)
                if self.pl_fitting == "median":
                    i = int(len(nz_eigs) / self.xmin_pos)
                    xmin = nz_eigs[i]
                    n = float(N - i)
                    seq = torch.arange(n)
                    final_alpha = 1 + n / (torch.sum(log_nz_eigs[i:]) - n * log_nz_eigs[i])
                    final_D = torch.max(torch.abs(
                        1 - (nz_eigs[i:] / xmin) ** (-final_alpha + 1) - seq / n))
                else:
                    alphas = torch.zeros(N - 1)
                    Ds = torch.ones(N - 1)
                    if self.pl_fitting == "fix-finger":
                        hist_nz_eigs = torch.log10(nz_eigs)
                        min_e, max_e = hist_nz_eigs.min(), hist_nz_eigs.max()
                        counts = torch.histc(hist_nz_eigs, self.bins, min=min_e, max=max_e)
                        boundaries = torch.linspace(min_e, max_e, self.bins + 1)
                        h = counts, boundaries
                        ih = torch.argmax(h[0])
                        xmin2 = 10 ** h[1][ih]
                        xmin_min = torch.log10(0.95 * xmin2)
                        xmin_max = 1.5 * xmin2
                    for i, xmin in enumerate(nz_eigs[:-1]):
                        if self.pl_fitting == "fix-finger":
                            if xmin < xmin_min:
                                continue
                            if xmin > xmin_max:
                                break
                        n = float(N - i)
                        seq = torch.arange(n)
                        alpha = 1 + n / (torch.sum(log_nz_eigs[i:]) - n * log_nz_eigs[i])
                        alphas[i] = alpha
                        if alpha > 1:
                            Ds[i] = torch.max(torch.abs(
                                1 - (nz_eigs[i:] / xmin) ** (-alpha + 1) - seq / n))
                    min_D_index = torch.argmin(Ds)
                    final_alpha = alphas[min_D_index]
                    final_D = Ds[min_D_index]
                final_alpha = final_alpha.item()
                final_D = final_D.item()
                final_alphahat = final_alpha * math.log10(spectral_norm)
                results["spectral_norm"].append(spectral_norm)
                results["alphahat"].append(final_alphahat)
                results["norm"].append(fnorm)
                results["alpha"].append(final_alpha)
                results["D"].append(final_D)
                results["longname"].append(name)
                results["eigs"].append(eigs.detach().cpu().numpy())
                results["eigs_num"].append(len(eigs))
        return results

    def get_layer_temps(self, assign_func, metric_scores, untuned_lr):
        n = len(metric_scores)
        if assign_func == "tb_linear_map":
            lr_range = [self.lr_min_ratio * untuned_lr, self.lr_max_ratio * untuned_lr]
            score_range = [min(metric_scores), max(metric_scores)]
            temps = np.interp(metric_scores, score_range, lr_range)
        elif assign_func == "tb_sqrt":
            temps = np.sqrt(metric_scores) / np.sum(np.sqrt(metric_scores)) * n * untuned_lr
        elif assign_func == "tb_log2":
            temps = np.log2(metric_scores) / np.sum(np.log2(metric_scores)) * n * untuned_lr
        elif assign_func == "tb_step":
            idxes = np.argsort(metric_scores)
            unsort_temps = [untuned_lr * (self.lr_min_ratio
                                          + (self.lr_max_ratio - self.lr_min_ratio) * i / n)
                            for i in range(n)]
            temps = [value for _, value in
                     sorted(zip(idxes, unsort_temps, strict=True), key=itemgetter(0))]
        else:
            raise NotImplementedError
        return temps


# ---------------------------------------------------------------------------------------------
# Models


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    """A CIFAR-style ResNet (the reference's naming: conv1/bn1, layerK.i.convJ/bnJ)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(_Block(width, width, 1), _Block(width, width, 1))
        self.layer2 = nn.Sequential(_Block(width, 2 * width, 2), _Block(2 * width, 2 * width, 1))
        self.layer3 = nn.Sequential(_Block(2 * width, 8 * width, 2))
        self.linear = nn.Linear(8 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(out.mean((2, 3)))


def _trained_like(model: nn.Module, seed: int) -> nn.Module:
    """Random weights with some heavy-tailed structure (a few strong rank-one directions), and
    random BatchNorm affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                w = m.weight
                w.copy_(torch.randn(w.shape, generator=gen) / math.sqrt(w[0].numel()))
                flat = w.view(w.shape[0], -1)
                for _ in range(3):
                    u = torch.randn(flat.shape[0], 1, generator=gen)
                    v = torch.randn(1, flat.shape[1], generator=gen)
                    flat += 0.3 * torch.rand(1, generator=gen) * u @ v / math.sqrt(flat.numel())
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=gen))
    return model


def _reference_lrs(reference, model: nn.Module, base_lr: float) -> dict[str, float]:
    """Module name -> lr of the reference's groups (all but the untuned last group), found by
    parameter identity."""
    groups = reference.build_optimizer_param_group(untuned_lr=base_lr)
    if isinstance(groups, tuple):  # the reference file returns (groups, layer_count)
        groups = groups[0]
    owner = {id(p): name for name, m in model.named_modules()
             for p in m.parameters(recurse=False)}
    lrs: dict[str, float] = {}
    for group in groups[:-1]:
        names = {owner[id(p)] for p in group["params"]}
        assert len(names) == 1
        lrs[names.pop()] = float(group["lr"])
    return lrs


MODELS = {"resnet": lambda: TinyResNet(), "smallcnn": lambda: SmallCNN(width=16, hidden=64)}


def _assert_same(ours: dict[str, float], ref: dict[str, float]) -> None:
    assert list(ours) == list(ref)  # the same modules, in the reference's group order
    for name in ref:
        assert ours[name] == pytest.approx(ref[name], rel=1e-12, abs=0), name


# ---------------------------------------------------------------------------------------------
# Defaults: equal to the reference's build_optimizer_param_group


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_default_lrs_equal_the_reference(model_name, seed):
    model = _trained_like(MODELS[model_name](), seed)
    ours = tempbalance_lrs(model, 0.1)
    ref = _reference_lrs(_ReferenceTempbalance(model), model, 0.1)
    _assert_same(ours, ref)
    assert len(ours) >= 3
    # the range is spanned: one layer at each end
    assert min(ours.values()) == pytest.approx(0.05) and max(ours.values()) == pytest.approx(0.15)


def test_resnet_batchnorm_shares_its_conv_rate_and_edges_are_untuned():
    model = _trained_like(TinyResNet(), 3)
    lrs = tempbalance_lrs(model, 0.2)
    assert "conv1" not in lrs and "bn1" not in lrs and "linear" not in lrs  # first, last
    assert lrs["layer1.0.bn1"] == lrs["layer1.0.conv1"]
    assert lrs["layer2.1.bn2"] == lrs["layer2.1.conv2"]
    # a 1x1 shortcut conv has 8 eigenvalues (< 50); its BatchNorm "shortcut.1" is not paired
    assert "layer2.0.shortcut.0" not in lrs and "layer2.0.shortcut.1" not in lrs


def test_wide_resnet_shortcut_is_tuned_and_only_order_pairs_its_batchnorm():
    # width 32: the 1x1 shortcut convs map 32 -> 64 (min = 32 eigenvalues < 50, untuned) and
    # 64 -> 128 (64 >= 50, tuned); the 3x3 block convs have 9 * min(out, in) >= 288
    model = ResNet(width=32)
    blocks = [f"stage{s}.0.conv{c}" for s in (1, 2, 3) for c in (1, 2)]
    plan = balance_plan(model)
    assert plan.tuned == (*blocks, "stage3.0.shortcut.0")
    assert plan.norm_of == {n.replace("conv", "bn"): n for n in blocks}  # no "bn" in shortcut.1
    by_order = balance_plan(model, BalanceOptions(batchnorm="order"))
    assert by_order.norm_of["stage3.0.shortcut.1"] == "stage3.0.shortcut.0"
    assert "stem_bn" not in by_order.norm_of  # the stem is the first layer, untuned


def test_layers_with_few_eigenvalues_are_untuned():
    # hidden: min(40, 30) = 30 eigenvalues < 50; mid: 60
    model = nn.Sequential(nn.Linear(20, 60), nn.Linear(60, 60), nn.Linear(60, 40),
                          nn.Linear(40, 30), nn.Linear(30, 5))
    plan = balance_plan(model)
    assert plan.tuned == ("1",)
    assert plan.untuned["0"] == "first layer" and plan.untuned["4"] == "last layer"
    assert "eigs_thresh" in plan.untuned["2"] and "eigs_thresh" in plan.untuned["3"]


# ---------------------------------------------------------------------------------------------
# The other fits, assignment functions, metrics and pairings


@pytest.mark.parametrize(
    "options",
    [
        {"assign_func": "tb_sqrt"},
        {"assign_func": "tb_log2"},
        {"assign_func": "tb_step"},
        {"assign_func": "tb_step", "lr_min_ratio": 0.2, "lr_max_ratio": 2.0},
        {"fit": "goodness-of-fit"},
        {"fit": "fix-finger"},
        {"xmin_pos": 4},
        {"filter_zeros": True},
        {"conv_norm": 1.0, "metric": "alphahat"},
        {"batchnorm": "order"},
        {"eigs_thresh": 100, "lr_min_ratio": 0.8, "lr_max_ratio": 1.2},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_other_options_equal_the_reference(options):
    model = _trained_like(TinyResNet(width=4), 5)
    ref_kwargs = {
        "assign_func": options.get("assign_func", "tb_linear_map"),
        "pl_fitting": options.get("fit", "median"),
        "xmin_pos": options.get("xmin_pos", 2),
        "filter_zeros": options.get("filter_zeros", False),
        "conv_norm": options.get("conv_norm", 0.5),
        "esd_metric_for_tb": options.get("metric", "alpha"),
        "batchnorm_type": options.get("batchnorm", "name"),
        "eigs_thresh": options.get("eigs_thresh", 50),
        "lr_min_ratio": options.get("lr_min_ratio", 0.5),
        "lr_max_ratio": options.get("lr_max_ratio", 1.5),
    }
    ref = _reference_lrs(_ReferenceTempbalance(model, **ref_kwargs), model, 0.05)
    _assert_same(tempbalance_lrs(model, 0.05, **options), ref)


def test_median_fit_is_the_textbook_hill_estimator():
    # exact Pareto quantiles above xmin: alpha = 1 + n / sum ln(x / xmin), in float64
    rng = np.random.default_rng(0)
    eigs = np.sort(np.concatenate([rng.uniform(0.1, 1.0, 200), (1 - rng.uniform(size=200))
                                   ** (-1 / 1.5)]))
    alpha, _ = fit_alpha(torch.tensor(eigs, dtype=torch.float64))
    tail = eigs[200:]
    expected = 1 + len(tail) / np.sum(np.log(tail / tail[0]))
    assert alpha == pytest.approx(expected, rel=1e-12)
    assert 2.0 < alpha < 3.0


def test_non_finite_weights_name_the_layer():
    model = _trained_like(TinyResNet(width=4), 0)
    with torch.no_grad():
        model.layer3[0].conv2.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(BalanceError, match=r"non-finite weights.*layer3\.0\.conv2"):
        compute_balance(model)


def test_unknown_option_is_named():
    with pytest.raises(TypeError, match="pl_fitting"):
        tempbalance_lrs(nn.Linear(2, 2), 0.1, pl_fitting="median")
    with pytest.raises(ValueError, match="assign_func"):
        BalanceOptions(assign_func="tb_cubic")


def test_no_tuned_layer_gives_an_empty_dict():
    assert tempbalance_lrs(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), 0.1) == {}


# ---------------------------------------------------------------------------------------------
# The reference file itself, when a copy is at hand (it imports pandas and calls .cuda()).


@pytest.mark.skipif(not os.environ.get("TEMPBALANCE_REFERENCE"),
                    reason="TEMPBALANCE_REFERENCE (path to the reference tempbalance.py) not set")
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_default_lrs_equal_the_reference_file(model_name, monkeypatch):
    spec = importlib.util.spec_from_file_location("tempbalance_ref",
                                                  os.environ["TEMPBALANCE_REFERENCE"])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    model = _trained_like(MODELS[model_name](), 7)
    ref = _reference_lrs(module.Tempbalance(model), model, 0.1)
    _assert_same(tempbalance_lrs(model, 0.1), ref)


def test_notes_name_every_option_fit_function_list_and_state_key():
    import re
    from dataclasses import fields
    from pathlib import Path

    from svd_callback.balance import ASSIGN_FUNCS, TEMPBALANCE_FITS, SpectralLRBalancer
    from svd_callback.balance.groups import SCHEDULER_GROUP_LISTS

    text = (Path(__file__).resolve().parents[1] / "docs" / "balance.md").read_text("utf-8")
    named = set(re.findall(r"`([^`\s(]+)", text))
    wanted = ({f.name for f in fields(BalanceOptions)} | set(TEMPBALANCE_FITS) | set(ASSIGN_FUNCS)
              | set(SCHEDULER_GROUP_LISTS) | set(SpectralLRBalancer().state_dict())
              | {"balance/lr/<module>", "balance/factor/<module>"})
    missing = wanted - named
    assert not missing, f"docs/balance.md does not name {sorted(missing)}"


def test_the_former_name_of_the_tempbalance_fits_warns():
    import svd_callback.balance as balance

    with pytest.warns(DeprecationWarning, match="TEMPBALANCE_FITS"):
        assert balance.FITS == balance.TEMPBALANCE_FITS == ("median", "goodness-of-fit",
                                                             "fix-finger")
