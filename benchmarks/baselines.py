"""Every provider the benchmarks compare, defined once (tests import them too).

An attention provider computes the stretch of AAttn.forward from the qkv conv output to the tensor `proj`
consumes, so every provider pays its own layout copies and the PE branch:

    fn(qkv, pe_w, pe_b, area, heads, head_dim) -> (B, heads*head_dim, H, W)

with qkv the (B, 3*heads*head_dim, H, W) output of the 1x1 qkv conv (ultralytics layout: head h owns channels
[96h, 96h+96) = its q, k, v) and pe_w (C, 1, 7, 7), pe_b (C,) the pe depthwise conv with BatchNorm folded (as after
`model.fuse()`). Providers:

- `ultralytics`: the exact steps of ultralytics' AAttn.forward (8.4.x) after the qkv conv: flatten/transpose,
  reshape into areas, view/permute/split, (q*scale)^T @ k, softmax, v @ attn^T, permutes and .contiguous(),
  + pe(v). Explicit matmul + softmax in the model dtype.
- `flash`: the authors' flash path (sunsmarterjie/yolov12 v1.0): q, k, v split in (B*area, n, heads, head_dim),
  `flash_attn_func` on `.contiguous().half()` copies when flash_attn imports, else torch SDPA forced to its
  FLASH_ATTENTION backend (the same FlashAttention-2 kernels) on the same copies; `.to(dtype)` back, then the same
  reshapes and + pe(v). `flash_impl()` names which one ran.
- `sdpa`: ultralytics' layout steps with F.scaled_dot_product_attention choosing its own backend
  (`sdpa_backend()` names the one it picks for these tensors).
- `compile`: torch.compile of `ultralytics` (mode="max-autotune-no-cudagraphs", as ultralytics compiles), warm.
- `triton`, `cuda`, `cpp`, `auto`: yolov12_fast.pe_add + yolov12_fast.area_attention(residual=pe) on q/k/v views of
  the conv output (no copies), that backend; `cpp-direct`: the compiled `_cxx` ops without the Python custom-op
  layer (CPU; the cost of the dispatcher shows as cpp vs cpp-direct).

PE providers, `fn(v, x, pe_w, pe_b, H, W) -> (B, heads, head_dim, N)` with v a (B, heads, head_dim, N) strided
view of the qkv output and x the tensor it is added to: `torch` (NCHW copy of v, F.conv2d depthwise, + x) and ours
per backend (yolov12_fast.pe_add: triton, cuda, cpp, auto).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------------------------
# attention baselines


def _area_tokens(qkv, area: int):
    """ultralytics' AAttn prologue: the (B, 3C, H, W) conv output as tokens (B*area, N/area, 3C); returns it with
    the new batch and token counts."""
    B, C3, H, W = qkv.shape
    N = H * W
    qkv = qkv.flatten(2).transpose(1, 2)
    if area > 1:
        qkv = qkv.reshape(B * area, N // area, C3)
        B, N, _ = qkv.shape
    return qkv, B, N


def _maps_plus_pe(x, v, area: int, H: int, W: int, pe_w, pe_b, contiguous: bool = True):
    """ultralytics' AAttn epilogue: x and v as (B*area, n, heads, D) tokens back to (B, C, H, W) maps (NCHW copies
    unless contiguous=False, the authors' flash path), then x + pe(v) with the fused pe conv."""
    B = x.shape[0] // area
    C = x.shape[2] * x.shape[3]
    if area > 1:
        x = x.reshape(B, H * W, C)
        v = v.reshape(B, H * W, C)
    x = x.reshape(B, H, W, C).permute(0, 3, 1, 2)
    v = v.reshape(B, H, W, C).permute(0, 3, 1, 2)
    if contiguous:
        x, v = x.contiguous(), v.contiguous()
    return x + F.conv2d(v, pe_w, pe_b, padding=pe_w.shape[-1] // 2, groups=C)


def ultralytics_eager(qkv, pe_w, pe_b, area: int, heads: int, head_dim: int):
    """ultralytics AAttn.forward from `self.qkv(x)` to the input of `self.proj` (the pe Conv fused: conv + bias)."""
    H, W = qkv.shape[2:]
    qkv, B, N = _area_tokens(qkv, area)
    q, k, v = qkv.view(B, N, heads, head_dim * 3).permute(0, 2, 3, 1).split([head_dim, head_dim, head_dim], dim=2)
    attn = (q * (head_dim ** -0.5)).transpose(-2, -1) @ k
    attn = attn.softmax(dim=-1)
    x = v @ attn.transpose(-2, -1)
    return _maps_plus_pe(x.permute(0, 3, 1, 2), v.permute(0, 3, 1, 2), area, H, W, pe_w, pe_b)


def _have_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def flash_impl() -> str:
    """What the authors' flash path runs here: flash_attn's flash_attn_func, or SDPA forced to FLASH_ATTENTION."""
    if _have_flash_attn():
        try:
            import flash_attn

            return f"flash_attn {getattr(flash_attn, '__version__', '?')} flash_attn_func"
        except Exception as e:  # installed but broken: the authors' code would fail to import it too
            return f"sdpa FLASH_ATTENTION (flash_attn failed to import: {type(e).__name__})"
    return "sdpa FLASH_ATTENTION (flash_attn not installed)"


def _flash_core(q, k, v):
    """(B, n, heads, D) fp16 contiguous -> (B, n, heads, D)."""
    if _have_flash_attn():
        try:
            from flash_attn import flash_attn_func
        except Exception:
            flash_attn_func = None
        if flash_attn_func is not None:
            return flash_attn_func(q, k, v)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def authors_flash(qkv, pe_w, pe_b, area: int, heads: int, head_dim: int):
    """The authors' (v1.0) CUDA path: flash attention on .contiguous().half() copies, then the same layout steps."""
    H, W = qkv.shape[2:]
    qkv, B, N = _area_tokens(qkv, area)
    q, k, v = qkv.view(B, N, heads, head_dim * 3).split([head_dim, head_dim, head_dim], dim=3)
    x = _flash_core(q.contiguous().half(), k.contiguous().half(), v.contiguous().half()).to(q.dtype)
    return _maps_plus_pe(x, v, area, H, W, pe_w, pe_b, contiguous=False)


def _sdpa_qkv(qkv, area: int, heads: int, head_dim: int):
    """(B*area, heads, n, D) q, k, v for SDPA over one contiguous copy of the token tensor. Views of ultralytics'
    (B, N, 3C) tokens have the head dim at stride 1 only after that copy; without it (every batch-1 case, where the
    area reshape is a view, and every P5 case) SDPA refuses its fused kernels and runs the MATH backend, slower
    than ultralytics' own matmuls: a straw man. The copy is what the authors' path pays too (.contiguous())."""
    qkv, B, N = _area_tokens(qkv, area)
    qkv = qkv.contiguous()
    return qkv.view(B, N, heads, head_dim * 3).permute(0, 2, 1, 3).split([head_dim, head_dim, head_dim], dim=3)


def sdpa(qkv, pe_w, pe_b, area: int, heads: int, head_dim: int):
    """ultralytics' layout steps with F.scaled_dot_product_attention (its own backend choice: flash / efficient on the
    contiguous token copy, see _sdpa_qkv) for the math."""
    H, W = qkv.shape[2:]
    q, k, v = _sdpa_qkv(qkv, area, heads, head_dim)  # (B*area, heads, n, D) views
    x = F.scaled_dot_product_attention(q, k, v)
    return _maps_plus_pe(x.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3), area, H, W, pe_w, pe_b)


