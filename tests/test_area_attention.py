"""yolov12_fast::area_attention on the Triton backend (interpreter on CPU here, compiled on a GPU) and the
reference backend, against the float64 oracle. Shapes are small (the interpreter runs numpy) but awkward:
tokens per area not a multiple of any tile, areas cutting rows, batch 3, every input layout users produce."""

import pytest
import torch

import yolov12_fast
from yolov12_fast import reference
from tolerances import ATOL_FLOOR, assert_close_to_oracle, flash_style_backward

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"


def make_qkv(layout, B, heads, D, H, W, dtype, device=DEV):
    """q, k, v as the views the modules pass: never contiguous (B, heads, D, N) copies unless layout='plain'."""
    N, C = H * W, heads * D
    if layout == "interleaved":  # ultralytics / v1.0: qkv conv output, per head [q | k | v] blocks of D channels
        qkv = torch.randn(B, 3 * C, H, W, dtype=dtype, device=device)
        return qkv.view(B, heads, 3 * D, N).split(D, dim=2)
    if layout == "turbo":  # qk conv (all q, then all k) and a separate v conv
        qk = torch.randn(B, 2 * C, H, W, dtype=dtype, device=device)
        v = torch.randn(B, C, H, W, dtype=dtype, device=device)
        q, k = qk.view(B, 2, heads, D, N).unbind(1)
        return q, k, v.view(B, heads, D, N)
    if layout == "channels_last":  # conv output in channels_last: token stride 3C, channel stride 1
        qkv = torch.randn(B, 3 * C, H, W, dtype=dtype, device=device).to(memory_format=torch.channels_last)
        return qkv.view(B, heads, 3 * D, N).split(D, dim=2)
    if layout == "batch_slice":  # every other image of a larger batch, plus a storage offset
        qkv = torch.randn(2 * B + 1, 3 * C, H, W, dtype=dtype, device=device)[1::2]
        return qkv.view(B, heads, 3 * D, N).split(D, dim=2)
    if layout == "plain":
        return tuple(torch.randn(B, heads, D, N, dtype=dtype, device=device) for _ in range(3))
    raise ValueError(layout)


def oracle_and_naive(q, k, v, area, residual=None):
    f64 = lambda t: None if t is None else t.detach().double()
    o64, lse64 = reference.area_attention_lse(f64(q), f64(k), f64(v), area, residual=f64(residual))
    naive, _ = reference.area_attention_lse(q.detach(), k.detach(), v.detach(), area, residual=None if residual is None else residual.detach())
    return o64, lse64, naive


