"""Tests of svd_callback.spectra against independent oracles.

Oracles: the dense matrix of the circular conv (built by applying torch's conv / conv_transpose
to every basis vector, decomposed in float64), closed-form spectra (1x1 convs, identity kernels,
Parseval), norm inequalities that are theorems, and the layer's own forward pass.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from svd_callback.spectra import (
    GRAM32_NOISE,
    NonFiniteWeightError,
    SpectralError,
    batched_svdvals,
    operator_svdvals,
    slice_matrices,
    slice_svdvals,
    stacked_operator_svdvals,
    stacked_slice_svdvals,
    stacked_unfold_svd,
    stacked_unfold_svdvals,
    unfold_matrix,
    unfold_svd,
    unfold_svdvals,
)

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
TOL = 1e-4  # relative to sigma_max


# --------------------------------------------------------------------------------------------
# dense oracle


def _circular_extend(x: torch.Tensor, extra: tuple[int, ...]) -> torch.Tensor:
    """Append ``extra[i]`` wrapped entries along spatial axis i (circular padding, right side).

    ``F.pad(mode="circular")`` needs pad <= size, so longer pads tile the input first.
    """
    for axis, e in enumerate(extra):
        dim = 2 + axis
        n = x.shape[dim]
        if e <= n:
            pad = [0, 0] * (x.dim() - 2)
            pad[2 * (x.dim() - 3 - axis) + 1] = e  # F.pad lists the last axis first
            x = F.pad(x, pad, mode="circular")
        else:
            reps = [1] * x.dim()
            reps[dim] = math.ceil((n + e) / n)
            x = x.repeat(*reps).narrow(dim, 0, n + e)
    return x


def _circular_fold(y: torch.Tensor, n: tuple[int, ...]) -> torch.Tensor:
    """Sum a (too long or too short) spatial output modulo n along every spatial axis."""
    for axis, ni in enumerate(n):
        dim = 2 + axis
        length = y.shape[dim]
        total = math.ceil(length / ni) * ni
        pad = [0, 0] * (y.dim() - 2)
        pad[2 * (y.dim() - 3 - axis) + 1] = total - length
        y = F.pad(y, pad)
        shape = list(y.shape)
        shape[dim : dim + 1] = [total // ni, ni]
        y = y.reshape(shape).sum(dim)
    return y


def dense_conv_svdvals(weight, n, stride, dilation, groups) -> torch.Tensor:
    """Singular values (float64) of the circular conv, built column by column."""
    w = weight.double()
    dims = w.dim() - 2
    c_in = w.shape[1] * groups
    size = math.prod(n)
    basis = torch.eye(c_in * size, dtype=torch.float64).reshape(-1, c_in, *n)
    extra = tuple(d * (k - 1) for d, k in zip(dilation, w.shape[2:], strict=True))
    y = CONV[dims](
        _circular_extend(basis, extra), w, stride=stride, dilation=dilation, groups=groups
    )
    assert tuple(y.shape[2:]) == tuple(ni // si for ni, si in zip(n, stride, strict=True))
    return torch.linalg.svdvals(y.reshape(c_in * size, -1).T)


def dense_conv_transpose_svdvals(weight, n, stride, dilation, groups) -> torch.Tensor:
    """Singular values (float64) of the circular transposed conv with output size n."""
    w = weight.double()
    dims = w.dim() - 2
    c_in = w.shape[0]
    n_in = tuple(ni // si for ni, si in zip(n, stride, strict=True))
    size = math.prod(n_in)
    basis = torch.eye(c_in * size, dtype=torch.float64).reshape(-1, c_in, *n_in)
    y = CONV_T[dims](basis, w, stride=stride, dilation=dilation, groups=groups)
    y = _circular_fold(y, n)
    return torch.linalg.svdvals(y.reshape(c_in * size, -1).T)


def assert_spectra_close(ours: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    assert torch.all(ours[:-1] >= ours[1:]), "not descending"
    scale = max(float(ref[0]), 1e-30)
    err = float((ours.double() - ref).abs().max()) / scale
    assert err <= tol, f"max error {err:.2e} relative to sigma_max"


def _as_tuple(v, dims):
    return (v,) * dims if isinstance(v, int) else tuple(v)


def check_operator(weight, n, stride=1, dilation=1, groups=1, device="cpu"):
    dims = weight.dim() - 2
    n, stride, dilation = (_as_tuple(v, dims) for v in (n, stride, dilation))
    ref = dense_conv_svdvals(weight, n, stride, dilation, groups)
    ours = operator_svdvals(weight.to(device), n, stride, dilation, groups)
    assert ours.dtype == torch.float32 and ours.device.type == device
    ours = ours.cpu()
    assert_spectra_close(ours, ref)


def check_operator_transposed(weight, n, stride=1, dilation=1, groups=1, device="cpu"):
    dims = weight.dim() - 2
    n, stride, dilation = (_as_tuple(v, dims) for v in (n, stride, dilation))
    ref = dense_conv_transpose_svdvals(weight, n, stride, dilation, groups)
    ours = operator_svdvals(weight.to(device), n, stride, dilation, groups).cpu()
    assert_spectra_close(ours, ref)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# operator mode against the dense operator


@pytest.mark.parametrize(
    ("shape", "n", "stride", "dilation", "groups"),
    [
        ((4, 3, 3, 3), 6, 1, 1, 1),  # plain 3x3
        ((5, 3, 3, 2), (6, 4), 2, 1, 1),  # non-square kernel and input, stride 2
        ((6, 2, 3, 3), (4, 6), 1, 2, 3),  # dilation 2, groups 3
        ((6, 1, 3, 3), 4, 2, 1, 6),  # depthwise, stride 2
        ((4, 3, 1, 1), 4, 2, 1, 1),  # 1x1 downsample (polyphase with empty phases)
        ((3, 2, 7, 7), 8, 2, 1, 1),  # stem-like 7x7 stride 2
        ((4, 3, 5), 3, 1, 2, 1),  # 1-d, dilated kernel (9) longer than n (3): wraps
        ((4, 3, 4), 6, (3,), 1, 1),  # 1-d stride 3
        ((2, 3, 3, 3), 2, 1, 1, 1),  # kernel longer than the input: wraps
        ((4, 2, 3, 2, 2), (4, 2, 2), (2, 1, 2), 1, 2),  # 3-d, mixed stride, groups
        ((3, 2, 2, 2, 3), (3, 3, 4), 1, (1, 2, 1), 1),  # 3-d, dilation on one axis
    ],
)
def test_operator_matches_dense(shape, n, stride, dilation, groups, device):
    weight = torch.randn(shape, generator=_gen(sum(shape)))
    check_operator(weight, n, stride, dilation, groups, device)


@pytest.mark.parametrize(
    ("shape", "n", "stride", "dilation", "groups"),
    [
        ((3, 4, 3, 3), 4, 1, 1, 1),  # ConvTranspose2d(3 -> 4)
        ((4, 3, 3, 2), (6, 4), 2, 1, 1),  # upsampling x2, non-square
        ((4, 2, 3, 3), 6, 2, 1, 2),  # grouped (in 4, out 4, groups 2)
        ((3, 2, 4), 8, 2, 2, 1),  # 1-d, dilated
        ((2, 3, 1, 1), 4, 2, 1, 1),  # 1x1 stride 2: output has uncovered positions
        ((2, 2, 2, 2, 2), (4, 2, 4), (2, 1, 2), 1, 1),  # 3-d
    ],
)
def test_operator_transposed_matches_dense(shape, n, stride, dilation, groups, device):
    weight = torch.randn(shape, generator=_gen(sum(shape) + 1))
    check_operator_transposed(weight, n, stride, dilation, groups, device)


@st.composite
def conv_cases(draw):
    dims = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    dg = draw(st.integers(1, 3))
    cg = draw(st.integers(1, 3))
    max_side = {1: 8, 2: 5, 3: 3}[dims]
    kernel = tuple(draw(st.integers(1, 4 if dims < 3 else 2)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    n = tuple(s * draw(st.integers(1, max(1, max_side // s))) for s in stride)
    transposed = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return dims, groups, dg, cg, kernel, stride, dilation, n, transposed, seed


@settings(max_examples=25, deadline=None)
@given(conv_cases())
def test_operator_matches_dense_random(case):
    dims, groups, dg, cg, kernel, stride, dilation, n, transposed, seed = case
    shape = (groups * dg, cg, *kernel)
    weight = torch.randn(shape, generator=_gen(seed))
    if transposed:
        check_operator_transposed(weight, n, stride, dilation, groups)
    else:
        check_operator(weight, n, stride, dilation, groups)


def test_operator_rejects_indivisible_input():
    with pytest.raises(ValueError, match="not divisible by stride"):
        operator_svdvals(torch.randn(2, 2, 3, 3), 5, stride=2)
    with pytest.raises(ValueError, match="does not match"):
        operator_svdvals(torch.randn(2, 2, 3, 3), (4, 4, 4))


def test_operator_chunking_does_not_change_the_result():
    weight = torch.randn(6, 4, 3, 3, generator=_gen(3))
    whole = operator_svdvals(weight, 8, stride=2, groups=2)
    tiny = operator_svdvals(weight, 8, stride=2, groups=2, max_batch_elems=50)
    torch.testing.assert_close(whole, tiny)


def test_operator_linear_weight_is_its_matrix(device):
    weight = torch.randn(7, 4, generator=_gen(4))
    ref = torch.linalg.svdvals(weight.double())
    assert_spectra_close(operator_svdvals(weight.to(device), ()).cpu(), ref)


# --------------------------------------------------------------------------------------------
# closed forms and theorems


def test_one_by_one_conv_is_its_matrix_in_every_mode(device):
    mat = torch.randn(5, 3, generator=_gen(5))
    weight = mat[:, :, None, None].to(device)
    ref = torch.linalg.svdvals(mat.double())
    assert_spectra_close(unfold_svdvals(weight).cpu(), ref)
    assert_spectra_close(slice_svdvals(weight).cpu(), ref)
    # the operator on an n x n input is the matrix acting on every pixel: each value n^2 times
    ours = operator_svdvals(weight, (3, 4)).cpu()
    assert_spectra_close(ours, ref.repeat_interleave(12))


def test_diagonal_conv1x1_equals_linear():
    """DeepDataProfiler's sanity test: conv1x1 and linear with weight diag(1..10)."""
    diag = torch.diag(torch.arange(1.0, 11.0))
    conv = torch.nn.Conv2d(10, 10, 1, bias=False)
    linear = torch.nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        conv.weight.copy_(diag[:, :, None, None])
        linear.weight.copy_(diag)
    expected = torch.arange(10.0, 0.0, -1.0)
    for fn in (unfold_svdvals, slice_svdvals):
        torch.testing.assert_close(fn(conv.weight), expected)
        torch.testing.assert_close(fn(linear.weight), expected)
    torch.testing.assert_close(operator_svdvals(conv.weight, 1), expected)
    torch.testing.assert_close(operator_svdvals(linear.weight, ()), expected)
    torch.testing.assert_close(unfold_svd(conv.weight)[1][0], unfold_svd(linear.weight)[1][0])


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_identity_kernel_has_unit_spectrum(dims, device):
    channels, k = 3, 3
    weight = torch.zeros(channels, channels, *(k,) * dims)
    weight[(torch.arange(channels), torch.arange(channels), *((k // 2,) * dims))] = 1.0
    weight = weight.to(device)
    n = 4
    ops = operator_svdvals(weight, n).cpu()
    assert ops.shape == (channels * n**dims,)
    torch.testing.assert_close(ops, torch.ones_like(ops))
    torch.testing.assert_close(unfold_svdvals(weight).cpu(), torch.ones(channels))
    sl = slice_svdvals(weight).cpu()
    assert sl.shape == (k**dims * channels,)
    torch.testing.assert_close(sl[:channels], torch.ones(channels))
    torch.testing.assert_close(sl[channels:], torch.zeros(sl.numel() - channels))


def test_research_example_mode_ordering():
    """A random 4x3x3x3 kernel: the three modes differ (docs/methods.md#spectra).

    Theorems (no tap collides with another modulo n):
    slices <= unfold (each slice is a column block of the im2col matrix), and
    unfold <= operator <= sqrt(K) * unfold (the operator's frequency blocks average to
    Wbar Wbar^T, and P(f) = Wbar B(f) with ||B(f)|| <= sqrt(K)).
    """
    weight = torch.randn(4, 3, 3, 3, generator=_gen(0))
    op, unf, sl = (
        operator_svdvals(weight, 8)[0],
        unfold_svdvals(weight)[0],
        slice_svdvals(weight)[0],
    )
    assert sl < unf < op <= 3 * unf
    assert float(op) / float(sl) > 1.5  # materially different numbers


@settings(max_examples=20, deadline=None)
@given(conv_cases())
def test_norm_inequalities_and_parseval(case):
    dims, groups, dg, cg, kernel, stride, dilation, n, _, seed = case
    # keep taps distinct modulo n (the theorems' hypothesis)
    n = tuple(max(ni, (k - 1) * d + 1) for ni, k, d in zip(n, kernel, dilation, strict=True))
    n = tuple(math.ceil(ni / s) * s for ni, s in zip(n, stride, strict=True))
    weight = torch.randn(groups * dg, cg, *kernel, generator=_gen(seed)).double()
    op = operator_svdvals(weight, n, stride, dilation, groups)
    unf = unfold_svdvals(weight, groups)
    sl = slice_svdvals(weight)
    eps = 1e-9 * float(op[0])
    k = math.prod(kernel)
    assert float(unf[0]) <= float(op[0]) + eps
    assert float(op[0]) <= math.sqrt(k) * float(unf[0]) + eps
    # slices ignore groups; the slice bound holds against the ungrouped im2col matrix
    assert float(sl[0]) <= float(unfold_svdvals(weight)[0]) + eps
    # Parseval: every mode keeps the Frobenius norm (the operator once per output position)
    fro2 = float(weight.pow(2).sum())
    n_out = math.prod(ni // si for ni, si in zip(n, stride, strict=True))
    assert math.isclose(float(unf.pow(2).sum()), fro2, rel_tol=1e-9)
    assert math.isclose(float(sl.pow(2).sum()), fro2, rel_tol=1e-9)
    assert math.isclose(float(op.pow(2).sum()), n_out * fro2, rel_tol=1e-9)


# --------------------------------------------------------------------------------------------
# unfold mode


@pytest.mark.parametrize(
    ("shape", "groups"),
    [
        ((6, 4), 1),
        ((8, 3, 3, 3), 1),
        ((8, 2, 3, 2), 4),
        ((6, 1, 3, 3), 6),
        ((4, 3, 5), 2),
        ((4, 2, 2, 3, 2), 2),
        ((7, 20, 1, 1), 1),
    ],
)
def test_unfold_svd_reconstructs_each_group(shape, groups, device):
    weight = torch.randn(shape, generator=_gen(sum(shape)))
    u, s, vh = (t.cpu() for t in unfold_svd(weight.to(device), groups))
    g, dg = groups, shape[0] // groups
    cols = math.prod(shape[1:])
    r = min(dg, cols)
    assert u.shape == (g, dg, r) and s.shape == (g, r) and vh.shape == (g, r, cols)
    rebuilt = (u * s[:, None, :]) @ vh
    torch.testing.assert_close(rebuilt.reshape(shape), weight, atol=1e-5, rtol=1e-5)
    # group j holds output channels j*dg .. (j+1)*dg - 1 and nothing else
    for j in range(g):
        block = weight[j * dg : (j + 1) * dg].reshape(dg, -1).double()
        torch.testing.assert_close(s[j].double(), torch.linalg.svdvals(block), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unfold_matrix(weight, groups).reshape(shape), weight)
    # pooled values: all groups, descending
    pooled = unfold_svdvals(weight.to(device), groups).cpu()
    torch.testing.assert_close(
        pooled, s.flatten().sort(descending=True).values, atol=1e-5, rtol=1e-5
    )


def test_unfold_svd_sign_convention():
    weight = torch.randn(8, 4, 3, 3, generator=_gen(11))
    for w in (weight, -weight):
        u, s, vh = unfold_svd(w, groups=2)
        idx = vh.abs().argmax(-1, keepdim=True)
        assert torch.all(vh.gather(-1, idx) > 0)
    # flipping the weight's sign flips exactly u, so v is a property of the weight's row space
    _, _, vh_pos = unfold_svd(weight, groups=2)
    _, _, vh_neg = unfold_svd(-weight, groups=2)
    torch.testing.assert_close(vh_pos, vh_neg, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("groups", "stride", "padding", "dilation"), [(1, 2, 1, 1), (2, 1, 2, 2)])
def test_svd_neuron_signal_identity(groups, stride, padding, dilation):
    """u_i^T (y_p - b) = sigma_i <v_i, x_p> for every position p and SVD-neuron i."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(
        4, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=True
    )
    x = torch.randn(2, 4, 9, 8, generator=_gen(12))
    with torch.no_grad():
        y = conv(x)
    u, s, vh = unfold_svd(conv.weight, groups)
    patches = F.unfold(x, 3, dilation=dilation, padding=padding, stride=stride)  # (B, 4*9, P)
    centred = (y - conv.bias[:, None, None]).detach().flatten(2)  # (B, 6, P)
    dg, cg = 6 // groups, 4 // groups
    for j in range(groups):
        x_p = patches[:, j * cg * 9 : (j + 1) * cg * 9]
        lhs = u[j].T @ centred[:, j * dg : (j + 1) * dg]
        rhs = s[j][:, None] * (vh[j] @ x_p)
        torch.testing.assert_close(lhs, rhs, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# slices mode


def test_slice_matrices_are_the_kernel_positions(device):
    weight = torch.randn(3, 5, 2, 3, generator=_gen(13))
    mats = slice_matrices(weight.to(device)).cpu()
    assert mats.shape == (6, 5, 3)  # transposed so N >= M
    for q, (i, j) in enumerate((i, j) for i in range(2) for j in range(3)):
        torch.testing.assert_close(mats[q], weight[:, :, i, j].T)
    ref = torch.cat([torch.linalg.svdvals(m.double()) for m in mats]).sort(descending=True)
    assert_spectra_close(slice_svdvals(weight.to(device)).cpu(), ref.values)


# --------------------------------------------------------------------------------------------
# dtypes, devices, stacking


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_upcast(dtype):
    weight = torch.randn(6, 4, 3, 3, generator=_gen(14)).to(dtype)
    ref_w = weight.float()
    for fn, args in ((unfold_svdvals, ()), (slice_svdvals, ()), (operator_svdvals, (4,))):
        out = fn(weight, *args)
        assert out.dtype == torch.float32 and out.device == weight.device
        torch.testing.assert_close(out, fn(ref_w, *args))
    u, s, vh = unfold_svd(weight)
    assert u.dtype == s.dtype == vh.dtype == torch.float32
    assert batched_svdvals(weight.reshape(6, 4, 9)).dtype == torch.float32


def test_stacked_variants_equal_per_layer_calls(device):
    weights = torch.randn(3, 8, 2, 3, 3, generator=_gen(15)).to(device)
    stacked = stacked_unfold_svdvals(weights, groups=2)
    assert stacked.shape == (3, 2 * 4)
    for layer, w in enumerate(weights):
        torch.testing.assert_close(stacked[layer], unfold_svdvals(w, groups=2))
        torch.testing.assert_close(stacked_slice_svdvals(weights)[layer], slice_svdvals(w))
        torch.testing.assert_close(
            stacked_operator_svdvals(weights, 6, stride=2, groups=2)[layer],
            operator_svdvals(w, 6, stride=2, groups=2),
        )
    u, s, vh = stacked_unfold_svd(weights, groups=2)
    u1, s1, vh1 = unfold_svd(weights[1], groups=2)
    torch.testing.assert_close((u[1], s[1], vh[1]), (u1, s1, vh1))


# --------------------------------------------------------------------------------------------
# batched_svdvals


def _matrices_with_spectrum(batch, m, n, spectrum, complex_=False, seed=0):
    g = _gen(seed)
    dtype = torch.complex128 if complex_ else torch.float64
    qa, _ = torch.linalg.qr(torch.randn(batch, m, m, generator=g, dtype=dtype))
    qb, _ = torch.linalg.qr(torch.randn(batch, n, n, generator=g, dtype=dtype))
    r = min(m, n)
    return (qa[:, :, :r] * spectrum[:r].to(dtype)) @ qb[:, :, :r].mH


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize(("m", "n"), [(12, 40), (40, 12), (20, 20)])
def test_batched_svdvals_methods_agree_with_float64(m, n, complex_, device):
    r = min(m, n)
    spectrum = torch.logspace(0, -7, r, dtype=torch.float64)  # condition number 1e7
    mats = _matrices_with_spectrum(3, m, n, spectrum, complex_, seed=m + n)
    single = mats.to(torch.complex64 if complex_ else torch.float32)
    ref = torch.linalg.svdvals(single.to(mats.dtype))  # exact values of the rounded input
    # float32 SVD is backward stable: error ~ eps32 * sigma_max, within 30 eps32 (devices.md)
    bound = {"svd": 5e-7 if device == "cpu" else 30 * 1.2e-7, "gram": 5e-7}
    bound["auto"] = bound["gram" if device == "cpu" and not complex_ else "svd"]
    for method in ("svd", "gram", "auto"):
        out = batched_svdvals(single.to(device), method=method).cpu()
        assert out.shape == (3, r) and out.dtype == torch.float32
        err = float((out.double() - ref).abs().max())
        assert err <= bound[method], (method, err)  # relative to sigma_max = 1
    chunked = batched_svdvals(single.to(device), method="gram", chunk_elems=1)
    torch.testing.assert_close(chunked, batched_svdvals(single.to(device), method="gram"))


@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize(("m", "n"), [(12, 40), (40, 12), (64, 64)])
def test_gram32_error_is_bounded_in_eigenvalues_and_small_values_are_not_zero(m, n, complex_):
    """float32 Gram: |lambda - lambda_true| <= GRAM32_NOISE eps32 lambda_max; values below the
    noise stay positive (generic matrices are full rank)."""
    r = min(m, n)
    spectrum = torch.logspace(0, -5, r, dtype=torch.float64)
    mats = _matrices_with_spectrum(3, m, n, spectrum, complex_, seed=m * n)
    single = mats.to(torch.complex64 if complex_ else torch.float32)
    ref = torch.linalg.svdvals(single.to(mats.dtype))
    out = batched_svdvals(single, method="gram32")
    assert out.shape == (3, r) and out.dtype == torch.float32
    eig_err = float((out.double() ** 2 - ref**2).abs().max())
    assert eig_err <= GRAM32_NOISE * torch.finfo(torch.float32).eps, eig_err
    assert bool((out > 0).all())


@pytest.mark.parametrize("method", ["gram", "gram32", "auto"])
def test_gram_paths_give_exact_zeros_for_zero_rows_and_columns(method, device):
    if method == "auto" and device != "cpu":
        pytest.skip("auto is svd on accelerators: no exact-zero guarantee")
    g = _gen(21)
    mats = torch.randn(4, 30, 50, generator=g)
    mats[1, [2, 9]] = 0  # two dead rows: rank 28
    mats[2, :, 3] = 0  # one zero column of the long side: still rank 30
    mats[3, :, :25] = 0  # half the columns: rank 25
    mats[3, 7] = 0  # and a row: rank 25 still (min(29, 25))
    out = batched_svdvals(mats.to(device), method=method).cpu()
    ref = torch.linalg.svdvals(mats.double())
    assert (out == 0).sum(-1).tolist() == [0, 2, 0, 5]
    torch.testing.assert_close(out.double(), ref, atol=2e-5 * float(ref.max()), rtol=0)
    everything_zero = batched_svdvals(torch.zeros(2, 3, 4, device=device), method=method)
    assert everything_zero.shape == (2, 3) and not bool(everything_zero.any())


def test_batched_svdvals_keeps_leading_dims_and_empty_input():
    mats = torch.randn(2, 3, 4, 5, generator=_gen(16))
    assert batched_svdvals(mats).shape == (2, 3, 4)
    assert batched_svdvals(torch.zeros(0, 3, 2)).shape == (0, 2)
    with pytest.raises(ValueError, match="method"):
        batched_svdvals(mats, method="qr")


# --------------------------------------------------------------------------------------------
# errors


def test_non_finite_weights_raise_a_clear_error(device):
    weight = torch.randn(4, 3, 3, 3)
    weight[1, 2, 0, 0] = float("nan")
    weight = weight.to(device)
    for call in (
        lambda: unfold_svdvals(weight),
        lambda: unfold_svd(weight),
        lambda: slice_svdvals(weight),
        lambda: operator_svdvals(weight, 4),
        lambda: batched_svdvals(weight.flatten(2)),
    ):
        with pytest.raises(NonFiniteWeightError, match="NaN/Inf"):
            call()
    stack = torch.randn(4, 4, 3, 3, 3)
    stack[2, 0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN/Inf") as info:
        stacked_unfold_svdvals(stack.to(device))
    assert info.value.layers == [2]


def test_huge_finite_weights_are_not_mistaken_for_non_finite():
    weight = torch.full((4, 3, 3, 3), 1e37)  # finite entries whose sum overflows float32
    weight[0] *= -1
    out = unfold_svdvals(weight)
    assert torch.isfinite(weight.sum()).logical_not()
    assert torch.isfinite(out).all() and out[0] > 1e37


def test_bad_shapes_raise_value_error():
    with pytest.raises(ValueError, match="groups"):
        unfold_svdvals(torch.randn(6, 2, 3, 3), groups=4)
    with pytest.raises(ValueError, match="shape"):
        unfold_svdvals(torch.randn(5))


def test_solver_failure_is_retried_then_reported(monkeypatch):
    real = torch.linalg.svdvals
    calls = []

    def fail_in_single(x):
        calls.append(x.dtype)
        if x.dtype in (torch.float32, torch.complex64):
            raise torch.linalg.LinAlgError("did not converge")
        return real(x)

    monkeypatch.setattr(torch.linalg, "svdvals", fail_in_single)
    weight = torch.randn(4, 3, 3, 3, generator=_gen(17))
    out = unfold_svdvals(weight, method="svd")
    assert calls == [torch.float32, torch.float64]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, real(weight.reshape(4, -1)))

    def always_fail(x):
        raise torch.linalg.LinAlgError("did not converge")

    monkeypatch.setattr(torch.linalg, "svdvals", always_fail)
    with pytest.raises(SpectralError, match="4x3x3x3"):
        operator_svdvals(weight, 4, method="svd")
    with pytest.raises(RuntimeError, match="failed to converge"):
        slice_svdvals(weight, method="svd")