def sdpa_backend(qkv, area: int, heads: int, head_dim: int) -> str:
    """The backend SDPA picks by itself for the `sdpa` provider's tensors (torch._fused_sdp_choice)."""
    try:
        from torch.nn.attention import SDPBackend

        q, k, v = _sdpa_qkv(qkv, area, heads, head_dim)
        choice = torch._fused_sdp_choice(q, k, v)
        return SDPBackend(choice).name if not isinstance(choice, SDPBackend) else choice.name
    except Exception as e:  # private API: never let it break a run
        return f"unknown ({type(e).__name__})"


def compiled_reference(mode: str = "max-autotune-no-cudagraphs") -> Callable:
    """A fresh torch.compile of `ultralytics_eager` (static shapes). Call torch._dynamo.reset() before building one
    per case so guards and recompile limits of earlier cases do not interfere."""
    return torch.compile(ultralytics_eager, mode=mode, dynamic=False)


# ----------------------------------------------------------------------------------------------------------------
# ours


def ours(backend: str, pe_backend: Optional[str] = None) -> Callable:
    """yolov12_fast's AAttn middle, as the module runs it: pe_add over the v view, then area attention adding it
    (both `backend`, or the PE on `pe_backend`); in inference on the Triton backend the attention writes over the PE
    result in place."""
    import yolov12_fast
    from yolov12_fast.ops.area_attention import resolve_backend

    def fn(qkv, pe_w, pe_b, area: int, heads: int, head_dim: int):
        B, _, H, W = qkv.shape
        q, k, v = qkv.view(B, heads, 3 * head_dim, H * W).split(head_dim, dim=2)
        p = yolov12_fast.pe_add(v, pe_w, pe_b, H, W, backend=pe_backend or backend)
        if not (torch.is_grad_enabled() and qkv.requires_grad) \
                and resolve_backend(backend, q.device, q.dtype, head_dim) == "triton":
            out = yolov12_fast.area_attention_add_(p, q, k, v, area, scale=head_dim ** -0.5, backend=backend)
        else:
            out = yolov12_fast.area_attention(q, k, v, area, scale=head_dim ** -0.5, residual=p, backend=backend)
        return out.view(B, heads * head_dim, H, W)

    fn.__name__ = f"ours_{backend}" + (f"_pe_{pe_backend}" if pe_backend else "")
    return fn


