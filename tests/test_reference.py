"""The reference oracle (yolov12_fast.reference) is proven equal to the installed ultralytics modules.

Every ultralytics module (and the turbo-variant TurboAAttn of tests/ultra_utils.py) is run in float64 (a deep copy
cast with .double()) on the float64 version of its real input, captured by forward hooks from a YOLO12 model whose
BatchNorms are calibrated on the bundled images (unit-scale activations). The reference runs in float64 on the same
input. Agreement bound, for every compared tensor:

    max |reference - module| <= RTOL * max |module|,   RTOL = 1e-10.

Why 1e-10: both sides evaluate the same math in float64 (unit roundoff u = 1.1e-16) with different operation orders
(BN folded vs applied, q scaled before vs after the product, softmax implementations). The longest reductions are
the cv2 1x1 conv of the x scale (9 x 384 = 3456 inputs) and attention over 1600 keys at 1280; the worst-case error
of such a sum is ~K u = 4e-13 of the summed magnitudes, the typical one ~sqrt(K) u = 1e-14, and ~20 such
operations run in sequence with gains of order one. Observed: <= 2.2e-14 unfused, <= 1e-14 fused, every scale
and variant. 1e-10 sits above the worst case and far below any semantic error: a softmax scale off by 0.1% moves the
outputs by 1e-4 to 2e-3 relative, and the "check the check" tests below assert that such deliberately wrong
references fail this very comparison (by more than 1000 x RTOL).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

import ultra_utils as U
from yolov12_fast import reference as R
from yolov12_fast.utils import num_threads

RTOL = 1e-10  # see the module docstring

SIZES = {"640": 640, "480x640": (480, 640), "1280": 1280}

# REFERENCE.md's table: scale -> ((c_, heads) layer 6, (c_, heads) layer 8, ABlocks per layer, gamma)
TABLE = {
    "n": ((64, 2), (128, 4), 4, False),
    "s": ((128, 4), (256, 8), 4, False),
    "m": ((256, 8), (256, 8), 4, False),
    "l": ((256, 8), (256, 8), 8, True),
    "x": ((384, 12), (384, 12), 8, True),
}
MLP_HIDDEN = {  # (ultralytics, turbo) hidden size of the ABlock MLP as a function of c_
    "n": (lambda c: 2 * c, lambda c: 2 * c), "s": (lambda c: 2 * c, lambda c: 2 * c),
    "m": (lambda c: 2 * c, lambda c: 2 * c),
    "l": (lambda c: int(c * 1.2), lambda c: int(c * 1.5)), "x": (lambda c: int(c * 1.2), lambda c: int(c * 1.5)),
}


def assert_oracle_equal(got: torch.Tensor, want: torch.Tensor, name: str, rtol: float = RTOL) -> float:
    """max|got - want| <= rtol * max|want| (NaN fails); returns the relative error. Prints where it fails."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    diff = (got - want).abs()
    scale = want.abs().max().item()
    err = diff.max().item()
    rel = err / scale if scale > 0 else err
    if not rel <= rtol:  # also catches NaN
        idx = torch.nonzero(diff > rtol * scale)[:5].tolist()
        raise AssertionError(f"{name}: max|ref - module| = {err:.3g} = {rel:.3g} x max|module| > {rtol:g}; "
                             f"{int((diff > rtol * scale).sum())}/{diff.numel()} elements over, first at {idx}")
    return rel


# ----------------------------------------------------------------------------------------------------------------
# Captured inputs (float32 model, calibrated once per scale/variant at 640; other sizes reuse those statistics)
# ----------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _captured(scale: str, variant: str, size: str) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (input, output)} of the attention layers 6 and 8, float32, on both images at `size`."""
    imgs = U.images(SIZES[size])
    if size == "1280":
        imgs = imgs[:1]  # bus.jpg only: bounds the float64 score matrices (see test_reference_equals_ultralytics_1280)
    return U.layer_inputs(U.build_model(scale, variant, imgsz=640), imgs)


@functools.lru_cache(maxsize=1)
def _modules(scale: str, variant: str, fused: bool) -> dict[str, torch.nn.Module]:
    return dict(U.attention_modules(U.build_model(scale, variant, imgsz=640, fused=fused)))


