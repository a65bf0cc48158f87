"""yolov12_fast::conv1x1_silu_residual: A2C2f's output conv with the L/X residual,
out = residual + gamma * silu(conv1x1(x, w) + b)   (out = silu(conv1x1(x, w) + b) without a residual).

w (C, K, 1, 1) and b (C,) are cv2's 1x1 conv with BatchNorm folded in (the module folds); x is the (B, K, H, W)
aggregation buffer, residual the block input (B, C, H, W) and gamma (C,) A2C2f's layer scale (both or neither).
NCHW or channels_last (or channel slices of either); the output takes the residual's memory format (x's without
one).

Backends: "triton" (one kernel: bias, SiLU, gamma and the residual in the GEMM's epilogue), "reference" (torch:
the 1x1 conv, SiLU, addcmul, as ultralytics runs it), "auto". auto takes the reference until a GPU benchmark
shows the fused kernel faster than cuDNN (the rule for every fusion here), and on CPU runs a batch-1 contiguous float32
x as one addmm (mlp.cpu_gemm); "cpp" and "cuda" raise. The backward recomputes the pre-activation from x and runs as
matmuls.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _backends
from .._backends import check as _check
from .area_attention import DTYPES
from .mlp import _format, check_like_x, cpu_gemm, resolve_backend

OP = "conv1x1_silu_residual"


def check_inputs(x: Tensor, w: Tensor, b: Tensor, residual: Optional[Tensor], gamma: Optional[Tensor],
                 backend: str) -> None:
    _check(x.dim() == 4, lambda: f"{OP}: x must be 4-D (B, K, H, W), got shape {tuple(x.shape)}")
    _check(x.dtype in DTYPES, lambda: f"{OP}: x has dtype {x.dtype}; use float16, bfloat16 or float32")
    B, K, H, W = x.shape
    _check(w.dim() == 4 and w.shape[1] == K and w.shape[2] == 1 and w.shape[3] == 1 and w.shape[0] >= 1,
                 lambda: f"{OP}: w must be a 1x1 conv weight (C, {K}, 1, 1), got {tuple(w.shape)}")
    C = w.shape[0]
    _check(tuple(b.shape) == (C,), lambda: f"{OP}: b must be ({C},), got {tuple(b.shape)}")
    _check((residual is None) == (gamma is None),
                 lambda: f"{OP}: pass residual and gamma together (out = residual + gamma * silu(conv(x))), or "
                         "neither")
    check_like_x(OP, x, w=w, b=b)
    if residual is not None:
        _check(tuple(residual.shape) == (B, C, H, W),
                     lambda: f"{OP}: residual must be ({B}, {C}, {H}, {W}), got {tuple(residual.shape)}")
        _check(tuple(gamma.shape) == (C,), lambda: f"{OP}: gamma must be ({C},), got {tuple(gamma.shape)}")
        check_like_x(OP, x, residual=residual, gamma=gamma)
    _check(backend in _backends.BACKENDS,
                 lambda: f"{OP}: unknown backend {backend!r}; choose one of ('auto', 'triton', 'reference')")


def _out_format(x: Tensor, residual: Optional[Tensor]) -> torch.memory_format:
    return _format(residual if residual is not None else x)


def _reference(x, w, b, residual, gamma):
    z = F.silu(F.conv2d(x, w, b))
    out = z if residual is None else torch.addcmul(residual, gamma.view(1, -1, 1, 1), z)
    return out.contiguous(memory_format=_out_format(x, residual))


@torch.library.custom_op("yolov12_fast::conv1x1_silu_residual", mutates_args=())
def conv1x1_silu_residual(x: Tensor, w: Tensor, b: Tensor, residual: Optional[Tensor], gamma: Optional[Tensor],
                          backend: str) -> Tensor:
    check_inputs(x, w, b, residual, gamma, backend)
    be = resolve_backend(backend, x.device, OP, x.dtype)
    if x.numel() == 0 or w.shape[0] == 0:
        return _empty(x, w, residual)
    if be == "triton":
        from ..kernels import conv as tk

        return tk.conv1x1_silu_residual(x, w, b, residual, gamma)
    if cpu_gemm(x, backend) and (residual is None or residual.is_contiguous()):
        return _gemm(x, w, b, residual, gamma)
    return _reference(x, w, b, residual, gamma)


def _gemm(x, w, b, residual, gamma):
    """The op for a batch-1 contiguous x (and residual) as addmm + in-place SiLU (+ gamma, residual in place)."""
    _, K, H, W = x.shape
    C = w.shape[0]
    z = torch.addmm(b.view(C, 1), w.reshape(C, K), x.view(K, H * W))
    F.silu(z, inplace=True)
    if residual is not None:
        z.mul_(gamma.view(C, 1)).add_(residual.view(C, H * W))
    return z.view(1, C, H, W)


def _empty(x, w, residual):
    B, _, H, W = x.shape
    return torch.empty((B, w.shape[0], H, W), dtype=x.dtype, device=x.device,
                       memory_format=_out_format(x, residual))


@conv1x1_silu_residual.register_fake
def _(x, w, b, residual, gamma, backend):
    check_inputs(x, w, b, residual, gamma, backend)
    return _empty(x, w, residual)


def _setup_context(ctx, inputs, output):
    x, w, b, residual, gamma, backend = inputs
    ctx.save_for_backward(x, w, b, gamma)
    ctx.has_residual = residual is not None


def _backward(ctx, dout):
    x, w, b, gamma = ctx.saved_tensors
    B, K, H, W = x.shape
    C = w.shape[0]
    x3 = x.reshape(B, K, H * W)
    d3 = dout.reshape(B, C, H * W).float()
    wm = w.reshape(C, K)
    pre = (torch.matmul(wm, x3) + b.view(1, C, 1)).float()  # recomputed pre-activation (B, C, N)
    s = torch.sigmoid(pre)
    dz = d3 * gamma.float().view(1, C, 1) if ctx.has_residual else d3
    dpre32 = dz * s * (1 + pre * (1 - s))
    dpre = dpre32.to(x.dtype)  # the matmuls' operand; the bias gradient sums the float32 values (one rounding)
    dx = dw = db = dres = dgamma = None
    if ctx.needs_input_grad[0]:
        dx = torch.matmul(wm.t(), dpre).view(B, K, H, W)
    if ctx.needs_input_grad[1]:
        dw = torch.einsum("bcn,bkn->ck", dpre, x3).view(C, K, 1, 1)
    if ctx.needs_input_grad[2]:
        db = dpre32.sum((0, 2)).to(x.dtype)
    if ctx.has_residual and ctx.needs_input_grad[3]:
        dres = dout
    if ctx.has_residual and ctx.needs_input_grad[4]:
        dgamma = (d3 * (pre * s)).sum((0, 2)).to(gamma.dtype)
    return dx, dw, db, dres, dgamma, None


conv1x1_silu_residual.register_autograd(_backward, setup_context=_setup_context)