def cpp_direct(qkv, pe_w, pe_b, area: int, heads: int, head_dim: int):
    """The compiled CPU kernels called directly (`_cxx` ops): no Python custom-op layer, no autograd support."""
    B, _, H, W = qkv.shape
    q, k, v = qkv.view(B, heads, 3 * head_dim, H * W).split(head_dim, dim=2)
    p = torch.ops.yolov12_fast.pe_add_cxx(v, pe_w, pe_b, None, H, W)
    out, _ = torch.ops.yolov12_fast.area_attention_fwd_cxx(q, k, v, area, head_dim ** -0.5, p)
    return out.view(B, heads * head_dim, H, W)


def resolved_backends(backend: str, device: torch.device, dtype: Optional[torch.dtype] = None,
                      head_dim: Optional[int] = None) -> str:
    """'attention=<b>, pe=<b>, mlp=<b>, cv2=<b>': what `backend` resolves to on `device` for each op, the attention
    for inputs of `dtype` and `head_dim` (its pick depends on them on CUDA)."""
    from yolov12_fast.ops import resolved_backends as picks

    return ", ".join(f"{name}={b}" for name, b in picks(backend, device, dtype, head_dim).items())


def _attention_kernels(backward: bool) -> list:
    """(label, Triton autotuner) of the attention kernels a forward (and backward) launches; [] without Triton."""
    try:
        from yolov12_fast.kernels import area_attention as aa
    except Exception:  # no (working) triton: no Triton provider ran
        return []
    return [("fwd", aa.area_attention_fwd_kernel)] + ([("dkdv", aa.area_attention_bwd_dkdv_kernel),
                                                      ("dq", aa.area_attention_bwd_dq_kernel)] if backward else [])


def reset_triton_tiles(backward: bool) -> None:
    """Forget the tile configs the attention kernels last launched with (before a provider's call)."""
    for _, k in _attention_kernels(backward):
        k.best_config = None