CASES = [  # (layout, B, heads, D, H, W, area)
    ("interleaved", 3, 2, 32, 6, 10, 4),    # 15 tokens per area = 1.5 rows: areas cut rows; batch 3
    ("interleaved", 1, 1, 32, 15, 20, 1),   # 300 tokens, not a multiple of any tile
    ("turbo", 2, 2, 16, 7, 7, 1),           # 49 tokens (224 classification)
    ("channels_last", 1, 2, 64, 5, 8, 4),   # 10 tokens per area, token stride C
    ("batch_slice", 3, 1, 32, 4, 9, 4),     # 9 tokens per area, non-contiguous batch with storage offset
    ("plain", 2, 3, 32, 2, 2, 4),           # 1 token per area
]
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if HAS_CUDA else [])  # interpreter bf16 is broken


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-B{c[1]}h{c[2]}d{c[3]}-{c[4]}x{c[5]}-a{c[6]}")
def test_forward_and_lse(case, dtype):
    layout, B, heads, D, H, W, area = case
    q, k, v = make_qkv(layout, B, heads, D, H, W, dtype)
    out, lse = torch.ops.yolov12_fast.area_attention_fwd(q, k, v, area, D ** -0.5, None, "triton")
    o64, lse64, naive = oracle_and_naive(q, k, v, area)
    assert out.shape == q.shape and out.is_contiguous() and out.dtype == dtype
    assert_close_to_oracle(out, naive, o64, f"out {case}")
    assert lse.dtype == torch.float32 and lse.shape == (B, heads, H * W)
    # lse is float32 whatever the input dtype: the yardstick is float32 math on the same (rounded) inputs
    _, lse32 = reference.area_attention_lse(q.float(), k.float(), v.float(), area)
    assert_close_to_oracle(lse, lse32, lse64, f"lse {case}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES[:3] + CASES[4:5], ids=lambda c: f"{c[0]}-B{c[1]}h{c[2]}d{c[3]}-{c[4]}x{c[5]}-a{c[6]}")
def test_gradients_through_autograd(case, dtype):
    layout, B, heads, D, H, W, area = case
    q, k, v = make_qkv(layout, B, heads, D, H, W, dtype)
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    res = torch.randn(B, heads, D, H * W, dtype=dtype, device=DEV, requires_grad=True)
    out = yolov12_fast.area_attention(*leaves, area, residual=res, backend="triton")
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves + [res], dout)
    # oracle: float64 autograd of the reference; naive: same-dtype reference backward
    l64 = [t.detach().double().requires_grad_(True) for t in leaves]
    o64 = reference.area_attention(*l64, area, residual=res.detach().double())
    g64 = torch.autograd.grad(o64, l64, dout.double())
    naive = reference.area_attention_backward(dout, *[t.detach() for t in leaves], area)
    for name, g, gn, go in zip("qkv", grads[:3], naive, g64):
        assert_close_to_oracle(g, gn, go, f"d{name} {case}")
    torch.testing.assert_close(grads[3], dout, rtol=0, atol=0)  # d residual is dout itself


GRAD_BACKENDS = ["triton", "reference"] + (["cpp"] if DEV == "cpu" else [])


@pytest.mark.parametrize("backend", GRAD_BACKENDS)
def test_op_with_residual_in_the_kernel_under_autograd(backend):
    """torch.ops.yolov12_fast.area_attention_fwd with the residual added inside the kernel and autograd on (the
    functional API adds it outside; direct op callers and compiled graphs do not): the backward must take the
    residual out of out before delta = rowsum(dO * O)."""
    B, heads, D, N, area = 2, 2, 32, 40, 4
    q, k, v, res = (torch.randn(B, heads, D, N, device=DEV) for _ in range(4))
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, _ = torch.ops.yolov12_fast.area_attention_fwd(*leaves, area, D ** -0.5, res, backend)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dout)
    l64 = [t.double().requires_grad_(True) for t in (q, k, v)]
    g64 = torch.autograd.grad(reference.area_attention(*l64, area, residual=res.double()), l64, dout.double())
    naive = reference.area_attention_backward(dout, q, k, v, area)
    for name, g, gn, go in zip("qkv", grads, naive, g64):
        assert_close_to_oracle(g, gn, go, f"d{name} {backend}")


@pytest.mark.parametrize("backend", GRAD_BACKENDS)
@pytest.mark.parametrize("layout", ["interleaved", "channels_last", "turbo"])
def test_gradients_through_strided_views_and_a_strided_dout(backend, layout):
    """Autograd into the conv outputs themselves: q, k, v stay strided views of them in the backward (the tests
    above differentiate contiguous copies; turbo's k and v have different strides), and dout arrives
    non-contiguous (token-major storage)."""
    B, heads, D, H, W, area = 2, 2, 32, 5, 6, 2
    C, N = heads * D, H * W
    if layout == "turbo":  # a qk conv output (all q, then all k) and a separate v conv output
        srcs = [torch.randn(B, 2 * C, H, W, device=DEV), torch.randn(B, C, H, W, device=DEV)]
        views = lambda s: (*s[0].view(B, 2, heads, D, N).unbind(1), s[1].view(B, heads, D, N))
    else:
        srcs = [torch.randn(B, 3 * C, H, W, device=DEV)]
        if layout == "channels_last":
            srcs = [srcs[0].to(memory_format=torch.channels_last)]
        views = lambda s: s[0].view(B, heads, 3 * D, N).split(D, dim=2)

    leaves = [t.clone().requires_grad_(True) for t in srcs]
    out = yolov12_fast.area_attention(*views(leaves), area, backend=backend)
    dout = torch.randn(B, heads, N, D, device=DEV).transpose(2, 3)
    assert not dout.is_contiguous()
    grads = torch.autograd.grad(out, leaves, dout)
    l64, ln = [t.double().requires_grad_(True) for t in srcs], [t.clone().requires_grad_(True) for t in srcs]
    g64 = torch.autograd.grad(reference.area_attention(*views(l64), area), l64, dout.double())
    gn = torch.autograd.grad(reference.area_attention(*views(ln), area), ln, dout)
    for i, (g, n_, o) in enumerate(zip(grads, gn, g64)):
        assert_close_to_oracle(g, n_, o, f"d(source {i}) {backend} {layout}")


