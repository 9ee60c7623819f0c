"""Error of the float32 solver paths against float64 SVD, on random and trained matrices (CPU).

The accelerators run the same IEEE float32 arithmetic, so the CPU error of ``"svd"`` on float32
input (what ``svd_method="auto"`` picks on CUDA) is the error to expect there, up to the
solver's algorithm (cuSOLVER's ``gesvdj``/``gesvd`` vs LAPACK's ``gesdd``: both backward stable,
error ~ eps32 * sigma_max).

Matrices: Gaussian ``(m, n)`` for a few shapes; the two linear layers of an MLP 64-256-10 trained
for 30 epochs on scikit-learn's digits (SGD, lr 0.1, seed 0). Reported per path: the largest
``|sigma - sigma_64| / sigma_max`` (absolute error in units of the spectral norm) and the largest
relative error of sigma_i over the values above 1e-3 sigma_max.

    flock /tmp/bench.lock env OMP_NUM_THREADS=1 .venv/bin/python \
        experiments/benchmarks/bench_solver_accuracy.py
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from svd_callback.spectra.solver import batched_svdvals

PATHS = ("svd", "gram", "gram32")


def trained_weights(epochs: int = 30) -> dict[str, torch.Tensor]:
    """The weights of a 64-256-10 MLP trained on digits (full batch)."""
    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(epochs):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return {"mlp.0 (256x64)": model[0].weight.detach(), "mlp.2 (10x256)": model[2].weight.detach()}


def errors(weight: torch.Tensor) -> dict[str, tuple[float, float]]:
    """Per path: (max abs error / sigma_max, max relative error over sigma > 1e-3 sigma_max)."""
    exact = torch.linalg.svdvals(weight.double())
    top = exact[0]
    keep = exact > 1e-3 * top
    out = {}
    for path in PATHS:
        got = batched_svdvals(weight.float(), method=path).double()
        diff = (got - exact).abs()
        out[path] = (float(diff.max() / top), float((diff[keep] / exact[keep]).max()))
    return out


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    cases = {f"gauss {m}x{n}": torch.randn(m, n, generator=gen) / n**0.5
             for m, n in [(512, 512), (2048, 512), (1024, 1024)]}
    cases.update(trained_weights())
    print(f"{'matrix':<16} " + " ".join(f"{p + ' abs':>12} {p + ' rel':>12}" for p in PATHS))
    for name, weight in cases.items():
        row = errors(weight)
        print(f"{name:<16} " + " ".join(f"{row[p][0]:>12.2e} {row[p][1]:>12.2e}" for p in PATHS))


if __name__ == "__main__":
    main()