def triton_tiles(backward: bool) -> Optional[str]:
    """The tile configs the Triton attention kernels launched with since reset_triton_tiles (the autotuner's choice
    for this case's key), e.g. 'fwd 64x64 w4 s2, dkdv 64x32 w4 s2, dq 64x32 w4 s2'; None if none launched."""
    parts = []
    for label, k in _attention_kernels(backward):
        c = getattr(k, "best_config", None)
        if c is not None:
            parts.append(f"{label} {c.kwargs.get('BLOCK_M')}x{c.kwargs.get('BLOCK_N')} w{c.num_warps} s{c.num_stages}")
    return ", ".join(parts) or None


# ----------------------------------------------------------------------------------------------------------------
# the provider table


@dataclass
class Provider:
    name: str
    fn: Optional[Callable]  # None for `compile` (built per case by compiled_reference)
    baseline: bool
    # (device, dtype, backward, quick) -> (ok, reason)
    available: Callable[[torch.device, torch.dtype, bool, bool], tuple]
    backend: Optional[str] = None  # yolov12_fast backend, for ours
    pe_backend: Optional[str] = None  # the PE's, where it differs from `backend`


def _always(*_):
    return True, ""


def _flash_ok(device, dtype, backward, quick):
    if device.type != "cuda":
        return False, "the authors' code takes the explicit-matmul path on CPU (= the ultralytics row)"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return False, "FlashAttention-2 needs compute capability 8.0+; the authors' code falls back to SDPA there"
    return True, ""


def _compile_ok(device, dtype, backward, quick):
    if device.type != "cuda":
        return False, "torch.compile baseline runs on GPU only (max-autotune targets GPU kernels)"
    if quick:
        return False, "--quick skips torch.compile (minutes of autotuning)"
    return True, ""


def _available(backend: str, device) -> tuple:
    """Can this backend of ours run on `device` here (shared by the attention and PE providers)?"""
    from yolov12_fast import _backends

    if backend == "triton":
        if device.type != "cuda":
            return False, "Triton kernels run on CUDA (on CPU only in the interpreter, which is not benchmarked)"
        return _backends.can_use_triton(device)
    if backend == "cuda":
        if device.type != "cuda":
            return False, "the CUDA C++ kernels take CUDA tensors"
        return _backends.can_use_cuda_ext(device)
    if backend == "cpp":
        if device.type != "cpu":
            return False, "the C++ CPU kernels take CPU tensors"
        return _backends.can_use_cpp()
    return True, ""


def _ours_ok(backend: str):
    def check(device, dtype, backward, quick):
        if backend == "cuda" and device.type == "cuda":
            if dtype == torch.float32:
                return False, "the CUDA C++ tensor-core kernel takes fp16/bf16"
        return _available(backend, device)

    return check


def _mixed_ok(device, dtype, backward, quick):
    if device.type != "cuda":
        return False, "the CUDA PE takes CUDA tensors"
    ok, why = _ours_ok("cuda")(device, dtype, backward, quick)
    return (ok, why) if not ok else _ours_ok("triton")(device, dtype, backward, quick)


def _cpp_direct_ok(device, dtype, backward, quick):
    from yolov12_fast import _backends

    if device.type != "cpu":
        return False, "CPU kernels only"
    if backward:
        return False, "the raw _cxx ops have no autograd (the public op's backward is measured by `cpp`)"
    return _backends.can_use_cpp()


ATTENTION_BASELINES = ("ultralytics", "flash", "sdpa", "compile")

