"""The one tolerance table (kept in yolov12_fast/_tolerances.py, which `yolov12-fast verify` also applies), and the
comparison helper every numerics test uses.

Principle (flash-attention's tests): a kernel's error against the float64 oracle may be at most FACTOR times
the error that the naive PyTorch computation in the same dtype makes against that oracle, plus a floor (ATOL_FLOOR[dtype]
and two units of roundoff at each value's magnitude) for results where the naive error happens to be ~0. Nothing
here is tuned per test.
"""

from __future__ import annotations

from typing import Sequence

import torch

from yolov12_fast._tolerances import ATOL_FLOOR, FACTOR, MODEL_RTOL_FP32, ROUNDOFF_ULPS, TRAIN_GRAD_RTOL  # noqa: F401  (the one table)
from yolov12_fast._tolerances import floor as roundoff_floor
from yolov12_fast import reference as _reference


def assert_close_to_oracle(actual: torch.Tensor, naive: torch.Tensor | Sequence[torch.Tensor], oracle: torch.Tensor,
                           name: str = "", factor: float | None = None) -> float:
    """Compare `actual` (kernel) with `oracle` (float64) using the naive same-dtype result as the yardstick.
    `naive` may be several naive formulations of the same result (e.g. an attention gradient by autograd through
    the reference, and by the fused kernels' formula delta = rowsum(dO * O) done in PyTorch): the yardstick is the
    largest of their errors, as each is an equally naive way to compute it.
    Returns the bound used. On failure prints the mismatch count and the first mismatching indices."""
    dtype = actual.dtype
    factor = FACTOR[dtype] if factor is None else factor
    oracle = oracle.double()
    naives = [naive] if isinstance(naive, torch.Tensor) else list(naive)
    naive_err = max(((n.double() - oracle).abs().max().item() if n.numel() else 0.0) for n in naives)
    bound = factor * naive_err + roundoff_floor(dtype, oracle)  # per element
    err = (actual.double() - oracle).abs()
    if not torch.isfinite(actual).all() and torch.isfinite(oracle).all():
        bad = (~torch.isfinite(actual)).nonzero()[:5].tolist()
        raise AssertionError(f"{name}: non-finite values at {bad} where the oracle is finite")
    over = err > bound
    if over.any():
        idx = over.nonzero()[:5].tolist()
        raise AssertionError(
            f"{name}: {int(over.sum())}/{err.numel()} elements exceed the bound (= {factor} x naive {dtype} error "
            f"{naive_err:.3g} + floor {ATOL_FLOOR[dtype]} + {ROUNDOFF_ULPS} eps x |oracle|; at the first: "
            f"{bound[tuple(idx[0])].item():.3g}); max error {err.max().item():.3g}; first at {idx}: got "
            f"{[actual[tuple(i)].item() for i in idx]}, want {[oracle[tuple(i)].item() for i in idx]}")
    return bound.max().item() if bound.numel() else factor * naive_err + ATOL_FLOOR[dtype]


def flash_style_backward(dout, q, k, v):
    """Gradients of single-area attention the way the fused kernels take them, naively in the inputs' dtype: the
    forward keeps out and the row lse of its scores (q scaled first, as ultralytics does); the backward recomputes
    P = exp(s - lse) from scores taken in another order (scale applied after the dot, as the kernels do), so P no
    longer sums to exactly 1 where |s| is large, and delta = rowsum(dout * out)."""
    scale = q.shape[2] ** -0.5
    out, lse = _reference.area_attention_lse(q, k, v, 1)
    qa, ka, va, doa, oa = (t.transpose(-1, -2) for t in (q, k, v, dout, out))  # (B, heads, N, D)
    p = torch.exp((qa @ ka.transpose(-1, -2)) * scale - lse.unsqueeze(-1))
    dp = doa @ va.transpose(-1, -2)
    ds = p * (dp - (doa * oa).sum(-1, keepdim=True))
    return tuple(t.transpose(-1, -2) for t in ((ds @ ka) * scale, (ds.transpose(-1, -2) @ qa) * scale,
                                               p.transpose(-1, -2) @ doa))