def _kind(m) -> str:
    return "AAttn" if U.is_aattn(m) else type(m).__name__


_REF = {"A2C2f": R.a2c2f, "ABlock": R.ablock, "AAttn": R.aattn}


@pytest.fixture(autouse=True)
def _single_thread():
    """Every test here runs with one intra-op thread (restored afterwards). Measured on the shared 2-core machines:
    float64 depthwise convs run one tiny GEMM per channel inside an OpenMP region, and with 2 threads on a busy
    machine they spin ~20x longer (1.1 s vs 0.05 s CPU for a 2x384x30x40 7x7 conv); the whole file took 13 min wall
    (6.7 min CPU) with 2 threads and 5.5 min (3 min CPU) with one under the same load."""
    with num_threads(1):
        yield


@torch.no_grad()
def _compare(scale, variant, size, fused, per_module=False, rtol=RTOL) -> dict[str, float]:
    """Reference vs module in float64 for the attention layers 6 and 8 (A2C2f) and, with per_module, every ABlock
    and AAttn inside them. The module side is one float64 forward of a deep copy of each layer; forward hooks on its
    ABlocks/AAttns record their float64 inputs and outputs, and the reference is run on each recorded input.
    Fused modules get the layer inputs captured from the unfused model (same weights up to BN folding).
    Returns {module name: relative error}."""
    io, mods = _captured(scale, variant, size), _modules(scale, variant, fused)
    errs = {}
    for layer in (6, 8):
        lname = f"model.{layer}"
        mod = mods[lname]
        mod64 = copy.deepcopy(mod).double().eval()
        subs = {n: m for n, m in mods.items() if n.startswith(lname + ".")} if per_module else {}
        subs64 = dict(mod64.named_modules())
        seen, hooks = {}, []
        for n in subs:
            def hook(m, inp, out, n=n):
                seen[n] = (inp[0], out)
            hooks.append(subs64[n[len(lname) + 1:]].register_forward_hook(hook))
        x = io[layer][0].double()
        try:
            want = mod64(x)
        finally:
            for h in hooks:
                h.remove()
        tag = f"{scale}/{variant}/{size}/{'fused' if fused else 'unfused'}"
        errs[lname] = assert_oracle_equal(R.a2c2f(mod, x), want, f"{tag} {lname}", rtol)
        assert set(seen) == set(subs), "hooks missed modules"
        for n, m in subs.items():
            errs[n] = assert_oracle_equal(_REF[_kind(m)](m, seen[n][0]), seen[n][1], f"{tag} {n}", rtol)
    return errs


# ----------------------------------------------------------------------------------------------------------------
# The harness itself: unit-scale activations, architecture as in REFERENCE.md
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale,variant", [
    pytest.param(s, v, marks=[pytest.mark.slow] if (s, v) == ("x", "turbo") else [], id=f"{s}-{v}")
    for s in U.SCALES for v in ("ultralytics", "turbo")])  # the x turbo model is built only for --runslow
def test_model_matches_reference_table(scale, variant):
    mods = _modules(scale, variant, False)
    (c6, h6), (c8, h8), nblocks, has_gamma = TABLE[scale]
    for layer, (c_, heads) in ((6, (c6, h6)), (8, (c8, h8))):
        a2 = mods[f"model.{layer}"]
        assert (a2.gamma is not None) == has_gamma
        blocks = [m for n, m in mods.items() if n.startswith(f"model.{layer}.") and type(m).__name__ == "ABlock"]
        assert len(blocks) == nblocks
        hidden = MLP_HIDDEN[scale][variant == "turbo"](c_)
        for b in blocks:
            attn = b.attn
            assert attn.num_heads == heads and attn.head_dim == 32 and attn.area == (4 if layer == 6 else 1)
            assert b.mlp[0].conv.out_channels == hidden
            if variant == "turbo":
                assert type(attn).__name__ == "TurboAAttn"
                assert attn.qk.conv.out_channels == 2 * c_ and attn.v.conv.out_channels == c_
                assert attn.pe.conv.kernel_size == (5, 5) and attn.pe.conv.padding == (2, 2)
            else:
                assert type(attn).__name__ == "AAttn" and attn.qkv.conv.out_channels == 3 * c_
                assert attn.pe.conv.kernel_size == (7, 7) and attn.pe.conv.padding == (3, 3)
            assert attn.pe.conv.groups == c_


