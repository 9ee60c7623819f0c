"""The zoo's own models, none of them the library's example models: a wide MLP (a tuning pair),
and ports of public reference models with their published recipes (held-out architectures):
the PyTorch examples' MNIST CNN, lucidrains' SimpleViT, the pytorch-tutorial LSTM classifier
and the PyTorch examples' VAE.

Every model is a :class:`ZooModule`: cross-entropy (or the model's own criterion) with epoch
means of ``train_loss``/``train_acc``/``val_loss``/``val_acc`` logged as the library's example
classifiers do, and the optimiser and schedule of a recipe given as hyper-parameters.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F

OPTIMIZERS = ("sgd", "adam", "adamw", "adadelta")
SCHEDULES = ("constant", "cosine", "step", "warmup_cosine")


class ZooModule(pl.LightningModule):
    """Training and validation steps and the recipe's optimiser.

    Recipe hyper-parameters: ``optimizer`` (``sgd`` with ``momentum``, ``adam``, ``adamw``,
    ``adadelta``), ``lr``, ``weight_decay`` (coupled L2 for SGD, Adam and Adadelta, decoupled for
    AdamW), ``schedule``: ``constant``; ``cosine`` (to 0 over the trainer's ``max_epochs``,
    stepped per epoch); ``step`` (x ``gamma`` every ``step_size`` epochs, PyTorch's ``StepLR``);
    ``warmup_cosine`` (linear warm-up over ``warmup_epochs`` then cosine to 0, stepped per
    optimiser step); ``label_smoothing`` of the training criterion (also used for
    ``val_loss``: the loss a user logs). Only parameters with ``requires_grad`` are optimised.
    """

    def _recipe(self, lr: float, optimizer: str, momentum: float, weight_decay: float,
                schedule: str, label_smoothing: float, step_size: int, gamma: float,
                warmup_epochs: float) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.recipe = {"lr": lr, "optimizer": optimizer, "momentum": momentum,
                       "weight_decay": weight_decay, "schedule": schedule,
                       "label_smoothing": label_smoothing, "step_size": step_size,
                       "gamma": gamma, "warmup_epochs": warmup_epochs}

    def criterion(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch (mean over it)."""
        return F.cross_entropy(output, target,
                               label_smoothing=float(self.recipe["label_smoothing"]))

    def batch_metrics(self, batch: tuple[torch.Tensor, torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean loss, accuracy or None) of one batch in the module's current mode."""
        x, y = batch
        output = self(x)
        return self.criterion(output, y), (output.argmax(1) == y).float().mean()

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        loss, acc = self.batch_metrics(batch)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True)
        if acc is not None:
            self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx):  # noqa: D102
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):  # noqa: D102
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:  # noqa: D102
        r = self.recipe
        params = [p for p in self.parameters() if p.requires_grad]
        if r["optimizer"] == "sgd":
            optimizer = torch.optim.SGD(params, lr=r["lr"], momentum=r["momentum"],
                                        weight_decay=r["weight_decay"])
        elif r["optimizer"] == "adamw":
            optimizer = torch.optim.AdamW(params, lr=r["lr"], weight_decay=r["weight_decay"])
        elif r["optimizer"] == "adadelta":
            optimizer = torch.optim.Adadelta(params, lr=r["lr"], weight_decay=r["weight_decay"])
        else:
            optimizer = torch.optim.Adam(params, lr=r["lr"], weight_decay=r["weight_decay"])
        epochs = max(1, int(self.trainer.max_epochs or 1))
        if r["schedule"] == "constant":
            return optimizer
        if r["schedule"] == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        if r["schedule"] == "step":
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=r["step_size"],
                                                        gamma=r["gamma"])
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, int(round(r["warmup_epochs"] * steps / epochs)))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, steps - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "step"}}