# The Triton dk/dv program's rows of padding keys (past the area's end) hold inf and NaN here, by design: they are
# never stored (kernels/area_attention.py, dk/dv stage 2). The interpreter's numpy reports them.
@pytest.mark.filterwarnings("ignore:overflow encountered in exp2:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul:RuntimeWarning")
@pytest.mark.parametrize("backend", GRAD_BACKENDS)
def test_backward_with_every_score_far_below_zero(backend):
    """Every score about -280 (lse about -280): the backward's P = exp2(s - lse) of padding keys in a partial tile
    is exp2(+280) = inf, and inf * 0 is NaN unless those keys are masked. 20 keys: a full tile and a partial one.
    The yardstick includes the fused kernels' own formulation done naively (tolerances.flash_style_backward): dq's
    first component is 0 by cancellation (every k has -40 there), which autograd's single P keeps but a P recomputed from
    the stored lse, at |score| ~ 400 in base 2, does not (found on the H100: fp32 Triton dq 1.5e-4 there, autograd
    4.5e-6, this formulation 0.7-1.9e-3)."""
    B, heads, D, N = 1, 1, 32, 20
    q, k = torch.randn(B, heads, D, N, device=DEV) * 0.1, torch.randn(B, heads, D, N, device=DEV) * 0.1
    q[:, :, 0], k[:, :, 0] = 40.0, -40.0
    v = torch.randn(B, heads, D, N, device=DEV)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = yolov12_fast.area_attention(*leaves, 1, backend=backend)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, dout)
    l64 = [t.double().requires_grad_(True) for t in (q, k, v)]
    g64 = torch.autograd.grad(reference.area_attention(*l64, 1), l64, dout.double())
    naive = reference.area_attention_backward(dout, q, k, v, 1)
    flash_style = flash_style_backward(dout, q, k, v)
    for name, g, gn, gf, go in zip("qkv", grads, naive, flash_style, g64):
        assert_close_to_oracle(g, (gn, gf), go, f"d{name} {backend}")


def test_forward_matches_oracle_with_residual_and_custom_scale():
    q, k, v = make_qkv("interleaved", 2, 2, 32, 6, 10, torch.float32)
    res = torch.randn(2, 2, 32, 60, device=DEV).transpose(-1, -2).contiguous().transpose(-1, -2)  # strided residual
    out = yolov12_fast.area_attention(q, k, v, 4, scale=0.3, residual=res, backend="triton")
    o64, _ = reference.area_attention_lse(q.double(), k.double(), v.double(), 4, scale=0.3, residual=res.double())
    naive = reference.area_attention(q, k, v, 4, scale=0.3, residual=res)
    assert_close_to_oracle(out, naive, o64, "residual+scale")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16-split", "fp32-masked-loop"])
