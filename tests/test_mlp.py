"""yolov12_fast::mlp_residual / mlp_residual_out (ABlock's MLP + residual, BN folded) on every backend here, against
the float64 conv oracle: odd hidden sizes (307, 460), token counts that are not multiples of the block, batch 3,
channels_last and channel-slice inputs, writing into a channel slice, 16-bit inputs, gradients of every input,
and clear errors on bad input."""

import pytest
import torch
import torch.nn.functional as F

import yolov12_fast
from tolerances import assert_close_to_oracle

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["reference", "triton", "auto"]  # auto: on CPU, batch-1 NCHW fp32 runs as addmm (mlp.cpu_gemm)


def params(C, HID, dtype=torch.float32, grad=False):
    """Folded-conv-like weights: unit-variance activations in and out (what BN-folded convs give)."""
    w1 = torch.randn(HID, C, 1, 1, device=DEV) / C ** 0.5
    b1 = torch.randn(HID, device=DEV) * 0.5
    w2 = torch.randn(C, HID, 1, 1, device=DEV) / HID ** 0.5
    b2 = torch.randn(C, device=DEV) * 0.5
    return [t.to(dtype).requires_grad_(grad) for t in (w1, b1, w2, b2)]


def oracle(x, w1, b1, w2, b2):
    d = [t.detach().double() for t in (x, w1, b1, w2, b2)]
    return d[0] + F.conv2d(F.silu(F.conv2d(d[0], d[1], d[2])), d[3], d[4])


def naive(x, w1, b1, w2, b2):
    """What the unfused torch path computes in x's dtype (the yardstick of the tolerance table)."""
    d = [t.detach() for t in (x, w1, b1, w2, b2)]
    if d[0].dtype == torch.float16 and d[0].device.type == "cpu":  # no fp16 conv on CPU: round like fp16 storage
        f = [t.float() for t in d]
        h = F.silu(F.conv2d(f[0], f[1], f[2])).half().float()
        return (f[0] + F.conv2d(h, f[3], f[4])).half()
    return d[0] + F.conv2d(F.silu(F.conv2d(d[0], d[1], d[2])), d[3], d[4])


SHAPES = [  # (B, C, HID, H, W, layout)
    (3, 64, 128, 5, 7, "nchw"),          # N = 35: not a multiple of the token block
    (1, 96, 307, 3, 5, "channels_last"),  # odd hidden (yolo12l), C not a power of two
    (2, 128, 256, 4, 9, "slice"),         # a channel slice of a bigger NCHW buffer (A2C2f's concat)
    (1, 384, 460, 2, 3, "nchw"),          # yolo12x: 3 output-channel tiles of 128 or 2 of 256, odd hidden
    (2, 40, 72, 3, 4, "nchw"),            # C not a multiple of the 32-channel K slice: the K tail is masked
    (1, 64, 76, 5, 7, "nchw"),            # batch-1 NCHW fp32 (yolo12n's hidden 76): auto's addmm path on CPU
]


def make_x(B, C, H, W, layout, dtype=torch.float32):
    if layout == "slice":
        buf = torch.randn(B, 3 * C, H, W, device=DEV, dtype=dtype)
        return buf[:, C:2 * C]
    x = torch.randn(B, C, H, W, device=DEV, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,C,HID,H,W,layout", SHAPES, ids=[f"C{s[1]}-h{s[2]}-{s[5]}" for s in SHAPES])
def test_forward(backend, B, C, HID, H, W, layout):
    x = make_x(B, C, H, W, layout)
    p = params(C, HID)
    out = yolov12_fast.mlp_residual(x, *p, backend=backend)
    assert out.shape == x.shape
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    else:
        assert out.is_contiguous()
    assert_close_to_oracle(out, naive(x, *p), oracle(x, *p), f"mlp {backend} {layout}")


@pytest.mark.parametrize("B", [1, 2])  # batch 1: the slice is contiguous (auto's addmm writes into it on CPU)
@pytest.mark.parametrize("backend", BACKENDS)
def test_out_writes_into_a_channel_slice_only(backend, B):
    C, HID, H, W = 64, 128, 3, 7
    x = torch.randn(B, C, H, W, device=DEV)
    p = params(C, HID)
    buf = torch.randn(B, 3 * C, H, W, device=DEV)
    before = buf.clone()
    ret = yolov12_fast.mlp_residual(x, *p, out=buf[:, C:2 * C], backend=backend)
    assert ret.data_ptr() == buf[:, C:2 * C].data_ptr()
    assert torch.equal(buf[:, :C], before[:, :C]) and torch.equal(buf[:, 2 * C:], before[:, 2 * C:])
    assert_close_to_oracle(buf[:, C:2 * C], naive(x, *p), oracle(x, *p), f"mlp out= {backend}")


@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if DEV == "cuda" else []))  # interpreter bf16 is broken
def test_forward_16bit_triton(dtype):
    B, C, HID, H, W = 2, 64, 128, 5, 5
    x = make_x(B, C, H, W, "nchw", dtype)
    p = params(C, HID, dtype)
    out = yolov12_fast.mlp_residual(x, *p, backend="triton")
    assert out.dtype == dtype
    assert_close_to_oracle(out, naive(x, *p), oracle(x, *p), f"mlp triton {dtype}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients(backend):
    B, C, HID, H, W = 3, 32, 70, 3, 5
    x = make_x(B, C, H, W, "channels_last").requires_grad_(True)
    p = params(C, HID, grad=True)
    out = yolov12_fast.mlp_residual(x, *p, backend=backend)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, *p), g)
    leaves = [t.detach().double().requires_grad_(True) for t in (x, *p)]
    ref = leaves[0] + F.conv2d(F.silu(F.conv2d(leaves[0], leaves[1], leaves[2])), leaves[3], leaves[4])
    ref_grads = torch.autograd.grad(ref, leaves, g.double())
    naive_leaves = [t.detach().clone().requires_grad_(True) for t in (x, *p)]
    nv = naive_leaves[0] + F.conv2d(F.silu(F.conv2d(naive_leaves[0], naive_leaves[1], naive_leaves[2])),
                                    naive_leaves[3], naive_leaves[4])
    naive_grads = torch.autograd.grad(nv, naive_leaves, g)
    for name, a, n, r in zip(("x", "w1", "b1", "w2", "b2"), grads, naive_grads, ref_grads):
        assert a.shape == r.shape, name
        assert_close_to_oracle(a, n, r, f"d{name} {backend}")


