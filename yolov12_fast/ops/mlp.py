"""yolov12_fast::mlp_residual: ABlock's MLP with its residual, out = x + conv2(silu(conv1(x))).

conv1 (C -> HID) and conv2 (HID -> C) are 1x1 convs with BatchNorm folded in (the module folds): w1 (HID, C, 1, 1),
b1 (HID,), w2 (C, HID, 1, 1), b2 (C,). x is (B, C, H, W), NCHW or channels_last (or a channel slice of either);
the output has x's memory format. `mlp_residual_out` writes into a given tensor instead (e.g. a channel slice of
A2C2f's concat buffer); it has no autograd (inference path).

Backends: "triton" (one fused kernel: the hidden activation never goes to memory), "reference" (torch 1x1
convs: cuDNN / oneDNN), "auto". auto takes the reference everywhere until a GPU benchmark shows the fused kernel
faster than cuDNN's two convolutions (the rule for every fusion here); "cpp" and "cuda" have no MLP kernel and
raise. On CPU, auto runs a batch-1 contiguous float32 x as two addmm (MKL sgemm) instead of oneDNN's convolutions
(`cpu_gemm`): oneDNN gains nothing from a second thread at batch 1. The backward recomputes the hidden activation
from x (nothing of size HID x N is saved for it) and runs as matmuls.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _backends
from .._backends import check as _check
from .area_attention import DTYPES, _usable

BACKENDS = ("auto", "triton", "reference")


def check_inputs(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, backend: str,
                 out: Optional[Tensor] = None) -> None:
    _check(x.dim() == 4, lambda: f"mlp_residual: x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    _check(x.dtype in DTYPES, lambda: f"mlp_residual: x has dtype {x.dtype}; use float16, bfloat16 or float32")
    C = x.shape[1]
    _check(w1.dim() == 4 and w1.shape[1] == C and w1.shape[2] == 1 and w1.shape[3] == 1 and w1.shape[0] >= 1,
                 lambda: f"mlp_residual: w1 must be a 1x1 conv weight (HID, {C}, 1, 1), got {tuple(w1.shape)}")
    HID = w1.shape[0]
    _check(w2.dim() == 4 and tuple(w2.shape) == (C, HID, 1, 1),
                 lambda: f"mlp_residual: w2 must be a 1x1 conv weight ({C}, {HID}, 1, 1), got {tuple(w2.shape)}")
    _check(tuple(b1.shape) == (HID,) and tuple(b2.shape) == (C,),
                 lambda: f"mlp_residual: b1 must be ({HID},) and b2 ({C},), got {tuple(b1.shape)} and {tuple(b2.shape)}")
    check_like_x("mlp_residual", x, w1=w1, b1=b1, w2=w2, b2=b2)
    if out is not None:
        _check(out.shape == x.shape and out.dtype == x.dtype and out.device == x.device,
                     lambda: f"mlp_residual_out: out must have x's shape, dtype and device, got {tuple(out.shape)} "
                             f"{out.dtype} {out.device}")
    _check(backend in _backends.BACKENDS,
                 lambda: f"mlp_residual: unknown backend {backend!r}; choose one of {BACKENDS}")


def check_like_x(op: str, x: Tensor, **tensors: Tensor) -> None:
    """Each named tensor (folded conv weights and biases, a gamma) has x's dtype and device."""
    for name, t in tensors.items():
        _check(t.dtype == x.dtype and t.device == x.device,
                     lambda: f"{op}: {name} must match x's dtype and device ({x.dtype}, {x.device}), got "
                             f"{t.dtype}, {t.device}; fold BatchNorm and cast the weights with x")


def resolve_backend(backend: str, device: torch.device, op: str = "mlp_residual",
                    dtype: Optional[torch.dtype] = None) -> str:
    """The backend a fused pointwise-conv op (mlp_residual, conv1x1_silu_residual) runs: 'auto' takes the
    reference until a GPU benchmark (benchmarks ops suite) measures the fused Triton kernel faster than cuDNN."""
    if backend == "auto":
        return "reference"
    if backend in ("cpp", "cuda"):
        raise RuntimeError(f"yolov12_fast: {op} has no {backend!r} kernel; use backend='triton' (fused) or "
                           "'reference' (torch 1x1 convs), or 'auto'")
    ok, why = _usable(backend, device, dtype)
    if not ok:
        raise RuntimeError(f"yolov12_fast: backend {backend!r} cannot run {op} on {device.type}: {why} "
                           f"(backend='auto' picks what runs on {device.type}; a model patched for the GPU runs after .cuda())")
    return backend


def _format(x: Tensor) -> torch.memory_format:
    """The output's memory format: channels_last when x is (and is not also plain contiguous), else NCHW."""
    if x.shape[1] > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def cpu_gemm(x: Tensor, backend: str) -> bool:
    """Whether backend='auto' runs this x's 1x1 convs as addmm (MKL sgemm) on CPU: batch 1, contiguous NCHW, float32
    (what the patched modules' batch-1 CPU path does too, nn/modules.py _gemm_conv). oneDNN's batch-1 convolution
    gains little from a second thread. Measured here (2-core EPYC, interleaved rounds), addmm vs the convolutions:
    0.95-1.49x at 2 threads, 1.01-1.25x at 1; through the op, whose dispatch and checks cost about 0.1 ms on this
    CPU, auto measured 0.80-1.16x plain torch in `python -m benchmarks ops --device cpu --cases '^(mlp|cv2) '`
    (it was 0.79-0.98x running the convolutions). Other batches, layouts and dtypes keep oneDNN."""
    return (backend == "auto" and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x.shape[0] == 1 and x.numel() > 0 and x.is_contiguous())