@pytest.mark.parametrize("scale", [0.3, -0.4, 0.0])
@pytest.mark.parametrize("hw", [(4, 8), (5, 8)], ids=["n32-full-tiles-only", "n40-full-tiles-and-a-tail"])
def test_scale_sign_and_tile_split(scale, hw, dtype):
    """With SPLIT (tensor-core dots at head_dim <= 32: fp16 here; the interpreter's IEEE fp32 takes the one masked
    loop) full key/query tiles run without masks and fold the scale into the exponent (the running max of the
    scaled scores is max(raw) * scale, or min(raw) * scale for a negative scale); the partial last tile takes the
    masks. Any scale sign, with and without a tail (interpreter tiles: 32 queries x 16 keys).
    Forward with logits spread over about +-100 in base 2, where a max taken on the wrong side overflows exp2
    (2^128); gradients at the usual spread (the backward has no running max; at +-100 its lse-based P carries
    about 1e-5 relative error in fp32, as every FlashAttention-style backward does)."""
    H, W = hw
    q, k, v = make_qkv("interleaved", 2, 2, 32, H, W, dtype)
    big = [t * m for t, m in ((q, 4.0), (k, 4.0), (v, 1.0))]
    out = yolov12_fast.area_attention(*big, 1, scale=scale, backend="triton")
    o64 = reference.area_attention(*(t.double() for t in big), 1, scale=scale)
    assert_close_to_oracle(out, reference.area_attention(*big, 1, scale=scale), o64, f"out scale={scale}")

    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = yolov12_fast.area_attention(q, k, v, 1, scale=scale, backend="triton")
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    l64 = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    g64 = torch.autograd.grad(reference.area_attention(*l64, 1, scale=scale), l64, dout.double())
    naive_g = reference.area_attention_backward(dout, q.detach(), k.detach(), v.detach(), 1, scale=scale)
    for name, g, gn, go in zip("qkv", grads, naive_g, g64):
        assert_close_to_oracle(g, gn, go, f"d{name} scale={scale}")


def test_fp16_large_logits_do_not_overflow():
    """Scores of ~1e4 overflow fp16 if exponentiated or accumulated in fp16; fp32 accumulation must not."""
    q, k, v = make_qkv("plain", 1, 1, 32, 4, 8, torch.float16)
    q = (q * 40).to(torch.float16)
    k = (k * 40).to(torch.float16)
    out = yolov12_fast.area_attention(q, k, v, 1, backend="triton")
    o64, _ = reference.area_attention_lse(q.double(), k.double(), v.double(), 1)
    naive = reference.area_attention(q, k, v, 1)  # torch's fp16 softmax subtracts the max: finite, fp16-rounded
    assert torch.isfinite(out).all() and torch.isfinite(naive).all()
    assert_close_to_oracle(out, naive, o64, "fp16 large logits")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_the_check_refuses_ten_times_the_naive_error(dtype):
    """Check the check's strictness, not only gross errors: the principle allows a small multiple of the naive
    same-dtype error, so an output off by 10x that error fails, and one off by the naive error itself passes.
    Values of order 1000, so that the naive error, not the floor, sets the bound."""
    q, k, v = make_qkv("interleaved", 1, 2, 32, 4, 10, dtype)
    v = (v.float() * 1000).to(dtype)
    o64, _, naive = oracle_and_naive(q, k, v, 4)
    err = (naive.double() - o64).abs().max().item()
    assert err > 10 * ATOL_FLOOR[dtype]
    assert_close_to_oracle((o64 + err).to(dtype), naive, o64, "the naive error")
    with pytest.raises(AssertionError, match="exceed the bound"):
        assert_close_to_oracle((o64 + 10 * err).to(dtype), naive, o64, "10x the naive error")


def test_deterministic_bitwise():
    q, k, v = [t.detach().requires_grad_(True) for t in make_qkv("plain", 2, 2, 32, 4, 5, torch.float32)]
    runs = []
    for _ in range(2):
        out = yolov12_fast.area_attention(q, k, v, 4, backend="triton")
        runs.append((out, *torch.autograd.grad(out, (q, k, v), torch.ones_like(out))))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_the_check_catches_a_wrong_scale():
    """Check the check: a kernel with the scale off by 0.1% must fail the tolerance."""
    q, k, v = make_qkv("interleaved", 1, 2, 32, 4, 10, torch.float32)
    q, k = q * 3, k * 3  # logits of order 10, as in calibrated models
    wrong = yolov12_fast.area_attention(q, k, v, 4, scale=32 ** -0.5 * 1.001, backend="triton")
    o64, _, naive = oracle_and_naive(q, k, v, 4)
    with pytest.raises(AssertionError, match="exceed the bound"):
        assert_close_to_oracle(wrong, naive, o64, "wrong scale")


