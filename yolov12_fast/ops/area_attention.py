"""yolov12_fast::area_attention_fwd / area_attention_bwd: fused area attention as torch custom ops.

Contract (REFERENCE.md): q, k, v are (B, heads, head_dim, N) with any strides (views into the ultralytics
interleaved `qkv` conv output or the turbo `qk` / `v` outputs are read in place, never copied); area j owns
tokens [j*N/area, (j+1)*N/area). The forward returns out = softmax(scale q^T k) v (+ residual), contiguous
(B, heads, head_dim, N), i.e. NCHW when viewed as (B, C, H, W), and lse (B, heads, N) float32, the natural-log
normaliser of each query row that the backward uses to recompute probabilities.

Backends: "triton" (CUDA, or CPU under TRITON_INTERPRET=1), "cuda" (CUDA C++), "cpp" (C++ CPU), "reference"
(plain PyTorch, float32 math), "auto" (the fastest usable one for the device; see `resolve_backend`).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

from .. import _backends, reference
from .._backends import check as _check

HEAD_DIMS = (16, 32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_residual(q: Tensor, residual: Tensor) -> None:
    """The residual added to the attention output: q's shape, dtype and device (no broadcasting, no promotion).
    Plain raises, not torch._check: functional.area_attention calls this outside the op, where dynamo traces it
    and cannot convert a torch._check message closure that holds tensors."""
    if residual.shape != q.shape:
        raise RuntimeError(f"area_attention: residual must have the shape of q {tuple(q.shape)}, got {tuple(residual.shape)}")
    if residual.dtype != q.dtype:
        raise RuntimeError(f"area_attention: residual dtype {residual.dtype} differs from q's {q.dtype}")
    if residual.device != q.device:
        raise RuntimeError(f"area_attention: residual is on {residual.device}, q on {q.device}")


def _inputs_ok(q: Tensor, k: Tensor, v: Tensor, area: int, residual: Optional[Tensor], backend: str) -> bool:
    """Everything check_inputs checks, as one plain expression over concrete sizes: the common case costs about
    2 us instead of the 13 torch._check calls' 25 (a batch-1 forward on a GPU is host-bound). False for symbolic
    sizes (fake tensors with dynamic shapes), where only torch._check may test them, and for anything wrong."""
    s = q.shape
    if len(s) != 4 or not (type(s[0]) is int and type(s[3]) is int and type(k.shape[0]) is int
                           and type(v.shape[0]) is int):
        return False
    dt, dev = q.dtype, q.device
    return (k.shape == s and v.shape == s and dt in DTYPES and k.dtype == dt and v.dtype == dt and k.device == dev
            and v.device == dev and s[2] in HEAD_DIMS and area >= 1 and s[3] % area == 0
            and backend in _backends.BACKENDS
            and (residual is None or (type(residual.shape[0]) is int and residual.shape == s
                                      and residual.dtype == dt and residual.device == dev)))


def check_inputs(q: Tensor, k: Tensor, v: Tensor, area: int, residual: Optional[Tensor], backend: str) -> None:
    """Raise a clear error for anything the kernels do not support (shared by the real and fake kernels)."""
    if _inputs_ok(q, k, v, area, residual, backend):
        return
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check(t.dim() == 4, lambda: f"area_attention: {name} must be 4-D (B, heads, head_dim, N), got shape {tuple(t.shape)}")
        _check(t.dtype in DTYPES, lambda: f"area_attention: {name} has dtype {t.dtype}; use float16, bfloat16 or float32 (use yolov12_fast.reference for float64)")
    _check(q.shape == k.shape and q.shape == v.shape, lambda: f"area_attention: q, k, v must have the same shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    _check(q.dtype == k.dtype == v.dtype, lambda: f"area_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    _check(q.device == k.device == v.device, lambda: f"area_attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    D, N = q.shape[2], q.shape[3]
    _check(D in HEAD_DIMS, lambda: f"area_attention: head_dim {D} is not supported; supported: {HEAD_DIMS} "
                 f"(q, k, v are (B, heads, head_dim, N): got shape {tuple(q.shape)})")
    _check(area >= 1, lambda: f"area_attention: area must be >= 1, got {area}")
    _check(N % area == 0, lambda: f"area_attention: N = H*W = {N} tokens is not divisible by area = {area}; pad the feature map (ultralytics pads inputs to multiples of 32)")
    if residual is not None:
        check_residual(q, residual)
    _check(backend in _backends.BACKENDS, lambda: f"area_attention: unknown backend {backend!r}; choose one of {_backends.BACKENDS}")


_warned: set = set()


# What "auto" runs on CUDA, per (arch class, dtype); the first usable entry wins, the most specific arch class
# first (sm90 before sm80+). Measured entries: sm90 float16 from benchmarks/results/nvidia-h100-80gb-hbm3-2026-11-26
# (the CUDA C++ forward with its PE ran 1.01-2.35x faster than Triton attention + cuDNN PE in all 8 forward cases,
# batch 1 and 32). The -27 run's profile timed the attention kernels alone: Triton's 126 us against the CUDA
# kernel's 169 at P4 h8 batch 32 (8.8 / 11.8 us at batch 1). The CUDA kernel's hot loop was cut 28 % since; the
# -27b run timed it at 153 us (7.9 against 11.1 at batch 1; Triton 122): the prediction "about equal" missed, the
# kernel is latency-bound (16 warps per SM, about 3x its issue bound), not issue-bound. The entry stays: the CUDA op
# costs the host less per call, the whole-op rows (with its PE) are still 1.0-2.35x faster, and the next lever, warps
# per CTA (benchmarks/fwd_warps.py), is timed by the next GPU run. (The PE is its own op with its own table:
# ops.pe.AUTO_CUDA_PE.) Defaults where no GPU run has measured an arch:
# Triton where it has tensor cores (sm_80+), the CUDA C++ kernel on Turing (sm_75: Triton's dots run on FMA units).
AUTO_CUDA = {
    ("sm75", torch.float16): ("cuda", "triton"),
    ("sm75", None): ("triton",),
    ("sm90", torch.float16): ("cuda", "triton"),
    ("sm80+", None): ("triton", "cuda"),
}
CUDA_CXX_SUPPORTS = {"dtypes": (torch.float16, torch.bfloat16), "head_dims": (32, 64)}
# Arch classes where "auto", having picked the CUDA C++ forward, also trains through the CUDA C++ backward. Turing
# (sm75), by the same reasoning as its forward entry: Triton's backward dots run on FMA units there, the CUDA kernels
# on tensor cores. Hopper (sm90), measured (benchmarks/results/nvidia-h100-80gb-hbm3-2026-11-27, fp16, batch 32, P4/P5
# at 640, heads 4/8): forward + backward with the CUDA backward 1.11-1.57x faster than the CUDA forward + Triton
# backward in all 4 cases (0.99-2.38 ms against 1.56-2.65 ms); its kernels alone 84 us against Triton's 93 us at P5 h4
# (profile of that run); its gradients matched the float64 oracle there (tests/test_cuda_kernels.py, compute-sanitizer
# memcheck clean). sm80+ keeps the Triton backward until a GPU run of that class has timed the CUDA one against it.
AUTO_CUDA_BACKWARD = {"sm75", "sm90"}


def arch_classes(capability: tuple) -> tuple:
    """The AUTO_CUDA arch classes of a compute capability, most specific first."""
    if capability < (8, 0):
        return ("sm75",)
    return ("sm90", "sm80+") if capability[0] == 9 else ("sm80+",)  # sm90: Hopper, where it was measured


def auto_cuda_order(capability: tuple, dtype: Optional[torch.dtype]) -> tuple:
    """AUTO_CUDA's entry for this capability and dtype: the most specific class's (class, dtype) entry, else the
    most general class's (class, None) entry."""
    classes = arch_classes(capability)
    for cls in classes:
        if (cls, dtype) in AUTO_CUDA:
            return AUTO_CUDA[(cls, dtype)]
    return AUTO_CUDA[(classes[-1], None)]


