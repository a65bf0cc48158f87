"""ABlock's MLP in Triton, residual included: out = x + W2 @ silu(W1 @ x + b1) + b2, in one kernel.

x is a (B, C, H, W) feature map with any strides that flatten H, W (NCHW or channels_last); viewed per image as a
(C, N) matrix. One program owns BLOCK_C output channels x BLOCK_N tokens of one image. It walks the hidden
channels in chunks of BLOCK_H: the chunk's pre-activation (BLOCK_H x BLOCK_N) is a dot over C in BLOCK_K
slices, SiLU is applied in registers, and the chunk is immediately multiplied into the output accumulator by
the matching W2 columns. The hidden activation (2x C, or the odd 307 / 460) never goes to memory. When C >
BLOCK_C, each output-channel tile recomputes the hidden chunks (extra GEMM1 work, no extra memory traffic).

Channel counts need not be powers of two: padded hidden rows load W1 = 0, b1 = 0, giving silu(0) = 0, and
their W2 columns load 0. fp32 accumulation; 16-bit inputs round the activation to the input dtype before the
second dot (what the cuDNN path stores); fp32 inputs use IEEE fp32 dots unless the user opted into TF32.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .area_attention import COMPILE_OPTIONS, TRITON_DTYPE, aot_signature, capture_hint, dot_precision, uses_fma


@triton.jit
def nc_tile(N, C, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile of one image's (C, N) matrix: token offsets (grid axis 0), channel offsets (axis 1) and
    their masks."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return offs_n, offs_c, offs_n < N, offs_c < C


@triton.jit
def load_cn(base, offs_c, offs_n, s_c, s_n, mask_c, mask_n):
    """A (channels x tokens) tile of a strided feature map (zeros outside the masks)."""
    return tl.load(base + offs_c[:, None] * s_c + offs_n[None, :] * s_n, mask=mask_c[:, None] & mask_n[None, :],
                   other=0.0)


@triton.jit
def conv1x1_silu_tile(W, Bias, x_base, offs_r, mask_r, offs_n, mask_n, s_xc, s_xn, K,
                      BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      DOT_PRECISION: tl.constexpr):
    """silu(W[rows, :K] @ x[:K, tokens] + bias[rows]) for one (BLOCK_R rows x BLOCK_N tokens) tile, in fp32: a 1x1
    conv with BatchNorm folded and its SiLU, K in BLOCK_K slices (W row-major (rows, K); x strided). Masked rows
    load W = 0 and bias = 0, giving silu(0) = 0; a -inf pre-activation gives -inf / inf = -0."""
    offs_k0 = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_R, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + offs_k0
        mask_k = offs_k < K
        w = tl.load(W + offs_r[:, None] * K + offs_k[None, :], mask=mask_r[:, None] & mask_k[None, :], other=0.0)
        xk = load_cn(x_base, offs_k, offs_n, s_xc, s_xn, mask_k, mask_n)
        acc = tl.dot(w, xk, acc, input_precision=DOT_PRECISION)
    acc += tl.load(Bias + offs_r, mask=mask_r, other=0.0).to(tl.float32)[:, None]
    return acc / (1.0 + tl.exp2(-1.4426950408889634 * acc))


@triton.jit
def mlp_residual_kernel(
    X, W1, B1, W2, B2, Out,
    s_xb, s_xc, s_xn,
    s_ob, s_oc, s_on,
    C, HID, N,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    b = tl.program_id(2).to(tl.int64)
    offs_n, offs_c, mask_n, mask_c = nc_tile(N, C, BLOCK_N, BLOCK_C)
    x_base = X + b * s_xb
    offs_h0 = tl.arange(0, BLOCK_H)
    acc = tl.zeros([BLOCK_C, BLOCK_N], dtype=tl.float32)
    for h0 in range(0, HID, BLOCK_H):
        offs_h = h0 + offs_h0
        mask_h = offs_h < HID
        act = conv1x1_silu_tile(W1, B1, x_base, offs_h, mask_h, offs_n, mask_n, s_xc, s_xn, C,
                                BLOCK_H, BLOCK_N, BLOCK_K, DOT_PRECISION)  # this hidden chunk, on chip
        w2 = tl.load(W2 + offs_c[:, None] * HID + offs_h[None, :], mask=mask_c[:, None] & mask_h[None, :], other=0.0)
        acc = tl.dot(w2, act.to(w2.dtype), acc, input_precision=DOT_PRECISION)
    acc += tl.load(B2 + offs_c, mask=mask_c, other=0.0).to(tl.float32)[:, None]
    acc += load_cn(x_base, offs_c, offs_n, s_xc, s_xn, mask_c, mask_n).to(tl.float32)
    tl.store(Out + b * s_ob + offs_c[:, None] * s_oc + offs_n[None, :] * s_on, acc.to(Out.dtype.element_ty),
             mask=mask_c[:, None] & mask_n[None, :])


def config_for(C: int, fma: bool) -> dict:
    """Launch config for C channels, from the AOT register table (python -m yolov12_fast._aot): tensor-core
    tiles keep a BLOCK_C x 64 fp32 accumulator (128-channel tiles with 8 warps: C = 256 / 384 recompute the
    hidden chunks 2x / 3x, which costs GEMM1 work, not memory); the FMA path (IEEE fp32, sm_75) keeps 64 x 32
    tiles, which do not spill there. To be tuned on a GPU (benchmarks ops suite, case mlp)."""
    if fma:
        return dict(BLOCK_C=64, BLOCK_N=32, BLOCK_H=32, BLOCK_K=32, num_warps=4, num_stages=1)
    block_c = 64 if C <= 64 else 128
    return dict(BLOCK_C=block_c, BLOCK_N=64, BLOCK_H=32, BLOCK_K=32, num_warps=4 if block_c == 64 else 8,
                num_stages=1)


def _arch(device: torch.device) -> int:
    if device.type != "cuda":
        return 80
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def _flat(t: torch.Tensor, op: str = "mlp_residual") -> tuple[int, int, int]:
    """(batch, channel, token) strides of a (B, C, H, W) tensor whose H, W flatten (NCHW, channels_last, channel
    slices of either)."""
    B, C, H, W = t.shape
    torch._check(H == 1 or W == 1 or t.stride(2) == W * t.stride(3),
                 lambda: f"{op} (triton): the H and W dims of a {tuple(t.shape)} tensor with strides "
                         f"{t.stride()} do not flatten into one token dim; pass a NCHW or channels_last tensor")
    return t.stride(0), t.stride(1), (t.stride(3) if W > 1 else t.stride(2))


def mlp_residual(x, w1, b1, w2, b2, out=None):
    """Launcher (inputs validated by the yolov12_fast::mlp_residual ops). x: (B, C, H, W); w1: (HID, C, 1, 1);
    w2: (C, HID, 1, 1); b1 (HID,), b2 (C,). Writes `out` (allocated like x when None) and returns it."""
    from yolov12_fast._backends import check_image_extent

    B, C, H, W = x.shape
    HID = w1.shape[0]
    N = H * W
    if out is None:
        out = torch.empty_like(x, memory_format=torch.channels_last if _is_channels_last(x) else torch.contiguous_format)
    sx, so = _flat(x), _flat(out)
    torch._check(B <= 65535, lambda: f"mlp_residual (triton): batch {B} is more than one launch covers (grid axis 2 "
                                     "> 65535); split the batch")
    check_image_extent("mlp_residual (triton)", [x.flatten(2), out.flatten(2)],
                       "split the feature map or use backend='reference'")
    prec = dot_precision(x.dtype)
    cfg = config_for(C, uses_fma(_arch(x.device), prec, x.dtype == torch.float32))
    w1m, w2m = w1.reshape(HID, C).contiguous(), w2.reshape(C, HID).contiguous()  # a few KB each
    b1, b2 = b1.contiguous(), b2.contiguous()  # the kernel reads them as contiguous vectors
    grid = (triton.cdiv(N, cfg["BLOCK_N"]), triton.cdiv(C, cfg["BLOCK_C"]), B)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        try:
            mlp_residual_kernel[grid](x, w1m, b1, w2m, b2, out, *sx, *so, C, HID, N,
                                      DOT_PRECISION=prec, **cfg, **COMPILE_OPTIONS)
        except Exception as e:
            capture_hint(e, "mlp_residual", x)
            raise
    return out


def _is_channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.shape[1] > 1 and t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous()


# (C, hidden) pairs of the YOLO12 scales (REFERENCE.md): the configs they launch with.
CHANNELS = (64, 128, 256, 384)


def aot_variants(arch: int, dtypes=(torch.float16, torch.bfloat16, torch.float32), head_dims=None):
    """Every (dtype, precision, config) the op launches on `arch` for the YOLO12 channel counts, as
    triton.compile inputs (NCHW: token stride 1, others divisible by 16). head_dims is ignored (no heads here)."""
    fn = mlp_residual_kernel
    for dtype in dtypes:
        for prec in (["ieee", "tf32"] if dtype == torch.float32 else ["tf32"]):
            fma = uses_fma(arch, prec, dtype == torch.float32)
            seen = set()
            for c in CHANNELS:
                cfg = config_for(c, fma)
                key = tuple(sorted(cfg.items()))
                if key in seen:
                    continue
                seen.add(key)
                const = {k: v for k, v in cfg.items() if k.startswith("BLOCK")}
                const.update(DOT_PRECISION=prec, s_xn=1, s_on=1)
                sig, attrs = aot_signature(fn, const, dtype, ints=("C", "HID", "N"))
                tag = f"C{cfg['BLOCK_C']}xN{cfg['BLOCK_N']},H{cfg['BLOCK_H']},K{cfg['BLOCK_K']}"
                p = "-ieee" if dtype == torch.float32 and prec == "ieee" else ("-tf32" if dtype == torch.float32 else "")
                yield dict(fn=fn, signature=sig, constexprs=const, attrs=attrs, num_warps=cfg["num_warps"],
                           num_stages=cfg["num_stages"], dtype=str(dtype).replace("torch.", ""),
                           tensor_cores_expected=not fma, must_not_spill=True,
                           name=f"mlp_residual_kernel[{TRITON_DTYPE[dtype]}{p},{tag},"
                                f"w{cfg['num_warps']}s{cfg['num_stages']}]")