@pytest.mark.parametrize("backend", ["triton", "reference"] + (["cpp"] if DEV == "cpu" else []))
@pytest.mark.parametrize("layout", ["interleaved", "channels_last"])
def test_in_place_add_matches_the_out_of_place_op(backend, layout):
    """area_attention_add_(r, q, k, v) = r + attention, written into r itself (Triton: by the kernel, over the
    residual tile it has just read; others: out of place, copied back), bitwise what area_attention(..., residual=r)
    returns; a strided residual takes the copy-back path with the same result."""
    q, k, v = make_qkv(layout, 3, 2, 32, 5, 8, torch.float32)
    for r in (torch.randn(3, 2, 32, 40, device=DEV), torch.randn(3, 2, 40, 32, device=DEV).transpose(2, 3)):
        want = yolov12_fast.area_attention(q, k, v, 4, residual=r, backend=backend)
        ptr = r.data_ptr()
        got = yolov12_fast.area_attention_add_(r, q, k, v, 4, backend=backend)
        assert got is r and r.data_ptr() == ptr
        assert torch.equal(r, want), (r - want).abs().max()


def test_in_place_add_over_its_own_input_is_computed_out_of_place(monkeypatch):
    """A residual that is one of the inputs (v made contiguous and passed as both): every program reads all of an
    area's v, so writing the output over it while others still read would race on a GPU (the interpreter runs
    programs one after another and would not show it). The Triton launcher must then get a fresh `out`, and the
    result is r + attention of the original values."""
    from yolov12_fast.kernels import area_attention as tk

    outs = []
    real = tk.area_attention_fwd
    monkeypatch.setattr(tk, "area_attention_fwd", lambda *a, out=None, **kw: (outs.append(out), real(*a, out=out, **kw))[1])
    q, k, v = make_qkv("interleaved", 2, 2, 32, 4, 10, torch.float32)
    for which in range(3):
        qkv = [q, k, v]
        qkv[which] = qkv[which].contiguous()
        r = qkv[which]
        naive = reference.area_attention(*qkv, 4, residual=r)
        want = reference.area_attention(*(t.double() for t in qkv), 4, residual=r.double())
        outs.clear()
        with torch.no_grad():
            yolov12_fast.area_attention_add_(r, *qkv, 4, backend="triton")
        assert outs and all(o is None or o.data_ptr() != r.data_ptr() for o in outs), "wrote over its own input"
        assert_close_to_oracle(r, naive, want, f"residual is {'qkv'[which]}")
    outs.clear()
    r = torch.randn(2, 2, 32, 40, device=DEV)  # a separate residual still takes the in-place path
    yolov12_fast.area_attention_add_(r, q, k, v, 4, backend="triton")
    assert outs and outs[0] is r


def test_in_place_add_refuses_autograd():
    q, k, v = (t.detach().requires_grad_(True) for t in make_qkv("interleaved", 1, 1, 32, 4, 4, torch.float32))
    with pytest.raises(RuntimeError, match="no autograd; for training use area_attention"):
        yolov12_fast.area_attention_add_(torch.randn(1, 1, 32, 16, device=DEV), q, k, v, 1)