def recipe_arguments(lr: float = 1e-3, optimizer: str = "adam", momentum: float = 0.9,
                     weight_decay: float = 0.0, schedule: str = "constant",
                     label_smoothing: float = 0.0, step_size: int = 1, gamma: float = 0.7,
                     warmup_epochs: float = 1.0) -> dict[str, Any]:
    """The recipe hyper-parameters with their defaults (see :class:`ZooModule`)."""
    return dict(lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                schedule=schedule, label_smoothing=label_smoothing, step_size=step_size,
                gamma=gamma, warmup_epochs=warmup_epochs)


ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class WideMLP(ZooModule):
    """A wide fully connected classifier on flattened images: ``depth`` hidden layers of
    ``width`` units with ``activation`` (and dropout ``dropout`` after each), then a linear
    head; 784-512-512-10 ReLU by default.

    ``init="uniform"`` draws every weight from U(-``init_range``, ``init_range``) and zeroes
    the biases: the small uniform initialisation of AUTOTRAINER's buggy deep sigmoid stacks
    (Zhang et al., ICSE 2021), under which the gradients vanish; ``init="default"`` keeps
    PyTorch's (Kaiming-uniform with a = sqrt(5)).
    """

    def __init__(self, in_features: int = 784, num_classes: int = 10, width: int = 512,
                 depth: int = 2, activation: str = "relu", dropout: float = 0.0,
                 init: str = "default", init_range: float = 0.05, **recipe: Any) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._recipe(**recipe_arguments(**recipe))
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got "
                             f"{activation!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        features = in_features
        for _ in range(depth):
            layers += [nn.Linear(features, width), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            features = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(features, num_classes)
        if init == "uniform":
            with torch.no_grad():
                for module in self.modules():
                    if isinstance(module, nn.Linear):
                        module.weight.uniform_(-init_range, init_range)
                        module.bias.zero_()
        elif init != "default":
            raise ValueError(f"init must be 'default' or 'uniform', got {init!r}")
        self.example_input_array = torch.zeros(1, 1, 28, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ExamplesCNN(ZooModule):
    """The PyTorch examples' MNIST network (github.com/pytorch/examples, ``mnist/main.py``,
    class ``Net``): conv 1->32 3x3, ReLU, conv 32->64 3x3, ReLU, 2x2 max-pool, dropout 0.25,
    fc 9216->128, ReLU, dropout 0.5, fc 128->10, log-softmax, trained with the negative
    log-likelihood; its recipe: Adadelta lr 1.0, ``StepLR(step_size=1, gamma=0.7)``, batch 64.
    """

    def __init__(self, num_classes: int = 10, dropout1: float = 0.25, dropout2: float = 0.5,
                 **recipe: Any) -> None:
        super().__init__()
        self.save_hyperparameters()
        defaults = {"optimizer": "adadelta", "lr": 1.0, "schedule": "step", "step_size": 1,
                    "gamma": 0.7}
        self._recipe(**recipe_arguments(**{**defaults, **recipe}))
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(dropout1)
        self.dropout2 = nn.Dropout(dropout2)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, num_classes)
        self.example_input_array = torch.zeros(1, 1, 28, 28)

    def criterion(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.recipe["label_smoothing"]:
            return super().criterion(output, target)
        return F.nll_loss(output, target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.dropout1(F.max_pool2d(x, 2))
        x = self.dropout2(F.relu(self.fc1(torch.flatten(x, 1))))
        return F.log_softmax(self.fc2(x), dim=1)


def posemb_sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding of an h x w patch grid, (h w, dim): a quarter of
    the channels each for sin/cos of the x and y positions at frequencies
    ``temperature ** -(i / (dim / 4 - 1))`` (as in SimpleViT)."""
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4 for the sincos embedding, got {dim}")
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    omega = torch.arange(dim // 4) / (dim // 4 - 1)
    omega = 1.0 / (temperature ** omega)
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1).float()


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with a packed bias-free ``to_qkv`` map."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = dim_head * heads
        self.heads, self.scale = heads, dim_head ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class FeedForward(nn.Module):
    """Pre-norm MLP block: LayerNorm, Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SimpleViT(ZooModule):
    """A port of lucidrains' ``SimpleViT`` (github.com/lucidrains/vit-pytorch,
    ``vit_pytorch/simple_vit.py``; Beyer, Zhai & Kolesnikov, "Better plain ViT baselines for
    ImageNet-1k", 2022): patches (``patch`` x ``patch`` pixels, flattened) -> LayerNorm ->
    Linear -> LayerNorm, a fixed 2-D sincos position embedding, ``depth`` pre-norm blocks of
    attention (``heads`` x ``dim_head``) and MLP (``mlp_dim``, GELU) with residuals, a final
    LayerNorm, mean pooling over patches and a linear head. Recipe of the paper (AdamW,
    linear warm-up then cosine decay per step) scaled to Fashion-MNIST: lr 1e-3, weight decay
    1e-4, one warm-up epoch.
    """

    def __init__(self, image_size: int = 28, patch: int = 7, channels: int = 1,
                 num_classes: int = 10, dim: int = 128, depth: int = 4, heads: int = 4,
                 dim_head: int = 32, mlp_dim: int = 256, **recipe: Any) -> None:
        super().__init__()
        self.save_hyperparameters()
        defaults = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4,
                    "schedule": "warmup_cosine", "warmup_epochs": 1.0}
        self._recipe(**recipe_arguments(**{**defaults, **recipe}))
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
        self.patch, self.grid = patch, image_size // patch
        patch_dim = channels * patch * patch
        self.patch_norm = nn.LayerNorm(patch_dim)
        self.to_patch_embedding = nn.Linear(patch_dim, dim)
        self.embed_norm = nn.LayerNorm(dim)
        self.register_buffer("pos_embedding", posemb_sincos_2d(self.grid, self.grid, dim),
                             persistent=False)
        self.blocks = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head), FeedForward(dim, mlp_dim)])
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.linear_head = nn.Linear(dim, num_classes)
        self.example_input_array = torch.zeros(1, channels, image_size, image_size)

    def patches(self, img: torch.Tensor) -> torch.Tensor:
        """b c (h p1) (w p2) -> b (h w) (p1 p2 c)."""
        b, c, _, _ = img.shape
        p, g = self.patch, self.grid
        x = img.reshape(b, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, g * g, p * p * c)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = self.embed_norm(self.to_patch_embedding(self.patch_norm(self.patches(img))))
        x = x + self.pos_embedding.to(x.dtype)
        for attention, feedforward in self.blocks:
            x = attention(x) + x
            x = feedforward(x) + x
        return self.linear_head(self.norm(x).mean(dim=1))


