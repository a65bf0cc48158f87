"""yolov12_fast::pe_add: the AAttn positional-encoding branch, a depthwise k x k conv over V plus an add.

out = x + depthwise_conv2d(v, weight, bias, padding=k//2), computed over the whole H x W map (it crosses area
borders; zero padding only at the image border). v and x are (B, heads, head_dim, N=H*W) with any strides (a
view of the interleaved `qkv` output is read in place); weight is (heads*head_dim, 1, k, k) with BN folded in;
the output is contiguous (B, heads, head_dim, N). x may be None (no add).

Backends: "triton", "cpp" (C++ CPU), "cuda" (CUDA C++), "reference" (torch conv2d), "auto" (C++ on CPU; on GPU
the reference (cuDNN) until a GPU benchmark shows a fused kernel faster). The backward: with the "cpp" (CPU) and
"cuda" backends the compiled kernels (the input gradient is pe_add_cxx itself on dout with the kernel flipped, the
weight and bias gradients pe_add_wgrad_cxx; on CPU 15x ATen's depthwise convolution backward at P4 h2; on CUDA it
replaces ATen's NCHW depthwise backward kernels, 211 us of a 362 us attention training step at P5 h4 batch 32 on the
H100 of 2026-11-27b), elsewhere ATen's convolution backward.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _backends
from .._backends import check as _check
from .area_attention import DTYPES, _usable, arch_classes, no_double_backward


def _inputs_ok(v: Tensor, weight: Tensor, bias: Optional[Tensor], x: Optional[Tensor], H: int, W: int,
               backend: str) -> bool:
    """check_inputs as one plain expression over concrete sizes (see area_attention._inputs_ok): True only when
    every check below passes; False for symbolic sizes and for anything wrong (the checks then say what)."""
    s, ws = v.shape, weight.shape
    if (len(s) != 4 or len(ws) != 4 or type(H) is not int or type(W) is not int
            or not all(type(d) is int for d in (*s, *ws))):
        return False
    C, dt, dev = s[1] * s[2], v.dtype, v.device
    return (dt in DTYPES and H * W == s[3] and ws[0] == C and ws[1] == 1 and ws[2] == ws[3] and ws[2] % 2 == 1
            and weight.dtype == dt and weight.device == dev
            and (bias is None or (type(bias.shape[0]) is int and tuple(bias.shape) == (C,) and bias.dtype == dt
                                  and bias.device == dev))
            and (x is None or (type(x.shape[0]) is int and x.shape == s and x.dtype == dt and x.device == dev))
            and backend in _backends.BACKENDS)


def check_inputs(v: Tensor, weight: Tensor, bias: Optional[Tensor], x: Optional[Tensor], H: int, W: int,
                 backend: str) -> None:
    if _inputs_ok(v, weight, bias, x, H, W, backend):
        return
    _check(v.dim() == 4, lambda: f"pe_add: v must be 4-D (B, heads, head_dim, N), got shape {tuple(v.shape)}")
    _check(v.dtype in DTYPES, lambda: f"pe_add: v has dtype {v.dtype}; use float16, bfloat16 or float32")
    B, nh, D, N = v.shape
    _check(H * W == N, lambda: f"pe_add: H*W = {H}*{W} must equal the token count N = {N}")
    C = nh * D
    _check(weight.dim() == 4 and weight.shape[0] == C and weight.shape[1] == 1 and weight.shape[2] == weight.shape[3]
                 and weight.shape[2] % 2 == 1,
                 lambda: f"pe_add: weight must be a depthwise ({C}, 1, k, k) kernel with odd k, got {tuple(weight.shape)}")
    _check(weight.dtype == v.dtype and weight.device == v.device,
                 lambda: f"pe_add: weight must match v's dtype and device ({v.dtype}, {v.device}), got {weight.dtype}, {weight.device}")
    if bias is not None:
        _check(bias.shape == (C,) and bias.dtype == v.dtype and bias.device == v.device,
                     lambda: f"pe_add: bias must be ({C},) with v's dtype and device, got {tuple(bias.shape)} {bias.dtype} {bias.device}")
    if x is not None:
        _check(x.shape == v.shape and x.dtype == v.dtype and x.device == v.device,
                     lambda: f"pe_add: x must have v's shape, dtype and device, got {tuple(x.shape)} {x.dtype} {x.device}")
    _check(backend in _backends.BACKENDS, lambda: f"pe_add: unknown backend {backend!r}; choose one of {_backends.BACKENDS}")


# Where "auto" runs the CUDA C++ PE kernel instead of cuDNN's depthwise conv + add, per (arch class, dtype):
# measured in benchmarks/results/nvidia-h100-80gb-hbm3-2026-11-26 (pe-cuda 1.84x cuDNN at batch 1, 1.06x at 32, with
# the first, 32x32-tile kernel) and -27 (its plane-fitted successor: 3.6x / 3.9x, 6.8 / 135 us at P4 h8).
# Elsewhere on a GPU auto keeps cuDNN until a run measures the kernel faster there; on CPU the C++ kernel.
AUTO_CUDA_PE = {("sm90", torch.float16)}
CUDA_PE_KSIZES = (3, 5, 7)


def resolve_backend(backend: str, device: torch.device, dtype: Optional[torch.dtype] = None,
                    ksize: Optional[int] = None) -> str:
    """Map "auto" to a concrete backend for this device (on CUDA: the CUDA C++ kernel where AUTO_CUDA_PE measured
    it faster, for inputs of `dtype` with a ksize x ksize kernel; cuDNN otherwise); check that an explicit choice
    can run here."""
    if backend == "auto":
        if device.type == "cpu" and _usable("cpp", device)[0]:
            return "cpp"
        if (device.type == "cuda" and dtype is not None and ksize in CUDA_PE_KSIZES
                and any((c, dtype) in AUTO_CUDA_PE for c in arch_classes(torch.cuda.get_device_capability(device)))
                and _usable("cuda", device)[0]):
            return "cuda"
        return "reference"
    ok, why = _usable(backend, device, dtype)
    if not ok:
        raise RuntimeError(f"yolov12_fast: backend {backend!r} cannot run pe_add on {device.type}: {why} "
                           f"(backend='auto' picks what runs on {device.type}; a model patched for the GPU runs after .cuda())")
    return backend


def _nchw(t: Tensor, H: int, W: int) -> Tensor:
    B, nh, D, N = t.shape
    return t.reshape(B, nh * D, H, W)


def _check_triton_offsets(*tensors) -> None:
    """Limits of the Triton PE kernel: offsets inside one (image, head) are 32-bit (only the image / head bases
    are 64-bit) and grid axis 1 (token tiles of 32 or 64 tokens; checked at 32) is capped at 65535 by CUDA. Refuse
    with a clear error what does not fit, instead of wrapping around (a silent out-of-bounds read)."""
    N = tensors[0].shape[3]
    _check(-(-N // 32) <= 65535, lambda: f"pe_add (triton): {N} tokens per image is more than one launch covers "
                 f"(grid axis 1 > 65535 tiles); split the feature map, or use backend='cpp' / 'reference'")
    _backends.check_image_extent("pe_add (triton)", tensors, "split the batch or the feature map, or use "
                                                             "backend='cpp' / 'reference'")


def _reference(v, weight, bias, x, H, W):
    out = F.conv2d(_nchw(v, H, W), weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0])
    if x is not None:
        out = out + _nchw(x, H, W)
    return out.reshape(v.shape).contiguous()


@torch.library.custom_op("yolov12_fast::pe_add", mutates_args=())
def pe_add(v: Tensor, weight: Tensor, bias: Optional[Tensor], x: Optional[Tensor], H: int, W: int,
           backend: str) -> Tensor:
    check_inputs(v, weight, bias, x, H, W, backend)
    return run(v, weight, bias, x, H, W, resolve_backend(backend, v.device, v.dtype, weight.shape[-1]))


def run(v: Tensor, weight: Tensor, bias: Optional[Tensor], x: Optional[Tensor], H: int, W: int, b: str) -> Tensor:
    """The op's body on resolved backend `b`, for inputs check_inputs accepted. AAttn's inference path calls it
    directly (without the custom-op layer); everything else goes through yolov12_fast::pe_add."""
    if v.numel() == 0:
        return torch.empty_like(v, memory_format=torch.contiguous_format)
    if b in ("cpp", "cuda"):
        return torch.ops.yolov12_fast.pe_add_cxx(v, weight, bias, x, H, W)
    if b == "triton":
        from ..kernels import pe as tk

        _check_triton_offsets(v, x)
        return tk.pe_add(v, weight, bias, x, H, W)
    return _reference(v, weight, bias, x, H, W)


@pe_add.register_fake
def _(v, weight, bias, x, H, W, backend):
    check_inputs(v, weight, bias, x, H, W, backend)
    return v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    v, weight, bias, x, H, W, backend = inputs
    ctx.save_for_backward(v, weight)
    ctx.H, ctx.W, ctx.has_bias, ctx.has_x = H, W, bias is not None, x is not None
    ctx.cxx = resolve_backend(backend, v.device, v.dtype, weight.shape[-1]) in ("cpp", "cuda")


def _backward(ctx, dout):
    v, weight = ctx.saved_tensors
    H, W = ctx.H, ctx.W
    k = weight.shape[-1]
    need_v, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
    if ctx.cxx:  # the compiled kernels of the forward's backend (C++ on CPU, CUDA C++ on a GPU)
        d = dout.to(v.dtype)
        with torch.no_grad():  # kernels without autograd: under create_graph their outputs must not pretend to have one
            dv = (torch.ops.yolov12_fast.pe_add_cxx(d, weight.flip((-2, -1)).contiguous(), None, None, H, W)
                  if need_v else None)
            dw, db = torch.ops.yolov12_fast.pe_add_wgrad_cxx(d, v, k, H, W) if need_w or need_b else (None, None)
        grads = (dv, dw.to(weight.dtype) if need_w else None, db if need_b else None)
        if torch.is_grad_enabled():  # create_graph=True: differentiating these raises (they would be silently 0)
            grads = no_double_backward(grads, (v, weight), "pe_add")
        return (*grads, dout if ctx.has_x else None, None, None, None)
    dv, dw, db = torch.ops.aten.convolution_backward(
        _nchw(dout, H, W).contiguous(), _nchw(v, H, W), weight, [weight.shape[0]] if ctx.has_bias else None,
        [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], weight.shape[0],
        [need_v, need_w, need_b])
    dv = dv.reshape(v.shape) if dv is not None else None
    return dv, dw, db if ctx.has_bias else None, dout if ctx.has_x else None, None, None, None


pe_add.register_autograd(_backward, setup_context=_setup_context)


class EagerPeAdd(torch.autograd.Function):
    """yolov12_fast::pe_add with its registered autograd, as a plain autograd.Function over the same bodies (run,
    _backward): what functional.pe_add runs in eager training (_backends.eager_autograd), without the custom-op
    layer's host time. Same kernels, same results, the same double-backward behaviour (the backward is the op's)."""

    @staticmethod
    def forward(ctx, v, weight, bias, x, H, W, backend):
        check_inputs(v, weight, bias, x, H, W, backend)
        b = resolve_backend(backend, v.device, v.dtype, weight.shape[-1])
        ctx.save_for_backward(v, weight)
        ctx.H, ctx.W, ctx.has_bias, ctx.has_x = H, W, bias is not None, x is not None
        ctx.cxx = b in ("cpp", "cuda")
        return run(v, weight, bias, x, H, W, b)

    backward = staticmethod(_backward)
