"""yolov12_fast::conv1x1_silu_residual (A2C2f's cv2 with the L/X residual x + gamma * cv2(...) in its epilogue, BN
folded) on every backend here, against the float64 oracle: input channels that are not a multiple of the K slice
(307) and output channels that are not a multiple of the channel tile, token counts that are not multiples of the
token block, batch 3, channels_last and channel-slice inputs, a residual in another layout, with and without the
residual, 16-bit inputs, gradients of every input, and clear errors on bad input."""

import pytest
import torch
import torch.nn.functional as F

import yolov12_fast
from tolerances import assert_close_to_oracle

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["reference", "triton", "auto"]  # auto: on CPU, batch-1 NCHW fp32 runs as addmm (mlp.cpu_gemm)


def params(K, C, dtype=torch.float32, grad=False, residual=True):
    """Folded-conv-like weights (unit-variance pre-activations) and a layer scale away from 0.01 so that the
    conv's contribution is not lost under the residual."""
    w = torch.randn(C, K, 1, 1, device=DEV) / K ** 0.5
    b = torch.randn(C, device=DEV) * 0.5
    g = torch.rand(C, device=DEV) + 0.5 if residual else None
    return [t.to(dtype).requires_grad_(grad) if t is not None else None for t in (w, b, g)]


def math(x, w, b, r, g):
    z = F.silu(F.conv2d(x, w, b))
    return z if r is None else r + g.view(1, -1, 1, 1) * z


def oracle(x, w, b, r, g):
    return math(*[t.detach().double() if t is not None else None for t in (x, w, b, r, g)])


def naive(x, w, b, r, g):
    """What ultralytics' unfused path computes in x's dtype (the yardstick of the tolerance table)."""
    d = [t.detach() if t is not None else None for t in (x, w, b, r, g)]
    if d[0].dtype == torch.float16 and d[0].device.type == "cpu":  # no fp16 conv on CPU: round like fp16 storage
        f = [t.float() if t is not None else None for t in d]
        z = F.silu(F.conv2d(f[0], f[1], f[2])).half().float()
        return (z if r is None else f[3] + f[4].view(1, -1, 1, 1) * z).half()
    return math(*d)


SHAPES = [  # (B, K, C, H, W, x layout, residual layout or None)
    (3, 96, 64, 5, 7, "nchw", "nchw"),                     # N = 35: not a multiple of the token block
    (1, 307, 100, 3, 5, "channels_last", "channels_last"),  # K not a multiple of the K slice, C of the tile
    (2, 320, 128, 4, 9, "slice", "channels_last"),          # n = 4 (yolo12x): a slice of a bigger buffer
    (1, 640, 256, 2, 3, "nchw", None),                       # no residual (n/s/m blocks), 2 channel tiles
    (2, 96, 64, 5, 7, "nchw", "slice"),                      # residual strides unlike the output's
    (1, 96, 64, 5, 7, "nchw", "nchw"),                       # batch-1 NCHW fp32: auto's addmm path on CPU
    (1, 96, 64, 5, 7, "nchw", "channels_last"),              # ... except when the output must be channels_last
]


def make(B, C, H, W, layout, dtype=torch.float32):
    if layout == "slice":
        return torch.randn(B, 3 * C, H, W, device=DEV, dtype=dtype)[:, C:2 * C]
    x = torch.randn(B, C, H, W, device=DEV, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,K,C,H,W,xl,rl", SHAPES, ids=[f"K{s[1]}-C{s[2]}-{s[5]}-{s[6]}" for s in SHAPES])
def test_forward(backend, B, K, C, H, W, xl, rl):
    x = make(B, K, H, W, xl)
    r = make(B, C, H, W, rl) if rl is not None else None
    w, b, g = params(K, C, residual=r is not None)
    out = yolov12_fast.conv1x1_silu_residual(x, w, b, r, g, backend=backend)
    assert out.shape == (B, C, H, W) and out.dtype == x.dtype
    fmt = rl if rl is not None else xl
    assert out.is_contiguous(memory_format=torch.channels_last if fmt == "channels_last" else torch.contiguous_format)
    assert_close_to_oracle(out, naive(x, w, b, r, g), oracle(x, w, b, r, g), f"conv {backend} {xl} {rl}")


@pytest.mark.parametrize("residual", [True, False], ids=["res", "nores"])
@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if DEV == "cuda" else []))  # interpreter bf16 is broken
def test_forward_16bit_triton(dtype, residual):
    B, K, C, H, W = 2, 192, 64, 5, 5
    x = make(B, K, H, W, "nchw", dtype)
    r = make(B, C, H, W, "nchw", dtype) if residual else None
    w, b, g = params(K, C, dtype, residual=residual)
    out = yolov12_fast.conv1x1_silu_residual(x, w, b, r, g, backend="triton")
    assert out.dtype == dtype
    assert_close_to_oracle(out, naive(x, w, b, r, g), oracle(x, w, b, r, g), f"conv triton {dtype}")


