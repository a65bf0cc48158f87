"""The C++ CPU kernels (csrc/cpu): area_attention_fwd_cxx / area_attention_bwd_cxx / pe_add_cxx, directly and
through the public ops with backend="cpp", against the float64 oracle with the naive same-dtype computation as
the yardstick (tests/tolerances.py). Shapes are awkward on purpose: tokens per area not a multiple of the
24-query block or the 4-key panel (1, 9, 37, 49, 300), areas cutting rows, more than one 512-key chunk (online
softmax rescaling), batch 3, every input layout the modules produce (interleaved qkv view, turbo q/k halves and
separate v, channels_last conv outputs, non-contiguous batch slices)."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import yolov12_fast
from yolov12_fast import _backends, reference
from tolerances import assert_close_to_oracle

_ok, _why = _backends.can_use_cpp()
pytestmark = pytest.mark.skipif(not _ok, reason=f"C++ CPU kernels unavailable: {_why}")

ops = torch.ops.yolov12_fast


def make_sources(layout, B, heads, D, H, W, dtype):
    """The conv outputs q, k, v are read from, as the modules produce them."""
    C = heads * D
    if layout == "interleaved":  # ultralytics / v1.0 qkv conv output: per head [q | k | v], token stride 1
        return [torch.randn(B, 3 * C, H, W, dtype=dtype)]
    if layout == "turbo":  # one (B, 2C, H, W) conv output holding all q then all k, and a separate v conv
        return [torch.randn(B, 2 * C, H, W, dtype=dtype), torch.randn(B, C, H, W, dtype=dtype)]
    if layout == "channels_last":  # channels_last conv output: token stride 3C, head-dim stride 1
        return [torch.randn(B, 3 * C, H, W, dtype=dtype).to(memory_format=torch.channels_last)]
    if layout == "batch_slice":  # every other image of a larger batch, with a storage offset (see qkv_views)
        return [torch.randn(2 * B + 1, 3 * C, H, W, dtype=dtype)]
    raise ValueError(layout)


def qkv_views(layout, sources, heads, D):
    """q, k, v (B, heads, D, N) as views of the sources: never copies."""
    if layout == "turbo":
        qk, v = sources
        B, _, H, W = v.shape
        q, k = qk.view(B, 2, heads, D, H * W).unbind(1)
        return q, k, v.view(B, heads, D, H * W)
    src = sources[0][1::2] if layout == "batch_slice" else sources[0]
    B, _, H, W = src.shape
    return src.view(B, heads, 3 * D, H * W).split(D, dim=2)


def make_qkv(layout, B, heads, D, H, W, dtype):
    return qkv_views(layout, make_sources(layout, B, heads, D, H, W, dtype), heads, D)


def make_residual(B, heads, D, H, W, dtype):
    """A residual in yet another layout: a channels_last (B, C, H, W) tensor viewed as (B, heads, D, N)."""
    return torch.randn(B, heads * D, H, W, dtype=dtype).to(memory_format=torch.channels_last).view(B, heads, D, H * W)


def f64(t):
    return None if t is None else t.detach().double()


CASES = [  # (layout, B, heads, D, H, W, area)
    ("interleaved", 3, 2, 32, 6, 10, 4),     # 15 tokens per area = 1.5 rows: areas cut rows; batch 3
    ("interleaved", 1, 1, 32, 30, 40, 4),    # 300 tokens per area (480x640 P4), 7.5 rows
    ("turbo", 2, 2, 16, 7, 7, 1),            # 49 tokens (224x224 classification)
    ("channels_last", 1, 2, 64, 5, 8, 4),    # 10 tokens per area, token stride 3C, head-dim stride 1
    ("batch_slice", 3, 1, 128, 4, 9, 4),     # 9 tokens per area, non-contiguous batch with storage offset
    ("interleaved", 2, 3, 16, 1, 37, 1),     # 37 tokens, one row
    ("turbo", 1, 1, 32, 2, 2, 4),            # 1 token per area
    ("channels_last", 1, 1, 16, 30, 40, 1),  # 1200 keys: three online-softmax chunks of 400
    ("interleaved", 1, 2, 32, 40, 40, 4),    # 400 tokens per area (640x640 P4): AVX-512 runs 80-query blocks
    ("channels_last", 1, 1, 32, 40, 40, 1),  # 1600 keys (a 1280x1280 P4 area): 4 chunks, 80-query blocks
]
CASE_IDS = [f"{c[0]}-B{c[1]}h{c[2]}d{c[3]}-{c[4]}x{c[5]}-a{c[6]}" for c in CASES]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _forward(case, dtype, residual):
    """Fresh inputs for `case` and the C++ forward on them: (q, k, v, residual, scale, out, lse)."""
    layout, B, heads, D, H, W, area = case
    q, k, v = make_qkv(layout, B, heads, D, H, W, dtype)
    res = make_residual(B, heads, D, H, W, dtype) if residual else None
    scale = D ** -0.5
    return (q, k, v, res, scale, *ops.area_attention_fwd_cxx(q, k, v, area, scale, res))


@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_and_lse(case, dtype, residual):
    layout, B, heads, D, H, W, area = case
    q, k, v, res, scale, out, lse = _forward(case, dtype, residual)
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    assert lse.shape == (B, heads, H * W) and lse.dtype == torch.float32 and lse.is_contiguous()
    o64, lse64 = reference.area_attention_lse(f64(q), f64(k), f64(v), area, scale, f64(res))
    naive, _ = reference.area_attention_lse(q, k, v, area, scale, res)
    assert_close_to_oracle(out, naive, o64, f"out {case} {dtype}")
    # lse is computed in fp32 whatever the input dtype: its yardstick is the naive fp32 computation
    _, lse32 = reference.area_attention_lse(q.float(), k.float(), v.float(), area, scale)
    assert_close_to_oracle(lse, lse32, lse64, f"lse {case} {dtype}")


@pytest.mark.parametrize("residual", [False, True], ids=["nores", "res"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_backward(case, dtype, residual):
    layout, B, heads, D, H, W, area = case
    q, k, v, res, scale, out, lse = _forward(case, dtype, residual)
    dout = torch.randn(B, heads * D, H, W, dtype=dtype).to(memory_format=torch.channels_last).view(q.shape)
    grads = ops.area_attention_bwd_cxx(dout, q, k, v, out, res, lse, area, scale)
    oracle = reference.area_attention_backward(f64(dout), f64(q), f64(k), f64(v), area, scale)
    # yardstick: the same-dtype computation from the same stored output (out - residual, rounded like ours)
    naive = reference.area_attention_backward(dout, q, k, v, area, scale, out=out - res if residual else out)
    for name, g, n_, o in zip(("dq", "dk", "dv"), grads, naive, oracle):
        assert g.shape == q.shape and g.dtype == dtype and g.is_contiguous()
        assert_close_to_oracle(g, n_, o, f"{name} {case} {dtype}")


@pytest.mark.parametrize("n", [64, 400, 300], ids=lambda n: f"n{n}")
def test_softmax_probabilities_are_accurate(n):
    """The kernels' own exp2 (a polynomial per ISA build) checked where its error is not hidden: out[d, t] is one
    probability P[t, d] times 1024 (v one-hot on keys d < 32, exactly scaled), the scores a_s * b_t are exact
    products spanning 6.5 log2 units (every fractional part the polynomial sees), so the oracle error is the
    exponentials' and the normalisation's alone; random inputs bury a 50-ulp exp2 under the fp32 floor. n: the
    AVX-512 forward's 64-query (64, 300) and 80-query (400) blocks."""
    D = 32
    q = torch.zeros(1, 1, D, n)
    k = torch.zeros(1, 1, D, n)
    v = torch.zeros(1, 1, D, n)
    q[0, 0, 0] = torch.rand(n) * 3 - 1.5
    k[0, 0, 0] = torch.rand(n) * 3 - 1.5
    v[0, 0, torch.arange(D), torch.arange(D)] = 1024.0
    out, _ = ops.area_attention_fwd_cxx(q, k, v, 1, 1.0, None)
    o64, _ = reference.area_attention_lse(f64(q), f64(k), f64(v), 1, 1.0)
    naive, _ = reference.area_attention_lse(q, k, v, 1, 1.0)
    assert_close_to_oracle(out, naive, o64, f"probabilities n={n}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_one_token_areas_have_zero_query_and_key_gradients(dtype):
    """A 1-token area: P = 1 and O = V, so dS = P (dP - Delta) = 0 and dq = dk = 0 exactly in exact arithmetic. The
    kernel sums Delta = sum_d dO O like its dP = sum_d V dO tile (same order, same FMA contraction), so they cancel
    exactly here too. (Found by the long property run: Delta summed without FMA next to an FMA-summed dP left dq of
    1e-5 where autograd gives exactly 0.)"""
    q, k, v = make_qkv("interleaved", 2, 3, 32, 2, 2, dtype)
    q, k = q * 3, k * 3  # amp 3: calibrated models' logit scale
    out, lse = ops.area_attention_fwd_cxx(q, k, v, 4, 32 ** -0.5, None)
    dout = torch.randn(out.shape, dtype=dtype) * 3
    dq, dk, dv = ops.area_attention_bwd_cxx(dout, q, k, v, out, None, lse, 4, 32 ** -0.5)
    assert torch.equal(out, v.contiguous())
    torch.testing.assert_close(dv, dout)  # P = 2^(S - lse log2 e): 1 within an ulp (lse is stored in natural log)
    assert not dq.any() and not dk.any(), f"max |dq| {dq.abs().max().item():.3g}, |dk| {dk.abs().max().item():.3g}"


def test_large_scores_are_stable():
    """Scores of several hundred (q, k scaled up): no overflow, the softmax stays a softmax."""
    q, k, v = make_qkv("interleaved", 1, 2, 32, 20, 30, torch.float32)
    q, k = q * 12, k * 12  # |scale q.k| up to ~1e3
    out, lse = ops.area_attention_fwd_cxx(q, k, v, 1, 32 ** -0.5, None)
    o64, lse64 = reference.area_attention_lse(f64(q), f64(k), f64(v), 1, 32 ** -0.5)
    naive, lse32 = reference.area_attention_lse(q, k, v, 1, 32 ** -0.5)
    assert_close_to_oracle(out, naive, o64, "out")
    assert_close_to_oracle(lse, lse32, lse64, "lse")


@pytest.mark.parametrize("H,W,area", [(4, 9, 4), (7, 7, 1)], ids=["n9", "n49"])
def test_very_negative_scores_with_a_partial_key_panel(H, W, area):
    """Every score about -120 (below exp2's range once in log2 units), with tokens per area not a multiple of the
    4-key panel: the panel's padding keys (score 0) must not enter the running max, or every exp underflows to 0
    and the output is 0/0."""
    B, heads, D = 1, 2, 16
    q = torch.rand(B, heads, D, H * W) + 5
    k = -(torch.rand(B, heads, D, H * W) + 5)
    v = torch.randn(B, heads, D, H * W)
    out, lse = ops.area_attention_fwd_cxx(q, k, v, area, 0.25, None)
    o64, lse64 = reference.area_attention_lse(f64(q), f64(k), f64(v), area, 0.25)
    naive, lse32 = reference.area_attention_lse(q, k, v, area, 0.25)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert_close_to_oracle(out, naive, o64, "out")
    assert_close_to_oracle(lse, lse32, lse64, "lse")


@pytest.mark.parametrize("strided", ["dout", "out", "lse"])
def test_backward_reads_strided_dout_out_and_lse(strided):
    """The backward takes dout, out and lse with any strides (e.g. an lse or out view the caller keeps): the
    gradients equal those from the contiguous tensors bit for bit."""
    q, k, v = make_qkv("interleaved", 2, 2, 32, 5, 8, torch.float32)
    out, lse = ops.area_attention_fwd_cxx(q, k, v, 4, 0.2, None)
    dout = torch.randn(out.shape)
    want = ops.area_attention_bwd_cxx(dout, q, k, v, out, None, lse, 4, 0.2)
    args = dict(dout=dout, out=out, lse=lse)
    t = args[strided]
    if strided == "lse":  # every third float of a wider buffer
        view = torch.empty(*t.shape, 3)[..., 1]
    else:  # (B, heads, N, D) storage transposed to (B, heads, D, N): token stride D
        view = torch.empty(t.shape[0], t.shape[1], t.shape[3], t.shape[2]).transpose(2, 3)
    args[strided] = view.copy_(t)
    assert not args[strided].is_contiguous()
    got = ops.area_attention_bwd_cxx(args["dout"], q, k, v, args["out"], None, args["lse"], 4, 0.2)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert torch.equal(g, w), f"{name} differs with a strided {strided}: {(g - w).abs().max().item()}"


def test_nan_propagates_like_the_reference():
    """A NaN in q poisons that query's output column and lse; one in k the whole area; nothing else (the exp's
    clamps must not turn NaN into a finite number)."""
    q, k, v = (t.clone() for t in make_qkv("interleaved", 1, 2, 32, 5, 8, torch.float32))
    q[0, 0, 3, 7] = float("nan")
    k[0, 1, 5, 25] = float("nan")
    out, lse = ops.area_attention_fwd_cxx(q, k, v, 4, 0.2, None)
    ref, ref_lse = reference.area_attention_lse(q, k, v, 4, 0.2)
    assert torch.isnan(out).any() and not torch.isnan(out).all()
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert torch.equal(torch.isnan(lse), torch.isnan(ref_lse))


def test_results_do_not_depend_on_thread_count():
    """Work is split into per-thread items differently for 1 and 2 threads (query blocks of one area go to
    different threads); every output is computed by one thread in one order, so results are bitwise equal."""
    q, k, v = make_qkv("interleaved", 1, 1, 32, 15, 20, torch.float32)  # one sequence: split into query-block groups
    res = make_residual(1, 1, 32, 15, 20, torch.float32)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out, lse = ops.area_attention_fwd_cxx(q, k, v, 1, 0.2, res)
            grads = ops.area_attention_bwd_cxx(torch.ones_like(out), q, k, v, out, res, lse, 1, 0.2)
            results.append((out, lse) + tuple(grads))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [CASES[i] for i in (0, 2, 3, 4)], ids=[CASE_IDS[i] for i in (0, 2, 3, 4)])