def test_in_place_forward_survives_autotuning(monkeypatch):
    """On a GPU the autotuner times several configs on the first call of each shape. The in-place form writes Out
    over the residual it reads, so every timed run would add the attention again unless the tuner restores Out
    (FWD_AUTOTUNE's restore_value). Here the real kernel runs under the interpreter behind a tuner with two configs
    and a timing stub that runs each config three times, through the in-place op as AAttn calls it."""
    import triton
    from yolov12_fast.kernels import area_attention as aa

    if DEV == "cuda":
        pytest.skip("interpreter-only: on a GPU the real tuner runs (test_in_place_add_matches_the_out_of_place_op)")
    timed = []

    def bench(kernel_call, quantiles):
        for _ in range(3):
            kernel_call()
        timed.append(len(timed))
        return [1.0 + len(timed)] * len(quantiles)  # the first config "wins"

    tuner = triton.autotune(configs=[aa._cfg(32, 16, 4, 1), aa._cfg(16, 16, 4, 1)],
                            **{**aa.FWD_AUTOTUNE, "prune_configs_by": None, "do_bench": bench})(aa.area_attention_fwd_kernel.fn)
    monkeypatch.setattr(aa, "area_attention_fwd_kernel", tuner)
    q, k, v = make_qkv("interleaved", 2, 2, 32, 6, 10, torch.float32)
    res = torch.randn(2, 2, 32, 60)
    o64, _ = reference.area_attention_lse(q.double(), k.double(), v.double(), 4, residual=res.double())
    naive = reference.area_attention(q, k, v, 4, residual=res)
    r = res.clone()
    with torch.no_grad():
        yolov12_fast.area_attention_add_(r, q, k, v, 4, backend="triton")
    assert len(timed) == 2, "the tuner did not time both configs: the test proved nothing"
    assert_close_to_oracle(r, naive, o64, "in place, first call (tuned)")


def test_each_batch_size_class_is_tuned_on_its_own(monkeypatch):
    """The tuner's key holds `seqs` (B * heads * area as a power of two): the best tile depends on how many programs
    fill the GPU, so batch 1 and batch 8 are timed separately instead of batch 8 reusing batch 1's choice, and a
    batch in an already tuned class is not timed again."""
    import triton
    from yolov12_fast.kernels import area_attention as aa

    if DEV == "cuda":
        pytest.skip("interpreter-only: builds a tuner around the interpreted kernel")
    assert [aa.seq_bucket(*a) for a in ((1, 2, 4), (3, 2, 4), (8, 2, 4), (512, 12, 4))] == [8, 32, 64, 4096]
    timed = []

    def bench(kernel_call, quantiles):
        timed.append(1)
        return [1.0] * len(quantiles)

    for name, autotune in (("area_attention_fwd_kernel", aa.FWD_AUTOTUNE), ("area_attention_bwd_dq_kernel",
                                                                            aa.BWD_AUTOTUNE)):
        assert "seqs" in autotune["key"] and "seqs" in getattr(aa, name).fn.arg_names
    tuner = triton.autotune(configs=[aa._cfg(32, 16, 4, 1), aa._cfg(16, 16, 4, 1)],
                            **{**aa.FWD_AUTOTUNE, "prune_configs_by": None, "do_bench": bench})(aa.area_attention_fwd_kernel.fn)
    monkeypatch.setattr(aa, "area_attention_fwd_kernel", tuner)
    counts = []
    for B in (1, 8, 1, 7):  # 7 * 2 * 4 = 56 -> 64, batch 8's class
        q, k, v = (torch.randn(B, 2, 32, 40) for _ in range(3))
        out, _ = aa.area_attention_fwd(q, k, v, 4, 32 ** -0.5)
        torch.testing.assert_close(out, reference.area_attention(q, k, v, 4), rtol=1e-4, atol=1e-4)
        counts.append(len(timed))
    assert counts == [2, 4, 4, 4], counts


