"""Factorization rank: CORCONDIA recovers the planted CP rank of a synthetic non-negative tensor."""

from __future__ import annotations

import math

import pytest
import torch

from svd_callback.classes import bound_tensor, corcondia, factorization_rank


def _planted(rank: int, shape=(20, 15, 12), noise: float = 0.01, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    factors = [torch.rand(n, rank, generator=generator, dtype=torch.float64) for n in shape]
    x = torch.einsum("ir,jr,kr->ijk", *factors)
    return x + noise * x.std() * torch.rand(x.shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("rank", [2, 3])
def test_planted_rank_is_recovered(rank):
    result = factorization_rank(_planted(rank), max_rank=4, n_starts=2, seed=0)
    assert result.reason is None
    assert result.rank == rank
    assert result.corcondia[rank - 1] >= 80
    assert result.corcondia[rank] < 80
    assert result.fits[rank - 1] > 0.99


def test_tensorly_engine_agrees():
    result = factorization_rank(
        _planted(2), max_rank=3, n_starts=1, seed=0, n_iter_max=100, engine="tensorly"
    )
    assert result.rank == 2
    assert result.fits[1] > 0.99


def test_corcondia_of_exact_factors_is_100():
    generator = torch.Generator().manual_seed(0)
    factors = [torch.rand(n, 3, generator=generator, dtype=torch.float64) for n in (6, 5, 4)]
    x = torch.einsum("ir,jr,kr->ijk", *factors)
    assert corcondia(x, factors) == pytest.approx(100.0, abs=1e-6)
    # Permuting/scaling the components leaves it unchanged (G is then a permuted identity of
    # the rescaled factors: absorb the scale and it is superdiagonal again).
    swapped = [f[:, [2, 0, 1]] for f in factors]
    assert corcondia(x, swapped) == pytest.approx(100.0, abs=1e-6)


def test_global_rng_untouched_and_deterministic():
    x = _planted(2, shape=(8, 7, 6))
    state = torch.get_rng_state()
    first = factorization_rank(x, max_rank=3, n_starts=2, seed=5, n_iter_max=50)
    assert torch.equal(state, torch.get_rng_state())
    second = factorization_rank(x, max_rank=3, n_starts=2, seed=5, n_iter_max=50)
    assert torch.equal(first.fits, second.fits)


def test_four_way_activations_are_bounded_and_noted():
    generator = torch.Generator().manual_seed(0)
    activations = torch.rand(100, 40, 8, 8, generator=generator)
    bounded, notes = bound_tensor(activations, max_images=32, max_positions=16, max_elements=4096)
    assert bounded.shape == (32, 8, 16)
    assert len(notes) == 3
    # 2x2 block means of the first 32 images, then the 8 channels of largest energy
    pooled = activations[:32].reshape(32, 40, 4, 2, 4, 2).mean(dim=(3, 5)).flatten(2)
    keep = torch.sort(torch.topk((pooled**2).sum(dim=(0, 2)), 8).indices).values
    torch.testing.assert_close(bounded, pooled[:, keep])


def test_bad_inputs_give_reasons():
    nan = torch.full((4, 3, 5), math.nan)
    assert "non-finite" in factorization_rank(nan).reason
    zero = torch.zeros(4, 3, 5)
    result = factorization_rank(zero)
    assert result.rank is None and "all zero" in result.reason
    assert math.isnan(result.scalars()["factorization_rank"])
    assert "expected activations" in factorization_rank(torch.ones(3, 4)).reason
    with pytest.raises(ValueError):
        factorization_rank(zero, engine="numpy")


def test_rank_cap_and_negative_clipping_noted():
    x = _planted(1, shape=(10, 2, 6))
    x[0, 0, 0] = -1.0
    result = factorization_rank(x, max_rank=4, n_starts=1, n_iter_max=30)
    assert result.fits.shape == (2,)
    assert any("capped" in note for note in result.notes)
    assert any("clipped" in note for note in result.notes)
    assert result.rank is not None and result.rank >= 1
