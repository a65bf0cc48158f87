"""The one tolerance table (the tests' tests/tolerances.py re-exports it; `yolov12-fast verify` applies it).

Principle (flash-attention's tests): a kernel's error against a higher-precision oracle may be at most
FACTOR[dtype] times the error that the naive PyTorch computation in the same dtype makes against that oracle, plus a
floor for results where the naive error happens to be ~0: ATOL_FLOOR[dtype], about two units of roundoff of the
dtype (fp16 eps 9.8e-4, bf16 eps 7.8e-3) at unit scale, plus ROUNDOFF_ULPS units of roundoff at each value's own
magnitude (`floor`): no result can be held closer than the rounding of its own dtype allows. Nothing here is tuned
per test.
"""

from __future__ import annotations

import torch

# |kernel - oracle| <= FACTOR * max |naive same-dtype - oracle| + floor(dtype, oracle), element by element
FACTOR = {
    torch.float32: 4.0,   # fp32 accumulation both sides; online softmax reorders sums
    torch.float16: 3.0,   # kernels accumulate in fp32, the naive path rounds P to fp16: kernels are usually better
    torch.bfloat16: 3.0,
}
ATOL_FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# A one-element fp16 bias gradient of -12.9 that the naive path happened to round correctly (error 0.2 ulp) bounded
# the kernel to 3 x 0.0017 + 0.002 = 0.9 ulp there (fp16's ulp at 8..16 is 0.0078): below what any fp16 result can
# promise. Hence the relative part of the floor, which matters for fp16 / bf16 values above about 1.
ROUNDOFF_ULPS = 2


def floor(dtype: torch.dtype, oracle: torch.Tensor) -> torch.Tensor:
    """The floor of the bound per element: ATOL_FLOOR[dtype] + ROUNDOFF_ULPS x eps(dtype) x |oracle|."""
    return ATOL_FLOOR[dtype] + ROUNDOFF_ULPS * torch.finfo(dtype).eps * oracle.double().abs()


# Whole models / layers in float32 against the same model run by ultralytics in float32: a handful of ulps of
# unit-scale activations accumulated through tens of layers.
MODEL_RTOL_FP32 = 1e-3

# Training (fp32 CPU, through ultralytics' trainer): at the first optimizer step each parameter's gradient and each
# BatchNorm statistic may differ from the unpatched model's by this fraction of the tensor's size, or by FACTOR x
# what a rounding-level reordering of the reference's attention changes (gradients that cancel to rounding noise).
TRAIN_GRAD_RTOL = 1e-2