def test_zero_size_batch():
    p = params(64, 128)
    for backend in BACKENDS:
        out = yolov12_fast.mlp_residual(torch.randn(0, 64, 3, 3, device=DEV), *p, backend=backend)
        assert out.shape == (0, 64, 3, 3)


def test_auto_is_the_reference_until_measured():
    from yolov12_fast.ops import mlp

    assert mlp.resolve_backend("auto", torch.device("cpu")) == "reference"
    assert mlp.resolve_backend("auto", torch.device("cuda", 0)) == "reference"


def test_auto_on_cpu_runs_batch1_nchw_fp32_as_addmm(monkeypatch):
    """auto's CPU path (mlp.cpu_gemm): a batch-1 contiguous float32 x runs the 1x1 convs as addmm, anything else as
    oneDNN convolutions; the explicit 'reference' backend always runs the convolutions."""
    C, HID, H, W = 32, 70, 3, 5
    p = [t.cpu() for t in params(C, HID)]  # CPU tensors on a GPU machine too
    w, b, g = p[2], p[3], torch.randn(C)
    x1 = torch.randn(1, HID, H, W)
    r1 = torch.randn(1, C, H, W)
    cases = {  # (op call, whether it must run as addmm)
        "mlp auto b1": (lambda: yolov12_fast.mlp_residual(torch.randn(1, C, H, W), *p), True),
        "mlp auto b1 out=": (lambda: yolov12_fast.mlp_residual(torch.randn(1, C, H, W), *p,
                                                               out=torch.empty(1, 2 * C, H, W)[:, C:]), True),
        "mlp auto b2": (lambda: yolov12_fast.mlp_residual(torch.randn(2, C, H, W), *p), False),
        "mlp auto b1 channels_last": (lambda: yolov12_fast.mlp_residual(
            torch.randn(1, C, H, W).to(memory_format=torch.channels_last), *p), False),
        "mlp reference b1": (lambda: yolov12_fast.mlp_residual(torch.randn(1, C, H, W), *p, backend="reference"), False),
        "mlp auto b1 fp16": (lambda: yolov12_fast.mlp_residual(torch.randn(1, C, H, W).half(),
                                                               *[t.half() for t in p]), False),
        "conv auto b1": (lambda: yolov12_fast.conv1x1_silu_residual(x1, w, b, r1, g), True),
        "conv auto b1 no residual": (lambda: yolov12_fast.conv1x1_silu_residual(x1, w, b), True),
        "conv auto b1 channels_last residual": (lambda: yolov12_fast.conv1x1_silu_residual(
            x1, w, b, r1.to(memory_format=torch.channels_last), g), False),
        "conv reference b1": (lambda: yolov12_fast.conv1x1_silu_residual(x1, w, b, r1, g, backend="reference"), False),
    }
    seen = []
    for mod, name in ((torch, "addmm"), (F, "conv2d")):  # the op implementations call torch.addmm / F.conv2d
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, _name=name, **k: seen.append(_name) or _real(*a, **k))
    for name, (fn, gemm) in cases.items():
        seen.clear()
        fn()
        assert set(seen) == ({"addmm"} if gemm else {"conv2d"}), (name, seen)