ATTENTION_PROVIDERS = {
    "ultralytics": Provider("ultralytics", ultralytics_eager, True, _always),
    "flash": Provider("flash", authors_flash, True, _flash_ok),
    "sdpa": Provider("sdpa", sdpa, True, _always),
    "compile": Provider("compile", None, True, _compile_ok),
    "triton": Provider("triton", ours("triton"), False, _ours_ok("triton"), "triton"),
    "cuda": Provider("cuda", ours("cuda"), False, _ours_ok("cuda"), "cuda"),
    # Triton attention with the CUDA PE: against `cuda`, the two attention kernels with the same PE (what auto's
    # attention choice decides; the PE is its own op with its own table, ops.pe.AUTO_CUDA_PE)
    "triton+cuda-pe": Provider("triton+cuda-pe", ours("triton", pe_backend="cuda"), False, _mixed_ok, "triton",
                               pe_backend="cuda"),
    "cpp": Provider("cpp", ours("cpp"), False, _ours_ok("cpp"), "cpp"),
    "cpp-direct": Provider("cpp-direct", cpp_direct, False, _cpp_direct_ok, "cpp"),
    "auto": Provider("auto", ours("auto"), False, _ours_ok("auto"), "auto"),
}


# ----------------------------------------------------------------------------------------------------------------
# PE branch