@pytest.mark.parametrize("size", ["640", "480x640"])
def test_calibrated_activations_have_unit_scale(size):
    """Without calibration these are ~1e-6 and any kernel 'matches' (REFERENCE.md)."""
    io = _captured("n", "ultralytics", size)
    h, w = U.images(SIZES[size]).shape[-2:]
    assert io[6][0].shape[-2:] == (h // 16, w // 16) and io[8][0].shape[-2:] == (h // 32, w // 32)
    for layer, (x, y) in io.items():
        for t in (x, y):
            assert 0.2 < t.std().item() < 5.0, f"layer {layer}: activation std {t.std().item():.3g} is not unit scale"


# ----------------------------------------------------------------------------------------------------------------
# Reference == ultralytics (and == TurboAAttn), float64, layer by layer
# ----------------------------------------------------------------------------------------------------------------

def _case(scale, size, fused, slow=False):
    return pytest.param(scale, size, fused, marks=[pytest.mark.slow] if slow else [],
                        id=f"{scale}-{size}-{'fused' if fused else 'unfused'}")


# Every scale, fused and unfused, at 640x640 and 480x640. Per-ABlock/AAttn checks on the 480x640 unfused model
# (areas cut rows there); the x scale at 640 and its per-module run (27 s in CI) are the expensive part and run with
# --runslow (x's fused 480x640 model runs by default; l covers the per-module checks of the L/X block form).
_CASES = [_case(s, sz, f, slow=(s == "x" and (sz == "640" or not f))) for s in U.SCALES
          for sz in ("640", "480x640") for f in (False, True)]


@pytest.mark.parametrize("scale,size,fused", _CASES)
def test_reference_equals_ultralytics(scale, size, fused):
    per_module = size == "480x640" and not fused
    errs = _compare(scale, "ultralytics", size, fused, per_module)
    n_blocks = TABLE[scale][2]
    assert len(errs) == 2 + (4 * n_blocks if per_module else 0)  # 2 layers (+ ABlocks and AAttns of both)


@pytest.mark.parametrize("scale,size,fused", [_case(s, "480x640", f, slow=(s == "x")) for s in U.SCALES
                                              for f in (False, True)])
def test_reference_equals_turbo(scale, size, fused):
    errs = _compare(scale, "turbo", size, fused, per_module=not fused)
    assert len(errs) == 2 + (4 * TABLE[scale][2] if not fused else 0)


@pytest.mark.slow
@pytest.mark.parametrize("scale,size,fused", [_case(s, "1280", f) for s in U.SCALES for f in (False, True)])
def test_reference_equals_ultralytics_1280(scale, size, fused):
    """1600 tokens per area (one image: the float64 n x n score matrices of the x scale are ~1 GB each)."""
    assert len(_compare(scale, "ultralytics", size, fused)) == 2


@pytest.mark.slow
@pytest.mark.parametrize("scale,size,fused", [_case(s, sz, True) for s in ("n", "x") for sz in ("640", "1280")])
def test_reference_equals_turbo_640_1280(scale, size, fused):
    assert len(_compare(scale, "turbo", size, fused)) == 2


def test_pe_conv_bias_is_honoured():
    """Early v1.0 checkpoints carry a bias on pe.conv: the reference must add it (and the test must see it)."""
    mods = _modules("n", "ultralytics", False)
    with torch.no_grad():
        x = R.conv(_captured("n", "ultralytics", "480x640")[6][0].double(), mods["model.6"].cv1)  # 1st AAttn input
    mod = copy.deepcopy(mods["model.6.m.0.0.attn"])
    old = mod.pe.conv
    new = torch.nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                          groups=old.groups, bias=True)
    with torch.no_grad():
        new.weight.copy_(old.weight)
        new.bias.copy_(torch.randn(new.bias.shape))
    mod.pe.conv = new
    with torch.no_grad():
        want = copy.deepcopy(mod).double()(x)
        assert_oracle_equal(R.aattn(mod, x), want, "pe with bias")
        mod.pe.conv.bias = None  # a reference that dropped the bias would fail
        with pytest.raises(AssertionError):
            assert_oracle_equal(R.aattn(mod, x), want, "pe bias dropped")