BAD = [  # (description, builder of (x, w1, b1, w2, b2, kwargs), expected message)
    ("rank", lambda: (torch.randn(2, 64, 9), *params(64, 128), {}), "must be 4-D"),
    ("float64", lambda: (torch.randn(1, 64, 3, 3, dtype=torch.float64), *params(64, 128, torch.float64), {}),
     "use float16, bfloat16 or float32"),
    ("int", lambda: (torch.ones(1, 64, 3, 3, dtype=torch.int32), *params(64, 128), {}), "dtype torch.int32"),
    ("w1 channels", lambda: (torch.randn(1, 32, 3, 3), *params(64, 128), {}), r"w1 must be a 1x1 conv weight \(HID, 32"),
    ("w2 shape", lambda: (torch.randn(1, 64, 3, 3), *params(64, 128)[:2], torch.randn(64, 127, 1, 1), torch.randn(64), {}),
     r"w2 must be a 1x1 conv weight \(64, 128, 1, 1\)"),
    ("bias shape", lambda: (torch.randn(1, 64, 3, 3), params(64, 128)[0], torch.randn(127), *params(64, 128)[2:], {}),
     "b1 must be"),
    ("mixed dtypes", lambda: (torch.randn(1, 64, 3, 3), *params(64, 128, torch.float16), {}), "must match x's dtype"),
    ("cpp backend", lambda: (torch.randn(1, 64, 3, 3), *params(64, 128), {"backend": "cpp"}), "has no 'cpp' kernel"),
    ("unknown backend", lambda: (torch.randn(1, 64, 3, 3), *params(64, 128), {"backend": "fast"}), "unknown backend"),
    ("out shape", lambda: (torch.randn(1, 64, 3, 3), *params(64, 128), {"out": torch.empty(1, 64, 3, 4)}),
     "out must have x's shape"),
]


@pytest.mark.parametrize("desc,build,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_clear_error(desc, build, msg):
    *args, kw = build()
    args = [a.to(DEV) for a in args]
    if "out" in kw:
        kw["out"] = kw["out"].to(DEV)
    kw.setdefault("backend", "reference")
    with pytest.raises((RuntimeError, ValueError), match=msg):
        yolov12_fast.mlp_residual(*args, **kw)


def test_out_overlapping_x_is_refused():
    buf = torch.randn(1, 128, 3, 3, device=DEV)
    with pytest.raises(RuntimeError, match="out must not overlap x"):
        yolov12_fast.mlp_residual(buf[:, :64], *params(64, 128), out=buf[:, 32:96], backend="reference")
    # one shared element is an overlap too (the last of x is the first of out); adjacent buffers are not
    flat = torch.randn(2 * 64 * 9, device=DEV)
    x, touching = flat[:64 * 9].view(1, 64, 3, 3), flat[64 * 9 - 1:2 * 64 * 9 - 1].view(1, 64, 3, 3)
    with pytest.raises(RuntimeError, match="out must not overlap x"):
        yolov12_fast.mlp_residual(x, *params(64, 128), out=touching, backend="reference")
    adjacent, p = flat[64 * 9:].view(1, 64, 3, 3), params(64, 128)
    yolov12_fast.mlp_residual(x, *p, out=adjacent, backend="reference")
    torch.testing.assert_close(adjacent, yolov12_fast.mlp_residual(x, *p, backend="reference"), rtol=0, atol=0)


def test_unflattenable_layout_is_refused_by_the_kernel():
    """H and W swapped by a transpose cannot be read as one token dim: a clear error, not a wrong answer."""
    x = torch.randn(1, 64, 5, 3, device=DEV).transpose(2, 3)
    with pytest.raises(RuntimeError, match="do not flatten into one token dim"):
        yolov12_fast.mlp_residual(x, *params(64, 128), backend="triton")


def test_kernel_limits_are_clear_errors():
    """32-bit offsets inside one image and the grid's batch axis: refused with a clear error (meta tensors: no
    memory), never a wrapped offset."""
    from yolov12_fast.kernels import mlp as tk

    p = [t.to("meta") for t in params(64, 128)]
    huge = torch.empty_strided((1, 64, 4, 4), (2**33, 2**26, 4, 1), device="meta")  # channels 2**26 apart
    with pytest.raises(RuntimeError, match="spans more than 2..31 elements"):
        tk.mlp_residual(huge, *p)
    with pytest.raises(RuntimeError, match="batch 70000 is more than one launch covers"):
        tk.mlp_residual(torch.empty(70000, 64, 1, 1, device="meta"), *p)
