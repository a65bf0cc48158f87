"""Plain-PyTorch reference of YOLOv12 area attention: the oracle for tests and the baseline for benchmarks.

Everything here follows ../shared/docs/REFERENCE.md and computes in the dtype of its inputs (pass float64
tensors to get the float64 oracle). It materialises the n x n score matrix per area on purpose: it is the
naive math the fused kernels are measured against.

Layout convention shared with the fused ops: q, k, v are (B, heads, head_dim, N) with N = H*W tokens in raster
order, any strides; area j owns tokens [j*N/area, (j+1)*N/area) (areas may cut rows).
"""

from __future__ import annotations

import torch

__all__ = ["area_attention", "area_attention_lse", "area_attention_backward"]


def _split_areas(x: torch.Tensor, area: int) -> torch.Tensor:
    """(B, heads, D, N) -> (B, heads, area, n, D)."""
    B, H, D, N = x.shape
    return x.reshape(B, H, D, area, N // area).permute(0, 1, 3, 4, 2)


def _merge_areas(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, area, n, D) -> (B, heads, D, N), contiguous."""
    B, H, A, n, D = x.shape
    return x.permute(0, 1, 4, 2, 3).reshape(B, H, D, A * n).contiguous()


def _scores(q, k, area, scale):
    qa, ka = _split_areas(q, area), _split_areas(k, area)
    return (qa * scale) @ ka.transpose(-1, -2)  # (B, heads, area, n, n); q scaled first, as ultralytics does


def area_attention_lse(q, k, v, area: int, scale: float | None = None, residual: torch.Tensor | None = None):
    """Returns (out, lse): out (B, heads, D, N) = softmax(scale q^T k) v per area (+ residual), contiguous;
    lse (B, heads, N) = natural-log sum of exp of the scaled scores of each query row."""
    scale = q.shape[2] ** -0.5 if scale is None else scale
    s = _scores(q, k, area, scale)
    lse = torch.logsumexp(s, dim=-1)  # (B, heads, area, n)
    p = torch.softmax(s, dim=-1)
    out = _merge_areas(p @ _split_areas(v, area))
    if residual is not None:
        out = out + residual
    return out, lse.flatten(2)


def area_attention(q, k, v, area: int, scale: float | None = None, residual: torch.Tensor | None = None):
    """Area attention exactly as ultralytics computes it (in the inputs' dtype); see the module docstring."""
    return area_attention_lse(q, k, v, area, scale, residual)[0]


def area_attention_backward(dout, q, k, v, area: int, scale: float | None = None):
    """Gradients (dq, dk, dv) of area_attention w.r.t. q, k, v for upstream gradient dout, each (B, heads, D, N).
    (The gradient w.r.t. a residual is dout itself.)"""
    scale = q.shape[2] ** -0.5 if scale is None else scale
    p = torch.softmax(_scores(q, k, area, scale), dim=-1)
    qa, ka, va, doa = (_split_areas(t, area) for t in (q, k, v, dout))
    dv = p.transpose(-1, -2) @ doa
    dp = doa @ va.transpose(-1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq = (ds @ ka) * scale
    dk = (ds.transpose(-1, -2) @ qa) * scale
    return _merge_areas(dq), _merge_areas(dk), _merge_areas(dv)
