"""The runs of the zoo: model/data pairs, each with healthy recipes and failure kinds.

A run is (pair, kind, seed). A :class:`Pair` is a model class and a dataset with the settings
all its runs share; ``split`` says whether its runs choose the default rules' thresholds
(``"tuning"``) or are an architecture held out from that choice (``"held-out"``). A
:class:`Kind` is one recipe: the model's constructor arguments (the optimiser recipe among
them), changes to the data, failures applied to the built model (frozen modules, a weight scale,
zeroed weights, a bias value), a mid-run :class:`~experiments.alert_zoo.switches.Switch` with its
onset epoch, or a fine-tuning start from another healthy run's end state.

Held-out runs are (a) every seed of a held-out pair and (b) the held-out seeds of a tuning
pair (``Pair.heldout_seeds``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from experiments.alert_zoo.data import ZooDigits, ZooFashion
from experiments.alert_zoo.models import MODELS
from experiments.alert_zoo.switches import Switch
from svd_callback.examples import ResNet, SmallCNN

HEALTHY = "healthy"
BROKEN = "failure"
TUNING = "tuning"
HELD_OUT = "held-out"
EXAMPLE_MODELS = {"SmallCNN": SmallCNN, "ResNet": ResNet}


@dataclass(frozen=True)
class Kind:
    """One recipe of a pair.

    ``role``: :data:`HEALTHY` or :data:`BROKEN` (an injected failure); ``model``: constructor
    arguments over the pair's; ``data``: data-module arguments over the pair's; ``frozen``:
    modules whose parameters never train; ``init_scale``: a factor on every conv/linear weight
    at init; ``zero``: modules whose weight starts at zero; ``bias``: every conv/linear bias but
    the head's set to this value at init (large negative: dying ReLUs); ``onset``/``switch``: a
    failure switched on at the start of 0-based epoch ``onset`` (0 with no switch: present from
    the start); ``finetune``: the healthy kind of the same pair and seed whose end state the run
    starts from (the monitor sees only the fine-tuning); ``epochs``: overrides the pair's;
    ``classes``: class analysis on (healthy runs replayed with the class rules, reported apart);
    ``only_seeds``: the seeds the kind runs at (empty: every seed of the pair); ``what``: one
    line for the tables."""

    name: str
    role: str
    what: str
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    frozen: tuple[str, ...] = ()
    init_scale: float = 1.0
    zero: tuple[str, ...] = ()
    bias: float | None = None
    onset: int = 0
    switch: Switch | None = None
    finetune: str | None = None
    epochs: int | None = None
    classes: bool = False
    only_seeds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in (HEALTHY, BROKEN):
            raise ValueError(f"role must be {HEALTHY!r} or {BROKEN!r}, got {self.role!r}")
        if (self.switch is None) != (self.onset == 0):
            raise ValueError(f"kind {self.name!r}: a switch needs an onset >= 1 and an onset "
                             "needs a switch")

    @property
    def midrun(self) -> bool:
        return self.switch is not None

    def runs_at(self, seed: int) -> bool:
        return not self.only_seeds or seed in self.only_seeds


@dataclass(frozen=True)
class Pair:
    """A model/data pair: its model class (the zoo's own, or one of the library's examples for
    the two original pairs), dataset, the settings every run shares, its kinds and seeds."""

    name: str
    what: str
    model_class: str
    dataset: str
    epochs: int
    data: dict[str, Any]
    model: dict[str, Any]
    kinds: tuple[Kind, ...]
    split: str = TUNING
    tuning_seeds: tuple[int, ...] = (0, 1)
    heldout_seeds: tuple[int, ...] = (2, 3)
    chance: float | None = 0.1
    source: str = ""

    def __post_init__(self) -> None:
        names = [k.name for k in self.kinds]
        if len(names) != len(set(names)):
            raise ValueError(f"pair {self.name!r} repeats a kind name")
        for kind in self.kinds:
            if kind.finetune is not None and self.kind(kind.finetune).role != HEALTHY:
                raise ValueError(f"{self.name}/{kind.name} fine-tunes a non-healthy kind")

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.tuning_seeds + self.heldout_seeds

    def kind(self, name: str) -> Kind:
        for kind in self.kinds:
            if kind.name == name:
                return kind
        raise KeyError(f"pair {self.name!r} has no kind {name!r}; have "
                       f"{[k.name for k in self.kinds]}")

    def split_of(self, seed: int) -> str:
        """``"tuning"``, ``"held-out architecture"`` or ``"held-out seed"`` for a run."""
        if self.split == HELD_OUT:
            return "held-out architecture"
        return "tuning" if seed in self.tuning_seeds else "held-out seed"

    def datamodule(self, kind: Kind, seed: int, **overrides: Any):
        options = {**self.data, **kind.data, **overrides, "seed": seed}
        if self.dataset == "digits":
            options.pop("train_size", None)
            options.pop("val_size", None)
            options.pop("root", None)
            return ZooDigits(**options)
        return ZooFashion(**options)


def build_model(pair: Pair, kind: Kind) -> nn.Module:
    """The pair's model with the kind's recipe, then its initial-weight failures (weight scale,
    zeroed weights, bias value) and frozen modules applied after the seeded default
    initialisation. ``init_scale`` multiplies every conv, linear and recurrent weight matrix;
    ``bias`` sets the biases of every conv and linear layer but the last (the head)."""
    options = {**pair.model, **kind.model}
    cls = EXAMPLE_MODELS.get(pair.model_class) or MODELS[pair.model_class]
    model = cls(**options)
    modules = dict(model.named_modules())
    layers = [m for m in modules.values() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        if kind.init_scale != 1.0:
            for module in layers:
                module.weight.mul_(kind.init_scale)
            for module in modules.values():
                if isinstance(module, nn.RNNBase):
                    for name, parameter in module.named_parameters():
                        if name.startswith("weight"):
                            parameter.mul_(kind.init_scale)
        if kind.bias is not None:
            for module in layers[:-1]:
                if module.bias is not None:
                    module.bias.fill_(kind.bias)
        for name in kind.zero:
            modules[name].weight.zero_()
    for name in kind.frozen:
        for parameter in modules[name].parameters():
            parameter.requires_grad_(False)
    return model


# ---------------------------------------------------------------------- recipes
SGD = {"optimizer": "sgd", "momentum": 0.9}


def _h(name: str, what: str, model: dict[str, Any] | None = None, **kw: Any) -> Kind:
    return Kind(name, HEALTHY, what, model or {}, **kw)


def _f(name: str, what: str, model: dict[str, Any] | None = None, **kw: Any) -> Kind:
    return Kind(name, BROKEN, what, model or {}, **kw)


def midrun_kinds(base: dict[str, Any], base_name: str, onset: int) -> tuple[Kind, ...]:
    """The five mid-run failures on the recipe ``base`` (a constant schedule), switched on at
    the start of 0-based epoch ``onset``."""
    when = f"from epoch {onset + 1} on (after {onset} healthy epochs of {base_name})"
    return (
        _f("mid_lr_x100", f"learning rate x100 {when}", base, onset=onset,
           switch=Switch("lr", 100.0)),
        _f("mid_lr_zero", f"learning rate dropped to 0 {when}", base, onset=onset,
           switch=Switch("lr", 0.0)),
        _f("mid_labels", f"every training label replaced by a random one {when}", base,
           onset=onset, switch=Switch("labels")),
        _f("mid_inputs_zero", f"every training image set to zero {when}", base, onset=onset,
           switch=Switch("inputs")),
        _f("mid_freeze", f"every parameter but the head's frozen {when}", base, onset=onset,
           switch=Switch("freeze")),
    )


# ---------------------------------------------------------------------- tuning pairs
DIGITS_ADAM = {"optimizer": "adam", "lr": 3e-3}
DIGITS = Pair(
    name="digits_cnn",
    what="the library's example SmallCNN (3 convs, 2 linears, no normalisation) on "
         "scikit-learn's 8x8 digits (1437 training / 360 validation images)",
    model_class="SmallCNN", dataset="digits",
    epochs=15,
    data={"batch_size": 64},
    model={"image_size": 8, "width": 16, "hidden": 64},
    tuning_seeds=(0, 1), heldout_seeds=(4, 5),
    kinds=(
        _h("adam", "Adam lr 3e-3, constant (the shipped config)", DIGITS_ADAM),
        _h("adamw_cosine_wd", "AdamW lr 3e-3, weight decay 0.05, cosine",
           {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05, "schedule": "cosine"}),
        _h("sgd", "SGD momentum 0.9 lr 0.1, constant", {**SGD, "lr": 0.1}),
        _h("sgd_cosine_wd", "SGD momentum 0.9 lr 0.1, weight decay 5e-4, cosine",
           {**SGD, "lr": 0.1, "weight_decay": 5e-4, "schedule": "cosine"}),
        _h("augment", "Adam lr 3e-3, random crops (padding 1)", DIGITS_ADAM,
           data={"augment": True}),
        _h("long_cosine", "Adam lr 3e-3, cosine, 45 epochs",
           {**DIGITS_ADAM, "schedule": "cosine"}, epochs=45),
        _h("finetune", "fine-tuning the end state of `adam` at Adam lr 3e-4 (0.1x), 10 epochs",
           {"optimizer": "adam", "lr": 3e-4}, finetune="adam", epochs=10),
        _h("adam_classes", "`adam` with class analysis on (replayed with the class rules; "
           "reported apart; seed 0 only)", DIGITS_ADAM, classes=True, only_seeds=(0,)),
        _f("lr_nan", "SGD momentum 0.9 at lr 300 (diverges to NaN)", {**SGD, "lr": 300.0}),
        _f("lr_dead", "Adam at lr 0.1, 33x the good rate (dead ReLUs, no NaN)",
           {"optimizer": "adam", "lr": 0.1}),
        _f("lr_tiny", "Adam at lr 1e-6 (nothing learns)", {"optimizer": "adam", "lr": 1e-6}),
        _f("labels_40", "Adam lr 3e-3, 40% of the training labels replaced by random ones",
           DIGITS_ADAM, data={"label_noise": 0.4}),
        _f("labels_100", "Adam lr 3e-3, every training label random", DIGITS_ADAM,
           data={"label_noise": 1.0}),
        _f("tiny_data", "Adam lr 3e-3 on the first 100 training images, batch 16 (over-fits)",
           DIGITS_ADAM, data={"limit": 100, "batch_size": 16}),
        _f("frozen", "Adam lr 3e-3, features.2 and hidden frozen at init", DIGITS_ADAM,
           frozen=("features.2", "hidden")),
        _f("bad_init", "Adam lr 3e-3, every weight 30x its default init", DIGITS_ADAM,
           init_scale=30.0),
        _f("explode", "SGD momentum 0.9 at lr 20, no normalisation: weights and loss blow up "
           "(finite)", {**SGD, "lr": 20.0}),
        _f("dying_relu", "Adam lr 3e-3, every hidden bias initialised to -1 (every ReLU dead "
           "from the start; only the head's bias trains)", DIGITS_ADAM, bias=-1.0),
        _f("wd_strong", "SGD momentum 0.9 lr 0.1 with weight decay 0.2 (the weights collapse "
           "~3x per epoch)", {**SGD, "lr": 0.1, "weight_decay": 0.2}),
        _f("adam_l2", "Adam lr 3e-3 with coupled L2 weight decay 1.0 (sits at chance)",
           {**DIGITS_ADAM, "weight_decay": 1.0}),
        *midrun_kinds(DIGITS_ADAM, "`adam`", 4),
    ),
)

RESNET_SGD = {**SGD, "lr": 0.05, "weight_decay": 5e-4, "schedule": "cosine"}
RESNET_SGD_CONSTANT = {**SGD, "lr": 0.05, "weight_decay": 5e-4, "schedule": "constant"}
RESNET = Pair(
    name="fashion_resnet",
    what="the library's example BatchNorm ResNet-8 (width 16, stride-2 stem, 3 stages of one "
         "basic block) on Fashion-MNIST 28x28: a fixed class-stratified 30000-image training "
         "subset, the full 10000-image test set as validation",
    model_class="ResNet", dataset="fashion",
    epochs=12,
    data={"batch_size": 128, "train_size": 30000, "val_size": None},
    model={"depth": 8, "width": 16, "stem_stride": 2},
    tuning_seeds=(0, 1), heldout_seeds=(4,),
    kinds=(
        _h("sgd_cosine_wd", "SGD momentum 0.9 lr 0.05, weight decay 5e-4, cosine", RESNET_SGD),
        _h("sgd", "SGD momentum 0.9 lr 0.05, constant",
           {**SGD, "lr": 0.05, "weight_decay": 0.0, "schedule": "constant"}),
        _h("adam", "Adam lr 1e-3, constant",
           {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant"}),
        _h("adamw_cosine_wd", "AdamW lr 2e-3, weight decay 0.05, cosine",
           {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "schedule": "cosine"}),
        _h("finetune", "fine-tuning the end state of `sgd_cosine_wd` at SGD momentum 0.9 lr "
           "0.005 (0.1x), constant, 6 epochs",
           {**SGD, "lr": 0.005, "weight_decay": 5e-4, "schedule": "constant"},
           finetune="sgd_cosine_wd", epochs=6),
        _f("lr_nan", "SGD momentum 0.9 at lr 50 (diverges to NaN)",
           {**SGD, "lr": 50.0, "schedule": "constant"}),
        _f("lr_dead", "Adam at lr 10 (collapses to chance without NaN)",
           {"optimizer": "adam", "lr": 10.0, "weight_decay": 0.0, "schedule": "constant"}),
        _f("lr_tiny", "SGD momentum 0.9 at lr 1e-5 (nothing learns)",
           {**SGD, "lr": 1e-5, "schedule": "constant"}),
        _f("tiny_data", "the SGD cosine recipe on the first 300 training images", RESNET_SGD,
           data={"limit": 300, "batch_size": 32}),
        _f("frozen", "the SGD cosine recipe, stage2 and stage3 convs frozen at init",
           RESNET_SGD,
           frozen=("stage2.0.conv1", "stage2.0.conv2", "stage3.0.conv1", "stage3.0.conv2")),
        _f("bad_init", "the SGD cosine recipe, every weight 100x its default init (BatchNorm "
           "hides the scale of the convs, whose effective step shrinks 1e4x; the head's logits "
           "grow 100x)", RESNET_SGD, init_scale=100.0),
        _f("explode", "no BatchNorm, SGD momentum 0.9 lr 0.2: the unnormalised residual net "
           "blows up in its first steps",
           {**SGD, "lr": 0.2, "weight_decay": 0.0, "schedule": "constant", "norm": False}),
        _f("wd_strong", "SGD momentum 0.9 lr 0.05 with weight decay 0.2",
           {**SGD, "lr": 0.05, "weight_decay": 0.2, "schedule": "constant"}),
        _f("mid_lr_x100", "learning rate x100 from epoch 5 on (after 4 healthy epochs of SGD "
           "momentum 0.9 lr 0.05, weight decay 5e-4, constant)", RESNET_SGD_CONSTANT, onset=4,
           switch=Switch("lr", 100.0)),
        _f("mid_lr_zero", "learning rate dropped to 0 from epoch 5 on (after 4 healthy epochs "
           "of the constant SGD recipe)", RESNET_SGD_CONSTANT, onset=4,
           switch=Switch("lr", 0.0)),
        _f("mid_freeze", "every parameter but the head's frozen from epoch 5 on (after 4 "
           "healthy epochs of the constant SGD recipe)", RESNET_SGD_CONSTANT, onset=4,
           switch=Switch("freeze")),
    ),
)

MLP_SGD = {**SGD, "lr": 0.05}
MLP_ADAM = {"optimizer": "adam", "lr": 1e-3}
MLP = Pair(
    name="fashion_mlp",
    what="a wide ReLU MLP 784-512-512-10 on Fashion-MNIST: a fixed class-stratified "
         "12000-image training subset, 2000 test images as validation",
    model_class="WideMLP", dataset="fashion",
    epochs=12,
    data={"batch_size": 128, "train_size": 12000, "val_size": 2000},
    model={},
    tuning_seeds=(0, 1), heldout_seeds=(2, 3),
    kinds=(
        _h("sgd", "SGD momentum 0.9 lr 0.05, constant", MLP_SGD),
        _h("sgd_cosine_wd", "SGD momentum 0.9 lr 0.05, weight decay 5e-4, cosine",
           {**MLP_SGD, "weight_decay": 5e-4, "schedule": "cosine"}),
        _h("adam", "Adam lr 1e-3, constant", MLP_ADAM),
        _h("adamw_cosine_wd", "AdamW lr 1e-3, weight decay 0.05, cosine",
           {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "schedule": "cosine"}),
        _h("sgd_plain", "SGD without momentum, lr 0.01, constant",
           {"optimizer": "sgd", "momentum": 0.0, "lr": 0.01}),
        _h("label_smoothing", "Adam lr 1e-3, label smoothing 0.1",
           {**MLP_ADAM, "label_smoothing": 0.1}),
        _h("dropout", "Adam lr 1e-3, dropout 0.5 after each hidden layer",
           {**MLP_ADAM, "dropout": 0.5}),
        _h("augment", "Adam lr 1e-3, random crops (padding 2) and horizontal flips", MLP_ADAM,
           data={"augment": True}),
        _h("long_cosine", "SGD momentum 0.9 lr 0.05, weight decay 5e-4, cosine, 40 epochs",
           {**MLP_SGD, "weight_decay": 5e-4, "schedule": "cosine"}, epochs=40),
        _h("finetune", "fine-tuning the end state of `adam` at Adam lr 1e-4 (0.1x), 8 epochs",
           {"optimizer": "adam", "lr": 1e-4}, finetune="adam", epochs=8),
        _h("adam_classes", "`adam` with class analysis on (replayed with the class rules; "
           "reported apart; seed 0 only)", MLP_ADAM, classes=True, only_seeds=(0,)),
        _f("lr_nan", "SGD momentum 0.9 at lr 20 (diverges to NaN)", {**SGD, "lr": 20.0}),
        _f("lr_dead", "Adam at lr 0.1, 100x the good rate (dead ReLUs, no NaN)",
           {"optimizer": "adam", "lr": 0.1}),
        _f("lr_tiny", "SGD momentum 0.9 at lr 1e-6 (nothing learns)", {**SGD, "lr": 1e-6}),
        _f("labels_40", "Adam lr 1e-3, 40% of the training labels replaced by random ones",
           MLP_ADAM, data={"label_noise": 0.4}),
        _f("labels_100", "Adam lr 1e-3, every training label random", MLP_ADAM,
           data={"label_noise": 1.0}),
        _f("tiny_data", "Adam lr 1e-3 on the first 200 training images, batch 16",
           MLP_ADAM, data={"limit": 200, "batch_size": 16}),
        _f("frozen", "Adam lr 1e-3, the second hidden layer frozen at init", MLP_ADAM,
           frozen=("body.3",)),
        _f("bad_init", "Adam lr 1e-3, every weight 30x its default init", MLP_ADAM,
           init_scale=30.0),
        _f("explode", "SGD momentum 0.9 at lr 0.3: the norms grow ~15x in epoch 1, NaN at "
           "epoch 2", {**SGD, "lr": 0.3}),
        _f("vanishing", "8 sigmoid layers of 512 initialised U(-0.05, 0.05), SGD momentum "
           "0.9 lr 0.05 (vanishing gradients, AUTOTRAINER's buggy stacks)",
           {**MLP_SGD, "depth": 8, "activation": "sigmoid", "init": "uniform",
            "init_range": 0.05}),
        _f("dying_relu", "Adam lr 1e-3, every hidden bias initialised to -1 (every ReLU dead "
           "from the start; at -0.3, 97% dead at init, the net recovers within an epoch)",
           MLP_ADAM, bias=-1.0),
        _f("raw_pixels", "SGD momentum 0.9 lr 0.05 on un-normalised pixels (0-255)", MLP_SGD,
           data={"pixels": "raw"}),
        _f("wd_strong", "SGD momentum 0.9 lr 0.1 with weight decay 0.2 (the spectral norms "
           "settle near 0.8, below their initial ~1; accuracy stalls near 0.55)",
           {**SGD, "lr": 0.1, "weight_decay": 0.2}),
        _f("adam_l2", "Adam lr 1e-3 with coupled L2 weight decay 1.0 (sits at chance)",
           {**MLP_ADAM, "weight_decay": 1.0}),
        _f("dropout_95", "Adam lr 1e-3, dropout 0.95 after each hidden layer",
           {**MLP_ADAM, "dropout": 0.95}),
        *midrun_kinds(MLP_SGD, "`sgd`", 4),
    ),
)

# ---------------------------------------------------------------------- held-out pairs
EXAMPLES_PUBLISHED = {"optimizer": "adadelta", "lr": 1.0, "schedule": "step", "step_size": 1,
                      "gamma": 0.7}
EXAMPLES_CNN = Pair(
    name="examples_cnn",
    what="the PyTorch examples' MNIST CNN (conv32, conv64, max-pool, dropout, fc 9216->128, "
         "fc 128->10) on Fashion-MNIST: a fixed class-stratified 3000-image training subset, "
         "1000 test images as validation, batch 64",
    model_class="ExamplesCNN", dataset="fashion", split=HELD_OUT,
    epochs=8,
    data={"batch_size": 64, "train_size": 3000, "val_size": 1000},
    model={},
    tuning_seeds=(), heldout_seeds=(0, 1),
    source="github.com/pytorch/examples, mnist/main.py",
    kinds=(
        _h("published", "the published recipe: Adadelta lr 1.0, StepLR(1, gamma 0.7)",
           EXAMPLES_PUBLISHED),
        _h("adam", "Adam lr 1e-3, constant", {"optimizer": "adam", "lr": 1e-3,
                                               "schedule": "constant"}),
        _h("sgd_cosine", "SGD momentum 0.9 lr 0.01, cosine",
           {**SGD, "lr": 0.01, "schedule": "cosine"}),
        _h("sgd_plain", "SGD without momentum, lr 0.01, constant",
           {"optimizer": "sgd", "momentum": 0.0, "lr": 0.01, "schedule": "constant"}),
        _h("augment", "the published recipe with random crops (padding 2) and flips",
           EXAMPLES_PUBLISHED, data={"augment": True}),
        _h("finetune", "fine-tuning the end state of `published` at Adadelta lr 0.1 (0.1x), "
           "constant, 6 epochs", {"optimizer": "adadelta", "lr": 0.1, "schedule": "constant"},
           finetune="published", epochs=6),
        _f("lr_nan", "SGD momentum 0.9 at lr 1000 (NaN in epoch 1; at lr 50 the weights reach "
           "1e27 and stay finite)", {**SGD, "lr": 1000.0, "schedule": "constant"}),
        _f("lr_dead", "Adam at lr 0.1 (dead ReLUs)", {"optimizer": "adam", "lr": 0.1,
                                                       "schedule": "constant"}),
        _f("lr_tiny", "Adadelta at lr 1e-4, StepLR 0.7 (nothing learns)",
           {**EXAMPLES_PUBLISHED, "lr": 1e-4}),
        _f("labels_40", "the published recipe, 40% of the training labels random",
           EXAMPLES_PUBLISHED, data={"label_noise": 0.4}),
        _f("labels_100", "the published recipe, every training label random",
           EXAMPLES_PUBLISHED, data={"label_noise": 1.0}),
        _f("tiny_data", "the published recipe on the first 100 training images, batch 16",
           EXAMPLES_PUBLISHED, data={"limit": 100, "batch_size": 16}),
        _f("frozen", "the published recipe, conv2 and fc1 frozen at init", EXAMPLES_PUBLISHED,
           frozen=("conv2", "fc1")),
        _f("bad_init", "the published recipe, every weight 30x its default init",
           EXAMPLES_PUBLISHED, init_scale=30.0),
        _f("explode", "SGD momentum 0.9 at lr 1.0", {**SGD, "lr": 1.0, "schedule": "constant"}),
        _f("dying_relu", "the published recipe, every hidden bias initialised to -1",
           EXAMPLES_PUBLISHED, bias=-1.0),
        _f("raw_pixels", "the published recipe on un-normalised pixels (0-255)",
           EXAMPLES_PUBLISHED, data={"pixels": "raw"}),
        _f("wd_strong", "SGD momentum 0.9 lr 0.01 with weight decay 0.2",
           {**SGD, "lr": 0.01, "weight_decay": 0.2, "schedule": "constant"}),
        _f("adam_l2", "Adam lr 1e-3 with coupled L2 weight decay 1.0",
           {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1.0, "schedule": "constant"}),
        _f("dropout_95", "the published recipe with dropout 0.95 before fc2",
           {**EXAMPLES_PUBLISHED, "dropout2": 0.95}),
        *midrun_kinds({"optimizer": "adadelta", "lr": 1.0, "schedule": "constant"},
                      "Adadelta lr 1.0, constant", 3),
    ),
)

VIT_PUBLISHED: dict[str, Any] = {}
SIMPLE_VIT = Pair(
    name="simple_vit",
    what="lucidrains' SimpleViT (7x7 patches, dim 128, depth 4, 4 heads of 32, MLP 256) on "
         "Fashion-MNIST: a fixed class-stratified 4000-image training subset, 1000 test "
         "images as validation, batch 128",
    model_class="SimpleViT", dataset="fashion", split=HELD_OUT,
    epochs=10,
    data={"batch_size": 128, "train_size": 4000, "val_size": 1000},
    model={},
    tuning_seeds=(), heldout_seeds=(0, 1),
    source="github.com/lucidrains/vit-pytorch, vit_pytorch/simple_vit.py",
    kinds=(
        _h("published", "AdamW lr 1e-3, weight decay 1e-4, one warm-up epoch then cosine"),
        _h("adam", "Adam lr 5e-4, constant", {"optimizer": "adam", "lr": 5e-4,
                                               "weight_decay": 0.0, "schedule": "constant"}),
        _h("sgd_cosine", "SGD momentum 0.9 lr 0.05, cosine",
           {**SGD, "lr": 0.05, "weight_decay": 0.0, "schedule": "cosine"}),
        _h("label_smoothing", "the published recipe with label smoothing 0.1",
           {"label_smoothing": 0.1}),
        _h("augment", "the published recipe with random crops (padding 2) and flips",
           data={"augment": True}),
        _h("finetune", "fine-tuning the end state of `published` at AdamW lr 1e-4 (0.1x), "
           "constant, 6 epochs", {"lr": 1e-4, "schedule": "constant"}, finetune="published",
           epochs=6),
        _f("lr_nan", "SGD momentum 0.9 at lr 50", {**SGD, "lr": 50.0, "weight_decay": 0.0,
                                                    "schedule": "constant"}),
        _f("lr_dead", "AdamW at lr 0.1 (100x) with warm-up and cosine: no NaN, accuracy "
           "~0.4 (LayerNorm keeps it from dying)", {"lr": 0.1}),
        _f("lr_tiny", "AdamW at lr 1e-7 with warm-up and cosine", {"lr": 1e-7}),
        _f("labels_40", "the published recipe, 40% of the training labels random",
           data={"label_noise": 0.4}),
        _f("labels_100", "the published recipe, every training label random",
           data={"label_noise": 1.0}),
        _f("tiny_data", "the published recipe on the first 100 training images, batch 16",
           data={"limit": 100, "batch_size": 16}),
        _f("frozen", "the published recipe, blocks 1 and 2 frozen at init",
           frozen=("blocks.1", "blocks.2")),
        _f("bad_init", "the published recipe, every weight 30x its default init",
           init_scale=30.0),
        _f("raw_pixels", "the published recipe on un-normalised pixels (0-255)",
           data={"pixels": "raw"}),
        _f("wd_strong", "SGD momentum 0.9 lr 0.05 with weight decay 0.2",
           {**SGD, "lr": 0.05, "weight_decay": 0.2, "schedule": "constant"}),
        _f("adam_l2", "Adam lr 5e-4 with coupled L2 weight decay 1.0",
           {"optimizer": "adam", "lr": 5e-4, "weight_decay": 1.0, "schedule": "constant"}),
        *midrun_kinds({"optimizer": "adam", "lr": 5e-4, "weight_decay": 0.0,
                       "schedule": "constant"}, "Adam lr 5e-4, constant", 3),
    ),
)

LSTM_PUBLISHED = {"optimizer": "adam", "lr": 0.01}
ROW_LSTM = Pair(
    name="row_lstm",
    what="the pytorch-tutorial LSTM classifier (2 layers, hidden 128) reading the 28 image "
         "rows of Fashion-MNIST in [0, 1]: a fixed class-stratified 6000-image training "
         "subset, 1000 test images as validation, batch 100",
    model_class="RowLSTM", dataset="fashion", split=HELD_OUT,
    epochs=10,
    data={"batch_size": 100, "train_size": 6000, "val_size": 1000, "pixels": "unit"},
    model={},
    tuning_seeds=(), heldout_seeds=(0, 1),
    source="github.com/yunjey/pytorch-tutorial, tutorials/02-intermediate/"
           "recurrent_neural_network/main.py",
    kinds=(
        _h("published", "the published recipe: Adam lr 0.01, constant", LSTM_PUBLISHED),
        _h("adam_cosine", "Adam lr 2e-3, cosine", {"optimizer": "adam", "lr": 2e-3,
                                                    "schedule": "cosine"}),
        _h("sgd", "SGD momentum 0.9 lr 0.1, constant", {**SGD, "lr": 0.1}),
        _h("finetune", "fine-tuning the end state of `published` at Adam lr 1e-3 (0.1x), "
           "6 epochs", {"optimizer": "adam", "lr": 1e-3}, finetune="published", epochs=6),
        _f("lr_nan", "SGD momentum 0.9 at lr 100: the loss reaches ~1e4 and stays finite (the "
           "gates bound the activations; lr 1e3-1e4 too), chance", {**SGD, "lr": 100.0}),
        _f("lr_dead", "Adam at lr 1.0", {"optimizer": "adam", "lr": 1.0}),
        _f("lr_tiny", "Adam at lr 1e-6", {"optimizer": "adam", "lr": 1e-6}),
        _f("labels_40", "the published recipe, 40% of the training labels random",
           LSTM_PUBLISHED, data={"label_noise": 0.4}),
        _f("labels_100", "the published recipe, every training label random", LSTM_PUBLISHED,
           data={"label_noise": 1.0}),
        _f("tiny_data", "the published recipe on the first 100 training images, batch 16",
           LSTM_PUBLISHED, data={"limit": 100, "batch_size": 16}),
        _f("frozen", "the published recipe, the LSTM frozen at init (only the head trains)",
           LSTM_PUBLISHED, frozen=("lstm",)),
        _f("bad_init", "the published recipe, every weight matrix 30x its default init",
           LSTM_PUBLISHED, init_scale=30.0),
        _f("raw_pixels", "the published recipe on un-normalised pixels (0-255)",
           LSTM_PUBLISHED, data={"pixels": "raw"}),
        _f("wd_strong", "SGD momentum 0.9 lr 0.1 with weight decay 0.2",
           {**SGD, "lr": 0.1, "weight_decay": 0.2}),
        _f("adam_l2", "Adam lr 2e-3 with coupled L2 weight decay 1.0",
           {"optimizer": "adam", "lr": 2e-3, "weight_decay": 1.0}),
        *midrun_kinds({"optimizer": "adam", "lr": 2e-3}, "Adam lr 2e-3, constant", 3),
    ),
)

VAE_PAIR = Pair(
    name="examples_vae",
    what="the PyTorch examples' VAE (784-400-20) on Fashion-MNIST in [0, 1]: a fixed "
         "class-stratified 8000-image training subset, 1000 test images as validation, batch "
         "128; healthy runs only (a false-alarm check of the loss rules: its loss is ~250 "
         "nats per image)",
    model_class="VAE", dataset="fashion", split=HELD_OUT,
    epochs=10,
    data={"batch_size": 128, "train_size": 8000, "val_size": 1000, "pixels": "unit"},
    model={},
    tuning_seeds=(), heldout_seeds=(0, 1),
    chance=None,
    source="github.com/pytorch/examples, vae/main.py",
    kinds=(
        _h("published", "the published recipe: Adam lr 1e-3, constant"),
        _h("adam_cosine", "Adam lr 2e-3, cosine", {"lr": 2e-3, "schedule": "cosine"}),
    ),
)

PAIRS: dict[str, Pair] = {p.name: p for p in (DIGITS, MLP, RESNET, EXAMPLES_CNN, SIMPLE_VIT,
                                                 ROW_LSTM, VAE_PAIR)}
TUNING_PAIRS = tuple(name for name, p in PAIRS.items() if p.split == TUNING)
HELD_OUT_PAIRS = tuple(name for name, p in PAIRS.items() if p.split == HELD_OUT)