class RowLSTM(ZooModule):
    """A port of the pytorch-tutorial LSTM classifier (github.com/yunjey/pytorch-tutorial,
    ``tutorials/02-intermediate/recurrent_neural_network/main.py``): the 28 image rows read as
    a sequence of 28-pixel inputs by a 2-layer LSTM (hidden 128, zero initial state), the last
    step's output through a linear head; its recipe: Adam lr 0.01, batch 100, inputs in [0, 1]
    (``ToTensor`` only)."""

    def __init__(self, input_size: int = 28, hidden: int = 128, layers: int = 2,
                 num_classes: int = 10, **recipe: Any) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._recipe(**recipe_arguments(**{"optimizer": "adam", "lr": 0.01, **recipe}))
        self.input_size = input_size
        self.lstm = nn.LSTM(input_size, hidden, layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)
        self.example_input_array = torch.zeros(1, 1, 28, input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.reshape(x.shape[0], -1, self.input_size))
        return self.fc(out[:, -1, :])


class VAE(ZooModule):
    """The PyTorch examples' variational auto-encoder (github.com/pytorch/examples,
    ``vae/main.py``): 784 -> 400 (ReLU) -> (mu, logvar) of 20, a reparametrised sample -> 400
    (ReLU) -> 784 (sigmoid); the loss is the summed binary cross-entropy plus the KL divergence
    to N(0, I), per image (the example sums over the batch; here the per-image mean, so that
    ``train_loss`` and ``val_loss`` are comparable epoch means); its recipe: Adam lr 1e-3,
    batch 128, inputs in [0, 1]. The labels of the batch are ignored; no accuracy is logged."""

    def __init__(self, latent: int = 20, hidden: int = 400, **recipe: Any) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._recipe(**recipe_arguments(**{"optimizer": "adam", "lr": 1e-3, **recipe}))
        self.fc1 = nn.Linear(784, hidden)
        self.fc21 = nn.Linear(hidden, latent)
        self.fc22 = nn.Linear(hidden, latent)
        self.fc3 = nn.Linear(latent, hidden)
        self.fc4 = nn.Linear(hidden, 784)
        self.example_input_array = torch.zeros(1, 1, 28, 28)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction, mu and logvar concatenated along dim 1 (784 + 2 latent); z is
        sampled in training and evaluation alike, as in the example."""
        h = F.relu(self.fc1(x.reshape(-1, 784)))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = torch.sigmoid(self.fc4(F.relu(self.fc3(z))))
        return torch.cat([recon, mu, logvar], dim=1)

    def batch_metrics(self, batch: tuple[torch.Tensor, torch.Tensor]
                      ) -> tuple[torch.Tensor, None]:
        """Mean over the batch of BCE(recon, x) summed over pixels + KL(q(z|x) || N(0, I));
        no accuracy."""
        x, _ = batch
        latent = self.hparams.latent
        output = self(x)
        recon, mu, logvar = output[:, :784], output[:, 784:784 + latent], output[:, 784 + latent:]
        bce = F.binary_cross_entropy(recon, x.reshape(-1, 784), reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return (bce + kld) / x.shape[0], None


MODELS: dict[str, type[pl.LightningModule]] = {
    "WideMLP": WideMLP, "ExamplesCNN": ExamplesCNN, "SimpleViT": SimpleViT,
    "RowLSTM": RowLSTM, "VAE": VAE,
}
"""The zoo's own model classes by name."""
