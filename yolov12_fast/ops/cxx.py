"""Fake (meta) kernels of the compiled `yolov12_fast::*_cxx` ops (schemas in csrc/ops.cpp).

The ops only exist once the extension `yolov12_fast._C` is loaded, so their fake kernels cannot be registered
at import time: `_backends._extension()` calls `register_fakes()` right after a successful import. The fakes
validate like the real kernels (shapes, dtypes, N % area) and return outputs of the real kernels' shapes,
dtypes and (contiguous) layout, so the ops trace under torch.compile / FakeTensor and pass
`torch.library.opcheck`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._backends import check as _check
from .area_attention import check_inputs as _check_attention

_registered = False


def _fwd_fake(q: Tensor, k: Tensor, v: Tensor, area: int, scale: float, residual: Optional[Tensor]):
    _check_attention(q, k, v, area, residual, "cpp")
    B, H, D, N = q.shape
    return q.new_empty(B, H, D, N), q.new_empty(B, H, N, dtype=torch.float32)


def _bwd_fake(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, residual: Optional[Tensor], lse: Tensor,
              area: int, scale: float):
    _check_attention(q, k, v, area, residual, "cpp")
    _check(dout.shape == q.shape and out.shape == q.shape,
                 lambda: f"area_attention_bwd_cxx: dout and out must have q's shape {tuple(q.shape)}, got "
                         f"{tuple(dout.shape)} and {tuple(out.shape)}")
    _check(dout.dtype == q.dtype and out.dtype == q.dtype,
                 lambda: f"area_attention_bwd_cxx: dout and out must have q's dtype {q.dtype} (cast dout with .to(q.dtype))")
    B, H, D, N = q.shape
    _check(lse.shape == (B, H, N) and lse.dtype == torch.float32,
                 lambda: f"area_attention_bwd_cxx: lse must be float32 (B, heads, N) = {(B, H, N)}, got "
                         f"{lse.dtype} {tuple(lse.shape)}")
    return tuple(q.new_empty(B, H, D, N) for _ in range(3))


def _pe_add_fake(v: Tensor, weight: Tensor, bias: Optional[Tensor], x: Optional[Tensor], H: int, W: int):
    _check(v.dim() == 4, lambda: f"pe_add_cxx: v must be 4-D (B, heads, head_dim, N), got {tuple(v.shape)}")
    B, nh, D, N = v.shape
    _check(H * W == N, lambda: f"pe_add_cxx: H*W = {H}*{W} must equal the token count N = {N}")
    C = nh * D
    _check(weight.dim() == 4 and weight.shape[0] == C and weight.shape[1] == 1
                 and weight.shape[2] == weight.shape[3] and weight.shape[2] % 2 == 1,
                 lambda: f"pe_add_cxx: weight must be a depthwise ({C}, 1, k, k) kernel with odd k, got {tuple(weight.shape)}")
    if bias is not None:
        _check(bias.shape == (C,), lambda: f"pe_add_cxx: bias must have shape ({C},), got {tuple(bias.shape)}")
    if x is not None:
        _check(x.shape == v.shape and x.dtype == v.dtype,
                     lambda: f"pe_add_cxx: x must have v's shape and dtype, got {tuple(x.shape)} {x.dtype}")
    return v.new_empty(B, nh, D, N)


def _pe_wgrad_fake(dout: Tensor, v: Tensor, k: int, H: int, W: int):
    _check(v.dim() == 4 and dout.shape == v.shape,
           lambda: f"pe_add_wgrad_cxx: v and dout must be 4-D (B, heads, head_dim, N) of one shape, got "
                   f"{tuple(v.shape)} and {tuple(dout.shape)}")
    _check(dout.dtype == v.dtype, lambda: f"pe_add_wgrad_cxx: dout dtype {dout.dtype} differs from v's {v.dtype}")
    _check(k >= 1 and k % 2 == 1, lambda: f"pe_add_wgrad_cxx: the kernel size k must be odd and positive, got {k}")
    B, nh, D, N = v.shape
    _check(H * W == N, lambda: f"pe_add_wgrad_cxx: H*W = {H}*{W} must equal the token count N = {N}")
    return v.new_empty(nh * D, 1, k, k), v.new_empty(nh * D)


def _bias_act_fake(y: Tensor, bias: Tensor, silu: bool, out: Tensor) -> None:
    _check(y.dim() == 4, lambda: f"bias_act_cxx: y must be 4-D (B, C, H, W), got {tuple(y.shape)}")
    _check(out.shape == y.shape and out.dtype == y.dtype,
           lambda: f"bias_act_cxx: out must have y's shape and dtype, got {tuple(out.shape)} {out.dtype}")
    _check(bias.dim() == 1 and bias.shape[0] == y.shape[1] and bias.dtype == y.dtype,
           lambda: f"bias_act_cxx: bias must be ({y.shape[1]},) with y's dtype, got {tuple(bias.shape)} {bias.dtype}")


def register_fakes() -> None:
    """Register the fake kernels of the `_cxx` ops (idempotent; needs the extension loaded)."""
    global _registered
    if _registered:
        return
    fakes = {"area_attention_fwd_cxx": _fwd_fake, "area_attention_bwd_cxx": _bwd_fake, "pe_add_cxx": _pe_add_fake,
             "pe_add_wgrad_cxx": _pe_wgrad_fake, "bias_act_cxx": _bias_act_fake}
    for name, fake in fakes.items():
        if hasattr(torch.ops.yolov12_fast, name):  # a build older than its schema lacks it: nothing to fake
            torch.library.register_fake(f"yolov12_fast::{name}")(fake)
    _registered = True


__all__ = ["register_fakes"]
