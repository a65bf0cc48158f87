"""AAttn's positional encoding in Triton: depthwise k x k conv of V (+ bias) plus an add, in one pass.

V and X are (B, heads, HEAD_DIM, N = H*W) with arbitrary strides (the v view of the interleaved qkv output is
read in place: no NCHW copy); the output is contiguous. One program computes HEAD_DIM channels x BLOCK_T tokens
of one (image, head); each of the k*k taps loads the shifted V tile (zero outside the image, so the conv
crosses area borders as the reference does). fp32 accumulation.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .area_attention import COMPILE_OPTIONS, TRITON_DTYPE, aot_signature, capture_hint


# Not specialised on divisibility (do_not_specialize): with N and the strides known to be multiples of 16, Triton
# gives each thread 8 consecutive tokens to vectorise the store, and the loads follow that layout; but every tap's
# load is shifted by a token or more, so none vectorises and each warp-wide load of the 8 became 4 channel rows of
# 16-byte-strided scalars (4-8 L1 wavefronts). Unspecialised, a warp's load covers 32 consecutive tokens of one
# channel (1-2 wavefronts); the stores become coalesced scalars. sm_90 SASS, fp16 k7 d32: per 7-tap row 56 V loads
# either way, 551 -> 534 instructions; the H100 measured the specialised kernel at 2.40 ms at P4 h8 batch 32, and
# this one at 2.39 (2026-11-27b): under Triton 3.6, the H100's, the loads went across channels either way (see the
# tap's token below; that was the 2.4 ms). This analysis is Triton 3.8's.
PE_NOT_SPECIALIZED = ("s_vb", "s_vh", "s_vd", "s_xb", "s_xh", "s_xd", "H", "W", "N")


@triton.jit(do_not_specialize=PE_NOT_SPECIALIZED)
def pe_add_kernel(
    V, Wt, Bias, X, Out,
    s_vb, s_vh, s_vd, s_vn,
    s_xb, s_xh, s_xd, s_xn,
    heads, H, W, N,
    HEAD_DIM: tl.constexpr, KSIZE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_X: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    b = (pid_bh // heads).to(tl.int64)
    h = (pid_bh % heads).to(tl.int64)
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < N
    y = offs_t // W
    x = offs_t % W
    offs_d = tl.arange(0, HEAD_DIM)
    chan = h * HEAD_DIM + offs_d  # channel of each row in the (B, C, H, W) map
    v_base = V + b * s_vb + h * s_vh
    acc = tl.zeros([HEAD_DIM, BLOCK_T], dtype=tl.float32)
    for ky in range(KSIZE):  # a loop, not unrolled: 49 unrolled taps hoist loads and spill
        yy = y + (ky - KSIZE // 2)
        row_ok = mask_t & (yy >= 0) & (yy < H)
        for kx in tl.static_range(KSIZE):
            xx = x + (kx - KSIZE // 2)
            ok = row_ok & (xx >= 0) & (xx < W)
            # The tap's token is offs_t + a scalar shift (= yy * W + xx): written so, the compiler sees the tokens
            # contiguous and lays a warp along them (one 64-byte row per load). From yy * W + xx it cannot
            # (y = t // W): Triton 3.6 then put a warp across 32 channels, 32 sectors per load; the H100 measured
            # that at 2.3-2.4 ms at P4 h8 batch 32, 17x the CUDA kernel.
            tap = offs_t + ((ky - KSIZE // 2) * W + (kx - KSIZE // 2))
            vv = tl.load(v_base + (offs_d[:, None] * s_vd + tap[None, :] * s_vn), mask=ok[None, :], other=0.0)
            w = tl.load(Wt + chan * (KSIZE * KSIZE) + (ky * KSIZE + kx))
            acc += w.to(tl.float32)[:, None] * vv.to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(Bias + chan).to(tl.float32)[:, None]
    if HAS_X:
        acc += tl.load(X + b * s_xb + h * s_xh + (offs_d[:, None] * s_xd + offs_t[None, :] * s_xn),
                       mask=mask_t[None, :], other=0.0).to(tl.float32)
    tl.store(Out + (b * heads + h) * HEAD_DIM * N + (offs_d[:, None] * N + offs_t[None, :]),
             acc.to(Out.dtype.element_ty), mask=mask_t[None, :])


def num_warps(ksize: int) -> int:
    """8 warps for the 7x7 kernel: with 4, its 49 taps x tile take 255 registers and spill (16-248 bytes on sm_80 /
    sm_90) under triton 3.6, the GPU machines' version (3.8: 128 registers either way)."""
    return 8 if ksize >= 7 else 4


def pe_add(v, weight, bias, x, H: int, W: int):
    """Launcher (inputs validated by the yolov12_fast::pe_add op). head_dim must be a power of two."""
    B, heads, D, N = v.shape
    torch._check(D & (D - 1) == 0, lambda: f"pe_add (triton): head_dim {D} must be a power of two; use backend='reference'")
    out = torch.empty((B, heads, D, N), device=v.device, dtype=v.dtype)
    w = weight.contiguous()  # (C, 1, k, k): a few KB, folded from BN by the module (the kernel reads
    # weight and bias as contiguous: a strided view is copied, a few KB)
    xx = x if x is not None else v
    block_t = 64 if D <= 32 else 32
    with torch.cuda.device(v.device) if v.is_cuda else contextlib.nullcontext():
        try:
            pe_add_kernel[(B * heads, triton.cdiv(N, block_t))](
                v, w, bias.contiguous() if bias is not None else w, xx, out, *v.stride(), *xx.stride(), heads, H, W,
                N, HEAD_DIM=D, KSIZE=weight.shape[-1], HAS_BIAS=bias is not None, HAS_X=x is not None,
                BLOCK_T=block_t, num_warps=num_warps(weight.shape[-1]), **COMPILE_OPTIONS)
        except Exception as e:
            capture_hint(e, "pe_add", v)
            raise
    return out




def aot_variants(arch: int, dtypes=(torch.float16, torch.bfloat16, torch.float32), head_dims=(16, 32, 64, 128)):
    """Every (dtype, head_dim, k) variant the op launches, as triton.compile inputs (v token stride 1, as the
    NCHW conv output; x contiguous)."""
    fn = pe_add_kernel
    for dtype in dtypes:
        for d in head_dims:
            for k in (5, 7):
                block_t = 64 if d <= 32 else 32
                const = {"HEAD_DIM": d, "KSIZE": k, "HAS_BIAS": True, "HAS_X": True, "BLOCK_T": block_t,
                         "s_vn": 1, "s_xn": 1}
                sig, attrs = aot_signature(fn, const, dtype, ints=("H", "W", "N"))
                attrs = {i: a for i, a in attrs.items() if fn.arg_names[i[0]] not in PE_NOT_SPECIALIZED}
                w = num_warps(k)
                yield dict(fn=fn, signature=sig, constexprs=const, attrs=attrs, num_warps=w, num_stages=1,
                           dtype=str(dtype).replace("torch.", ""), tensor_cores_expected=False,
                           name=f"pe_add_kernel[{TRITON_DTYPE[dtype]},d{d},k{k},BLOCK_T={block_t},w{w}s1]")