def test_public_op_autograd(case, dtype):
    """yolov12_fast.area_attention(backend="cpp") end to end: views of requires_grad conv outputs in, gradients
    through the op's registered backward (area_attention_bwd -> area_attention_bwd_cxx) into the conv outputs."""
    layout, B, heads, D, H, W, area = case
    leaves = [t.requires_grad_(True) for t in make_sources(layout, B, heads, D, H, W, dtype)]
    res = make_residual(B, heads, D, H, W, dtype).requires_grad_(True)
    out = yolov12_fast.area_attention(*qkv_views(layout, leaves, heads, D), area, residual=res, backend="cpp")
    assert out.dtype == dtype and out.is_contiguous()
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves + [res], dout)

    def reference_grads(dt):  # autograd through the reference math in dtype dt
        ls = [t.detach().to(dt).requires_grad_(True) for t in leaves + [res]]
        o = reference.area_attention(*qkv_views(layout, ls[:-1], heads, D), area, residual=ls[-1])
        return torch.autograd.grad(o, ls, dout.to(dt))

    oracle, naive = reference_grads(torch.float64), reference_grads(dtype)
    for i, (g, n_, o) in enumerate(zip(grads, naive, oracle)):
        assert g.dtype == dtype and g.shape == o.shape
        assert_close_to_oracle(g, n_, o, f"grad of input {i} {case} {dtype}")