def cuda_backward_by_default(device: torch.device) -> bool:
    """Whether "auto" trains through the CUDA C++ backward on this device (when it picked the CUDA forward)."""
    return device.type == "cuda" and any(
        c in AUTO_CUDA_BACKWARD for c in arch_classes(torch.cuda.get_device_capability(device)))


def _auto_order(device: torch.device, dtype: Optional[torch.dtype], head_dim: Optional[int]) -> tuple:
    if device.type != "cuda":
        return ("cpp", "triton")
    order = auto_cuda_order(torch.cuda.get_device_capability(device), dtype)
    if dtype not in CUDA_CXX_SUPPORTS["dtypes"] or head_dim not in CUDA_CXX_SUPPORTS["head_dims"]:
        order = tuple(b for b in order if b != "cuda")
    return order


def resolve_backend(backend: str, device: torch.device, dtype: Optional[torch.dtype] = None,
                    head_dim: Optional[int] = None) -> str:
    """Map "auto" to a concrete backend for this device (and dtype / head_dim when given); check that an
    explicit choice can run here."""
    if backend == "auto":
        order = _auto_order(device, dtype, head_dim)
        for b in order:
            if _usable(b, device, dtype)[0]:
                return b
        if device.type not in _warned:
            _warned.add(device.type)
            reasons = "; ".join(f"{b}: {_usable(b, device, dtype)[1]}" for b in order)
            warnings.warn(f"yolov12_fast: no fused area-attention kernel can run on {device.type} ({reasons}); "
                          "falling back to the plain-PyTorch reference", RuntimeWarning,
                          stacklevel=_backends.user_stacklevel())
        return "reference"
    ok, why = _usable(backend, device, dtype)
    if not ok:
        raise RuntimeError(f"yolov12_fast: backend {backend!r} cannot run on {device.type}: {why} "
                           f"(backend='auto' picks what runs on {device.type}; a model patched for the GPU runs after .cuda())")
    return backend


