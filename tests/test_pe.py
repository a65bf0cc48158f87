"""yolov12_fast::pe_add (AAttn's depthwise positional encoding + add) on every backend here, against the float64
conv2d oracle: strided v views, 5x5 and 7x7, bias or not, odd map sizes, and gradients through autograd."""

import pytest
import torch
import torch.nn.functional as F

import yolov12_fast
from yolov12_fast import _backends
from tolerances import assert_close_to_oracle

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["reference", "triton"] + (["cpp"] if _backends.can_use_cpp()[0] and DEV == "cpu" else []) + \
    (["cuda"] if DEV == "cuda" and _backends.can_use_cuda_ext(DEV)[0] else [])


def oracle(v, w, b, x, H, W):
    B, nh, D, N = v.shape
    f = lambda t: None if t is None else t.detach().double()
    out = F.conv2d(f(v).reshape(B, nh * D, H, W), f(w), f(b), padding=w.shape[-1] // 2, groups=nh * D)
    return out.reshape(v.shape) + (f(x) if x is not None else 0)


def naive(v, w, b, x, H, W):
    B, nh, D, N = v.shape
    out = F.conv2d(v.detach().reshape(B, nh * D, H, W), w.detach(), None if b is None else b.detach(),
                   padding=w.shape[-1] // 2, groups=nh * D).reshape(v.shape)
    return out + x.detach() if x is not None else out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k,H,W,bias,with_x", [(7, 5, 9, True, True), (5, 6, 10, False, True), (7, 3, 3, True, False)])
def test_pe_add_forward(backend, k, H, W, bias, with_x):
    dtype = torch.float32
    B, nh, D = 3, 2, 32
    qkv = torch.randn(B, 3 * nh * D, H, W, dtype=dtype, device=DEV)
    v = qkv.view(B, nh, 3 * D, H * W)[:, :, 2 * D:]  # the interleaved v view: strided, never copied
    w = torch.randn(nh * D, 1, k, k, dtype=dtype, device=DEV) * 0.2
    b = torch.randn(nh * D, dtype=dtype, device=DEV) if bias else None
    x = torch.randn(B, nh, D, H * W, dtype=dtype, device=DEV) if with_x else None
    out = yolov12_fast.pe_add(v, w, b, H, W, x=x, backend=backend)
    assert out.is_contiguous() and out.shape == v.shape
    assert_close_to_oracle(out, naive(v, w, b, x, H, W), oracle(v, w, b, x, H, W), f"pe {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pe_add_gradients(backend):
    B, nh, D, H, W, k = 2, 1, 32, 4, 6, 5
    v = torch.randn(B, nh, D, H * W, device=DEV, requires_grad=True)
    w = (torch.randn(nh * D, 1, k, k, device=DEV) * 0.2).requires_grad_(True)
    b = torch.randn(nh * D, device=DEV, requires_grad=True)
    x = torch.randn(B, nh, D, H * W, device=DEV, requires_grad=True)
    out = yolov12_fast.pe_add(v, w, b, H, W, x=x, backend=backend)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (v, w, b, x), g)
    leaves = [t.detach().double().requires_grad_(True) for t in (v, w, b, x)]
    lv, lw, lb, lx = leaves
    ref = F.conv2d(lv.reshape(B, nh * D, H, W), lw, lb, padding=k // 2, groups=nh * D).reshape(lv.shape) + lx
    ref_grads = torch.autograd.grad(ref, leaves, g.double())
    for name, a, r in zip(("v", "w", "b", "x"), grads, ref_grads):
        torch.testing.assert_close(a.double(), r, rtol=1e-4, atol=1e-4, msg=f"d{name}")


def test_pe_add_bad_input():
    v = torch.randn(1, 2, 32, 20)
    with pytest.raises(RuntimeError, match="H\\*W"):
        yolov12_fast.pe_add(v, torch.randn(64, 1, 7, 7), None, 4, 6)
    with pytest.raises(RuntimeError, match="depthwise"):
        yolov12_fast.pe_add(v, torch.randn(64, 1, 7, 5), None, 4, 5)
    with pytest.raises(RuntimeError, match="dtype"):
        yolov12_fast.pe_add(v, torch.randn(64, 1, 7, 7).double(), None, 4, 5)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("cpp", "cuda")])
def test_double_backward_through_the_compiled_pe_backward_says_it_is_not_supported(backend):
    """The compiled backward kernels (pe_add_cxx on the flipped kernel, pe_add_wgrad_cxx) have no autograd: under
    create_graph=True differentiating their gradients raises a clear error (it gave silent zeros: torch's fallback for
    an op without an autograd kernel), while the reference backend's (ATen's convolution backward) works."""
    v = torch.randn(1, 1, 32, 20, device=DEV, requires_grad=True)
    w = torch.randn(32, 1, 5, 5, device=DEV, requires_grad=True)
    g, = torch.autograd.grad(yolov12_fast.pe_add(v, w, None, 4, 5, backend=backend).square().sum(), v,
                             create_graph=True)
    with pytest.raises(RuntimeError, match="pe_add: double backward .* is not supported.*yolov12_fast.reference"):
        torch.autograd.grad(g.sum(), w)
    g, = torch.autograd.grad(yolov12_fast.pe_add(v, w, None, 4, 5, backend="reference").square().sum(), v,
                             create_graph=True)
    gw, = torch.autograd.grad(g.sum(), w)
    assert torch.isfinite(gw).all() and gw.abs().sum() > 0
