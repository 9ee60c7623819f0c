"""map_batch: batched LAPACK calls split over threads give single-threaded LAPACK's values."""

from __future__ import annotations

import pytest
import torch

from svd_callback import batch_parallel
from svd_callback.batch_parallel import map_batch, parallel_workers


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _batch(b: int, n: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(b * 1000 + n)
    x = torch.randn(b, n, n + 3, generator=g, dtype=dtype)
    return x @ x.mT


@pytest.mark.parametrize("fn", [torch.linalg.eigvalsh, torch.linalg.svdvals])
@pytest.mark.parametrize("b,n", [(5, 160), (3, 200)])
def test_split_equals_single_threaded_lapack_bit_for_bit(two_threads, fn, b, n):
    mats = _batch(b, n)
    assert parallel_workers(mats) == 2
    out = map_batch(fn, mats)
    assert torch.get_num_threads() == 2  # restored
    torch.set_num_threads(1)
    reference = fn(mats)
    assert torch.equal(out, reference)
    # and each matrix alone, in any batch position
    assert all(torch.equal(out[i], fn(mats[i : i + 1])[0]) for i in range(b))


def test_small_or_single_batches_are_not_split(two_threads, monkeypatch):
    calls = []

    def spy(x):
        calls.append(x.shape[0])
        return torch.linalg.eigvalsh(x)

    map_batch(spy, _batch(1, 200))
    map_batch(spy, _batch(40, 8))  # 40 * 8^3 below the work threshold
    assert calls == [1, 40]
    torch.set_num_threads(1)
    map_batch(spy, _batch(6, 160))
    assert calls == [1, 40, 6]
    assert parallel_workers(_batch(4, 160).unsqueeze(0)) == 1  # not a (B, m, n) batch


def test_errors_propagate_and_the_thread_count_is_restored(two_threads):
    def failing(x):
        if x.shape[0] and bool((x[:, 0, 0] < 0).any()):
            raise RuntimeError("did not converge")
        return torch.linalg.eigvalsh(x)

    mats = _batch(6, 160)
    mats[-1, 0, 0] = -1.0  # lands in the part solved on the pool
    with pytest.raises(RuntimeError, match="did not converge"):
        map_batch(failing, mats)
    assert torch.get_num_threads() == 2
    mats = _batch(6, 160)
    mats[0, 0, 0] = -1.0  # lands in the part solved on the calling thread
    with pytest.raises(RuntimeError, match="did not converge"):
        map_batch(failing, mats)
    assert torch.get_num_threads() == 2


def test_pool_is_dropped_in_a_forked_child(two_threads):
    map_batch(torch.linalg.eigvalsh, _batch(4, 160))
    assert batch_parallel._pool is not None
    batch_parallel._reset_after_fork()
    assert batch_parallel._pool is None
    out = map_batch(torch.linalg.eigvalsh, _batch(4, 160))  # a fresh pool is made
    assert out.shape == (4, 160) and batch_parallel._pool is not None


def test_grad_mode_is_carried_into_the_threads(two_threads):
    mats = _batch(4, 160).requires_grad_()
    with torch.no_grad():
        assert not map_batch(torch.linalg.eigvalsh, mats).requires_grad
    out = map_batch(torch.linalg.eigvalsh, mats)
    assert out.requires_grad
    out.sum().backward()  # d(sum of eigenvalues)/dA = I (symmetric input)
    eye = torch.eye(160, dtype=mats.dtype).expand(4, 160, 160)
    torch.testing.assert_close(mats.grad, eye)