def _usable(backend: str, device: torch.device, dtype: Optional[torch.dtype] = None) -> tuple[bool, str]:
    """Whether `backend` can run here (and for inputs of `dtype`, when given), and why not."""
    if backend == "reference":
        return True, ""
    if backend == "triton":
        gap = _backends.triton_gap(device, dtype)
        return (False, gap) if gap else _backends.can_use_triton(device)
    if backend == "cpp":
        if device.type != "cpu":
            return False, "the C++ CPU kernels take CPU tensors; use 'cuda' or 'triton' for CUDA tensors"
        return _backends.can_use_cpp()
    if backend == "cuda":
        if device.type != "cuda":
            return False, "the CUDA C++ kernels take CUDA tensors"
        return _backends.can_use_cuda_ext(device)
    return False, f"unknown backend {backend!r}"


# ----------------------------------------------------------------------------------------------------------
# reference backend (float32 math for half inputs, like the kernels; never the oracle of the tests)


def _reference_fwd(q, k, v, area, scale, residual):
    f = lambda t: t.float() if t.dtype != torch.float32 else t
    out, lse = reference.area_attention_lse(f(q), f(k), f(v), area, scale)
    if residual is not None:
        out = out + residual.float()
    return out.to(q.dtype), lse


def _reference_bwd(dout, q, k, v, area, scale):
    f = lambda t: t.float() if t.dtype != torch.float32 else t
    grads = reference.area_attention_backward(f(dout), f(q), f(k), f(v), area, scale)
    return tuple(g.to(q.dtype) for g in grads)


# ----------------------------------------------------------------------------------------------------------
# the ops


def _fwd(q, k, v, area, scale, residual, b):
    """The forward on resolved backend `b`: (out, lse)."""
    if b == "triton":
        from ..kernels import area_attention as tk
        return tk.area_attention_fwd(q, k, v, area, scale, residual)
    if b in ("cpp", "cuda"):
        return torch.ops.yolov12_fast.area_attention_fwd_cxx(q, k, v, area, scale, residual)
    return _reference_fwd(q, k, v, area, scale, residual)


@torch.library.custom_op("yolov12_fast::area_attention_fwd", mutates_args=())
def area_attention_fwd(q: Tensor, k: Tensor, v: Tensor, area: int, scale: float, residual: Optional[Tensor],
                       backend: str) -> tuple[Tensor, Tensor]:
    check_inputs(q, k, v, area, residual, backend)
    b = resolve_backend(backend, q.device, q.dtype, q.shape[2])
    if q.numel() == 0:
        return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(q.shape[0], q.shape[1], q.shape[3], dtype=torch.float32)
    return _fwd(q, k, v, area, scale, residual, b)