def test_reference_keeps_module_and_input_and_dtype():
    mod = _modules("n", "ultralytics", False)["model.6"]
    before = {k: v.clone() for k, v in mod.state_dict().items()}
    x32 = _captured("n", "ultralytics", "480x640")[6][0]
    x = x32.double()
    x0 = x.clone()
    with torch.no_grad():
        y = R.a2c2f(mod, x)
        y32 = R.a2c2f(mod, x32)
    assert y.dtype == torch.float64 and torch.equal(x, x0)
    for k, v in mod.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    assert y32.dtype == torch.float32  # float32 in, float32 math out, within float32 rounding of float64
    assert_oracle_equal(y32.double(), y, "float32 reference", rtol=1e-4)


def test_reference_rejects_unknown_attention_layout():
    class NotAAttn(torch.nn.Module):
        num_heads, head_dim, area = 1, 32, 1
    with pytest.raises(TypeError, match="neither qkv"):
        R.aattn(NotAAttn(), torch.randn(1, 32, 2, 2))


# ----------------------------------------------------------------------------------------------------------------
# Check the check: deliberately wrong references must fail the same comparison
# ----------------------------------------------------------------------------------------------------------------

def _wrong(kind):
    good = R.area_attention

    def area_attention(q, k, v, area, scale=None, residual=None):
        scale = q.shape[2] ** -0.5 if scale is None else scale
        if kind == "scale+0.1%":
            return good(q, k, v, area, scale * 1.001, residual)
        if kind == "q<->k":
            return good(k, q, v, area, scale, residual)
        if kind == "areas ignored":
            return good(q, k, v, 1, scale, residual)
        if kind == "no pe":
            return good(q, k, v, area, scale, None)
        raise ValueError(kind)
    return area_attention


@pytest.mark.parametrize("variant", ["ultralytics", "turbo"])
@pytest.mark.parametrize("kind", ["scale+0.1%", "q<->k", "areas ignored", "no pe"])
def test_wrong_reference_fails(monkeypatch, kind, variant):
    _compare("n", variant, "480x640", False)  # the right reference passes...
    monkeypatch.setattr(R, "area_attention", _wrong(kind))
    # ...a wrong one fails, at layer 6 (area 4) first, and by a wide margin: its error exceeds even 1000 x RTOL
    with pytest.raises(AssertionError, match=r"model\.6"):
        _compare("n", variant, "480x640", False, rtol=1e3 * RTOL)


# ----------------------------------------------------------------------------------------------------------------
# The attention core against an explicit per-area loop, and its backward against autograd
# ----------------------------------------------------------------------------------------------------------------

