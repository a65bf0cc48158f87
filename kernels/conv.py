"""A2C2f's output conv with the L/X residual in its epilogue, in Triton:
out = residual + gamma * silu(W @ x + b) (or silu(W @ x + b) without a residual), one kernel.

x is A2C2f's (B, K, H, W) aggregation buffer (cv1's output and each block pair's, K = (1 + n) * c_), W the 1x1
conv weight (C, K) with BatchNorm folded, residual the block input (B, C, H, W), gamma the per-channel scale.
One program owns BLOCK_C output channels x BLOCK_N tokens of one image and walks K in BLOCK_K slices (a plain
tensor-core GEMM, software-pipelined over K); bias, SiLU, gamma and the residual are applied to the fp32
accumulator before the single store, so cv2's output never makes the extra round trip through memory that
ultralytics' `x + gamma * cv2(...)` costs (write cv2's output, read it and x back, write the sum).

Any strides that flatten H, W (NCHW, channels_last, channel slices of either). fp32 accumulation; 16-bit outputs
are rounded once, at the end (the reference rounds cv2's output, then the sum). fp32 inputs use IEEE fp32 dots
unless the user opted into TF32.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .area_attention import COMPILE_OPTIONS, TRITON_DTYPE, aot_signature, capture_hint, dot_precision, uses_fma
from .mlp import _arch, _flat, _is_channels_last, conv1x1_silu_tile, load_cn, nc_tile


@triton.jit
def conv1x1_silu_residual_kernel(
    X, Wt, Bias, Res, Gamma, Out,
    s_xb, s_xc, s_xn,
    s_rb, s_rc, s_rn,
    s_ob, s_oc, s_on,
    C, K, N,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    b = tl.program_id(2).to(tl.int64)
    offs_n, offs_c, mask_n, mask_c = nc_tile(N, C, BLOCK_N, BLOCK_C)
    x_base = X + b * s_xb
    y = conv1x1_silu_tile(Wt, Bias, x_base, offs_c, mask_c, offs_n, mask_n, s_xc, s_xn, K,
                          BLOCK_C, BLOCK_N, BLOCK_K, DOT_PRECISION)
    if HAS_RESIDUAL:
        g = tl.load(Gamma + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        y = load_cn(Res + b * s_rb, offs_c, offs_n, s_rc, s_rn, mask_c, mask_n).to(tl.float32) + g[:, None] * y
    tl.store(Out + b * s_ob + offs_c[:, None] * s_oc + offs_n[None, :] * s_on, y.to(Out.dtype.element_ty),
             mask=mask_c[:, None] & mask_n[None, :])


def config_for(C: int, fma: bool, arch: int) -> dict:
    """Launch config for C output channels, from the AOT register table (python -m yolov12_fast._aot): tensor-core
    tiles of BLOCK_C x 64 tokens (128 channels with 8 warps above C = 64), K in slices of 32, three pipeline stages
    on sm_80+ (cp.async) and two on sm_75; the FMA path (IEEE fp32 on sm_75) keeps 64 x 32 tiles, one stage. To be
    tuned on a GPU (benchmarks ops suite, case conv)."""
    if fma:
        return dict(BLOCK_C=64, BLOCK_N=32, BLOCK_K=32, num_warps=4, num_stages=1)
    block_c = 64 if C <= 64 else 128
    return dict(BLOCK_C=block_c, BLOCK_N=64, BLOCK_K=32, num_warps=4 if block_c == 64 else 8,
                num_stages=3 if arch >= 80 else 2)


def conv1x1_silu_residual(x, w, b, residual=None, gamma=None, out=None):
    """Launcher (inputs validated by the yolov12_fast::conv1x1_silu_residual op). x: (B, K, H, W); w: (C, K, 1, 1);
    b: (C,); residual: (B, C, H, W) or None; gamma: (C,) (with a residual). Writes `out` (B, C, H, W) (allocated
    NCHW, or channels_last like the residual / x, when None) and returns it."""
    from yolov12_fast._backends import check_image_extent

    B, K, H, W = x.shape
    C, N = w.shape[0], H * W
    if out is None:
        fmt = torch.channels_last if _is_channels_last(residual if residual is not None else x) \
            else torch.contiguous_format
        out = torch.empty((B, C, H, W), dtype=x.dtype, device=x.device, memory_format=fmt)
    tensors = [x, out] + ([residual] if residual is not None else [])
    strides = [_flat(t, "conv1x1_silu_residual") for t in tensors]
    torch._check(B <= 65535, lambda: f"conv1x1_silu_residual (triton): batch {B} is more than one launch covers "
                                     "(grid axis 2 > 65535); split the batch")
    check_image_extent("conv1x1_silu_residual (triton)", [t.flatten(2) for t in tensors],
                       "split the feature map or use backend='reference'")
    sr = strides[2] if residual is not None else (0, 0, 0)
    prec = dot_precision(x.dtype)
    arch = _arch(x.device)
    cfg = config_for(C, uses_fma(arch, prec, x.dtype == torch.float32), arch)
    wm = w.reshape(C, K).contiguous()  # C x K weights, a few hundred KB at most
    res = residual if residual is not None else out  # never read without HAS_RESIDUAL
    b = b.contiguous()  # the kernel reads b and gamma as contiguous vectors (a strided view is copied)
    g = gamma.contiguous() if gamma is not None else b
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), triton.cdiv(C, cfg["BLOCK_C"]), B)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        try:
            conv1x1_silu_residual_kernel[grid](x, wm, b, res, g, out, *strides[0], *sr, *strides[1], C, K, N,
                                               HAS_RESIDUAL=residual is not None, DOT_PRECISION=prec, **cfg,
                                               **COMPILE_OPTIONS)
        except Exception as e:
            capture_hint(e, "conv1x1_silu_residual", x)
            raise
    return out


# Output channels of the A2C2f convs of the YOLO12 scales (REFERENCE.md): the configs they launch with.
CHANNELS = (64, 128, 256, 512)


def aot_variants(arch: int, dtypes=(torch.float16, torch.bfloat16, torch.float32), head_dims=None):
    """Every (dtype, precision, config) the op launches on `arch` for the YOLO12 channel counts, with and without
    the residual, as triton.compile inputs (NCHW: token stride 1). head_dims is ignored (no heads here)."""
    fn = conv1x1_silu_residual_kernel
    for dtype in dtypes:
        for prec in (["ieee", "tf32"] if dtype == torch.float32 else ["tf32"]):
            fma = uses_fma(arch, prec, dtype == torch.float32)
            seen = set()
            for c in CHANNELS:
                cfg = config_for(c, fma, arch)
                key = tuple(sorted(cfg.items()))
                if key in seen:
                    continue
                seen.add(key)
                for has_res in (True, False):
                    const = {k: v for k, v in cfg.items() if k.startswith("BLOCK")}
                    const.update(DOT_PRECISION=prec, HAS_RESIDUAL=has_res, s_xn=1, s_rn=1, s_on=1)
                    sig, attrs = aot_signature(fn, const, dtype, ints=("C", "K", "N"))
                    tag = f"C{cfg['BLOCK_C']}xN{cfg['BLOCK_N']},K{cfg['BLOCK_K']}{',res' if has_res else ''}"
                    p = "-ieee" if dtype == torch.float32 and prec == "ieee" else ("-tf32" if dtype == torch.float32
                                                                                    else "")
                    yield dict(fn=fn, signature=sig, constexprs=const, attrs=attrs, num_warps=cfg["num_warps"],
                               num_stages=cfg["num_stages"], dtype=str(dtype).replace("torch.", ""),
                               tensor_cores_expected=not fma, must_not_spill=True,
                               name=f"{fn.__name__}[{TRITON_DTYPE[dtype]}{p},{tag},"
                                    f"w{cfg['num_warps']}s{cfg['num_stages']}]")
