"""Hugging Face ``transformers`` models built from configs (no download): GPT-2's Conv1D and
packed attention, BERT and ViT, and a short Lightning fine-tuning run with the monitor."""

from __future__ import annotations

import logging
import warnings

import lightning.pytorch as pl
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from svd_callback.analysis import analyze
from svd_callback.callback import SpectralMonitor
from svd_callback.layers import find_layers
from svd_callback.sinks.history import read_history

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)

E = 32


def gpt2(n_layer: int = 2, tie: bool = True, vocab: int = 17):
    config = transformers.GPT2Config(n_layer=n_layer, n_embd=E, n_head=4, vocab_size=vocab,
                                     n_positions=64, bos_token_id=0, eos_token_id=0,
                                     tie_word_embeddings=tie)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def svdvals(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(matrix.detach().double())


def test_gpt2_conv1d_layers_and_packed_attention_are_analysed():
    model = gpt2()
    block = model.transformer.h[0]
    specs, skipped = find_layers(model)
    names = [s.name for s in specs]
    per_block = ["attn.c_attn.q", "attn.c_attn.k", "attn.c_attn.v", "attn.c_proj", "mlp.c_fc",
                 "mlp.c_proj"]
    assert names == [f"transformer.h.{i}.{n}" for i in range(2) for n in per_block] + ["lm_head"]
    assert {s.name for s in skipped} == {"transformer.wte", "transformer.wpe"}
    by_name = {s.name: s for s in specs}
    # each record's (out, in) matrix is the map the layer applies: x W^T + b == layer(x)
    x = torch.randn(3, 5, E)
    with torch.no_grad():
        packed = block.attn.c_attn(x)
        for i, part in enumerate("qkv"):
            w = by_name[f"transformer.h.0.attn.c_attn.{part}"].weight
            bias = block.attn.c_attn.bias[i * E : (i + 1) * E]
            torch.testing.assert_close(x @ w.T + bias, packed[..., i * E : (i + 1) * E])
        fc = by_name["transformer.h.0.mlp.c_fc"]
        assert fc.weight_shape == (4 * E, E)
        torch.testing.assert_close(x @ fc.weight.T + block.mlp.c_fc.bias, block.mlp.c_fc(x))
    # spectra against the stored weight, sliced by hand (Conv1D stores (in, out))
    report = {r.name: r for r in analyze(model, fit=None)}
    stored = block.attn.c_attn.weight
    for i, part in enumerate("qkv"):
        torch.testing.assert_close(report[f"transformer.h.0.attn.c_attn.{part}"].svals.double(),
                                   svdvals(stored[:, i * E : (i + 1) * E]), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(report["transformer.h.1.mlp.c_proj"].svals.double(),
                               svdvals(model.transformer.h[1].mlp.c_proj.weight),
                               rtol=1e-5, atol=1e-7)
    assert "Conv1D transformer.h.0.attn.c_attn.weight.T[32:64]" in (
        report["transformer.h.0.attn.c_attn.k"].notes["matrix"])


def test_gpt2_tied_embeddings_are_analysed_once():
    report = {r.name: r for r in analyze(gpt2(), fit=None, embeddings=True)}
    wte = report["transformer.wte"]
    assert wte.kind == "embedding" and wte.reason is None and wte.shape == (17, E)
    torch.testing.assert_close(wte.svals.double(), svdvals(gpt2().transformer.wte.weight),
                               rtol=1e-5, atol=1e-7)
    assert report["lm_head"].reason == "weight shared with transformer.wte (tied), analysed there"
    untied = {r.name: r for r in analyze(gpt2(tie=False), fit=None, embeddings=True)}
    assert untied["lm_head"].reason is None and untied["transformer.wte"].reason is None


def test_bert_all_sixteen_modules_with_embeddings():
    config = transformers.BertConfig(num_hidden_layers=2, hidden_size=E, num_attention_heads=4,
                                     intermediate_size=64, vocab_size=50,
                                     max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BertModel(config)
    specs, skipped = find_layers(model)
    assert len(specs) == 13 and {s.name for s in skipped} == {
        f"embeddings.{n}_embeddings" for n in ("word", "position", "token_type")}
    specs, skipped = find_layers(model, embeddings=True)
    assert len(specs) == 16 and skipped == []
    assert {s.kind for s in specs} == {"linear", "embedding"}
    masked = transformers.BertForMaskedLM(config)  # decoder tied to the word embeddings
    specs, skipped = find_layers(masked, embeddings=True)
    assert [(s.name, s.reason) for s in skipped] == [
        ("cls.predictions.decoder",
         "weight shared with bert.embeddings.word_embeddings (tied), analysed there")]


def test_vit_from_transformers():
    config = transformers.ViTConfig(num_hidden_layers=2, hidden_size=E, num_attention_heads=4,
                                    intermediate_size=64, image_size=16, patch_size=8)
    torch.manual_seed(0)
    model = transformers.ViTModel(config)
    report = analyze(model, conv_mode=("unfold", "operator"), example_input=torch.zeros(
        1, 3, 16, 16), fit=None)
    analysed = {(r.name, r.mode) for r in report if r.reason is None}
    # every linear map (query, key, value, output, MLP, pooler) and the patch embedding conv,
    # whatever this transformers version names them
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    convs = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert len(linears) == 2 * 6 + 1 and len(convs) == 1
    assert analysed == {(n, mode) for n in linears | convs for mode in ("unfold", "operator")}
    skipped = {r.name: r.reason for r in report if r.reason is not None}
    assert set(skipped) == {"embeddings"} and "position_embeddings" in skipped["embeddings"]


class DigitsGPT(pl.LightningModule):
    """GPT-2 trained as a language model on the 64 pixels (17 grey levels) of digit images."""

    def __init__(self) -> None:
        super().__init__()
        self.model = gpt2(vocab=17)

    def training_step(self, batch, batch_idx):
        tokens = batch[0]
        return self.model(input_ids=tokens, labels=tokens).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def finetune(root, monitor: SpectralMonitor | None):
    pl.seed_everything(0, verbose=False)
    tokens = torch.as_tensor(load_digits().data[:128], dtype=torch.long)
    loader = DataLoader(TensorDataset(tokens), batch_size=32, shuffle=True)
    module = DigitsGPT()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False,
                         callbacks=[monitor] if monitor else [], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=root, limit_train_batches=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    return module


def test_lightning_finetuning_with_the_monitor(tmp_path):
    monitor = SpectralMonitor(embeddings=True, figures_every_n=0, histograms=False)
    module = finetune(tmp_path / "with", monitor)
    rows = [r for r in read_history(tmp_path / "with" / "spectral_history.jsonl")
            if r["type"] == "layer"]
    assert {r["epochs_trained"] for r in rows} == {0.0, 1.0, 2.0}
    last = {r["layer"]: r for r in rows if r["epochs_trained"] == 2.0}
    assert last["model.lm_head"]["reason"].startswith("weight shared with model.transformer.wte")
    analysed = {n for n, r in last.items() if r["reason"] is None}
    assert len(analysed) == 2 + 2 * 6
    for part in "qkv":
        assert f"model.transformer.h.1.attn.c_attn.{part}" in analysed
    # the values logged are those of the trained weights
    final = {r.name: r for r in analyze(module, embeddings=True)}
    for name in analysed:
        assert last[name]["metrics"]["spectral_norm"] == pytest.approx(
            final[name].metrics["spectral_norm"], rel=1e-6)
    # reading the weights through views changes nothing: same weights without the monitor
    plain = finetune(tmp_path / "without", None)
    for (name, p), q in zip(module.named_parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_gpt2_conv1d_and_embeddings_match_weightwatcher():
    """WeightWatcher 0.7.7 reads a Conv1D or an Embedding as one dense matrix; it keeps the
    packed ``c_attn`` whole, so the q/k/v blocks have no counterpart there."""
    ww = pytest.importorskip("weightwatcher")
    model = gpt2(n_layer=1, tie=False, vocab=40)
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ww.WeightWatcher(model=model).analyze()
    rows = {str(row["longname"]): row for _, row in theirs.iterrows()}
    ours = {r.name: r for r in analyze(model, ww_compat=True, embeddings=True).analysed()}
    compared = [n for n in ours if n in rows]
    assert set(compared) == {"transformer.wte", "transformer.wpe", "transformer.h.0.attn.c_proj",
                             "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj", "lm_head"}
    for name in compared:
        for metric in ("alpha", "D", "xmin", "log_norm", "log_spectral_norm", "stable_rank",
                       "entropy"):
            a, b = ours[name].metrics[metric], float(rows[name][metric])
            assert a == pytest.approx(b, rel=1e-4, abs=1e-6), (name, metric, a, b)