def _gemm_mlp(x, w1, b1, w2, b2, out):
    """x + conv2(silu(conv1(x))) for a batch-1 contiguous x as addmm: h = b1 + w1 @ x, silu in place, then
    x + w2 @ h and b2, written into `out` when it is contiguous."""
    _, C, H, W = x.shape
    HID = w1.shape[0]
    x2 = x.view(C, H * W)
    h = torch.addmm(b1.view(HID, 1), w1.reshape(HID, C), x2)
    F.silu(h, inplace=True)
    direct = out is not None and out.is_contiguous()
    y = torch.addmm(x2, w2.reshape(C, HID), h, out=out.view(C, H * W) if direct else None)
    y.add_(b2.view(C, 1))
    if direct:
        return out
    return y.view(1, C, H, W) if out is None else out.copy_(y.view(1, C, H, W))


def _reference(x, w1, b1, w2, b2):
    return (x + F.conv2d(F.silu(F.conv2d(x, w1, b1)), w2, b2)).contiguous(memory_format=_format(x))


def _run(x, w1, b1, w2, b2, backend, out):
    b = resolve_backend(backend, x.device, dtype=x.dtype)
    if x.numel() == 0:
        return out if out is not None else torch.empty_like(x, memory_format=_format(x))
    if b == "triton":
        from ..kernels import mlp as tk

        return tk.mlp_residual(x, w1, b1, w2, b2, out)
    if cpu_gemm(x, backend):
        return _gemm_mlp(x, w1, b1, w2, b2, out)
    r = _reference(x, w1, b1, w2, b2)
    return r if out is None else out.copy_(r)


@torch.library.custom_op("yolov12_fast::mlp_residual", mutates_args=())
def mlp_residual(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, backend: str) -> Tensor:
    check_inputs(x, w1, b1, w2, b2, backend)
    return _run(x, w1, b1, w2, b2, backend, None)


@mlp_residual.register_fake
def _(x, w1, b1, w2, b2, backend):
    check_inputs(x, w1, b1, w2, b2, backend)
    return torch.empty_like(x, memory_format=_format(x))


@torch.library.custom_op("yolov12_fast::mlp_residual_out", mutates_args=("out",))
def mlp_residual_out(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, out: Tensor, backend: str) -> None:
    check_inputs(x, w1, b1, w2, b2, backend, out)
    _check(not _overlaps(x, out), lambda: "mlp_residual_out: out must not overlap x (the kernel reads x while "
                                                "writing out); pass a separate buffer")
    _run(x, w1, b1, w2, b2, backend, out)


@mlp_residual_out.register_fake
def _(x, w1, b1, w2, b2, out, backend):
    check_inputs(x, w1, b1, w2, b2, backend, out)


def _overlaps(a: Tensor, b: Tensor) -> bool:
    if a.device.type == "meta" or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    span = lambda t: (t.storage_offset(), t.storage_offset() + sum((s - 1) * st for s, st in zip(t.shape, t.stride())))
    (a0, a1), (b0, b1) = span(a), span(b)
    return a.numel() > 0 and b.numel() > 0 and a0 <= b1 and b0 <= a1


def _setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, backend = inputs
    ctx.save_for_backward(x, w1, b1, w2)


def _backward(ctx, dout):
    x, w1, b1, w2 = ctx.saved_tensors
    B, C, H, W = x.shape
    HID = w1.shape[0]
    x3 = x.reshape(B, C, H * W)
    d3 = dout.reshape(B, C, H * W)
    w1m, w2m = w1.reshape(HID, C), w2.reshape(C, HID)
    hp = torch.matmul(w1m, x3) + b1.view(1, HID, 1)  # recomputed pre-activation (B, HID, N)
    s = torch.sigmoid(hp.float())
    act = (hp.float() * s).to(x.dtype)
    da = torch.matmul(w2m.t(), d3)
    dhp32 = da.float() * s * (1 + hp.float() * (1 - s))
    dhp = dhp32.to(x.dtype)  # the matmuls' operand; the bias gradient sums the float32 values (one rounding)
    dx = dw1 = db1 = dw2 = db2 = None
    if ctx.needs_input_grad[0]:
        dx = dout + torch.matmul(w1m.t(), dhp).view(B, C, H, W)
    if ctx.needs_input_grad[1]:
        dw1 = torch.einsum("bhn,bcn->hc", dhp, x3).view(HID, C, 1, 1)
    if ctx.needs_input_grad[2]:
        db1 = dhp32.sum((0, 2)).to(x.dtype)
    if ctx.needs_input_grad[3]:
        dw2 = torch.einsum("bcn,bhn->ch", d3, act).view(C, HID, 1, 1)
    if ctx.needs_input_grad[4]:
        db2 = d3.sum((0, 2), dtype=torch.float32).to(x.dtype)
    return dx, dw1, db1, dw2, db2, None


mlp_residual.register_autograd(_backward, setup_context=_setup_context)