# ----------------------------------------------------------------------------------------------------------
# pe_add_cxx

PE_CASES = [  # (layout, B, heads, D, H, W, k, bias, x)
    ("interleaved", 1, 1, 16, 40, 40, 7, True, True),   # a P4 map (640x640), 7x7 as in ultralytics
    ("turbo", 2, 1, 16, 7, 9, 5, False, True),          # turbo 5x5, odd map
    ("channels_last", 1, 2, 16, 13, 21, 7, True, False),
    ("batch_slice", 3, 1, 32, 5, 3, 3, True, True),     # map smaller than... the tile; 3x3
    ("interleaved", 1, 1, 16, 1, 37, 7, False, False),  # one row: every tap row but the centre is padding
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", PE_CASES, ids=lambda c: f"{c[0]}-B{c[1]}h{c[2]}d{c[3]}-{c[4]}x{c[5]}-k{c[6]}"
                         f"{'-bias' if c[7] else ''}{'-x' if c[8] else ''}")
def test_pe_add(case, dtype):
    layout, B, heads, D, H, W, ks, has_bias, has_x = case
    C = heads * D
    _, _, v = make_qkv(layout, B, heads, D, H, W, dtype)
    weight = torch.randn(C, 1, ks, ks, dtype=dtype) / ks
    bias = torch.randn(C, dtype=dtype) if has_bias else None
    x = make_residual(B, heads, D, H, W, dtype) if has_x else None
    out = ops.pe_add_cxx(v, weight, bias, x, H, W)
    assert out.shape == v.shape and out.dtype == dtype and out.is_contiguous()

    def pe(dt):
        cv = lambda t: None if t is None else t.detach().to(dt)
        y = F.conv2d(cv(v).reshape(B, C, H, W), cv(weight), cv(bias), padding=ks // 2, groups=C).reshape(v.shape)
        return y if x is None else y + cv(x)

    naive = pe(dtype) if dtype == torch.float32 else pe(torch.float32).to(dtype)  # CPU half conv: via fp32
    assert_close_to_oracle(out, naive, pe(torch.float64), f"pe {case} {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", PE_CASES, ids=lambda c: f"{c[0]}-B{c[1]}h{c[2]}d{c[3]}-{c[4]}x{c[5]}-k{c[6]}"
                         f"{'-bias' if c[7] else ''}{'-x' if c[8] else ''}")
def test_pe_add_backward(case, dtype):
    """yolov12_fast.pe_add(backend="cpp")'s backward: dv by the forward kernel on dout with the kernel flipped, dw and
    db by pe_add_wgrad_cxx, against float64 autograd of the conv; the yardstick is ATen's backward in fp32 (its CPU
    half convolution runs through fp32 too)."""
    layout, B, heads, D, H, W, ks, has_bias, has_x = case
    C = heads * D
    _, _, v = make_qkv(layout, B, heads, D, H, W, dtype)
    v = v.detach().requires_grad_(True)  # a strided view's values, as a leaf of its own
    weight = (torch.randn(C, 1, ks, ks) / ks).to(dtype).requires_grad_(True)
    bias = torch.randn(C, dtype=dtype, requires_grad=True) if has_bias else None
    x = make_residual(B, heads, D, H, W, dtype).detach().requires_grad_(True) if has_x else None
    out = yolov12_fast.pe_add(v, weight, bias, H, W, x=x, backend="cpp")
    dout = torch.randn(B, C, H, W, dtype=dtype).to(memory_format=torch.channels_last).view(v.shape)
    leaves = [t for t in (v, weight, bias, x) if t is not None]
    grads = torch.autograd.grad(out, leaves, dout)

    def conv_grads(dt):
        ls = [t.detach().to(dt).requires_grad_(True) for t in leaves]
        lv, lw = ls[0], ls[1]
        lb = ls[2] if has_bias else None
        y = F.conv2d(lv.reshape(B, C, H, W), lw, lb, padding=ks // 2, groups=C).reshape(v.shape)
        if has_x:
            y = y + ls[-1]
        return torch.autograd.grad(y, ls, dout.to(dt))

    oracle, naive = conv_grads(torch.float64), conv_grads(torch.float32)
    for name, g, n_, o in zip(("dv", "dw", "db", "dx") if has_bias else ("dv", "dw", "dx"), grads, naive, oracle):
        assert g.dtype == dtype and g.shape == o.shape
        assert_close_to_oracle(g, n_.to(dtype), o, f"pe backward {name} {case} {dtype}")


def test_pe_add_wgrad_cxx_refuses_bad_input():
    v = torch.randn(1, 2, 16, 20)
    with pytest.raises(RuntimeError, match="must equal the token count"):
        ops.pe_add_wgrad_cxx(v, v, 7, 4, 6)
    with pytest.raises(RuntimeError, match="odd and positive"):
        ops.pe_add_wgrad_cxx(v, v, 4, 4, 5)
    with pytest.raises(RuntimeError, match="dout must have v's shape"):
        ops.pe_add_wgrad_cxx(v[:, :1], v, 7, 4, 5)
    with pytest.raises(RuntimeError, match="cast dout"):
        ops.pe_add_wgrad_cxx(v.half(), v, 7, 4, 5)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16"):
        ops.pe_add_wgrad_cxx(v.double(), v.double(), 7, 4, 5)
    dw, db = ops.pe_add_wgrad_cxx(v[:0], v[:0], 7, 4, 5)  # empty batch: zero gradients
    assert dw.shape == (32, 1, 7, 7) and db.shape == (32,) and not dw.any() and not db.any()


def test_pe_add_strided_weight_and_bias():
    """A transposed (non-contiguous) depthwise weight and a strided bias are read through their strides."""
    B, heads, D, H, W, ks = 1, 2, 16, 9, 11, 7
    C = heads * D
    _, _, v = make_qkv("interleaved", B, heads, D, H, W, torch.float32)
    weight = (torch.randn(C, 1, ks, ks) / ks).transpose(2, 3)
    bias = torch.randn(2 * C)[::2]
    assert not weight.is_contiguous() and not bias.is_contiguous()
    out = ops.pe_add_cxx(v, weight, bias, None, H, W)
    conv = lambda dt: F.conv2d(v.to(dt).reshape(B, C, H, W), weight.to(dt), bias.to(dt), padding=ks // 2,
                               groups=C).reshape(v.shape)
    assert_close_to_oracle(out, conv(torch.float32), conv(torch.float64), "pe strided weight/bias")


def test_pe_add_fp32_weights_with_half_activations():
    """A half model may keep the folded pe weights in fp32: accepted, computed in fp32."""
    _, _, v = make_qkv("interleaved", 1, 2, 16, 6, 6, torch.float16)
    w, b = torch.randn(32, 1, 7, 7) / 7, torch.randn(32)
    out = ops.pe_add_cxx(v, w, b, None, 6, 6)
    want = F.conv2d(v.double().reshape(1, 32, 6, 6), w.double(), b.double(), padding=3, groups=32).reshape(v.shape)
    assert out.dtype == torch.float16
    assert (out.double() - want).abs().max().item() < 2e-3 * max(1.0, want.abs().max().item())


def test_public_pe_add_cpp_backend():
    _, _, v = make_qkv("channels_last", 2, 2, 32, 10, 12, torch.float32)
    w, b = torch.randn(64, 1, 7, 7) / 7, torch.randn(64)
    x = torch.randn(v.shape)
    out = ops.pe_add(v, w, b, x, 10, 12, "cpp")
    want = F.conv2d(v.double().reshape(2, 64, 10, 12), w.double(), b.double(), padding=3, groups=64).reshape(v.shape)
    assert_close_to_oracle(out, (F.conv2d(v.reshape(2, 64, 10, 12), w, b, padding=3, groups=64).reshape(v.shape) + x),
                           want + x.double(), "public pe_add")


# ----------------------------------------------------------------------------------------------------------
# the narrower builds (CPUs without AVX-512, without AVX2 + FMA)

_BASELINE_SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import torch
import test_cpp_cpu as T
from yolov12_fast import _backends
_backends.extension()
import yolov12_fast._C as C
print("ISA=" + C.CPU_ATTENTION_ISA)
torch.manual_seed(0)
# the same awkward cases as above, through the same assertions
for i in (0, 2):
    T.test_forward_and_lse(T.CASES[i], torch.float32, True)
    T.test_backward(T.CASES[i], torch.float32, True)
T.test_forward_and_lse(T.CASES[7], torch.float32, False)
T.test_forward_and_lse(T.CASES[4], torch.float16, False)
T.test_pe_add(T.PE_CASES[2], torch.float32)
T.test_softmax_probabilities_are_accurate(400)
T.test_one_token_areas_have_zero_query_and_key_gradients(torch.float32)
# and outputs on the parent's inputs, for the parent to compare with its own build's
q, k, v, w = torch.load(sys.argv[2])
out, lse = torch.ops.yolov12_fast.area_attention_fwd_cxx(q, k, v, 4, 0.2, None)
pe = torch.ops.yolov12_fast.pe_add_cxx(v, w, None, None, 30, 40)
torch.save((out, lse, pe), sys.argv[3])
"""


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return set()


def _expected_isa(capability: str | None) -> str:
    flags = _cpu_flags()
    avx2 = {"avx2", "fma"} <= flags
    avx512 = avx2 and {"avx512f", "avx512vl", "avx512dq"} <= flags
    if capability == "default" or not avx2:
        return "baseline"
    return "avx512" if avx512 and capability != "avx2" else "avx2"


def test_the_attention_cores_run_the_widest_build_this_cpu_has():
    import yolov12_fast._C as C

    if not _cpu_flags():
        pytest.skip("no /proc/cpuinfo here to say what the CPU has")
    assert C.CPU_ATTENTION_ISA == _expected_isa(os.environ.get("YOLOV12_FAST_CPU_CAPABILITY"))


def _disassembly(pattern: str) -> dict:
    """{function name: its disassembly} for the functions of the built extension whose names match `pattern`."""
    import re
    import shutil

    import yolov12_fast._C as C

    if shutil.which("objdump") is None:
        pytest.skip("no objdump (binutils) to read the extension with")
    dis = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", C.__file__], capture_output=True, text=True,
                         timeout=300).stdout
    funcs = {}
    for chunk in re.split(r"\n(?=[0-9a-f]+ <)", dis):
        name = chunk.split("\n", 1)[0]
        if re.search(pattern, name):
            funcs[name] = chunk
    return funcs


def test_the_simd_cores_compile_to_vector_code():
    """Every ISA build of the attention and PE cores is vector code: no lane-by-lane lowering (GCC once turned a
    vector select in the AVX-512 backward into per-lane branches on mask lanes moved to general registers,
    vpextrd: 7x slower, silently), the AVX-512 builds use zmm registers and the vscalefps exp2, the AVX2 builds
    ymm FMAs. Read from the disassembly of the built extension."""
    funcs = _disassembly(r"yolov12_fast::.*(fwd_block|bwd_block|wgrad_plane|dwconv_plane)_(base|avx2|avx512)")
    kinds = {k: [n for n in funcs if f"_{k}<" in n or f"_{k}(" in n] for k in ("base", "avx2", "avx512")}
    if not kinds["avx2"]:
        pytest.skip("a build without the x86-64 AVX2 / AVX-512 cores (not GCC on x86-64)")
    assert len(kinds["avx512"]) >= 8 and len(kinds["base"]) >= 8, sorted(funcs)
    for name, body in funcs.items():
        assert "pextr" not in body, f"{name}: lanes moved to general registers one by one (scalarised vector code)"
    for name in kinds["avx512"]:
        assert "%zmm" in funcs[name] and "vscalefps" in funcs[name], name
    for name in kinds["avx2"]:
        assert "%ymm" in funcs[name] and "vfmadd" in funcs[name] and "%zmm" not in funcs[name], name


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_narrower_builds(tmp_path, capability):
    """The builds of the attention cores narrower than this machine's, forced with YOLOV12_FAST_CPU_CAPABILITY in a
    subprocess: "default" is the 4-lane build that CPUs without AVX2 + FMA run, "avx2" the 8-lane build that
    AVX2 CPUs without AVX-512 run. Each passes the same checks, reports itself in _C.CPU_ATTENTION_ISA, and the
    baseline really is another build (its rounding differs: no FMA contraction)."""
    q, k, v = make_qkv("interleaved", 1, 2, 32, 30, 40, torch.float32)
    w = torch.randn(64, 1, 7, 7) / 7
    torch.save((q, k, v, w), tmp_path / "in.pt")
    env = dict(os.environ, YOLOV12_FAST_CPU_CAPABILITY=capability)
    r = subprocess.run([sys.executable, "-c", _BASELINE_SCRIPT, os.path.dirname(__file__), str(tmp_path / "in.pt"),
                        str(tmp_path / "out.pt")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    if _cpu_flags():
        assert f"ISA={_expected_isa(capability)}" in r.stdout, r.stdout[-500:]
    out_b, lse_b, pe_b = torch.load(tmp_path / "out.pt")
    out, lse = ops.area_attention_fwd_cxx(q, k, v, 4, 0.2, None)
    pe = ops.pe_add_cxx(v, w, None, None, 30, 40)
    if capability == "default" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert not torch.equal(out, out_b), "YOLOV12_FAST_CPU_CAPABILITY=default did not select another build"
    o64, lse64 = reference.area_attention_lse(f64(q), f64(k), f64(v), 4, 0.2)
    naive, _ = reference.area_attention_lse(q, k, v, 4, 0.2)
    assert_close_to_oracle(out_b, naive, o64, f"{capability} build out")
    assert_close_to_oracle(out, naive, o64, "this machine's build out")
    assert torch.allclose(pe, pe_b, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# empty batch, opcheck, errors


def test_empty_batch():
    q, k, v = make_qkv("interleaved", 0, 2, 32, 4, 6, torch.float32)
    out, lse = ops.area_attention_fwd_cxx(q, k, v, 4, 0.2, None)
    assert out.shape == (0, 2, 32, 24) and lse.shape == (0, 2, 24)
    grads = ops.area_attention_bwd_cxx(out, q, k, v, out, None, lse, 4, 0.2)
    assert all(g.shape == (0, 2, 32, 24) for g in grads)
    assert ops.pe_add_cxx(v, torch.randn(64, 1, 7, 7), None, None, 4, 6).shape == (0, 2, 32, 24)
    assert yolov12_fast.area_attention(q, k, v, 4, backend="cpp").shape == (0, 2, 32, 24)


def _opcheck(op, args):
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                                "test_aot_dispatch_dynamic"))


def test_opcheck_cxx_ops():
    dtype = torch.float16  # registration checks: one dtype is enough (half: the fakes must keep it)
    q, k, v = make_qkv("interleaved", 2, 2, 16, 5, 6, dtype)
    res = make_residual(2, 2, 16, 5, 6, dtype)
    _opcheck(ops.area_attention_fwd_cxx.default, (q, k, v, 2, 0.25, None))
    _opcheck(ops.area_attention_fwd_cxx.default, (q, k, v, 2, 0.25, res))
    out, lse = ops.area_attention_fwd_cxx(q, k, v, 2, 0.25, res)
    _opcheck(ops.area_attention_bwd_cxx.default, (torch.randn_like(out), q, k, v, out, res, lse, 2, 0.25))
    w, b = torch.randn(32, 1, 5, 5, dtype=dtype), torch.randn(32, dtype=dtype)
    _opcheck(ops.pe_add_cxx.default, (v, w, b, res, 5, 6))
    _opcheck(ops.pe_add_cxx.default, (v, w, None, None, 5, 6))


def test_opcheck_public_op_cpp_backend():
    q, k, v = make_qkv("channels_last", 2, 2, 16, 4, 6, torch.float32)
    res = make_residual(2, 2, 16, 4, 6, torch.float32)
    _opcheck(ops.area_attention_fwd.default, (q, k, v, 4, 0.25, res, "cpp"))
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, res)]
    _opcheck(ops.area_attention_fwd.default, (*leaves[:3], 4, 0.25, leaves[3], "cpp"))


def _bad(**over):
    """Valid fwd/bwd/pe arguments with some replaced."""
    q, k, v = make_qkv("interleaved", 1, 2, 32, 4, 6, torch.float32)
    a = dict(q=q, k=k, v=v, area=4, scale=0.2, res=None)
    a.update(over)
    return a


def _fwd(a):
    return ops.area_attention_fwd_cxx(a["q"], a["k"], a["v"], a["area"], a["scale"], a["res"])


BAD_FWD = [
    (dict(q=torch.randn(2, 32, 24)), "must be 4-D"),
    (dict(k=torch.randn(1, 2, 32, 12)), "same shape"),
    (dict(q=torch.randn(1, 2, 32, 24, dtype=torch.float64), k=torch.randn(1, 2, 32, 24, dtype=torch.float64),
          v=torch.randn(1, 2, 32, 24, dtype=torch.float64)), "use float32, float16 or bfloat16"),
    (dict(v=torch.randn(1, 2, 32, 24, dtype=torch.float16)), "share a dtype"),
    (dict(q=torch.randn(1, 2, 24, 24), k=torch.randn(1, 2, 24, 24), v=torch.randn(1, 2, 24, 24)),
     "head_dim 24 is not supported"),
    (dict(area=5), "not divisible by area = 5; pad the feature map"),
    (dict(area=0), "area must be >= 1"),
    (dict(res=torch.randn(1, 2, 32, 12)), "residual must have the shape of q"),
    (dict(res=torch.randn(1, 2, 32, 24, dtype=torch.float16)), "residual dtype"),
]


@pytest.mark.parametrize("over,match", BAD_FWD, ids=[m for _, m in BAD_FWD])
def test_forward_rejects_bad_input(over, match):
    with pytest.raises(RuntimeError, match=match):
        _fwd(_bad(**over))


def test_backward_rejects_bad_input():
    a = _bad()
    q, k, v = a["q"], a["k"], a["v"]
    out, lse = _fwd(a)
    with pytest.raises(RuntimeError, match=r"lse must have shape \(B, heads, N\)"):
        ops.area_attention_bwd_cxx(out, q, k, v, out, None, lse[:, :, :12], 4, 0.2)
    with pytest.raises(RuntimeError, match="lse must be float32"):
        ops.area_attention_bwd_cxx(out, q, k, v, out, None, lse.double(), 4, 0.2)
    with pytest.raises(RuntimeError, match=r"cast dout with .to\(q.dtype\)"):
        ops.area_attention_bwd_cxx(out.half(), q, k, v, out, None, lse, 4, 0.2)
    with pytest.raises(RuntimeError, match="dout and out must have q's shape"):
        ops.area_attention_bwd_cxx(out[:, :1], q, k, v, out, None, lse, 4, 0.2)
    with pytest.raises(RuntimeError, match="dout and out must have q's shape"):
        ops.area_attention_bwd_cxx(out, q, k, v, out[:, :1], None, lse, 4, 0.2)
    with pytest.raises(RuntimeError, match="dout and out must have q's dtype"):
        ops.area_attention_bwd_cxx(out, q, k, v, out.half(), None, lse, 4, 0.2)


def test_pe_add_rejects_bad_input():
    _, _, v = make_qkv("interleaved", 1, 2, 32, 4, 6, torch.float32)
    w = torch.randn(64, 1, 7, 7)
    with pytest.raises(RuntimeError, match="must equal the token count N = 24"):
        ops.pe_add_cxx(v, w, None, None, 5, 5)
    with pytest.raises(RuntimeError, match=r"depthwise kernel \(heads\*head_dim, 1, k, k\)"):
        ops.pe_add_cxx(v, torch.randn(64, 1, 6, 6), None, None, 4, 6)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        ops.pe_add_cxx(v, w, torch.randn(32), None, 4, 6)
    with pytest.raises(RuntimeError, match="x must have the shape of v"):
        ops.pe_add_cxx(v, w, None, torch.randn(1, 2, 32, 12), 4, 6)
    with pytest.raises(RuntimeError, match="use float32, float16 or bfloat16"):
        ops.pe_add_cxx(v.double(), w, None, None, 4, 6)
    with pytest.raises(RuntimeError, match="must equal the token count N = 24"):
        ops.pe_add_cxx(v, w, None, None, -4, -6)  # (-4) * (-6) = 24
    for bad_w in (torch.randn(32, 1, 7, 7), torch.randn(64, 1, 7, 5), torch.randn(64, 2, 7, 7)):
        with pytest.raises(RuntimeError, match=r"depthwise kernel \(heads\*head_dim, 1, k, k\)"):
            ops.pe_add_cxx(v, bad_w, None, None, 4, 6)
    with pytest.raises(RuntimeError, match="bias dtype"):
        ops.pe_add_cxx(v, w, torch.randn(64, dtype=torch.float64), None, 4, 6)
    with pytest.raises(RuntimeError, match="x dtype"):
        ops.pe_add_cxx(v, w, None, torch.randn(v.shape, dtype=torch.float16), 4, 6)


def test_flush_denormals_reaches_every_intra_op_thread(monkeypatch):
    """yolov12_fast.utils.flush_denormals sets flush-to-zero on torch's intra-op threads too: a parallel multiply of
    denormal inputs gives zeros in every thread's chunk, where torch.set_flush_denormal (the calling thread only)
    leaves the other threads' chunks denormal. Off again, the denormals survive everywhere. Without the extension it
    falls back to the calling thread, with a warning."""
    from yolov12_fast.utils import flush_denormals

    x = torch.full((1 << 22,), 1e-39)  # a denormal float32, in a tensor large enough for TensorIterator to split
    assert 0 < x[0].item() < torch.finfo(torch.float32).tiny
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        if not torch.set_flush_denormal(True):
            pytest.skip("this CPU has no flush-to-zero mode")
        torch_only = int(((x * 1.0) == 0).sum())
        torch.set_flush_denormal(False)
        assert torch_only < x.numel(), "torch.set_flush_denormal reached every thread: the test shows nothing here"
        assert flush_denormals(True) >= 2
        assert bool(((x * 1.0) == 0).all()), "a chunk kept its denormals"
        assert flush_denormals(False) >= 2
        assert bool(((x * 1.0) == x).all()), "denormals flushed after switching off"
        monkeypatch.setattr(_backends, "_extension", lambda: (None, "not built"))
        with pytest.warns(RuntimeWarning, match="only the calling thread"):
            assert flush_denormals(True) == 1
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(before)
