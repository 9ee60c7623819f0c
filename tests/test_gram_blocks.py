"""The double Gram summed over blocks of the long side equals the Gram of the whole matrix:
``"gram"`` singular values against float64 ``svdvals`` with one block per matrix row/column and
with the default block size (tall, wide, batched, complex; zero rows and columns included)."""

from __future__ import annotations

import pytest
import torch

from svd_callback.spectra import solver


@pytest.mark.parametrize("block", [1, 7, solver.GRAM_BLOCK_ELEMS])
@pytest.mark.parametrize("shape, dtype", [((2, 50, 20), torch.float32),
                                          ((3, 20, 50), torch.float32),
                                          ((1, 33, 33), torch.complex64)])
def test_blockwise_gram_matches_float64_svd(monkeypatch, block, shape, dtype):
    monkeypatch.setattr(solver, "GRAM_BLOCK_ELEMS", block)
    gen = torch.Generator().manual_seed(0)
    mats = torch.randn(shape, generator=gen, dtype=dtype)
    mats[0, 3] = 0  # a dead unit: exact zero singular value, as an SVD gives
    exact = torch.linalg.svdvals(mats.to(torch.complex128 if dtype.is_complex else torch.float64))
    got = solver.batched_svdvals(mats, method="gram").double()
    assert (got - exact).abs().max() <= 1e-6 * exact.max()