@pytest.mark.parametrize("split", [True, False], ids=["split", "masked"])
@pytest.mark.parametrize("pair", [0, 1, 2])
def test_every_gpu_tile_config_against_the_oracle(monkeypatch, pair, split):
    """The interpreter pins one small config (INTERPRET_CONFIG); the tiles a GPU autotunes over (forward 64x64,
    64x32, 128x64; backward 64x32, 32x32) run here too, with SPLIT's unmasked full tiles and without, on an area that
    is not a multiple of any tile (n = 49, two areas) and one that spans full tiles and a partial one (n = 130)."""
    import triton
    from yolov12_fast.kernels import area_attention as aa

    if DEV == "cuda":
        pytest.skip("interpreter-only: on a GPU the autotuner runs these configs")
    fc, bc = [(aa.FWD_CONFIGS[0], aa.BWD_CONFIGS[0]), (aa.FWD_CONFIGS[1], aa.BWD_CONFIGS[1]),
              (aa.FWD_CONFIGS[2], aa.BWD_CONFIGS[0])][pair]
    for name, cfg, autotune in (("area_attention_fwd_kernel", fc, aa.FWD_AUTOTUNE),
                                ("area_attention_bwd_dkdv_kernel", bc, aa.BWD_AUTOTUNE),
                                ("area_attention_bwd_dq_kernel", bc, aa.BWD_AUTOTUNE)):
        monkeypatch.setattr(aa, name, triton.autotune(configs=[cfg], **autotune)(getattr(aa, name).fn))
    monkeypatch.setattr(aa, "_launch_flags", lambda q, prec: {"SPLIT": split, "DETERMINISTIC": False})
    for area, n in ((2, 49), (1, 130)):
        q, k, v = make_qkv("interleaved", 1, 2, 16, 1, area * n, torch.float32)
        res = torch.randn(1, 2, 16, area * n)
        out, lse = aa.area_attention_fwd(q, k, v, area, 16 ** -0.5, residual=res)
        o64, l64 = reference.area_attention_lse(q.double(), k.double(), v.double(), area, residual=res.double())
        tag = f"{fc.kwargs} / {bc.kwargs} split={split} area={area} n={n}"
        assert_close_to_oracle(out, reference.area_attention(q, k, v, area, residual=res), o64, "out " + tag)
        torch.testing.assert_close(lse.double(), l64, rtol=1e-5, atol=1e-5)
        dout = torch.randn_like(res)
        grads = aa.area_attention_bwd(dout, q, k, v, out, res, lse, area, 16 ** -0.5)
        want = reference.area_attention_backward(dout.double(), q.double(), k.double(), v.double(), area)
        for nm, g, w in zip("qkv", grads, want):
            torch.testing.assert_close(g.double(), w, rtol=1e-3, atol=1e-4, msg=f"d{nm} {tag}")


def test_fp32_tf32_opt_in_is_read_from_every_torch_setting():
    """dot_precision's fp32 rule outside the interpreter: IEEE unless the user opted into TF32, whichever way (the
    newer fp32_precision flag makes torch.get_float32_matmul_precision() raise, which must not reach a launch)."""
    from yolov12_fast.kernels.area_attention import user_allows_tf32

    matmul = torch.backends.cuda.matmul
    saved_prec = torch.get_float32_matmul_precision() if not hasattr(matmul, "fp32_precision") else None
    saved_new = getattr(matmul, "fp32_precision", None)
    try:
        torch.set_float32_matmul_precision("highest")
        assert not user_allows_tf32()
        torch.set_float32_matmul_precision("high")
        assert user_allows_tf32()
        torch.set_float32_matmul_precision("highest")
        if hasattr(matmul, "fp32_precision"):
            matmul.fp32_precision = "tf32"
            assert user_allows_tf32()
            matmul.fp32_precision = "ieee"
            assert not user_allows_tf32()
    finally:
        if saved_new is not None:
            matmul.fp32_precision = saved_new
        else:
            torch.set_float32_matmul_precision(saved_prec)


def test_deterministic_mode_pins_one_config():
    """Tiles set the summation order, so under torch.use_deterministic_algorithms(True) the tuner gets one fixed
    config per shape instead of the fastest measured one (which could differ between runs)."""
    from yolov12_fast.kernels import area_attention as aa

    configs = aa.FWD_CONFIGS + aa.FMA_CONFIGS
    args = {"Q": torch.empty(1, dtype=torch.float16), "n": 400}
    free = aa._prune(configs, args, DOT_PRECISION="tf32", DETERMINISTIC=False)
    pinned = aa._prune(configs, args, DOT_PRECISION="tf32", DETERMINISTIC=True)
    assert len(free) > 1 and pinned == free[:1]
    prev = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert aa._launch_flags(torch.empty(1, 2, 32, 4), "ieee")["DETERMINISTIC"] is True
    finally:
        torch.use_deterministic_algorithms(prev)