def _naive(q, k, v, area, scale):
    """Explicit loop over image, head and area; softmax written out."""
    B, H, D, N = q.shape
    n = N // area
    out = torch.empty(B, H, D, N, dtype=q.dtype)
    lse = torch.empty(B, H, N, dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            for a in range(area):
                sl = slice(a * n, (a + 1) * n)
                s = scale * (q[b, h, :, sl].T @ k[b, h, :, sl])  # (n, n)
                m = s.max(dim=1, keepdim=True).values
                e = torch.exp(s - m)
                den = e.sum(dim=1, keepdim=True)
                out[b, h, :, sl] = v[b, h, :, sl] @ (e / den).T
                lse[b, h, sl] = (m + torch.log(den)).squeeze(1)
    return out, lse


def _qkv(layout, B, H, D, N, dtype=torch.float64):
    """q, k, v (B, H, D, N) in one of the layouts the fused ops must accept."""
    if layout == "contiguous":
        return [torch.randn(B, H, D, N, dtype=dtype) for _ in range(3)]
    if layout == "qkv_interleaved":  # ultralytics/v1.0: (B, H, 3D, N) split per head
        return list(torch.randn(B, H, 3 * D, N, dtype=dtype).split(D, dim=2))
    if layout == "qk_halves":  # turbo: (B, 2, H, D, N) halves + separate v
        q, k = torch.randn(B, 2, H, D, N, dtype=dtype).unbind(1)
        return [q, k, torch.randn(B, H, D, N, dtype=dtype)]
    if layout == "channels_last":  # token-major (B, N, 3, H, D) permuted to (B, H, D, N)
        t = torch.randn(B, N, 3, H, D, dtype=dtype).permute(2, 0, 3, 4, 1)
        return list(t.unbind(0))
    raise ValueError(layout)


CORE_SHAPES = [  # (B, heads, D, N, area): n = N // area
    (3, 2, 32, 49, 1),     # 224x224 P5-like: n = 49
    (3, 2, 32, 196, 4),    # n = 49, four areas
    (1, 3, 32, 1200, 4),   # 30x40 map: n = 300 (7.5 rows)
    (2, 2, 16, 300, 1),
    (2, 1, 8, 4, 4),       # n = 1: softmax over a single key
    (3, 1, 4, 1, 1),       # N = 1
]
LAYOUTS = ["contiguous", "qkv_interleaved", "qk_halves", "channels_last"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", CORE_SHAPES, ids=lambda s: "B{}h{}D{}N{}a{}".format(*s))
@pytest.mark.parametrize("residual", [False, True])
def test_area_attention_equals_naive_loop(shape, layout, residual):
    B, H, D, N, area = shape
    q, k, v = _qkv(layout, B, H, D, N)
    q = q * 3.0  # logits of a few units: a peaked softmax
    res = torch.randn(B, H, D, N, dtype=torch.float64) if residual else None
    scale = D ** -0.5
    want, want_lse = _naive(q, k, v, area, scale)
    if residual:
        want = want + res
    out, lse = R.area_attention_lse(q, k, v, area, None, res)  # default scale = D ** -0.5
    assert out.is_contiguous()
    assert_oracle_equal(out, want, "out", rtol=1e-13)
    assert_oracle_equal(lse, want_lse, "lse", rtol=1e-13)
    assert_oracle_equal(R.area_attention(q, k, v, area, scale, res), want, "area_attention", rtol=1e-13)
    if N // area > 1:  # check the check (softmax over one key does not depend on the scale)
        with pytest.raises(AssertionError):
            assert_oracle_equal(R.area_attention(q, k, v, area, scale * 1.001, res), want, "wrong", rtol=1e-13)


@pytest.mark.parametrize("layout", ["contiguous", "qkv_interleaved", "channels_last"])
@pytest.mark.parametrize("shape", [(3, 2, 32, 196, 4), (1, 2, 16, 1200, 4), (2, 1, 8, 4, 4), (2, 2, 32, 300, 1)],
                         ids=lambda s: "B{}h{}D{}N{}a{}".format(*s))
def test_area_attention_backward_equals_autograd(shape, layout):
    B, H, D, N, area = shape
    q, k, v = (t.detach().requires_grad_() for t in _qkv(layout, B, H, D, N))
    dout = torch.randn(B, H, D, N, dtype=torch.float64).transpose(-1, -2).contiguous().transpose(-1, -2)  # strided
    scale = 0.7 * D ** -0.5
    out = R.area_attention(q * 1.0, k * 1.0, v * 1.0, area, scale)
    want = torch.autograd.grad(out, (q, k, v), dout)
    got = R.area_attention_backward(dout, q.detach(), k.detach(), v.detach(), area, scale)
    for g, w, name in zip(got, want, ("dq", "dk", "dv")):
        assert g.shape == (B, H, D, N)
        assert_oracle_equal(g, w, name, rtol=1e-12)
    if N // area > 1:
        bad = R.area_attention_backward(dout, q.detach(), k.detach(), v.detach(), area, scale * 1.001)
        with pytest.raises(AssertionError):
            assert_oracle_equal(bad[0], want[0], "dq with wrong scale", rtol=1e-12)


def test_area_attention_autograd_gradcheck():
    """The reference forward itself is differentiable correctly (finite differences), so autograd is a valid
    oracle for area_attention_backward."""
    q, k, v = (torch.randn(2, 1, 3, 6, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: R.area_attention(q, k, v, 2), (q, k, v))
