"""Typed functional API over the `yolov12_fast::` ops."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _backends
from .ops import area_attention as _aa
from .ops import pe as _pe


def area_attention(q: Tensor, k: Tensor, v: Tensor, area: int, scale: Optional[float] = None,
                   residual: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """Fused YOLOv12 area attention.

    Args:
        q, k, v: (B, heads, head_dim, N) with N = H*W tokens in raster order, any strides: pass views of the conv
            outputs, e.g. for the ultralytics interleaved layout
            ``q, k, v = qkv.view(B, heads, 3 * head_dim, N).split(head_dim, dim=2)``; they are read in place.
            float16, bfloat16 or float32 (fp32 accumulation always); head_dim 16, 32, 64 or 128.
        area: number of areas; area j is tokens [j*N/area, (j+1)*N/area) (an area may cut rows). N % area == 0.
        scale: softmax scale, default head_dim ** -0.5.
        residual: optional (B, heads, head_dim, N) tensor added to the output in the same pass (e.g. the PE
            branch), any strides.
        backend: "auto", "triton", "cuda", "cpp" or "reference".

    Returns:
        (B, heads, head_dim, N), contiguous: ``out.view(B, heads * head_dim, H, W)`` is the NCHW feature map.
    """
    scale = _aa.default_scale(q.shape[2]) if scale is None else float(scale)
    if residual is not None and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        # Training: the backward needs the attention output itself; recovering it as (out - residual) from a
        # rounded fp16/bf16 `out` costs up to an ulp of `out` in the softmax gradient. Add outside the kernel,
        # with the kernel's checks (no broadcasting or dtype promotion that the inference path would refuse).
        _aa.check_residual(q, residual)
        return _attention_fwd(q, k, v, int(area), scale, None, backend) + residual
    return _attention_fwd(q, k, v, int(area), scale, residual, backend)


def _attention_fwd(q, k, v, area: int, scale: float, residual, backend: str) -> Tensor:
    """yolov12_fast::area_attention_fwd's output. In eager mode through the same bodies without the custom-op layer
    (its dispatch, schema binding and wrappers cost about 28 us of host time a call on the CPUs here, as much as a
    small GPU kernel takes): training through ops.area_attention.EagerAreaAttention, inference through the forward
    body, for inputs the op accepts (anything else goes to the op, which says what is wrong)."""
    if _backends.eager_direct(q, k, v, residual):
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            return _aa.EagerAreaAttention.apply(q, k, v, area, scale, residual, backend)[0]
        if (not (torch.is_grad_enabled() and residual is not None and residual.requires_grad) and q.numel() > 0
                and _aa._inputs_ok(q, k, v, area, residual, backend)):
            return _aa._fwd(q, k, v, area, scale, residual, _aa.resolve_backend(backend, q.device, q.dtype,
                                                                                   q.shape[2]))[0]
    return torch.ops.yolov12_fast.area_attention_fwd(q, k, v, area, scale, residual, backend)[0]


def area_attention_add_(residual: Tensor, q: Tensor, k: Tensor, v: Tensor, area: int, scale: Optional[float] = None,
                        backend: str = "auto") -> Tensor:
    """``residual += area_attention(q, k, v, area, scale)``, in place; returns `residual`.

    For inference: the Triton kernel writes the result over the (contiguous) residual it has just read, so no
    second map is allocated (AAttn: the PE output becomes the attention output). Not differentiable: with
    gradients enabled and an input that requires them, use ``area_attention(q, k, v, area, residual=...)``.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, residual)):
        raise RuntimeError("area_attention_add_ is in place and has no autograd; for training use "
                           "area_attention(q, k, v, area, residual=residual)")
    scale = _aa.default_scale(q.shape[2]) if scale is None else float(scale)
    if _backends.eager_direct(q, k, v, residual) and _aa._inputs_ok(q, k, v, int(area), residual, backend):
        # the op's body without the custom-op layer (as _attention_fwd)
        out = _aa.plus_residual(q, k, v, int(area), scale, residual,
                                _aa.resolve_backend(backend, q.device, q.dtype, q.shape[2]))
        if out is not residual:
            residual.copy_(out)
        return residual
    torch.ops.yolov12_fast.area_attention_add_(q, k, v, int(area), scale, residual, backend)
    return residual