def test_concurrent_first_calls_tune_safely(monkeypatch):
    """Threads serving one model (an inference server) make their first calls at the same time, each with a shape the
    tuner has not timed. Triton's Autotuner keeps the call's arguments on the shared tuner object (self.nargs) while
    pruning and timing, and clears them when a launch ends: unguarded, one thread's launch ends mid-way through
    another's tuning, which then prunes or restores with no (or the wrong) arguments. The launchers take a lock
    around autotuned launches. Here 4 threads tune 4 keys at once, under the interpreter, the timing stub sleeping
    (GIL released) to open the window; every result must match the reference and no call may raise."""
    import threading
    import time

    import triton
    from yolov12_fast.kernels import area_attention as aa

    if DEV == "cuda":
        pytest.skip("interpreter-only: builds a tuner around the interpreted kernel")

    def bench(kernel_call, quantiles):
        time.sleep(0.02)
        kernel_call()
        return [1.0] * len(quantiles)

    tuner = triton.autotune(configs=[aa._cfg(32, 16, 4, 1), aa._cfg(16, 16, 4, 1)],
                            **{**aa.FWD_AUTOTUNE, "do_bench": bench})(aa.area_attention_fwd_kernel.fn)
    monkeypatch.setattr(aa, "area_attention_fwd_kernel", tuner)
    errors, done = [], []

    def work(B):
        try:
            q, k, v = (torch.randn(B, 2, 32, 40) for _ in range(3))
            res = torch.randn(B, 2, 32, 40)
            r = res.clone()
            aa.area_attention_fwd(q, k, v, 4, 32 ** -0.5, r, out=r)  # in place: the tuner restores Out per timing
            torch.testing.assert_close(r, reference.area_attention(q, k, v, 4, residual=res), rtol=1e-4, atol=1e-4)
            done.append(B)
        except Exception as e:  # noqa: BLE001 - reported below with the thread's batch
            errors.append(f"batch {B}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(B,)) for B in (1, 3, 5, 9)]  # 4 seqs classes: 8, 32, 64, 128
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(done) == [1, 3, 5, 9]
    assert len(tuner.cache) == 4, "each thread's key tuned once"


def test_tuned_configs_are_kept_per_gpu_arch(monkeypatch):
    """The attention kernels' autotune key holds the device's compute capability (`arch`): in a process with GPUs
    of two kinds, a shape tuned on one is tuned again on the other instead of reusing a tile chosen (and pruned for
    shared memory) for another GPU. Two launches of one shape as on an sm_80 and an sm_90: two tuned keys."""
    import triton

    from yolov12_fast.kernels import area_attention as aa

    if DEV == "cuda":
        pytest.skip("interpreter-only: builds a tuner around the interpreted kernel, the device's arch stubbed")
    tuner = triton.autotune(configs=[aa._cfg(32, 16, 4, 1), aa._cfg(16, 16, 4, 1)],
                            **{**aa.FWD_AUTOTUNE, "do_bench": lambda fn, quantiles=None, **kw: [1.0] * len(quantiles)})(
        aa.area_attention_fwd_kernel.fn)
    monkeypatch.setattr(aa, "area_attention_fwd_kernel", tuner)
    q, k, v = (torch.randn(1, 1, 32, 32) for _ in range(3))
    for arch in (80, 90, 80):
        monkeypatch.setattr(aa, "tensor_arch", lambda t, arch=arch: arch)
        out, _ = aa.area_attention_fwd(q, k, v, 2, 32 ** -0.5)
        torch.testing.assert_close(out, reference.area_attention(q, k, v, 2), rtol=1e-4, atol=1e-4)
    at = tuner.keys.index("arch")
    assert sorted(key[at] for key in tuner.cache) == [80, 90], list(tuner.cache)