def pe_torch(v, x, pe_w, pe_b, H: int, W: int):
    """What the reference does: an NCHW copy of the v view, a depthwise F.conv2d, + x."""
    B, nh, D, N = v.shape
    out = F.conv2d(v.reshape(B, nh * D, H, W), pe_w, pe_b, padding=pe_w.shape[-1] // 2, groups=nh * D)
    return (out + x.reshape(B, nh * D, H, W)).view(B, nh, D, N)


def pe_ours(backend: str) -> Callable:
    import yolov12_fast

    def fn(v, x, pe_w, pe_b, H: int, W: int):
        return yolov12_fast.pe_add(v, pe_w, pe_b, H, W, x=x, backend=backend)

    fn.__name__ = f"pe_{backend}"
    return fn


def _backend_ok(backend: str):
    """Availability of a forward-only op of ours (PE, MLP) on `backend`."""
    def check(device, dtype, backward, quick):
        return _available(backend, device)

    return check


PE_BASELINES = ("torch",)

PE_PROVIDERS = {
    "torch": Provider("torch", pe_torch, True, _always),
    "triton": Provider("triton", pe_ours("triton"), False, _backend_ok("triton"), "triton"),
    "cuda": Provider("cuda", pe_ours("cuda"), False, _backend_ok("cuda"), "cuda"),
    "cpp": Provider("cpp", pe_ours("cpp"), False, _backend_ok("cpp"), "cpp"),
    "auto": Provider("auto", pe_ours("auto"), False, _backend_ok("auto"), "auto"),
}

# ----------------------------------------------------------------------------------------------------------------
# PE backward (what training runs after the PE branch): dv, dw, db for dout. The inputs come as
# (v, v_nchw, v_cl, dout, dout_cl, weight, H, W): v the strided view of qkv, its NCHW copy (what the reference's
# forward made and autograd saved), channels_last copies of v and dout (what a channels_last model has; made once,
# outside the timing: the strongest baseline's best case).


def _pe_ctx(v, weight, H: int, W: int, cxx: bool):
    """The autograd context yolov12_fast.ops.pe._backward reads, for timing that function itself."""
    import types

    return types.SimpleNamespace(saved_tensors=(v, weight), H=H, W=W, has_bias=True, has_x=False, cxx=cxx,
                                 needs_input_grad=(True, True, True, False))


def pebwd_ours(v, v_nchw, v_cl, dout, dout_cl, weight, H: int, W: int):
    """Our PE backward (yolov12_fast.ops.pe._backward with the compiled kernels: the PE kernel on dout with the kernel
    flipped for dv, pe_add_wgrad_cxx for dw and db)."""
    from yolov12_fast.ops import pe

    return pe._backward(_pe_ctx(v, weight, H, W, True), dout)[:3]


def pebwd_aten_nchw(v, v_nchw, v_cl, dout, dout_cl, weight, H: int, W: int):
    """ATen's convolution backward on NCHW tensors (the reference's training step; before 2026-11-27 also ours on
    CUDA): on a GPU, ATen's own depthwise kernels."""
    k, C = weight.shape[-1], weight.shape[0]
    dv, dw, db = torch.ops.aten.convolution_backward(dout.reshape(v_nchw.shape), v_nchw, weight, [C], [1, 1],
                                                     [k // 2, k // 2], [1, 1], False, [0, 0], C, [True, True, True])
    return dv, dw, db


def pebwd_aten_cl(v, v_nchw, v_cl, dout, dout_cl, weight, H: int, W: int):
    """ATen's convolution backward on channels_last tensors (cuDNN's NHWC depthwise kernels on a GPU)."""
    k, C = weight.shape[-1], weight.shape[0]
    dv, dw, db = torch.ops.aten.convolution_backward(dout_cl, v_cl, weight, [C], [1, 1], [k // 2, k // 2], [1, 1],
                                                     False, [0, 0], C, [True, True, True])
    return dv, dw, db


PEBWD_BASELINES = ("torch", "torch-cl")

PEBWD_PROVIDERS = {
    "torch": Provider("torch", pebwd_aten_nchw, True, _always),
    "torch-cl": Provider("torch-cl", pebwd_aten_cl, True, _always),
    "cuda": Provider("cuda", pebwd_ours, False, _backend_ok("cuda"), "cuda"),
    "cpp": Provider("cpp", pebwd_ours, False, _backend_ok("cpp"), "cpp"),
}

# ----------------------------------------------------------------------------------------------------------------
# ABlock MLP


def mlp_torch(x, w1, b1, w2, b2):
    """What a fused ultralytics ABlock runs for `x + mlp(x)`: conv1x1 (+bias), SiLU, conv1x1 (+bias), add."""
    return x + F.conv2d(F.silu(F.conv2d(x, w1, b1)), w2, b2)


def ours_fn(op: str, backend: str) -> Callable:
    """yolov12_fast.<op>(*args, backend=backend): our fused pointwise-conv ops (mlp_residual,
    conv1x1_silu_residual) as a provider."""
    import yolov12_fast

    f = getattr(yolov12_fast, op)

    def fn(*args):
        return f(*args, backend=backend)

    fn.__name__ = f"{op}_{backend}"
    return fn


def fused_providers(torch_fn: Callable, op: str) -> dict:
    """The baseline (`torch`: what a fused ultralytics model runs) and our op on `triton` and `auto`."""
    return {"torch": Provider("torch", torch_fn, True, _always),
            **{b: Provider(b, ours_fn(op, b), False, _backend_ok(b), b) for b in ("triton", "auto")}}


MLP_BASELINES = ("torch",)

MLP_PROVIDERS = fused_providers(mlp_torch, "mlp_residual")

# ----------------------------------------------------------------------------------------------------------------
# A2C2f's cv2 with the L/X residual


def cv2_torch(x, w, b, residual=None, gamma=None):
    """What a fused ultralytics A2C2f runs for cv2 and its residual: conv1x1 (+bias), SiLU, then (l/x scales)
    x + gamma * that as one addcmul."""
    z = F.silu(F.conv2d(x, w, b))
    return z if residual is None else torch.addcmul(residual, gamma.view(1, -1, 1, 1), z)


CV2_BASELINES = ("torch",)

CV2_PROVIDERS = fused_providers(cv2_torch, "conv1x1_silu_residual")

__all__ = ["ultralytics_eager", "authors_flash", "sdpa", "sdpa_backend", "flash_impl", "compiled_reference", "ours",
           "cpp_direct", "resolved_backends", "pe_torch", "pe_ours", "Provider", "ATTENTION_PROVIDERS",
           "ATTENTION_BASELINES", "PE_PROVIDERS", "PE_BASELINES", "PEBWD_PROVIDERS", "PEBWD_BASELINES", "mlp_torch", "ours_fn", "fused_providers", "MLP_PROVIDERS",
           "MLP_BASELINES", "cv2_torch", "CV2_PROVIDERS", "CV2_BASELINES", "reset_triton_tiles", "triton_tiles"]
