"""Recurrent layers (nn.LSTM, nn.GRU, nn.RNN and their cells) analysed gate by gate.

Oracles: the record names are built from ``named_parameters`` and torch's documented gate order
(``W_ii|W_if|W_ig|W_io``, ``W_ir|W_iz|W_in``); the singular values are float64
``torch.linalg.svdvals`` of ``param.chunk(n_gates)``; the gate labels are checked by recomputing
a cell step by hand from the records' matrices (the LSTM and GRU equations of the torch docs)
and comparing with the module's own forward. WeightWatcher 0.7.7 is the reference for what it
does with these modules (nothing) and, for a gate block, for the linear-layer convention.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import DigitsClassifier, digits_fit, run_cli, ww_frame
from torch import nn
from torch.nn.utils import parametrizations

from svd_callback.analysis import analyze
from svd_callback.callback import SpectralMonitor
from svd_callback.layers import find_layers
from svd_callback.monitor.scalars import analysis_scalars
from svd_callback.sinks.history import read_history

GATES = {"LSTM": "ifgo", "GRU": "rzn", "RNN": ""}

VARIANTS = {
    "lstm": lambda: nn.LSTM(5, 6),
    "lstm-2-layers-bidirectional-proj": lambda: nn.LSTM(5, 6, num_layers=2, bidirectional=True,
                                                        proj_size=3),
    "gru-2-layers-bidirectional": lambda: nn.GRU(4, 7, num_layers=2, bidirectional=True),
    "rnn-relu-bidirectional": lambda: nn.RNN(4, 5, num_layers=2, nonlinearity="relu",
                                             bidirectional=True),
    "lstm-cell": lambda: nn.LSTMCell(5, 6),
    "gru-cell": lambda: nn.GRUCell(5, 6),
    "rnn-cell": lambda: nn.RNNCell(5, 6, nonlinearity="tanh"),
}


def family(module: nn.Module) -> str:
    return next(f for f in ("LSTM", "GRU", "RNN") if type(module).__name__.startswith(f))


def expected_blocks(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    """Record name -> the matrix it must hold, from ``named_parameters`` and the documented
    gate order (a projection ``weight_hr`` whole)."""
    gates = GATES[family(module)]
    blocks = {}
    for name, param in module.named_parameters():
        if not name.startswith("weight"):
            continue
        if gates and not name.startswith("weight_hr"):
            for gate, block in zip(gates, param.detach().chunk(len(gates)), strict=True):
                blocks[f"{prefix}.{name}.{gate}"] = block
        else:
            blocks[f"{prefix}.{name}"] = param.detach()
    return blocks


@pytest.mark.parametrize("make", VARIANTS.values(), ids=VARIANTS.keys())
def test_gate_blocks_have_the_singular_values_of_the_row_blocks(make):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("rnn", make())
    model.add_module("head", nn.Linear(6, 3))
    report = analyze(model, metrics=("norms",))
    expected = {**expected_blocks("rnn", model.rnn), "head": model.head.weight.detach()}
    assert [r.name for r in report] == list(expected)  # every matrix, in parameter order
    for record in report:
        matrix = expected[record.name]
        assert record.reason is None and record.kind == "linear"
        assert record.shape == tuple(matrix.shape)
        oracle = torch.linalg.svdvals(matrix.double())
        torch.testing.assert_close(record.svals.double(), oracle, rtol=1e-5, atol=1e-7)
        assert record.metrics["spectral_norm"] == pytest.approx(float(oracle[0]), rel=1e-6)
        assert record.metrics["frobenius_norm"] == pytest.approx(
            float(torch.linalg.matrix_norm(matrix.double())), rel=1e-6)
        if record.name != "head":
            assert record.notes["matrix"].startswith(f"{type(model.rnn).__name__} rnn.weight_")


def test_projection_and_reverse_direction_are_named_as_torch_names_them():
    lstm = nn.LSTM(5, 6, num_layers=2, bidirectional=True, proj_size=3)
    names = [s.name for s in find_layers(lstm)[0]]
    assert names[:9] == [*(f"weight_ih_l0.{g}" for g in "ifgo"),
                         *(f"weight_hh_l0.{g}" for g in "ifgo"), "weight_hr_l0"]
    assert "weight_hh_l1_reverse.o" in names and "weight_hr_l1_reverse" in names
    assert len(names) == 2 * 2 * 9
    # the second layer reads both directions' projections: (4H, 2 * proj_size)
    specs = {s.name: s for s in find_layers(lstm)[0]}
    assert specs["weight_ih_l1.f"].weight_shape == (6, 6)
    assert specs["weight_hh_l1.f"].weight_shape == (6, 3)
    assert specs["weight_hr_l1"].weight_shape == (3, 6)
    assert specs["weight_hr_l1"].matrix.describe() == "weight_hr_l1 (projection)"


def named_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """Record name (without prefix) -> the analysed matrix, read from the records."""
    return {s.name: s.weight.detach() for s in find_layers(module)[0]}


def test_lstm_gate_labels_reproduce_the_cell_step():
    torch.manual_seed(1)
    cell = nn.LSTMCell(5, 4, bias=False)
    x, h, c = torch.randn(3, 5), torch.randn(3, 4), torch.randn(3, 4)
    w = named_weights(cell)

    def pre(gate):
        return x @ w[f"weight_ih.{gate}"].T + h @ w[f"weight_hh.{gate}"].T

    c1 = torch.sigmoid(pre("f")) * c + torch.sigmoid(pre("i")) * torch.tanh(pre("g"))
    h1 = torch.sigmoid(pre("o")) * torch.tanh(c1)
    got_h, got_c = cell(x, (h, c))
    torch.testing.assert_close(got_c, c1)
    torch.testing.assert_close(got_h, h1)


def test_gru_gate_labels_reproduce_the_cell_step():
    torch.manual_seed(2)
    cell = nn.GRUCell(5, 4, bias=False)
    x, h = torch.randn(3, 5), torch.randn(3, 4)
    w = named_weights(cell)
    r = torch.sigmoid(x @ w["weight_ih.r"].T + h @ w["weight_hh.r"].T)
    z = torch.sigmoid(x @ w["weight_ih.z"].T + h @ w["weight_hh.z"].T)
    n = torch.tanh(x @ w["weight_ih.n"].T + r * (h @ w["weight_hh.n"].T))
    torch.testing.assert_close(cell(x, h), (1 - z) * n + z * h)


def test_lstm_layer_labels_and_projection_reproduce_one_step():
    torch.manual_seed(3)
    lstm = nn.LSTM(5, 4, proj_size=2, bias=False, batch_first=True)
    x = torch.randn(3, 1, 5)
    w = named_weights(lstm)
    gate = {g: x[:, 0] @ w[f"weight_ih_l0.{g}"].T for g in "ifgo"}  # h0 = c0 = 0
    c1 = torch.sigmoid(gate["i"]) * torch.tanh(gate["g"])
    h1 = (torch.sigmoid(gate["o"]) * torch.tanh(c1)) @ w["weight_hr_l0"].T
    out, (h_n, c_n) = lstm(x)
    torch.testing.assert_close(out[:, 0], h1)
    torch.testing.assert_close(c_n[0], c1)


def test_filters_reach_a_parameter_and_its_gates():
    model = nn.Sequential(nn.GRU(3, 4, num_layers=2), nn.Linear(4, 2))
    names = [s.name for s in find_layers(model, include="0.weight_hh_l1")[0]]
    assert names == ["0.weight_hh_l1.r", "0.weight_hh_l1.z", "0.weight_hh_l1.n"]
    names = [s.name for s in find_layers(model, exclude=["0.weight_ih_*", "*.z"])[0]]
    assert names == ["0.weight_hh_l0.r", "0.weight_hh_l0.n", "0.weight_hh_l1.r",
                     "0.weight_hh_l1.n", "1"]
    assert [s.name for s in find_layers(model, exclude="0")[0]] == ["1"]


def test_a_parametrized_recurrent_weight_is_read_without_a_power_iteration():
    torch.manual_seed(4)
    lstm = parametrizations.spectral_norm(nn.LSTM(4, 5), "weight_hh_l0")
    lstm.train()
    u_before = lstm.parametrizations.weight_hh_l0[0]._u.clone()
    report = analyze(lstm, metrics=("norms",))
    assert torch.equal(lstm.parametrizations.weight_hh_l0[0]._u, u_before)
    assert lstm.training
    lstm.eval()
    expected = lstm.weight_hh_l0.detach().chunk(4)
    got = {r.name: r for r in report}
    for gate, block in zip("ifgo", expected, strict=True):
        torch.testing.assert_close(got[f"weight_hh_l0.{gate}"].svals.double(),
                                   torch.linalg.svdvals(block.double()), rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------- WeightWatcher
def test_weightwatcher_has_no_convention_for_recurrent_layers_and_the_linear_one_for_a_block():
    """WeightWatcher 0.7.7 types PyTorch modules by class name (linear, conv1d, conv2d,
    embedding, norm): an LSTM is UNKNOWN and none of its matrices is analysed. A gate block,
    analysed with ``ww_compat=True``, gets the numbers WeightWatcher gives an ``nn.Linear``
    holding that block."""
    pytest.importorskip("weightwatcher")
    torch.manual_seed(5)
    model = nn.Sequential()
    model.add_module("lstm", nn.LSTM(40, 60))
    model.add_module("head", nn.Linear(60, 30))
    frame = ww_frame(model)
    assert list(frame["name"].astype(str)) == ["head"]  # the LSTM is skipped by WeightWatcher
    ours = {r.name: r for r in analyze(model, "slices", ww_compat=True).analysed()}
    assert "lstm.weight_hh_l0.f" in ours and "head" in ours
    block = nn.Sequential()
    block.add_module("f", nn.Linear(60, 60, bias=False))
    with torch.no_grad():
        block.f.weight.copy_(model.lstm.weight_hh_l0[60:120])
    theirs = ww_frame(block).iloc[0]
    record = ours["lstm.weight_hh_l0.f"]
    for metric in ("alpha", "D", "xmin", "log_norm", "log_spectral_norm", "alpha_weighted",
                   "stable_rank", "entropy", "log_alpha_norm"):
        a, b = record.metrics[metric], float(theirs[metric])
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), (metric, a, b)


# ---------------------------------------------------------------------------- training, CLI
class DigitsLSTM(DigitsClassifier):
    """An 8x8 digit read as 8 rows of 8 pixels by a bidirectional LSTM, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True, bidirectional=True, dropout=0.0)
        self.cell = nn.GRUCell(32, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        out, _ = self.lstm(x.reshape(-1, 8, 8))
        return self.head(self.cell(out[:, -1]))


def test_an_lstm_fit_is_bit_identical_with_and_without_the_monitor(tmp_path):
    def run(name, callbacks):
        _, model = digits_fit(tmp_path / name, callbacks, DigitsLSTM, max_epochs=2, seed=3,
                              limit_train_batches=4, limit_val_batches=1, quiet=True)
        return model.state_dict(), torch.get_rng_state()

    monitor = SpectralMonitor(metrics="all", every_n_steps=2, figures_every_n=0,
                              histograms=False)
    plain_weights, plain_rng = run("plain", [])
    watched_weights, watched_rng = run("watched", [monitor])
    assert monitor.schedule.analyses >= 4
    assert plain_weights.keys() == watched_weights.keys()
    for name, value in plain_weights.items():
        assert torch.equal(value, watched_weights[name]), name
    assert torch.equal(plain_rng, watched_rng)
    rows = [r for r in read_history(tmp_path / "watched" / "spectral_history.jsonl")
            if r["type"] == "layer"]
    last = {r["layer"]: r for r in rows if r["step"] == max(r["step"] for r in rows)}
    assert {f"lstm.weight_hh_l0_reverse.{g}" for g in "ifgo"} <= set(last)
    assert {f"cell.weight_ih.{g}" for g in "rzn"} <= set(last)
    assert all(r["reason"] is None for r in last.values())
    assert len(last) == 2 * 2 * 4 + 2 * 3 + 1
    expected = torch.linalg.svdvals(watched_weights["lstm.weight_ih_l0"][16:32].double())
    assert last["lstm.weight_ih_l0.f"]["metrics"]["spectral_norm"] == pytest.approx(
        float(expected[0]), rel=1e-6)
    assert "(forget gate f)" in last["lstm.weight_ih_l0.f"]["notes"]["matrix"]
    # the TensorBoard description of a gate's scalars names the block it was read from
    descriptions = {s.tag: s.description
                    for s in analysis_scalars(monitor.last_result, monitor.config, "")}
    text = descriptions["spectral/spectral_norm/lstm.weight_hh_l0_reverse.g"]
    assert text.endswith("; matrix: LSTM lstm.weight_hh_l0_reverse[32:48] (cell candidate g) "
                         "as an (out, in) matrix")
    assert "matrix:" not in descriptions["spectral/spectral_norm/head"]


def test_cli_analyzes_a_saved_recurrent_model(capsys, tmp_path):
    torch.manual_seed(6)
    model = nn.Sequential(nn.GRU(6, 8, bidirectional=True), nn.Linear(16, 3))
    path = tmp_path / "gru.pt"
    torch.save(model, path)
    js = tmp_path / "r.json"
    code, out, err = run_cli(capsys, "analyze", str(path), "--json", str(js), "--no-progress")
    assert code == 0, err
    rows = {r["layer"]: r for r in json.loads(js.read_text())}
    assert set(rows) == {*(f"0.{p}.{g}" for p in ("weight_ih_l0", "weight_hh_l0",
                                                  "weight_ih_l0_reverse",
                                                  "weight_hh_l0_reverse") for g in "rzn"), "1"}
    block = model[0].weight_hh_l0_reverse.detach()[8:16].double()  # the update gate z
    assert rows["0.weight_hh_l0_reverse.z"]["spectral_norm"] == pytest.approx(
        float(torch.linalg.matrix_norm(block, 2)), rel=1e-6)
    assert "0.weight_ih_l0.n" in out

