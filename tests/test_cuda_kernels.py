"""GPU tests of the CUDA C++ kernels (csrc/cuda): `area_attention_fwd_cxx` and `pe_add_cxx`.

Each result is compared with the float64 oracle, the naive same-dtype PyTorch computation being the yardstick
(tests/tolerances.py). Inputs are the views the model passes: the ultralytics interleaved qkv output, the turbo
qk halves, a channels_last conv output (token stride 3C, d stride 1) and a misaligned view (odd strides and
offset: the scalar staging path), plus plain contiguous tensors. Area lengths cover 1 token, partial 16-row
tiles and 64-key blocks, the 640 (400) and 1280 (1600) shapes, and areas too long for shared memory (streamed).

Marked gpu: skipped with the reason where no CUDA device is visible (tests/conftest.py), and where the
extension was built without its CUDA kernels.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import yolov12_fast

from tolerances import assert_close_to_oracle
from yolov12_fast import _backends, reference

pytestmark = pytest.mark.gpu

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
LAYOUTS = ("interleaved", "turbo", "channels_last", "misaligned", "contiguous")


@pytest.fixture(scope="module", autouse=True)
def _cuda_kernels():
    ok, why = _backends.can_use_cuda_ext("cuda")
    if not ok:
        pytest.skip(f"the CUDA C++ kernels are not available: {why}")


def _skip_bf16_if_unsupported(dtype):
    if dtype == BF16 and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bfloat16 tensor-core MMA needs compute capability 8.0 (tested to raise in test_bad_inputs)")


def make_qkv(layout: str, B: int, heads: int, D: int, N: int, dtype: torch.dtype, device="cuda"):
    """q, k, v (B, heads, D, N) as views in the given memory layout."""
    C = heads * D
    kw = dict(device=device, dtype=dtype)
    if layout == "interleaved":  # ultralytics qkv conv output (B, 3C, H, W): per head [q | k | v] channels
        q, k, v = torch.randn(B, 3 * C, N, **kw).view(B, heads, 3 * D, N).split(D, dim=2)
    elif layout == "turbo":  # qk conv (B, 2C, H, W): all q channels, then all k; v from its own conv
        qk = torch.randn(B, 2 * C, N, **kw)
        q, k = qk[:, :C].view(B, heads, D, N), qk[:, C:].view(B, heads, D, N)
        v = torch.randn(B, C, N, **kw).view(B, heads, D, N)
    elif layout == "channels_last":  # qkv conv output in channels_last: token stride 3C, d stride 1
        qkv = torch.randn(B, N, 3 * C, **kw).permute(0, 2, 1)
        q, k, v = qkv.view(B, heads, 3 * D, N).split(D, dim=2)
    elif layout == "misaligned":  # token stride 1 but odd d stride and an odd storage offset
        q, k, v = (torch.randn(B, heads, D, N + 1, **kw)[..., 1:] for _ in range(3))
    elif layout == "contiguous":
        q, k, v = (torch.randn(B, heads, D, N, **kw) for _ in range(3))
    else:
        raise ValueError(layout)
    assert q.shape == k.shape == v.shape == (B, heads, D, N)
    return q, k, v


def check_attention(q, k, v, area, residual=None, scale=None):
    scale = q.shape[2] ** -0.5 if scale is None else scale
    out, lse = torch.ops.yolov12_fast.area_attention_fwd_cxx(q, k, v, area, scale, residual)
    B, H, D, N = q.shape
    assert out.shape == (B, H, D, N) and out.dtype == q.dtype and out.is_contiguous() and out.device == q.device
    assert lse.shape == (B, H, N) and lse.dtype == F32 and lse.is_contiguous()
    d = lambda t: None if t is None else t.double()
    oracle_out, oracle_lse = reference.area_attention_lse(d(q), d(k), d(v), area, scale, d(residual))
    naive_out, naive_lse = reference.area_attention_lse(q, k, v, area, scale, residual)
    assert_close_to_oracle(out, naive_out, oracle_out, "out")
    assert_close_to_oracle(lse, naive_lse, oracle_lse, "lse")
    return out, lse


# ---------------------------------------------------------------------------------------------------------
# area attention forward


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("area", [1, 4])
@pytest.mark.parametrize("n", [1, 49, 300, 400, 1600])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
def test_area_attention_head_dim_32(dtype, layout, n, area, residual):
    _skip_bf16_if_unsupported(dtype)
    B, heads, D = 3, 2, 32
    N = n * area
    q, k, v = make_qkv(layout, B, heads, D, N, dtype)
    res = make_qkv("interleaved", B, heads, D, N, dtype)[2] if residual else None  # a strided residual
    check_attention(q, k, v, area, res)


@pytest.mark.parametrize("n,area", [(49, 4), (400, 1), (400, 4), (1600, 1)])
@pytest.mark.parametrize("layout", ["interleaved", "channels_last", "contiguous"])
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
def test_area_attention_head_dim_64(dtype, layout, n, area):
    _skip_bf16_if_unsupported(dtype)
    B, heads, D = 3, 2, 64
    q, k, v = make_qkv(layout, B, heads, D, n * area, dtype)
    check_attention(q, k, v, area, torch.randn(B, heads, D, n * area, device="cuda", dtype=dtype))


@pytest.mark.parametrize("n", [15, 16, 17, 63, 64, 65, 127, 129, 240, 401, 1000])
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
def test_area_attention_tile_edges_and_query_split(dtype, n):
    """Partial 16-query tiles and 64-key blocks; one sequence only, so the launch splits queries across CTAs."""
    _skip_bf16_if_unsupported(dtype)
    q, k, v = make_qkv("contiguous", 1, 1, 32, n, dtype)
    check_attention(q, k, v, 1)


@pytest.mark.parametrize("n,area,D", [(2001, 1, 32), (4096, 1, 32), (4096, 2, 32), (1600, 4, 64), (1001, 1, 64)])
@pytest.mark.parametrize("layout", ["interleaved", "channels_last"])
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
def test_area_attention_streamed(dtype, layout, n, area, D):
    """Areas too long for shared memory on every arch: K/V stream through smem in chunks (tails masked)."""
    _skip_bf16_if_unsupported(dtype)
    B, heads = 1, 2
    q, k, v = make_qkv(layout, B, heads, D, n * area, dtype)
    check_attention(q, k, v, area, torch.randn(B, heads, D, n * area, device="cuda", dtype=dtype))


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
def test_area_attention_peaky_scores(dtype):
    """Large scores (|s| up to ~40 after scaling): online-softmax rescaling and fp32 accumulation (the naive
    fp16 path computes these scores in fp16)."""
    _skip_bf16_if_unsupported(dtype)
    q, k, v = make_qkv("interleaved", 3, 2, 32, 1600, dtype)
    q.mul_(6.0)
    check_attention(q, k, v, 4)


def test_area_attention_custom_scale_and_zero_scale():
    q, k, v = make_qkv("interleaved", 2, 2, 32, 400, F16)
    check_attention(q, k, v, 1, scale=0.3)
    out, lse = torch.ops.yolov12_fast.area_attention_fwd_cxx(q, k, v, 4, 0.0, None)  # uniform weights
    want = v.double().reshape(2, 2, 32, 4, 100).mean(-1, keepdim=True).expand(-1, -1, -1, -1, 100).reshape(2, 2, 32, 400)
    torch.testing.assert_close(out.double(), want, atol=2e-3, rtol=0)
    torch.testing.assert_close(lse, torch.full_like(lse, torch.log(torch.tensor(100.0)).item()), atol=1e-5, rtol=0)


def test_area_attention_public_op_backend_cuda():
    """The public op dispatches backend='cuda' to this kernel, also on a non-default stream."""
    from yolov12_fast import functional

    q, k, v = make_qkv("interleaved", 3, 2, 32, 1600, F16)
    res = torch.randn_like(q)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        out = functional.area_attention(q, k, v, 4, residual=res, backend="cuda")
    torch.cuda.current_stream().wait_stream(s)
    d = lambda t: t.double()
    oracle = reference.area_attention_lse(d(q), d(k), d(v), 4, None, d(res))[0]
    naive = reference.area_attention(q, k, v, 4, None, res)
    assert_close_to_oracle(out, naive, oracle, "public op")


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("backend", ["cuda", "auto"])
def test_training_with_the_cuda_forward_runs_the_chosen_backward(dtype, backend, monkeypatch):
    """Training with the CUDA C++ forward: backend='cuda' runs the CUDA C++ backward kernels; 'auto' (which picks the
    CUDA forward on Hopper in fp16 and on Turing) keeps the measured Triton backward, fed the CUDA forward's lse,
    except on Turing (AUTO_CUDA_BACKWARD), where it trains through the CUDA one. Which ran is recorded; the gradients of q, k, v and the residual match the float64 oracle's by the tolerance principle, areas
    cutting rows, batch 3."""
    _skip_bf16_if_unsupported(dtype)
    from yolov12_fast import functional
    from yolov12_fast.kernels import area_attention as tk

    ran = []
    real_triton = tk.area_attention_bwd
    monkeypatch.setattr(tk, "area_attention_bwd", lambda *a: ran.append("triton") or real_triton(*a))
    q, k, v = make_qkv("interleaved", 3, 2, 32, 20 * 15, dtype)  # 300 tokens, area 4: 75 per area
    res = torch.randn_like(q)
    dout = torch.randn(q.shape, device="cuda", dtype=dtype)
    leaves = lambda dt: [t.detach().to(dt).requires_grad_(True) for t in (q, k, v, res)]
    got_in, naive_in, oracle_in = leaves(dtype), leaves(dtype), leaves(torch.float64)
    out = functional.area_attention(*got_in[:3], 4, residual=got_in[3], backend=backend)
    got = torch.autograd.grad(out, got_in, dout)
    from yolov12_fast.ops import area_attention as aa
    cuda_bwd = aa.resolve_backend(backend, q.device, dtype, 32) == "cuda" and (
        backend == "cuda" or aa.cuda_backward_by_default(q.device))
    assert ran == ([] if cuda_bwd else ["triton"]), ran
    naive = torch.autograd.grad(reference.area_attention(*naive_in[:3], 4, None, naive_in[3]), naive_in, dout)
    oracle = torch.autograd.grad(reference.area_attention(*oracle_in[:3], 4, None, oracle_in[3]), oracle_in,
                                 dout.double())
    for name, g, n, o in zip(("dq", "dk", "dv", "dresidual"), got, naive, oracle):
        assert_close_to_oracle(g, n, o, f"{name} via backend='cuda'")


@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("D,layout,N,area", [(32, "interleaved", 400, 1), (32, "channels_last", 1600, 4),
                                             (64, "turbo", 300, 4), (32, "interleaved", 1600, 1),
                                             (64, "contiguous", 49, 1)])
def test_cuda_backward_matches_the_oracle(dtype, D, layout, N, area):
    """The CUDA C++ backward kernels (dK/dV and dQ) directly: dq, dk, dv against the float64 oracle's gradients (the
    tolerance principle: naive same-dtype autograd as the yardstick), with and without a residual, 1600 tokens per
    area (resident on sm_90, streamed elsewhere), 49 (partial tiles), batch 2."""
    _skip_bf16_if_unsupported(dtype)
    q, k, v = make_qkv(layout, 2, 2, D, N, dtype)
    dout = torch.randn(q.shape, device="cuda", dtype=dtype)
    scale = D ** -0.5
    for res in (None, torch.randn_like(q)):
        out, lse = torch.ops.yolov12_fast.area_attention_fwd_cxx(q, k, v, area, scale, res)
        got = torch.ops.yolov12_fast.area_attention_bwd_cxx(dout, q, k, v, out, res, lse, area, scale)
        leaves = lambda dt: [t.detach().to(dt).requires_grad_(True) for t in (q, k, v)]
        n_in, o_in = leaves(dtype), leaves(torch.float64)
        naive = torch.autograd.grad(reference.area_attention(*n_in, area, scale), n_in, dout)
        oracle = torch.autograd.grad(reference.area_attention(*o_in, area, scale), o_in, dout.double())
        for name, g, n, o in zip(("dq", "dk", "dv"), got, naive, oracle):
            assert g.is_contiguous() and g.dtype == dtype
            assert_close_to_oracle(g, n, o, f"CUDA backward {name} {layout} D{D} N{N}/{area} res={res is not None}")


@pytest.mark.parametrize("D,layout,N,area", [(32, "interleaved", 1600, 4), (32, "turbo", 4096, 1),
                                             (64, "interleaved", 400, 1), (32, "interleaved", 300, 4)])
def test_tuning_knobs_change_no_bit(monkeypatch, D, layout, N, area):
    """The launch knobs that benchmarks/fwd_warps.py times: $YOLOV12_FAST_CUDA_FWD_WARPS (warps per CTA of the forward)
    and $YOLOV12_FAST_CUDA_STAGING=registers (K / V staged through registers instead of cp.async on sm_80+). Neither
    changes any arithmetic: forward (out, lse) and backward (dq, dk, dv) equal the defaults' bit for bit, resident and
    streamed (4096 tokens), 16-byte and 8-byte vectors (300 tokens per area of 1200). Values they cannot take are
    refused with a message naming the variable."""
    q, k, v = make_qkv(layout, 2, 2, D, N * area, F16)
    dout = torch.randn(q.shape, device="cuda", dtype=F16)
    scale = D ** -0.5

    def run():
        out, lse = torch.ops.yolov12_fast.area_attention_fwd_cxx(q, k, v, area, scale, None)
        return (out, lse, *torch.ops.yolov12_fast.area_attention_bwd_cxx(dout, q, k, v, out, None, lse, area, scale))

    ref = run()
    default = 8 if D == 32 else 4
    turing = torch.cuda.get_device_capability() < (8, 0)  # Turing code takes only the default count
    most = default if turing else 16 if D == 32 else 4
    for env, value in [("YOLOV12_FAST_CUDA_STAGING", "registers"), ("YOLOV12_FAST_CUDA_STAGING", "async"),
                       ("YOLOV12_FAST_CUDA_FWD_WARPS", str(default if turing else 3)),
                       ("YOLOV12_FAST_CUDA_FWD_WARPS", str(most))]:
        monkeypatch.setenv(env, value)
        for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), run(), ref):
            assert torch.equal(a, b), f"{env}={value}: {name} differs from the default's"
        monkeypatch.delenv(env)
    for env, value in [("YOLOV12_FAST_CUDA_STAGING", "cp.async"), ("YOLOV12_FAST_CUDA_FWD_WARPS", str(most + 1))]:
        monkeypatch.setenv(env, value)
        with pytest.raises(RuntimeError, match=env):
            run()
        monkeypatch.delenv(env)


@pytest.mark.parametrize("layout,n,area,res", [("interleaved", 400, 4, True), ("turbo", 400, 1, False),
                                               ("interleaved", 1600, 1, False), ("channels_last", 77, 3, True)])
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["fp16", "bf16"])
def test_forward_32_key_steps(monkeypatch, dtype, layout, n, area, res):
    """$YOLOV12_FAST_CUDA_FWD_KEYS=32: the head_dim-32 forward's 32-key variant (benchmarks/fwd_warps.py times it
    against the default 64-key steps) matches the float64 oracle like the default, resident and streamed, with a
    residual, every layout; its outputs feed the same backward. Other values, head_dim 64 and more than 8 warps
    are refused with a message naming the variable."""
    _skip_bf16_if_unsupported(dtype)
    q, k, v = make_qkv(layout, 3, 2, 32, n * area, dtype)
    residual = torch.randn(q.shape, device="cuda", dtype=dtype) if res else None
    monkeypatch.setenv("YOLOV12_FAST_CUDA_FWD_KEYS", "32")
    out, lse = check_attention(q, k, v, area, residual)
    dout = torch.randn(q.shape, device="cuda", dtype=dtype)
    got = torch.ops.yolov12_fast.area_attention_bwd_cxx(dout, q, k, v, out, residual, lse, area, 32 ** -0.5)
    monkeypatch.delenv("YOLOV12_FAST_CUDA_FWD_KEYS")
    out64, lse64 = torch.ops.yolov12_fast.area_attention_fwd_cxx(q, k, v, area, 32 ** -0.5, residual)
    ref = torch.ops.yolov12_fast.area_attention_bwd_cxx(dout, q, k, v, out64, residual, lse64, area, 32 ** -0.5)
    for name, a, b in zip(("dq", "dk", "dv"), got, ref):  # the lse of either forward: the same gradients up to rounding
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2, msg=lambda m: f"{name}: {m}")
    q64, k64, v64 = make_qkv(layout, 1, 2, 64, 64, dtype)
    turing = torch.cuda.get_device_capability() < (8, 0)
    for env, value, args in [("YOLOV12_FAST_CUDA_FWD_KEYS", "48", (q, k, v)),
                             ("YOLOV12_FAST_CUDA_FWD_KEYS", "32", (q64, k64, v64))]:
        monkeypatch.setenv(env, value)
        with pytest.raises(RuntimeError, match=env):
            torch.ops.yolov12_fast.area_attention_fwd_cxx(*args, 1, 0.2, None)
        monkeypatch.delenv(env)
    if not turing:
        monkeypatch.setenv("YOLOV12_FAST_CUDA_FWD_KEYS", "32")
        monkeypatch.setenv("YOLOV12_FAST_CUDA_FWD_WARPS", "9")
        with pytest.raises(RuntimeError, match="YOLOV12_FAST_CUDA_FWD_WARPS=9 .*32-key steps"):
            torch.ops.yolov12_fast.area_attention_fwd_cxx(q, k, v, area, 0.2, None)


def test_area_attention_second_device_guard():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    q, k, v = make_qkv("interleaved", 1, 2, 32, 400, F16, device="cuda:1")
    out, _ = check_attention(q, k, v, 1)
    assert out.device == torch.device("cuda:1")


def test_area_attention_empty_batch():
    q, k, v = make_qkv("contiguous", 0, 2, 32, 400, F16)
    out, lse = torch.ops.yolov12_fast.area_attention_fwd_cxx(q, k, v, 4, 32 ** -0.5, None)
    assert out.shape == (0, 2, 32, 400) and lse.shape == (0, 2, 400)


# ---------------------------------------------------------------------------------------------------------
# PE: x + depthwise conv


def check_pe(v, weight, bias, x, H, W):
    out = torch.ops.yolov12_fast.pe_add_cxx(v, weight, bias, x, H, W)
    assert out.shape == v.shape and out.dtype == v.dtype and out.is_contiguous()
    B, nh, D, N = v.shape
    C = nh * D
    k = weight.shape[-1]

    def conv(v_, w_, b_, x_):
        y = F.conv2d(v_.reshape(B, C, H, W), w_, b_, padding=k // 2, groups=C)
        if x_ is not None:
            y = y + x_.reshape(B, C, H, W)
        return y.reshape(B, nh, D, N)

    d = lambda t: None if t is None else t.double()
    oracle = conv(d(v), d(weight), d(bias), d(x))
    naive = conv(v, weight, bias, x)
    assert_close_to_oracle(out, naive, oracle, "pe_add")
    return out


@pytest.mark.parametrize("with_bias_x", [True, False], ids=["bias+x", "plain"])
@pytest.mark.parametrize("hw", [(40, 40), (20, 20), (30, 40), (7, 9), (33, 70), (1, 1), (80, 80)])
@pytest.mark.parametrize("ksize", [5, 7])
@pytest.mark.parametrize("layout", ["interleaved", "channels_last", "contiguous"])
@pytest.mark.parametrize("dtype", [F16, BF16, F32], ids=["fp16", "bf16", "fp32"])
def test_pe_add(dtype, layout, ksize, hw, with_bias_x):
    H, W = hw
    B, heads, D = 3, 2, 32
    C = heads * D
    v = make_qkv(layout, B, heads, D, H * W, dtype)[2]
    weight = torch.randn(C, 1, ksize, ksize, device="cuda", dtype=dtype) / ksize
    bias = torch.randn(C, device="cuda", dtype=dtype) if with_bias_x else None
    x = make_qkv("interleaved", B, heads, D, H * W, dtype)[0] if with_bias_x else None  # strided x
    check_pe(v, weight, bias, x, H, W)


@pytest.mark.parametrize("hw,ksize", [((40, 40), 7), ((20, 20), 7), ((80, 80), 7), ((7, 9), 5), ((33, 70), 3),
                                       ((1, 1), 7)])
@pytest.mark.parametrize("layout", ["interleaved", "channels_last"])
@pytest.mark.parametrize("dtype", [F16, BF16, F32], ids=["fp16", "bf16", "fp32"])
def test_pe_add_backward_cuda(dtype, layout, hw, ksize):
    """yolov12_fast.pe_add(backend="cuda")'s backward: dv by the PE kernel on dout with the kernel flipped, dw and db by
    pe_add_wgrad_cxx (per-tile sums, then at::sum), dx = dout; against float64 autograd of the conv, the yardstick
    ATen's backward in the same dtype; batch 3, strided v, the maps of 640 / 1280 and odd ones. Deterministic: a
    second backward gives the same bits."""
    _skip_bf16_if_unsupported(dtype)
    H, W = hw
    B, heads, D = 3, 2, 32
    C = heads * D
    v = make_qkv(layout, B, heads, D, H * W, dtype)[2].detach().requires_grad_(True)
    weight = (torch.randn(C, 1, ksize, ksize, device="cuda") / ksize).to(dtype).requires_grad_(True)
    bias = torch.randn(C, device="cuda", dtype=dtype, requires_grad=True)
    x = torch.randn(B, heads, D, H * W, device="cuda", dtype=dtype, requires_grad=True)
    dout = torch.randn(B, heads, D, H * W, device="cuda", dtype=dtype)
    leaves = (v, weight, bias, x)
    grads = torch.autograd.grad(yolov12_fast.pe_add(v, weight, bias, H, W, x=x, backend="cuda"), leaves, dout)
    again = torch.autograd.grad(yolov12_fast.pe_add(v, weight, bias, H, W, x=x, backend="cuda"), leaves, dout)

    def conv_grads(dt):
        ls = [t.detach().to(dt).requires_grad_(True) for t in leaves]
        y = F.conv2d(ls[0].reshape(B, C, H, W), ls[1], ls[2], padding=ksize // 2, groups=C).reshape(v.shape) + ls[3]
        return torch.autograd.grad(y, ls, dout.to(dt))

    oracle, naive = conv_grads(torch.float64), conv_grads(dtype)
    for name, g, g2, n_, o in zip(("dv", "dw", "db", "dx"), grads, again, naive, oracle):
        assert g.dtype == dtype and g.shape == o.shape
        assert torch.equal(g, g2), f"pe backward {name}: two runs differ"
        assert_close_to_oracle(g, n_, o, f"CUDA pe backward {name} {layout} {H}x{W} k{ksize} {dtype}")


def test_pe_add_3x3_and_noncontiguous_weight():
    B, heads, D, H, W = 2, 2, 32, 24, 36
    C = heads * D
    v = make_qkv("turbo", B, heads, D, H * W, F16)[2]
    weight = torch.randn(C, 1, 6, 6, device="cuda", dtype=F16)[:, :, ::2, ::2] / 3  # (C, 1, 3, 3), strided
    bias = torch.randn(2 * C, device="cuda", dtype=F16)[::2]
    check_pe(v, weight, bias, torch.randn(B, heads, D, H * W, device="cuda", dtype=F16), H, W)


def test_pe_add_public_op_backend_cuda():
    from yolov12_fast import functional

    B, heads, D, H, W = 2, 4, 32, 40, 40
    v = make_qkv("interleaved", B, heads, D, H * W, F16)[2]
    w = torch.randn(heads * D, 1, 7, 7, device="cuda", dtype=F16) / 7
    x = torch.randn(B, heads, D, H * W, device="cuda", dtype=F16)
    out = functional.pe_add(v, w, None, H, W, x=x, backend="cuda")
    torch.testing.assert_close(out, torch.ops.yolov12_fast.pe_add_cxx(v, w, None, x, H, W), atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# bad inputs raise clear errors


def test_bad_inputs_area_attention():
    op = torch.ops.yolov12_fast.area_attention_fwd_cxx
    q, k, v = make_qkv("contiguous", 1, 2, 32, 400, F16)
    s = 32 ** -0.5
    with pytest.raises(RuntimeError, match="float16 or bfloat16.*triton"):
        op(q.float(), k.float(), v.float(), 4, s, None)
    with pytest.raises(RuntimeError, match="head_dim 16 .*backend='triton'"):
        a, b, c = make_qkv("contiguous", 1, 2, 16, 400, F16)
        op(a, b, c, 4, s, None)
    with pytest.raises(RuntimeError, match="not divisible by area"):
        op(q, k, v, 3, s, None)
    with pytest.raises(RuntimeError, match="same shape"):
        op(q, k[..., :200], v, 4, s, None)
    with pytest.raises(RuntimeError, match="share a dtype"):
        op(q, k.to(BF16), v, 4, s, None)
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        op(q, k.cpu(), v, 4, s, None)
    with pytest.raises(RuntimeError, match="residual must have the shape"):
        op(q, k, v, 4, s, q[..., :200])
    with pytest.raises(RuntimeError, match="residual dtype"):
        op(q, k, v, 4, s, q.float())
    with pytest.raises(RuntimeError, match="area must be >= 1"):
        op(q, k, v, 0, s, None)
    if torch.cuda.get_device_capability() < (8, 0):
        with pytest.raises(RuntimeError, match="bfloat16 .*8.0"):
            op(q.to(BF16), k.to(BF16), v.to(BF16), 4, s, None)
    bwd = torch.ops.yolov12_fast.area_attention_bwd_cxx
    lse = torch.zeros(1, 2, 400, device="cuda")
    with pytest.raises(RuntimeError, match="lse must be float32"):
        bwd(q, q, k, v, q, None, lse[..., :200], 4, s)
    with pytest.raises(RuntimeError, match="dout and out must have q's dtype"):
        bwd(q.float(), q, k, v, q, None, lse, 4, s)
    with pytest.raises(RuntimeError, match="not divisible by area"):
        bwd(q, q, k, v, q, None, lse, 3, s)


def test_empty_inputs_give_empty_outputs():
    """No images or no tokens: empty out and lse from the kernel op itself, no launch and no 'does not fit' error
    (the plan for 0 tokens per area is unsupported, so the emptiness check must come first)."""
    op = torch.ops.yolov12_fast.area_attention_fwd_cxx
    for B, N in ((0, 400), (2, 0)):
        q, k, v = make_qkv("contiguous", B, 2, 32, N, F16)
        out, lse = op(q, k, v, 4, 32 ** -0.5, None)
        assert out.shape == (B, 2, 32, N) and lse.shape == (B, 2, N) and lse.dtype == F32


def test_bad_inputs_pe_add_wgrad():
    """The CUDA weight-gradient op refuses what its kernel cannot take, with the CPU op's messages; an empty batch gives
    zero gradients without a launch."""
    op = torch.ops.yolov12_fast.pe_add_wgrad_cxx
    v = torch.randn(1, 2, 32, 400, device="cuda", dtype=F16)
    with pytest.raises(RuntimeError, match="must equal the token count"):
        op(v, v, 7, 20, 21)
    with pytest.raises(RuntimeError, match="odd and positive"):
        op(v, v, 4, 20, 20)
    with pytest.raises(RuntimeError, match="kernel size 9 .*backend='reference'"):
        op(v, v, 9, 20, 20)
    with pytest.raises(RuntimeError, match="dout must have v's shape"):
        op(v[:, :1], v, 7, 20, 20)
    with pytest.raises(RuntimeError, match="cast dout"):
        op(v.float(), v, 7, 20, 20)
    with pytest.raises(RuntimeError, match="one CUDA device"):
        op(v.cpu(), v, 7, 20, 20)
    with pytest.raises(RuntimeError, match="float16, bfloat16 or float32"):
        op(v.double(), v.double(), 7, 20, 20)
    dw, db = op(v[:0], v[:0], 7, 20, 20)
    assert dw.shape == (64, 1, 7, 7) and db.shape == (64,) and not dw.any() and not db.any()


def test_bad_inputs_pe_add():
    op = torch.ops.yolov12_fast.pe_add_cxx
    v = torch.randn(1, 2, 32, 400, device="cuda", dtype=F16)
    w7 = torch.randn(64, 1, 7, 7, device="cuda", dtype=F16)
    with pytest.raises(RuntimeError, match="kernel size 9 .*backend='reference'"):
        op(v, torch.randn(64, 1, 9, 9, device="cuda", dtype=F16), None, None, 20, 20)
    with pytest.raises(RuntimeError, match="depthwise"):
        op(v, torch.randn(32, 1, 7, 7, device="cuda", dtype=F16), None, None, 20, 20)
    with pytest.raises(RuntimeError, match="must equal the token count"):
        op(v, w7, None, None, 20, 21)
    with pytest.raises(RuntimeError, match="weight must match"):
        op(v, w7.float(), None, None, 20, 20)
    with pytest.raises(RuntimeError, match="bias must be"):
        op(v, w7, torch.randn(63, device="cuda", dtype=F16), None, 20, 20)
    with pytest.raises(RuntimeError, match="x must have"):
        op(v, w7, None, v[..., :200], 20, 20)
    with pytest.raises(RuntimeError, match="float16, bfloat16 or float32"):
        op(v.double(), w7.double(), None, None, 20, 20)


# ----------------------------------------------------------------------------------------------------------------
# the conv epilogue: out = act(y + bias[c]) (csrc/cuda/bias_act.cu; the emulator tests its index math on the CPU)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("layout", ["nchw", "nchw-odd", "cl", "cl-slice", "nchw-slice"])
def test_bias_act_kernel(layout, dtype):
    """bias_act_cxx on a GPU against the float64 oracle (the same-dtype PyTorch math as the yardstick), vectorised and
    element-wise, both layouts, in place and into a slice of a buffer (nothing outside it written)."""
    shape = (3, 7, 5, 3) if layout == "nchw-odd" else (2, 24, 10, 12)
    B, C, H, W = shape
    y = torch.randn(shape, device="cuda").to(dtype)
    if layout == "cl":
        y = y.contiguous(memory_format=torch.channels_last)
    bias = torch.randn(C, device="cuda").to(dtype)
    for silu in (True, False):
        want = y.double() + bias.double().view(1, -1, 1, 1)
        want = F.silu(want) if silu else want
        naive = y + bias.view(1, -1, 1, 1)
        naive = F.silu(naive) if silu else naive
        buf = torch.full((B, C + 16, H, W), 12345.0, device="cuda", dtype=dtype)
        if layout.startswith("cl"):
            buf = buf.contiguous(memory_format=torch.channels_last)
            y = y.contiguous(memory_format=torch.channels_last)
        out = buf[:, 8:8 + C] if layout.endswith("slice") else torch.empty_like(y)
        torch.ops.yolov12_fast.bias_act_cxx(y, bias, silu, out)
        assert_close_to_oracle(out, naive, want, f"bias_act {layout} silu={silu}")
        if layout.endswith("slice"):
            assert (buf[:, :8] == 12345.0).all() and (buf[:, 8 + C:] == 12345.0).all(), "a write outside out"
        inplace = y.clone()
        torch.ops.yolov12_fast.bias_act_cxx(inplace, bias, silu, inplace)
        torch.testing.assert_close(inplace, out, rtol=0, atol=0)


def test_bias_act_refuses_what_it_cannot_run():
    """float64, mismatched shapes or devices, layouts it cannot pair: clear errors, nothing launched."""
    y = torch.randn(2, 4, 3, 3, device="cuda")
    b = torch.randn(4, device="cuda")
    op = torch.ops.yolov12_fast.bias_act_cxx
    with pytest.raises(RuntimeError, match="float16, bfloat16 or float32"):
        op(y.double(), b.double(), True, y.double())
    with pytest.raises(RuntimeError, match="bias must be"):
        op(y, torch.randn(5, device="cuda"), True, y)
    with pytest.raises(RuntimeError, match="one CUDA device"):
        op(y, b.cpu(), True, y)
    with pytest.raises(RuntimeError, match="both NCHW-like"):
        op(y, b, True, torch.empty_like(y, memory_format=torch.channels_last))