@area_attention_fwd.register_fake
def _(q, k, v, area, scale, residual, backend):
    check_inputs(q, k, v, area, residual, backend)
    B, H, D, N = q.shape
    return q.new_empty(B, H, D, N), q.new_empty(B, H, N, dtype=torch.float32)


def _shares_storage(t: Tensor, others) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return any(o.untyped_storage().data_ptr() == ptr for o in others)


@torch.library.custom_op("yolov12_fast::area_attention_add_", mutates_args=("residual",))
def area_attention_add_(q: Tensor, k: Tensor, v: Tensor, area: int, scale: float, residual: Tensor,
                        backend: str) -> None:
    """residual += area_attention(q, k, v), in place (inference: no autograd). With the Triton backend and a
    contiguous residual the kernel writes its output over the residual it has just read, so AAttn's forward needs
    no second (B, C, H, W) map besides the PE result (peak memory: qkv + one map, not two); other backends and
    strided residuals compute out of place and copy back."""
    check_inputs(q, k, v, area, residual, backend)
    out = plus_residual(q, k, v, area, scale, residual, resolve_backend(backend, q.device, q.dtype, q.shape[2]))
    if out is not residual:
        residual.copy_(out)


def plus_residual(q: Tensor, k: Tensor, v: Tensor, area: int, scale: float, residual: Tensor, b: str) -> Tensor:
    """residual + area_attention(q, k, v) on resolved backend `b` (no autograd), for inputs check_inputs accepted:
    written over `residual` and returned when the Triton kernel can do that in place, else a new tensor. The body
    of area_attention_add_; AAttn's inference path calls it directly, without the custom-op layer."""
    if q.numel() == 0:
        return residual
    # The kernel may write over the residual only when no program still reads it as q, k or v: a residual sharing
    # memory with them (say, v made contiguous and passed as both) would race on a GPU. Same storage: out of place.
    if b == "triton" and residual.is_contiguous() and not _shares_storage(residual, (q, k, v)):
        from ..kernels import area_attention as tk
        return tk.area_attention_fwd(q, k, v, area, scale, residual, out=residual)[0]
    return _fwd(q, k, v, area, scale, residual, b)[0]


@area_attention_add_.register_fake
def _(q, k, v, area, scale, residual, backend):
    check_inputs(q, k, v, area, residual, backend)


@torch.library.custom_op("yolov12_fast::area_attention_bwd", mutates_args=())
def area_attention_bwd(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, residual: Optional[Tensor],
                       lse: Tensor, area: int, scale: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. q, k, v. `out` is the forward's output, `residual` what it added (or None)."""
    check_inputs(q, k, v, area, residual, backend)
    _check(dout.shape == q.shape and out.shape == q.shape, lambda: "area_attention_bwd: dout and out must have q's shape")
    _check(lse.shape == (q.shape[0], q.shape[1], q.shape[3]) and lse.dtype == torch.float32,
                 lambda: "area_attention_bwd: lse must be float32 (B, heads, N)")
    return _bwd(dout, q, k, v, out, residual, lse, area, scale, backend)


def _bwd(dout, q, k, v, out, residual, lse, area, scale, backend):
    """The backward's body (inputs checked): (dq, dk, dv) on the backend `backend` resolves to."""
    dout = dout.to(q.dtype)
    b = resolve_backend(backend, q.device, q.dtype, q.shape[2])
    if b == "cuda" and backend == "auto" and not cuda_backward_by_default(q.device):
        # auto's backward stays where it was measured: the Triton kernels, fed the CUDA forward's lse (same
        # contract). backend="cuda" chosen explicitly trains through the CUDA C++ backward.
        b = "triton" if _usable("triton", q.device, q.dtype)[0] else "reference"
    if q.numel() == 0:
        return tuple(torch.zeros_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))
    if b == "triton":
        from ..kernels import area_attention as tk
        return tk.area_attention_bwd(dout, q, k, v, out, residual, lse, area, scale)
    if b in ("cpp", "cuda"):
        return torch.ops.yolov12_fast.area_attention_bwd_cxx(dout, q, k, v, out, residual, lse, area, scale)
    return _reference_bwd(dout, q, k, v, area, scale)