@pytest.mark.parametrize("residual", [True, False], ids=["res", "nores"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients(backend, residual):
    B, K, C, H, W = 3, 96, 48, 3, 5
    x = make(B, K, H, W, "channels_last").requires_grad_(True)
    r = make(B, C, H, W, "nchw").requires_grad_(True) if residual else None
    w, b, g = params(K, C, grad=True, residual=residual)
    inputs = [t for t in (x, w, b, r, g) if t is not None]
    out = yolov12_fast.conv1x1_silu_residual(x, w, b, r, g, backend=backend)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, inputs, dout)

    def grads_in(dtype):  # autograd through the plain math in dtype
        leaves = [t.detach().to(dtype).requires_grad_(True) for t in inputs]
        full = leaves[:3] + (leaves[3:] if residual else [None, None])
        return torch.autograd.grad(math(*full), leaves, dout.to(dtype))

    for name, a, n, o in zip(("x", "w", "b", "residual", "gamma"), grads, grads_in(torch.float32),
                             grads_in(torch.float64)):
        assert a.shape == o.shape and a.dtype == torch.float32, name
        assert_close_to_oracle(a, n, o, f"d{name} {backend}")


def test_zero_size_batch():
    w, b, g = params(64, 32)
    for backend in BACKENDS:
        x, r = torch.randn(0, 64, 3, 3, device=DEV), torch.randn(0, 32, 3, 3, device=DEV)
        assert yolov12_fast.conv1x1_silu_residual(x, w, b, r, g, backend=backend).shape == (0, 32, 3, 3)


def test_auto_is_the_reference_until_measured():
    from yolov12_fast.ops import mlp

    for dev in (torch.device("cpu"), torch.device("cuda", 0)):
        assert mlp.resolve_backend("auto", dev, "conv1x1_silu_residual") == "reference"


def _x(K=64, dtype=torch.float32):
    return torch.randn(1, K, 3, 3, dtype=dtype)


def _r(C=32, dtype=torch.float32):
    return torch.randn(1, C, 3, 3, dtype=dtype)


BAD = [  # (description, builder of (x, w, b, residual, gamma, kwargs), expected message)
    ("rank", lambda: (torch.randn(2, 64, 9), *params(64, 32)[:2], None, None, {}), "must be 4-D"),
    ("float64", lambda: (_x(dtype=torch.float64), *params(64, 32, torch.float64)[:2], None, None, {}),
     "use float16, bfloat16 or float32"),
    ("int", lambda: (torch.ones(1, 64, 3, 3, dtype=torch.int32), *params(64, 32)[:2], None, None, {}),
     "dtype torch.int32"),
    ("w channels", lambda: (_x(48), *params(64, 32)[:2], None, None, {}), r"w must be a 1x1 conv weight \(C, 48"),
    ("w 3x3", lambda: (_x(), torch.randn(32, 64, 3, 3), torch.randn(32), None, None, {}), "w must be a 1x1 conv"),
    ("bias shape", lambda: (_x(), params(64, 32)[0], torch.randn(31), None, None, {}), r"b must be \(32,\)"),
    ("residual without gamma", lambda: (_x(), *params(64, 32)[:2], _r(), None, {}), "pass residual and gamma together"),
    ("residual shape", lambda: (_x(), *params(64, 32)[:2], _r(16), params(64, 32)[2], {}),
     r"residual must be \(1, 32, 3, 3\)"),
    ("gamma shape", lambda: (_x(), *params(64, 32)[:2], _r(), torch.rand(16), {}), r"gamma must be \(32,\)"),
    ("mixed dtypes", lambda: (_x(), *params(64, 32, torch.float16)[:2], None, None, {}), "must match x's dtype"),
    ("residual dtype", lambda: (_x(), *params(64, 32)[:2], _r(dtype=torch.float16), params(64, 32)[2], {}),
     "residual must match x's dtype"),
    ("cpp backend", lambda: (_x(), *params(64, 32)[:2], None, None, {"backend": "cpp"}), "has no 'cpp' kernel"),
    ("unknown backend", lambda: (_x(), *params(64, 32)[:2], None, None, {"backend": "fast"}), "unknown backend"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("desc,build,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_clear_error(desc, build, msg, backend):
    *args, kw = build()
    args = [a.to(DEV) if a is not None else None for a in args]
    kw.setdefault("backend", backend)
    with pytest.raises((RuntimeError, ValueError), match=msg):
        yolov12_fast.conv1x1_silu_residual(*args, **kw)


def test_unflattenable_layout_is_refused_by_the_kernel():
    """H and W swapped by a transpose cannot be read as one token dim: a clear error, not a wrong answer."""
    x = torch.randn(1, 64, 5, 3, device=DEV).transpose(2, 3)
    with pytest.raises(RuntimeError, match="conv1x1_silu_residual .triton.: the H and W dims"):
        yolov12_fast.conv1x1_silu_residual(x, *params(64, 32)[:2], backend="triton")


def test_kernel_limits_are_clear_errors():
    """32-bit offsets inside one image and the grid's batch axis: refused with a clear error (meta tensors: no
    memory), never a wrapped offset."""
    from yolov12_fast.kernels import conv as tk

    w, b, g = [t.to("meta") for t in params(64, 32)]
    huge = torch.empty_strided((1, 64, 4, 4), (2**33, 2**26, 4, 1), device="meta")  # channels 2**26 apart
    with pytest.raises(RuntimeError, match="spans more than 2..31 elements"):
        tk.conv1x1_silu_residual(huge, w, b)
    r = torch.empty_strided((1, 32, 4, 4), (2**33, 2**27, 4, 1), device="meta")  # the residual alone too big
    with pytest.raises(RuntimeError, match="spans more than 2..31 elements"):
        tk.conv1x1_silu_residual(torch.empty(1, 64, 4, 4, device="meta"), w, b, r, g)
    with pytest.raises(RuntimeError, match="batch 70000 is more than one launch covers"):
        tk.conv1x1_silu_residual(torch.empty(70000, 64, 1, 1, device="meta"), w, b)