def pe_add(v: Tensor, weight: Tensor, bias: Optional[Tensor], H: int, W: int, x: Optional[Tensor] = None,
           backend: str = "auto") -> Tensor:
    """AAttn's positional encoding plus an add: ``x + depthwise_conv2d(v, weight, bias, padding=k//2)``.

    Args:
        v: (B, heads, head_dim, N=H*W), any strides (e.g. the v view of the interleaved qkv output).
        weight: (heads*head_dim, 1, k, k) depthwise kernel with BatchNorm folded in; bias: (heads*head_dim,) or None.
        x: optional (B, heads, head_dim, N) added in the same pass.
    Returns:
        (B, heads, head_dim, N), contiguous.
    """
    # H, W stay symbolic under torch.export (int() of a SymInt would pin the exported program to the example size)
    H, W = (d if isinstance(d, torch.SymInt) else int(d) for d in (H, W))
    if _backends.eager_direct(v, weight, bias, x):  # eager: the bodies without the custom-op layer (_attention_fwd)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (v, weight, bias, x)):
            return _pe.EagerPeAdd.apply(v, weight, bias, x, H, W, backend)
        if v.numel() > 0 and _pe._inputs_ok(v, weight, bias, x, H, W, backend):
            return _pe.run(v, weight, bias, x, H, W, _pe.resolve_backend(backend, v.device, v.dtype, weight.shape[-1]))
    return torch.ops.yolov12_fast.pe_add(v, weight, bias, x, H, W, backend)


def mlp_residual(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, out: Optional[Tensor] = None,
                 backend: str = "auto") -> Tensor:
    """ABlock's MLP with its residual: ``x + conv2(silu(conv1(x)))`` with BatchNorm folded into both 1x1 convs.

    Args:
        x: (B, C, H, W), NCHW or channels_last (or a channel slice of either).
        w1, b1: (HID, C, 1, 1) and (HID,); w2, b2: (C, HID, 1, 1) and (C,); x's dtype and device. HID may be odd
            (307, 460).
        out: optional tensor of x's shape to write into (e.g. a channel slice of a concat buffer); no autograd.
        backend: "auto" (torch convs until the fused kernel measures faster on the GPU; on CPU a batch-1 NCHW
            float32 x runs them as addmm), "triton" (one fused kernel, the hidden activation stays on chip) or
            "reference" (the torch convs).
    Returns:
        the result, in x's memory format (or `out`).
    """
    if out is not None:
        torch.ops.yolov12_fast.mlp_residual_out(x, w1, b1, w2, b2, out, backend)
        return out
    return torch.ops.yolov12_fast.mlp_residual(x, w1, b1, w2, b2, backend)


def conv1x1_silu_residual(x: Tensor, w: Tensor, b: Tensor, residual: Optional[Tensor] = None,
                          gamma: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """A2C2f's output conv with the L/X layer-scale residual: ``residual + gamma * silu(conv1x1(x, w) + b)``, or
    ``silu(conv1x1(x, w) + b)`` without a residual, BatchNorm folded into (w, b).

    Args:
        x: (B, K, H, W), NCHW or channels_last (A2C2f's aggregation buffer).
        w, b: (C, K, 1, 1) and (C,); x's dtype and device.
        residual, gamma: (B, C, H, W) and (C,), both or neither.
        backend: "auto" (torch ops until the fused kernel measures faster on the GPU; on CPU a batch-1 NCHW
            float32 x runs the conv as addmm), "triton" (one kernel, the residual in the GEMM epilogue) or
            "reference" (the torch ops).
    Returns:
        (B, C, H, W), in the residual's memory format (x's without one).
    """
    return torch.ops.yolov12_fast.conv1x1_silu_residual(x, w, b, residual, gamma, backend)


__all__ = ["area_attention", "area_attention_add_", "pe_add", "mlp_residual", "conv1x1_silu_residual"]