@area_attention_bwd.register_fake
def _(dout, q, k, v, out, residual, lse, area, scale, backend):
    check_inputs(q, k, v, area, residual, backend)
    return tuple(q.new_empty(q.shape) for _ in range(3))


def _setup_context(ctx, inputs, output):
    q, k, v, area, scale, residual, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, residual)
    ctx.area, ctx.scale, ctx.backend = area, scale, backend
    ctx.has_residual = residual is not None
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, residual = ctx.saved_tensors
    dq, dk, dv = torch.ops.yolov12_fast.area_attention_bwd(dout, q, k, v, out, residual, lse, ctx.area, ctx.scale,
                                                          ctx.backend)
    dres = dout if ctx.has_residual else None
    return dq, dk, dv, None, None, dres, None


area_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


class EagerAreaAttention(torch.autograd.Function):
    """yolov12_fast::area_attention_fwd with its registered autograd, as a plain autograd.Function over the same
    bodies (_fwd, _bwd): what functional.area_attention runs in eager training (_backends.eager_autograd), without
    the custom-op layer's host time. Same kernels, same results; anything that traces takes the op."""

    @staticmethod
    def forward(ctx, q, k, v, area, scale, residual, backend):
        check_inputs(q, k, v, area, residual, backend)
        if q.numel() == 0:
            out = torch.empty_like(q, memory_format=torch.contiguous_format)
            lse = q.new_empty(q.shape[0], q.shape[1], q.shape[3], dtype=torch.float32)
        else:
            out, lse = _fwd(q, k, v, area, scale, residual, resolve_backend(backend, q.device, q.dtype, q.shape[2]))
        ctx.save_for_backward(q, k, v, out, lse, residual)
        ctx.area, ctx.scale, ctx.backend, ctx.has_residual = area, scale, backend, residual is not None
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse, residual = ctx.saved_tensors
        with torch.no_grad():
            grads = _bwd(dout, q, k, v, out, residual, lse, ctx.area, ctx.scale, ctx.backend)
        if torch.is_grad_enabled():  # create_graph=True: a second backward through these fails, as through the op
            grads = no_double_backward(grads, (q, k, v), "area_attention")
        return (*grads, None, None, dout if ctx.has_residual else None, None)


def no_double_backward(grads, inputs, op: str) -> tuple:
    """`grads` (from a backward run with create_graph=True) made to raise a clear error if anything differentiates
    through them: each is tied to the op's `inputs` through an autograd node that raises when reached (the fused
    backward kernels have no autograd of their own; through the custom op autograd says the same)."""
    delayed = getattr(getattr(torch._C, "_functions", None), "DelayedError", None)
    anchors = [t for t in inputs if t is not None and t.requires_grad]
    if delayed is None or not anchors:  # (a torch without it: the gradients carry no graph)
        return tuple(grads)
    msg = (f"yolov12_fast {op}: double backward (differentiating its gradients) is not supported: its backward "
           "kernels have no autograd of their own; for higher-order gradients use the plain-PyTorch math of "
           "yolov12_fast.reference")
    return tuple(None if g is None else delayed(msg, 1 + len(anchors))(g.detach(), *anchors)[0] for g in grads)


def default_scale(head_dim: int) -> float:
    return head_dim ** -0.5


def flops(B: int, heads: int, head_dim: int, N: int, area: int, backward: bool = False) -> float:
    """FLOPs of area attention (BENCHMARKS.md: 4 * sequences * heads * n^2 * head_dim forward; 2.5x that for
    the backward with recomputation)."""
    n = N // area
    f = 4.0 * B * area * heads * n * n * head_dim
    return f * 2.5 if backward else f


__all__ = ["area_attention_fwd", "area_attention_add_", "area_attention_bwd", "check_inputs", "check_residual",
           "plus_residual", "resolve_backend", "flops", "default_scale", "HEAD_DIMS", "DTYPES"]
