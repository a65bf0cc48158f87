"""Fast drop-in modules for YOLOv12's attention blocks: `AAttn`, `ABlock`, `A2C2f`.

Each class has the constructor arguments, attribute names and state_dict keys of the module it replaces
(ultralytics/v1.0 `AAttn`: qkv, proj, 7x7 pe; turbo `AAttn`: qk, v, proj, 5x5 pe -- pick with `variant=`), and
works on unfused and fused (`model.fuse()`) ultralytics `Conv` children. The same classes are the
implementations that `yolov12_fast.patch` puts under existing instances (see ../patch.py): every method here
reads only the attributes the ultralytics modules carry, plus `_yf_*` entries in the instance `__dict__`.

What the fast forward does (REFERENCE.md):

- AAttn: runs the qkv (or qk and v) conv as ultralytics does, takes q, k, v as strided views of its output (no
  copies), P = pe(V) with the pe BatchNorm folded into the depthwise weights (`pe_add`), then
  O = area_attention(q, k, v, area, residual=P) (one fused pass; in inference on the Triton backend written over P
  in place, `area_attention_add_`, so no second map is allocated), then proj. In eager inference (inference_mode
  or no_grad) the op bodies are called directly, without the custom-op layer (host time; AAttn._direct). The
  folded pe weights are cached, keyed on the parameters' storage and version counters (an optimizer step or
  load_state_dict invalidates the cache); when gradients are needed they are folded on the fly inside the graph;
  when the pe BatchNorm is in training mode (batch statistics) the pe Conv module itself runs on an NCHW copy of V
  (correctness first).
- ABlock: x1 = x + attn(x); x1 + mlp(x1). With backend="triton" the MLP and its residual run as one fused kernel
  (`mlp_residual`, BatchNorm folded, the hidden activation never in memory); "auto" keeps the two 1x1 convs
  until the fused kernel measures faster than cuDNN on a GPU. While training, the MLP (recompute="mlp") or the
  whole block ("block") keeps only its input for backward and runs again there
  (torch.utils.checkpoint, BatchNorm running statistics shielded from the second run): the training-memory
  answer for high resolutions, see FastModule.recompute.
- A2C2f: without autograd, cv1 and each block pair write into channel slices of one preallocated buffer that cv2
  reads once (no torch.cat); with autograd it concatenates (out= ops are not differentiable). The L/X residual is
  x + gamma * cv2(...): one addcmul after cv2, or with backend="triton" inside cv2's GEMM epilogue
  (`conv1x1_silu_residual`, BatchNorm folded; also for the n/s/m blocks without a residual, where it fuses
  cv2's SiLU); "auto" keeps cuDNN's conv and the addcmul until the fused kernel measures faster on a GPU.

Under tracing / ONNX export (`torch.jit.is_tracing()`, `torch.onnx.is_in_onnx_export()`) the modules run the
plain-PyTorch reference math instead of the custom ops, so exported graphs contain only standard operators.

Pickling: a fast module pickles as the plain module it stands for (the ultralytics class, or the original class
of a patched instance) without its `_yf_*` entries, so checkpoints load with plain ultralytics; `copy.deepcopy`
keeps the fast class (ultralytics deep-copies models for EMA, export and saving).
"""

from __future__ import annotations

import contextlib
import copy
import copyreg
import os
import warnings
from typing import Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules import module as _mm

from .. import _backends, reference
from .._backends import BACKENDS
from ..functional import area_attention, area_attention_add_, conv1x1_silu_residual, mlp_residual, pe_add
from ..ops import area_attention as _attention_ops
from ..ops import pe as _pe_ops
from ..ops.area_attention import DTYPES, HEAD_DIMS
from ..ops.area_attention import resolve_backend as resolve_attention_backend

__all__ = ["AAttn", "ABlock", "A2C2f", "FastModule", "VARIANTS", "RECOMPUTE"]

VARIANTS = ("ultralytics", "turbo")
# What an ABlock recomputes in backward instead of keeping for it while training (see FastModule.recompute).
RECOMPUTE = ("auto", "none", "mlp", "block")
# What recompute="auto" runs, per device type. CUDA, measured (benchmarks/results/nvidia-h100-80gb-hbm3-2026-11-27c,
# yolo12n AMP training step, batch 16, against ultralytics' modules): "none" 1.04x the speed at 640 and 1.60x at 1280
# with 0.80x / 0.47x the peak memory; "mlp" (the earlier default) 0.87x / 1.54x at 0.76x / 0.45x; "block" 0.61x /
# 1.45x at 0.70x / 0.40x. The fused attention already keeps no score matrix, so "none" meets the memory target
# (<= 0.7x at 1280) by itself, and the recomputation bought 5 % of memory for 4-19 % of step time. CPU: the
# recomputation measured 5-7 % of a yolo12n training step. Other device types: nothing recomputed.
AUTO_RECOMPUTE = {"cuda": "none", "cpu": "none"}

# Keys of the instance __dict__ that belong to yolov12_fast: stripped when pickling and by unpatch().
_PRIVATE_PREFIX = "_yf_"
# Derived caches: also dropped by deepcopy.
_CACHE_KEYS = ("_yf_pe_cache", "_yf_mlp_cache", "_yf_cv2_cache", "_yf_resolved")
_WARNED_HEAD_DIMS: set = set()


def _ultralytics_conv():
    try:
        from ultralytics.nn.modules.conv import Conv
    except ImportError as e:  # pragma: no cover - the test environment has ultralytics
        raise ImportError("yolov12_fast.nn modules are built from ultralytics' Conv: pip install ultralytics") from e
    return Conv


def _decomposing() -> bool:
    """True while the model is being traced / exported: run standard torch ops only."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _eager_inference() -> bool:
    """Eager inference that nothing intercepts: no autograd graph is recorded (torch.inference_mode, as ultralytics'
    predictor and validator run, or torch.no_grad), no torch.compile, tracing or export, no TorchDispatchMode (fake
    tensors, export's functionalization, an op counter) and no functorch transform (vmap). Only then may a module
    skip the custom ops and call kernels or GEMMs directly: anything that watches the ops sees them."""
    return (not torch.is_grad_enabled() and not _compiling() and not _decomposing()
            and torch._C._len_torch_dispatch_stack() == 0 and not torch._C._are_functorch_transforms_active())


def _hookless(m: nn.Module) -> bool:
    """No module hooks on m (and no global ones): calling its pieces directly is then equivalent to m(x)."""
    return not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                or _mm._global_forward_hooks or _mm._global_forward_pre_hooks or _mm._global_backward_hooks
                or _mm._global_backward_pre_hooks)


def _tokens_flatten(t: Tensor) -> bool:
    """Whether the H and W dims of a (B, C, H, W) tensor flatten into one token dim (NCHW, channels_last and channel
    slices of either): the layouts the fused Triton pointwise-conv kernels read. Other views take the unfused path."""
    return t.dim() == 4 and (t.shape[2] == 1 or t.shape[3] == 1 or t.stride(2) == t.shape[3] * t.stride(3))


def _channels_last(t: Tensor) -> bool:
    """A (B, C, H, W) tensor laid out channels_last: its channels adjacent in memory (stride 1), as in a model moved
    with .to(memory_format=torch.channels_last), including channel slices of such a tensor (A2C2f's buffer).
    Tensors whose layouts are both (one channel or one token) count as NCHW."""
    return t.dim() == 4 and t.shape[1] > 1 and t.shape[2] * t.shape[3] > 1 and t.stride(1) == 1


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"yolov12_fast: unknown backend {backend!r}; choose one of {BACKENDS}")
    return backend


def _check_recompute(recompute: str) -> str:
    if recompute not in RECOMPUTE:
        raise ValueError(f"yolov12_fast: unknown recompute {recompute!r}; choose one of {RECOMPUTE}")
    return recompute


@contextlib.contextmanager
def _bn_statistics_shielded(module: nn.Module) -> Iterator[None]:
    """While recomputing a checkpointed forward in backward: every BatchNorm in `module` that tracks running
    statistics updates throwaway copies of them, so the real running_mean / running_var / num_batches_tracked are
    updated once per step (by the original forward), as without recomputation. The batch statistics, hence the
    recomputed activations and the gradients, are the same; the same tensors are saved (same BatchNorm call)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
           and m.running_mean is not None]
    real = [(m.running_mean, m.running_var, m.num_batches_tracked) for m in bns]
    for m in bns:
        m.running_mean, m.running_var = m.running_mean.clone(), m.running_var.clone()
        if m.num_batches_tracked is not None:
            m.num_batches_tracked = m.num_batches_tracked.clone()
    try:
        yield
    finally:
        for m, (mean, var, count) in zip(bns, real):
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count


def _checkpointed(fn, module: nn.Module, *args):
    """fn(*args) with activation checkpointing (torch.utils.checkpoint, non-reentrant): only the inputs are kept
    for backward, the forward of `module` runs again in backward with its BatchNorm statistics shielded."""
    from torch.utils.checkpoint import checkpoint

    return checkpoint(fn, *args, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _bn_statistics_shielded(module)))


def _block_setting(key: str, default: str, check, doc: str) -> property:
    """A str setting kept in the instance __dict__ under `key` (stripped when pickling); assigning it validates the
    value and sets it on every FastModule inside the module."""

    def get(self) -> str:
        return self.__dict__.get(key, default)

    def set(self, value: str) -> None:
        check(value)
        for m in self.modules():
            if isinstance(m, FastModule):
                m.__dict__[key] = value

    return property(get, set, doc=doc)


class FastModule(nn.Module):
    """Common base of the fast modules: the `backend` and `recompute` settings, pickling as the plain class,
    deepcopy."""

    # Set on the per-class subclasses that yolov12_fast.patch creates: the class the instance had before patching.
    _yf_plain_class: Optional[type] = None

    # -- settings (instance __dict__ entries, set on a block for every fast module inside it) ---------------------

    backend = _block_setting("_yf_backend", "auto", _check_backend, """The area-attention backend ("auto", "triton",
        "cuda", "cpp", "reference"). Setting it on a block sets it on every fast module inside it.""")

    recompute = _block_setting("_yf_recompute", "auto", _check_recompute, """What an ABlock recomputes in backward
        instead of keeping in memory while training (autograd on, module in training mode, not under torch.compile,
        whose partitioner makes its own recomputation choices):

        - "none": everything autograd saves is kept. The fused attention keeps no score matrix, so this already
          trains yolo12n (AMP, batch 16, H100) in 0.80x ultralytics' peak memory at 640 and 0.47x at 1280, 1.04x /
          1.60x as fast (benchmarks/results/nvidia-h100-80gb-hbm3-2026-11-27c).
        - "mlp": the MLP (two 1x1 Convs with BatchNorm, SiLU) keeps only its input; its forward runs again in
          backward: 0.76x / 0.45x the memory, 0.87x / 1.54x the speed in the same run.
        - "block": the whole ABlock (attention included) keeps only its input: 0.70x / 0.40x, 0.61x / 1.45x.
        - "auto" (default): AUTO_RECOMPUTE's entry for the device, today "none" everywhere: on CUDA measured the
          fastest, its memory well under the 0.7x target; on CPU the recomputation measured 5-7% of a yolo12n
          training step. Pick "mlp" or "block" when activation memory limits the batch or the resolution.

        Results and gradients are the same in every mode; running BatchNorm statistics are updated once per
        forward. As with torch.utils.checkpoint, forward hooks of modules inside the recomputed part run again
        during the recomputation. Setting it on a block sets it on every fast module inside it.""")

    # -- pickling / copying -----------------------------------------------------------------------------------

    @classmethod
    def _default_plain_class(cls) -> type:  # overridden per module type
        raise NotImplementedError

    def plain_class(self) -> type:
        """The class this module pickles as (and that yolov12_fast.unpatch restores)."""
        plain = type(self).__dict__.get("_yf_plain_class")
        return plain if plain is not None else self._default_plain_class()

    def __reduce_ex__(self, protocol):
        # Pickle as the plain class with the state it would have had, so a file never references yolov12_fast.
        # copyreg._reconstructor(cls, object, None) is the stdlib's object.__new__(cls) (then __setstate__ on
        # load); pickle's NEWOBJ form is not possible here because pickle checks it against obj.__class__. Loaders
        # with weights_only=True (ULTRALYTICS_SAFE_LOAD) do not accept _reconstructor: yolov12_fast.YOLO therefore
        # saves with the original classes put back (patch.unpatched), which writes exactly ultralytics' bytes.
        state = {k: v for k, v in self.__getstate__().items() if not k.startswith(_PRIVATE_PREFIX)}
        return copyreg._reconstructor, (self.plain_class(), object, None), state

    def __deepcopy__(self, memo):  # keep the fast class (object.__reduce_ex__ would now give the plain one)
        cls = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        state = {k: v for k, v in self.__getstate__().items() if k not in _CACHE_KEYS}
        new.__setstate__(copy.deepcopy(state, memo))
        return new

    def __copy__(self):
        cls = type(self)
        new = cls.__new__(cls)
        new.__setstate__({k: v for k, v in self.__getstate__().items() if k not in _CACHE_KEYS})
        return new

    def _apply(self, fn, recurse=True):  # .to(), .half(), .cuda(): the cached folded weights are stale
        for k in _CACHE_KEYS:
            self.__dict__.pop(k, None)
        return super()._apply(fn, recurse)

    def _folded(self, cache_key: str, tensors: list, fold, dtype: torch.dtype):
        """fold(dtype) (BatchNorm folded into conv weights), cached in __dict__[cache_key] keyed on the tensors'
        storage and version counters (an optimizer step, load_state_dict, ultralytics' EMA update or any in-place
        op on a parameter invalidates it). In-place edits through `.data` bypass the version counter: call
        yolov12_fast.clear_caches(model) after those. When gradients are needed, or under torch.compile, it folds
        inside the graph every call."""
        tensors = [t for t in tensors if t is not None]
        if (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)) or _compiling():
            return fold(dtype)  # in the graph: gradients reach the conv and BN parameters
        try:
            key = (dtype, torch.is_inference_mode_enabled(), tuple((t.data_ptr(), t._version) for t in tensors))
        except RuntimeError:  # inference tensors have no version counter: fold every time
            return fold(dtype)
        cache = self.__dict__.get(cache_key)
        if cache is not None and cache[0] == key:
            return cache[1]
        with torch.no_grad():
            folded = fold(dtype)
        self.__dict__[cache_key] = (key, folded)
        return folded


# ------------------------------------------------------------------------------------------------------------
# AAttn


def _fold_bn(w: Tensor, b: Optional[Tensor], bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Fold an eval-mode BatchNorm into the preceding conv, in float32 at least (differentiable in w, b,
    bn.weight, bn.bias)."""
    up = lambda t: t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t
    w, b = up(w), up(b)
    s = torch.rsqrt(up(bn.running_var) + bn.eps)
    if bn.weight is not None:
        s = s * up(bn.weight)
    mean = up(bn.running_mean)
    bias = -mean * s if b is None else (b - mean) * s
    if bn.bias is not None:
        bias = bias + up(bn.bias)
    return w * s.view(-1, 1, 1, 1), bias


def _cls(m) -> type:
    """m's class, seen through the wrappers torch.export's non-strict tracer hands to forward(): an `AttrProxy`
    is a dynamic subclass of (AttrProxy, the module's class) sharing the module's __dict__. Exact-type checks (a
    plain nn.Conv2d, not a subclass with another forward) must look at the wrapped class."""
    cls = type(m)
    if len(cls.__bases__) == 2 and _is_attr_proxy_class(cls.__bases__[0]):
        return cls.__bases__[1]
    return cls


def _is_attr_proxy_class(c: type) -> bool:
    try:
        from torch.fx.experimental.proxy_tensor import _AttrProxy
    except ImportError:  # an older/newer torch without it: nothing to see through
        return False
    return issubclass(c, _AttrProxy)


def _foldable_conv(m: nn.Module, act: type) -> bool:
    """m is an ultralytics Conv whose BatchNorm can be folded: an nn.Conv2d with square kernel, stride 1, no
    dilation, 'same' zero padding, activation of exactly type `act` (nn.Identity also when absent), and either no
    bn (fused) or an eval-mode BatchNorm2d with running statistics. No hooks on m, its conv or its bn: folding
    skips their forward calls, so a hooked Conv (feature capture, pruning, ablation) runs as a module."""
    mods = m._modules  # children by name: getattr goes through nn.Module.__getattr__ (host time, every forward)
    conv = mods.get("conv")
    if _cls(conv) is not nn.Conv2d:
        return False
    if not (_hookless(m) and _hookless(conv) and (mods.get("bn") is None or _hookless(mods["bn"]))):
        return False
    k = conv.kernel_size[0]
    if (conv.kernel_size != (k, k) or conv.stride != (1, 1) or conv.dilation != (1, 1)
            or conv.padding != (k // 2, k // 2) or conv.padding_mode != "zeros"):
        return False
    a = mods.get("act")
    if (nn.Identity if a is None else _cls(a)) is not act:
        return False
    bn = mods.get("bn")
    if bn is None:
        return True
    return _cls(bn) is nn.BatchNorm2d and not bn.training and bn.running_var is not None \
        and bn.running_mean is not None


def _fold_conv(m: nn.Module, dtype: torch.dtype) -> tuple[Tensor, Optional[Tensor]]:
    """(weight, bias) of an ultralytics Conv with its BatchNorm folded, in `dtype`."""
    conv, bn = m.conv, m._modules.get("bn")
    w, b = conv.weight, conv.bias
    if bn is not None:
        w, b = _fold_bn(w, b, bn)
    return w.to(dtype), (b.to(dtype) if b is not None else None)


def _conv_tensors(m: nn.Module) -> list:
    """The tensors a folded Conv depends on (the cache key). A training-mode BatchNorm forward updates running_mean
    and running_var in place without bumping their version counters; num_batches_tracked, which it increments with
    an ordinary in-place add, does change version with every such forward."""
    bn = m._modules.get("bn")
    return [m.conv.weight, m.conv.bias] + ([bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                            bn.num_batches_tracked] if bn is not None else [])


def _token_rows(t: Tensor) -> Optional[Tensor]:
    """The (B*H*W, C) matrix view of a (B, C, H, W) tensor whose channels are adjacent in memory (channels_last, or a
    channel slice of a channels_last buffer): row i holds token i's channels, the images one after the other. None
    for other layouts (and for batches whose images are not one row step apart)."""
    B, C, H, W = t.shape
    if C > 1 and t.stride(1) != 1:
        return None
    if W > 1:
        step = t.stride(3)
        if H > 1 and t.stride(2) != W * step:
            return None
    else:
        step = t.stride(2) if H > 1 else (t.stride(0) if B > 1 else C)
    if (B * H * W > 1 and step < C) or (B > 1 and t.stride(0) != H * W * step):
        return None
    return t.as_strided((B * H * W, C), (step, 1))


# Device types where the patched blocks run a fused 1x1 conv (no BatchNorm; SiLU or none) as one GEMM in eager
# inference (_gemm_conv). "cpu": batch 1, NCHW or channels_last (MKL's sgemm, measured faster; see _gemm_conv).
# "cuda": channels_last inputs of any batch, y = addmm(bias, x_rows, w.T): cuBLASLt adds the bias in the GEMM's
# epilogue, one kernel where cuDNN runs the conv and a broadcast bias add (the -27c H100 profile: 2.2 ms of broadcast
# adds in a 7.8 ms batch-32 yolo12n forward). Off until a GPU run measures it: YOLOV12_FAST_GEMM_CONV=cuda turns it
# on (the model suite's `patched-cl-gemm` rows do, through this set).
GEMM_CONV = {"cpu"} | ({"cuda"} if os.environ.get("YOLOV12_FAST_GEMM_CONV", "").strip().lower() == "cuda" else set())


# Device types where the patched blocks add a fused conv's bias and apply its SiLU in one pass after the convolution
# (yolov12_fast::bias_act_cxx, csrc/cuda/bias_act.cu) in eager inference, instead of PyTorch's broadcast bias add and
# separate SiLU (cudnn_convolution takes no bias): one read and write of the conv output instead of two of each. Off
# until a GPU run measures it: YOLOV12_FAST_BIAS_ACT=cuda turns it on (the model suite's `patched-bias-act` rows
# do, through this set). Where GEMM_CONV's GEMM takes a conv, the bias is in the GEMM's epilogue already.
BIAS_ACT = {"cuda"} if os.environ.get("YOLOV12_FAST_BIAS_ACT", "").strip().lower() == "cuda" else set()
_BIAS_ACT_READY: dict = {}  # device -> whether the compiled op runs there (asked once per device)


def _planes_layout(t: Tensor) -> bool:
    """Each (image, channel) plane of a (B, C, H, W) tensor is H*W consecutive elements (NCHW and its slices)."""
    H, W = t.shape[2], t.shape[3]
    return (W == 1 or t.stride(3) == 1) and (H == 1 or t.stride(2) == (1 if W == 1 else W))


def _conv_bias_act(m: nn.Module, x: Tensor, out: Optional[Tensor] = None) -> Optional[Tensor]:
    """m(x) for a fused ultralytics Conv (no BatchNorm; activation SiLU or none; no hooks) as the convolution without
    its bias, then yolov12_fast::bias_act_cxx adding the bias and applying the SiLU in one pass, into `out` when
    given; None where BIAS_ACT does not hold x's device or the conv does not qualify (the caller runs m(x))."""
    dev = x.device.type
    if (dev not in BIAS_ACT or not _eager_inference() or x.dim() != 4 or x.dtype not in DTYPES
            or (out is not None and out.dtype != x.dtype)):
        return None
    conv = m._modules.get("conv")
    if (type(conv) is not nn.Conv2d or "bn" in m._modules or conv.bias is None or conv.padding_mode != "zeros"
            or conv.weight.dtype != x.dtype or conv.bias.dtype != x.dtype or torch.is_autocast_enabled(dev)):
        return None
    act = m._modules.get("act")
    silu = type(act) is nn.SiLU
    if not (silu or act is None or type(act) is nn.Identity) \
            or not all(_hookless(c) for c in (m, conv, act if act is not None else m)):
        return None
    ready = _BIAS_ACT_READY.get(x.device)
    if ready is None:
        ready = _BIAS_ACT_READY[x.device] = bool(_attention_ops._usable("cuda", x.device)[0]) \
            and hasattr(torch.ops.yolov12_fast, "bias_act_cxx")
    if not ready:
        return None
    y = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    if out is not None and not ((_planes_layout(y) and _planes_layout(out))
                                or (_token_rows(y) is not None and _token_rows(out) is not None)):
        torch.ops.yolov12_fast.bias_act_cxx(y, conv.bias, silu, y)  # layouts the kernel cannot pair: in place, copy
        out.copy_(y)
        return out
    dst = y if out is None else out
    torch.ops.yolov12_fast.bias_act_cxx(y, conv.bias, silu, dst)
    return dst


def _gemm_layout_ok(dev: str, x: Tensor, to_channels_last: bool = False) -> bool:
    """The inputs _gemm_conv takes per device type: the CPU's a batch-1 NCHW or channels-adjacent x, a GPU's a
    channels_last x of any batch, or an NCHW one whose result is to be channels_last (AAttn's proj: a batched GEMM
    reading each image's (C, HW) matrix transposed)."""
    if dev == "cpu":
        return x.shape[0] == 1 and (x.is_contiguous() or _token_rows(x) is not None)
    return (_channels_last(x) and _token_rows(x) is not None) or (to_channels_last and x.is_contiguous())


def _gemm_conv(m: nn.Module, x: Tensor, to_channels_last: bool = False) -> Optional[tuple[Tensor, Tensor, bool]]:
    """(weight as (out, in), bias as (out,), whether a SiLU follows) when m(x) can run as one addmm plus an in-place
    SiLU, else None: a fused ultralytics 1x1 Conv (no bn; activation SiLU or none) without hooks in eager inference
    (_eager_inference) on a device in GEMM_CONV: on the CPU a batch-1 input, NCHW-contiguous or with its channels
    adjacent (channels_last, _token_rows); on a GPU a channels_last input (_token_rows) of any batch.
    CPU, NCHW: oneDNN's convolution gains nothing from a second thread at batch 1: at 2 threads conv + SiLU measured
    1.6-1.7x the addmm + SiLU at the ABlock MLP shapes of yolo12n (64->76 over 40x40, 128->153 over 20x20) and
    1.03-1.26x at A2C2f's cv1 / cv2; at 1 thread torch runs an sgemm anyway (equal times). CPU, channels_last (2
    threads, this repo's Xeon, 2026-11-27): oneDNN's NHWC convolution is the faster one for channel counts in 16s over
    more than 400 tokens (384->64 over 40x40: 298 against 349 us; 64->64 over 80x80: 325 against 360), the addmm for
    the MLP's odd widths (64->76 over 40x40: 108 against 125; 128->153 over 20x20: 81 against 126) and at 20x20
    (128->384: 174 against 214). On AMD CPUs channels_last takes the convolution at every shape
    (cpu_channels_last_conv)."""
    dev = x.device.type
    # the device first (GPU forwards leave here at once by default), then the mode: under jit tracing x.shape[0] is a
    # tensor
    if dev not in GEMM_CONV or not _eager_inference() or x.dim() != 4 or x.numel() == 0:
        return None
    conv = m._modules.get("conv")
    if type(conv) is not nn.Conv2d or "bn" in m._modules or torch.is_autocast_enabled(dev):
        return None
    if not _gemm_layout_ok(dev, x, to_channels_last):
        return None
    act = m._modules.get("act")
    silu = type(act) is nn.SiLU
    if not (silu or act is None or type(act) is nn.Identity):
        return None
    if not (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1
            and conv.bias is not None and conv.weight.dtype == x.dtype and conv.in_channels == x.shape[1]
            and all(_hookless(c) for c in (m, conv, act if act is not None else m))):
        return None
    if dev == "cpu" and not x.is_contiguous() and cpu_channels_last_conv(conv.in_channels, conv.out_channels,
                                                                         x.shape[2] * x.shape[3]):
        return None  # channels_last where oneDNN's NHWC convolution measured as fast or faster
    return conv.weight.view(conv.out_channels, conv.in_channels), conv.bias, silu


def cpu_channels_last_conv(cin: int, cout: int, tokens: int, vendor: Optional[str] = None) -> bool:
    """Whether a batch-1 channels_last 1x1 conv on the CPU runs as oneDNN's NHWC convolution rather than _gemm_conv's
    addmm (torch's sgemm: MKL on x86), by the CPU's vendor (_backends.cpu_vendor() unless given), as measured at
    2 threads (at 1 thread both run the same sgemm, equal times):
    - Intel (a 2-core Xeon with AVX-512 and AMX, 2026-11-27): the convolution for channel counts in 16s over more than
      400 tokens (384->64 over 40x40: 298 against 349 us), the addmm for odd widths (64->76 over 40x40: 108 against
      125) and at 20x20 (128->384: 174 against 214).
    - AMD (a 2-core EPYC Zen 5 with AVX-512, 2026-11-28, benchmarks/results/cpu-amd-epyc-2026-11-28): the convolution
      at every yolo12n shape, 1.26-1.8x faster than the addmm, odd MLP widths included (64->76 over 40x40: 81 against
      107 us; 128->153 over 20x20: 72 against 92; 64->128 over 40x40: 103 against 149; 384->256 over 20x20: 209
      against 373): MKL's sgemm gains little from a second thread there, oneDNN's convolution nearly doubles.
    - Other CPUs (not measured): the Intel rule."""
    if (vendor or _backends.cpu_vendor()) == "amd":
        return True
    return cin % 16 == 0 and cout % 16 == 0 and tokens > 400


def _conv1x1(m: nn.Module, x: Tensor, out: Optional[Tensor] = None, channels_last: bool = False) -> Tensor:
    """m(x) for an ultralytics Conv, as an addmm (+ in-place SiLU) where _gemm_conv allows, else m(x) itself.

    The result's layout: `out`'s when given (written into it: e.g. a channel slice of A2C2f's buffer), else x's,
    or channels_last for an NCHW x when `channels_last` (AAttn's proj: its kernels write NCHW, the model runs
    channels_last). The addmm gets that from BLAS's transposed operand, without a copy; on the conv path x is
    converted instead, so that the convolution runs in the model's layout and the result has it."""
    channels_last = channels_last or _channels_last(x)
    g = _gemm_conv(m, x, channels_last and out is None)
    if g is None or (out is not None and out.dtype != x.dtype):
        if channels_last and not _channels_last(x) and x.dim() == 4 and x.shape[1] > 1 and x.shape[2] * x.shape[3] > 1:
            x = x.contiguous(memory_format=torch.channels_last)  # one copy; the conv then runs channels_last
        if out is None:
            y = _conv_bias_act(m, x)
            y = m(x) if y is None else y
            if channels_last and not _channels_last(y) and y.dim() == 4 and y.shape[1] > 1 and y.shape[2] * y.shape[3] > 1:
                y = y.contiguous(memory_format=torch.channels_last)  # x had one channel: both layouts at once
            return y
        if _conv_bias_act(m, x, out) is None:
            _conv_into(m, x, out)
        return out
    w, b, silu = g
    O, (B, C, H, W) = w.shape[0], x.shape
    if out is not None:
        rows = None if out.is_contiguous() and B == 1 else _token_rows(out)
        if rows is None and not (out.is_contiguous() and B == 1):  # neither layout BLAS can write: the conv path
            _conv_into(m, x, out)
            return out
        channels_last = rows is not None
    if channels_last or B > 1:  # tokens x channels: y(BHW, O) = x(BHW, C) @ w.T + b (the bias as GEMM epilogue)
        xt = _token_rows(x)
        if xt is None and B == 1:  # a batch-1 NCHW x: its (C, HW) matrix, transposed (BLAS reads it in place)
            xt = x.view(C, H * W).t()
        if out is None:  # a channels_last tensor with canonical strides (what torch's layout checks recognise)
            res = torch.empty((B, O, H, W), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
            rows = _token_rows(res)
            if xt is not None:
                y = torch.addmm(b, xt, w.t(), out=rows)
            else:  # an NCHW batch: per image (HW, C) = its (C, HW) matrix transposed, one batched GEMM
                y = torch.baddbmm(b.expand(B, H * W, O), x.view(B, C, H * W).transpose(1, 2), w.t().expand(B, C, O),
                                  out=rows.view(B, H * W, O))
        else:
            y, res = torch.addmm(b.view(1, O), xt, w.t(), out=rows), out
    else:  # batch 1, channels x tokens: y(O, HW) = w @ x(C, HW) + b
        xm = x.view(C, H * W) if x.is_contiguous() else _token_rows(x).t()
        y = torch.addmm(b.view(O, 1), w, xm, out=None if out is None else out.view(O, H * W))
        res = y.view(1, O, H, W) if out is None else out
    if silu:
        F.silu(y, inplace=True)
    return res


def _mlp(mlp: nn.Module, x: Tensor) -> Tensor:
    """mlp(x) for ABlock's MLP (nn.Sequential of two ultralytics Convs), each conv through _conv1x1 (an addmm where
    _gemm_conv allows, the bias-and-SiLU pass where _conv_bias_act does, else the Conv module itself)."""
    if type(mlp) is nn.Sequential and len(mlp) == 2 and _hookless(mlp):
        return _conv1x1(mlp[1], _conv1x1(mlp[0], x))
    return mlp(x)


class AAttn(FastModule):
    """Area attention (REFERENCE.md), fast. Same constructor, attributes and state_dict keys as ultralytics'
    `AAttn(dim, num_heads, area)` (variant="ultralytics": qkv, proj, 7x7 pe) or the authors' turbo AAttn
    (variant="turbo": qk, v, proj, 5x5 pe). The variant of an instance is read from its children, so a patched
    turbo-style object works the same way."""

    def __init__(self, dim: int, num_heads: int, area: int = 1, *, variant: str = "ultralytics",
                 backend: str = "auto"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"AAttn: variant must be one of {VARIANTS}, got {variant!r}")
        Conv = _ultralytics_conv()
        self.area = area
        self.num_heads = num_heads
        self.head_dim = head_dim = dim // num_heads
        self.all_head_dim = all_head_dim = head_dim * num_heads
        if variant == "ultralytics":
            self.qkv = Conv(dim, all_head_dim * 3, 1, act=False)
            self.proj = Conv(all_head_dim, dim, 1, act=False)
            self.pe = Conv(all_head_dim, all_head_dim, 7, 1, 3, g=all_head_dim, act=False)
        else:
            self.qk = Conv(dim, all_head_dim * 2, 1, act=False)
            self.v = Conv(dim, all_head_dim, 1, act=False)
            self.proj = Conv(all_head_dim, dim, 1, act=False)
            self.pe = Conv(all_head_dim, dim, 5, 1, 2, g=dim, act=False)
        self.backend = backend

    @classmethod
    def _default_plain_class(cls) -> type:
        # Both variants pickle as ultralytics' AAttn: that is what the authors' turbo checkpoints contain too.
        from ultralytics.nn.modules.block import AAttn as UltralyticsAAttn

        return UltralyticsAAttn

    @property
    def variant(self) -> str:
        return "ultralytics" if "qkv" in self._modules else "turbo"

    # -- pieces -----------------------------------------------------------------------------------------------

    def _qkv_views(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v as (B, heads, head_dim, N) strided views of the conv output(s) (reshape is a view for NCHW and
        channels_last conv outputs)."""
        B, _, H, W = x.shape
        N, nh, hd = H * W, self.num_heads, self.head_dim
        mods = self._modules
        if "qkv" in mods:  # ultralytics / v1.0: head h owns channels [3*hd*h, 3*hd*(h+1)) = its q, k, v
            qkv = _conv1x1(mods["qkv"], x)
            q, k, v = qkv.reshape(B, nh, 3 * hd, N).split(hd, dim=2)
        elif "qk" in mods and "v" in mods:  # turbo: all q in [0, C), all k in [C, 2C); separate v conv
            q, k = mods["qk"](x).reshape(B, 2, nh, hd, N).unbind(1)
            v = mods["v"](x).reshape(B, nh, hd, N)
        else:
            raise AttributeError(f"{type(self).__name__} has neither 'qkv' (ultralytics/v1.0) nor 'qk' and 'v' (turbo)")
        return q, k, v

    def _pe_foldable(self) -> bool:
        """The pe child is an ultralytics Conv we can fold: depthwise, odd k x k, stride 1, 'same' padding, no
        activation, and either fused (no bn) or an eval-mode BatchNorm with running statistics."""
        pe = self._modules["pe"]
        if not _foldable_conv(pe, nn.Identity):
            return False
        conv = pe._modules["conv"]
        return conv.kernel_size[0] % 2 == 1 and conv.groups == conv.in_channels == conv.out_channels

    def _pe_params(self, dtype: torch.dtype) -> tuple[Tensor, Optional[Tensor]]:
        """(weight, bias) of the pe depthwise conv with its BatchNorm folded, in `dtype`."""
        pe = self._modules["pe"]
        return self._folded("_yf_pe_cache", _conv_tensors(pe), lambda dt: _fold_conv(pe, dt), dtype)

    def _pe(self, v: Tensor, H: int, W: int) -> Tensor:
        """P = pe(V) as (B, heads, head_dim, N)."""
        if self._pe_foldable():
            w, b = self._pe_params(v.dtype)
            if v.dtype in DTYPES and v.shape[2] in HEAD_DIMS:
                return pe_add(v, w, b, H, W, backend=self.backend)
            B, nh, hd, N = v.shape  # float64, or a head_dim no kernel has (the attention falls back too): plain conv
            out = F.conv2d(v.reshape(B, nh * hd, H, W), w, b, padding=w.shape[-1] // 2, groups=w.shape[0])
            return out.reshape(B, nh, hd, N)
        B, nh, hd, N = v.shape  # training-mode BN or an unusual pe: run the module itself on an NCHW copy
        return self._modules["pe"](v.reshape(B, nh * hd, H, W)).reshape(B, nh, hd, N)

    def _direct(self, q: Tensor, k: Tensor, v: Tensor) -> Optional[tuple[str, str]]:
        """(pe backend, attention backend) when this call runs the kernels without the custom-op layer, else None.

        Eager inference (_eager_inference: inference_mode or no_grad, nothing watching the ops), folded pe, inputs
        the ops accept: the op bodies are called directly (ops.pe.run, ops.area_attention.plus_residual), the same
        kernels on the same backends with the same results. The custom-op layer (dispatcher, checks, backend
        resolution, functional wrappers) costs tens of microseconds of host time a call, and a batch-1 forward on a
        GPU is host-bound (benchmarks/README.md, "Host time"). Anything else (autograd, torch.compile, export, a
        TorchDispatchMode such as benchmarks/proxies.py's counter, a bad input, an explicit backend that cannot run
        here) takes the ops, which raise the clear errors."""
        if not _eager_inference() or q.dtype not in DTYPES \
                or q.shape[2] not in HEAD_DIMS or not self._pe_foldable():
            return None
        backend = self.backend
        if not _attention_ops._inputs_ok(q, k, v, self.area, None, backend):
            return None
        # The backends resolved for this (backend, device, dtype, head_dim, pe kernel size), cached per module: on CUDA
        # resolving asks torch for the device's capability and availability four times (microseconds each, and a
        # batch-1 forward on a GPU is host-bound). Dropped with the other caches on .to() / deepcopy.
        key = (backend, q.device, q.dtype, q.shape[2], self._modules["pe"].conv.kernel_size[0])
        cached = self.__dict__.get("_yf_resolved")
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            picks = (_pe_ops.resolve_backend(backend, q.device, q.dtype, key[4]),
                     resolve_attention_backend(backend, q.device, q.dtype, q.shape[2]))
        except RuntimeError:
            return None
        self.__dict__["_yf_resolved"] = (key, picks)
        return picks

    def _attention_in_place(self, q: Tensor, p: Tensor) -> bool:
        """Inference with the Triton kernel: the attention output can overwrite the PE result P (our own fresh
        pe_add output, contiguous, q's dtype), saving one (B, C, H, W) map of peak memory. Not under autograd or
        torch.compile (functional graphs), and not with other backends (their kernels write a new tensor)."""
        if _compiling() or p.dtype != q.dtype or not p.is_contiguous() or not self._pe_foldable():
            return False
        if torch.is_grad_enabled() and (q.requires_grad or p.requires_grad):
            return False
        try:
            return resolve_attention_backend(self.backend, q.device, q.dtype, q.shape[2]) == "triton"
        except RuntimeError:
            return False

    # -- forward ----------------------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        if _decomposing():
            return self.forward_reference(x)
        B, _, H, W = x.shape
        q, k, v = self._qkv_views(x)
        nh, hd = q.shape[1], q.shape[2]
        direct = self._direct(q, k, v)
        if direct is not None:  # the kernels without the custom-op layer (same backends, same results)
            w, b = self._pe_params(q.dtype)
            if _pe_ops._inputs_ok(v, w, b, None, H, W, self.backend):  # else the op says what is wrong
                p = _pe_ops.run(v, w, b, None, H, W, direct[0])
                o = _attention_ops.plus_residual(q, k, v, self.area, hd ** -0.5, p, direct[1])
                return _conv1x1(self.proj, o.view(B, nh * hd, H, W), channels_last=_channels_last(x))
        p = self._pe(v, H, W)
        if q.dtype in DTYPES and hd in HEAD_DIMS:
            if self._attention_in_place(q, p):  # O = P + attention written over P: no second map
                o = area_attention_add_(p, q, k, v, self.area, scale=hd ** -0.5, backend=self.backend)
            else:
                o = area_attention(q, k, v, self.area, scale=hd ** -0.5, residual=p.to(q.dtype),
                                   backend=self.backend)
        else:  # float64 or an unusual head_dim: plain PyTorch math
            if hd not in HEAD_DIMS and hd not in _WARNED_HEAD_DIMS:
                _WARNED_HEAD_DIMS.add(hd)
                warnings.warn(f"yolov12_fast AAttn: head_dim {hd} has no fused kernel (supported: {HEAD_DIMS}); "
                              "running the plain-PyTorch math", RuntimeWarning, stacklevel=_backends.user_stacklevel())
            o = reference.area_attention(q, k, v, self.area, hd ** -0.5, residual=p)
        # the kernels write NCHW; a channels_last model gets proj's output channels_last (proj runs channels_last)
        return _conv1x1(self.proj, o.view(B, nh * hd, H, W), channels_last=_channels_last(x))

    def forward_reference(self, x: Tensor) -> Tensor:
        """The same computation with standard torch ops only (tracing, ONNX export, float64)."""
        B, _, H, W = x.shape
        q, k, v = self._qkv_views(x)
        nh, hd = q.shape[1], q.shape[2]
        p = self._modules["pe"](v.reshape(B, nh * hd, H, W)).reshape(B, nh, hd, H * W)
        o = reference.area_attention(q, k, v, self.area, hd ** -0.5, residual=p)
        return self.proj(o.reshape(B, nh * hd, H, W))


# ------------------------------------------------------------------------------------------------------------
# ABlock


class ABlock(FastModule):
    """x1 = x + attn(x); x1 + mlp(x1). Same constructor, attributes and state_dict keys as ultralytics'
    `ABlock(dim, num_heads, mlp_ratio, area)`; `variant` picks the AAttn layout."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 1.2, area: int = 1, *,
                 variant: str = "ultralytics", backend: str = "auto", recompute: str = "auto"):
        super().__init__()
        Conv = _ultralytics_conv()
        self.attn = AAttn(dim, num_heads=num_heads, area=area, variant=variant, backend=backend)
        mlp_hidden_dim = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(Conv(dim, mlp_hidden_dim, 1), Conv(mlp_hidden_dim, dim, 1, act=False))
        self.apply(self._init_weights)
        self.backend = backend
        self.recompute = recompute

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """ultralytics' ABlock initialisation: truncated normal (std 0.02) conv weights, zero conv biases."""
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)

    @classmethod
    def _default_plain_class(cls) -> type:
        from ultralytics.nn.modules.block import ABlock as UltralyticsABlock

        return UltralyticsABlock

    def _mlp_fused_params(self, x: Tensor):
        """Folded (w1, b1, w2, b2) when the MLP runs as the fused yolov12_fast::mlp_residual kernel, else None.
        It does when the MLP backend for this module's backend is a fused kernel (today: backend='triton';
        'auto' keeps the two cuDNN/oneDNN convs until a GPU benchmark shows the kernel faster), the two children
        are plain foldable 1x1 Convs (SiLU, then no activation) without hooks, and x is fp16/bf16/fp32."""
        if self.backend != "triton" or x.dtype not in DTYPES or _decomposing() or not _tokens_flatten(x):
            return None
        mlp = self._modules["mlp"]
        if not (isinstance(mlp, nn.Sequential) and len(mlp) == 2 and _hookless(mlp)):
            return None
        c1, c2 = mlp[0], mlp[1]
        if not (_hookless(c1) and _hookless(c2) and _foldable_conv(c1, nn.SiLU) and _foldable_conv(c2, nn.Identity)
                and c1.conv.kernel_size == (1, 1) and c2.conv.kernel_size == (1, 1) and c1.conv.groups == 1
                and c2.conv.groups == 1 and c1.conv.in_channels == c2.conv.out_channels == x.shape[1]):
            return None

        def fold(dtype):
            (w1, b1), (w2, b2) = _fold_conv(c1, dtype), _fold_conv(c2, dtype)
            zeros = lambda n: torch.zeros(n, dtype=dtype, device=w1.device)
            return (w1, b1 if b1 is not None else zeros(w1.shape[0]), w2,
                    b2 if b2 is not None else zeros(w2.shape[0]))

        return self._folded("_yf_mlp_cache", _conv_tensors(c1) + _conv_tensors(c2), fold, x.dtype)

    def _recompute(self, x: Tensor) -> str:
        """The recompute mode that applies to this call: only while training with autograd, in eager mode."""
        if not (self.training and torch.is_grad_enabled()) or _compiling() or _decomposing():
            return "none"
        mode = self.recompute
        if mode == "auto":
            return AUTO_RECOMPUTE.get(x.device.type, "none")
        return mode

    def forward(self, x: Tensor) -> Tensor:
        recompute = self._recompute(x)
        if recompute == "block":
            return _checkpointed(self._forward, self, x)
        return self._forward(x, recompute == "mlp")

    def _forward(self, x: Tensor, recompute_mlp: bool = False) -> Tensor:
        x = x + self.attn(x)
        p = self._mlp_fused_params(x)
        if p is not None:  # the fused kernel's autograd already keeps only x
            return mlp_residual(x, *p, backend=self.backend)
        if recompute_mlp:
            return x + _checkpointed(self.mlp, self.mlp, x)
        return x + _mlp(self.mlp, x)

    def forward_into(self, x: Tensor, out: Tensor) -> Tensor:
        """forward(x) written into `out` (e.g. a channel slice of A2C2f's buffer). No autograd (out= op)."""
        x = x + self.attn(x)
        p = self._mlp_fused_params(x)
        if p is not None and out.dtype == x.dtype:
            return mlp_residual(x, *p, out=out, backend=self.backend)
        return torch.add(x, _mlp(self.mlp, x), out=out)


# ------------------------------------------------------------------------------------------------------------
# A2C2f


# CPU vendors (_backends.cpu_vendor()) on which a batch-1 NCHW A2C2f in eager inference runs channels_last inside: its
# input converted once, its output converted back to NCHW (the layout ultralytics' module returns), for maps of at most
# CPU_INSIDE_CHANNELS_LAST_TOKENS tokens. Measured on a 2-core AMD EPYC (Zen 5, 2 threads, yolo12n 640, 2026-11-28):
# oneDNN's channels_last convolutions (cpu_channels_last_conv) outrun the NCHW path's addmm and convolutions by more
# than the two copies cost at P4 and P5 (layer 6: 6.62 -> 6.29 ms, 8: 4.73 -> 4.51, 11: 2.09 -> 1.72, 17: 1.73 ->
# 1.44); at P3 (80x80, layer 14) the copies of its 256-channel input cost more than that (2.91 -> 4.00 ms). Intel
# CPUs: not measured, off. A model run channels_last end to end (yolov12_fast.YOLO's channels_last="auto" on x86, and
# ultralytics >= 8.4's own CPU inference on x86) needs none of this. YOLOV12_FAST_CPU_INSIDE_CHANNELS_LAST replaces the
# set ("amd,intel" to measure it on an Intel CPU, "none" for no vendor).
_INSIDE_ENV = os.environ.get("YOLOV12_FAST_CPU_INSIDE_CHANNELS_LAST")
CPU_INSIDE_CHANNELS_LAST = {"amd"} if _INSIDE_ENV is None else \
    {v.strip().lower() for v in _INSIDE_ENV.split(",") if v.strip() and v.strip().lower() != "none"}
CPU_INSIDE_CHANNELS_LAST_TOKENS = 1600


def _cpu_inside_channels_last(x: Tensor) -> bool:
    return (x.device.type == "cpu" and x.dim() == 4 and x.shape[0] == 1 and x.shape[1] > 1
            and 1 < x.shape[2] * x.shape[3] <= CPU_INSIDE_CHANNELS_LAST_TOKENS and x.is_contiguous()
            and x.dtype in DTYPES and _backends.cpu_vendor() in CPU_INSIDE_CHANNELS_LAST and _eager_inference())


def _act_into(act: nn.Module, t: Tensor, out: Tensor) -> bool:
    """Write act(t) into out if act is one we can run with out=; returns False otherwise."""
    if type(act) is nn.SiLU:
        torch.ops.aten.silu.out(t, out=out)
        return True
    if type(act) is nn.Identity:
        out.copy_(t)
        return True
    return False


def _conv_into(conv_module: nn.Module, x: Tensor, out: Tensor) -> None:
    """out = conv_module(x) for an ultralytics Conv, with the activation writing straight into `out`."""
    conv, bn, act = (conv_module._modules.get(k) for k in ("conv", "bn", "act"))
    if _hookless(conv_module) and type(conv) is nn.Conv2d and act is not None and _hookless(act) \
            and (bn is None or _hookless(bn)):
        t = conv(x)
        if bn is not None:
            t = bn(t)
        if _act_into(act, t, out):
            return
    out.copy_(conv_module(x))


class A2C2f(FastModule):
    """R-ELAN block (REFERENCE.md). Same constructor, attributes and state_dict keys as ultralytics'
    `A2C2f(c1, c2, n, a2, area, residual, mlp_ratio, e, g, shortcut)`; `variant` picks the AAttn layout."""

    def __init__(self, c1: int, c2: int, n: int = 1, a2: bool = True, area: int = 1, residual: bool = False,
                 mlp_ratio: float = 2.0, e: float = 0.5, g: int = 1, shortcut: bool = True, *,
                 variant: str = "ultralytics", backend: str = "auto", recompute: str = "auto"):
        super().__init__()
        from ultralytics.nn.modules.block import C3k

        Conv = _ultralytics_conv()
        c_ = int(c2 * e)
        if c_ % 32 != 0:
            raise ValueError(f"A2C2f: the ABlock dimension int(c2 * e) = {c_} must be a multiple of 32")
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv((1 + n) * c_, c2, 1)
        self.gamma = nn.Parameter(0.01 * torch.ones(c2), requires_grad=True) if a2 and residual else None
        self.m = nn.ModuleList(
            nn.Sequential(*(ABlock(c_, c_ // 32, mlp_ratio, area, variant=variant, backend=backend)
                            for _ in range(2)))
            if a2 else C3k(c_, c_, 2, shortcut, g)
            for _ in range(n))
        self.backend = backend
        self.recompute = recompute

    @classmethod
    def _default_plain_class(cls) -> type:
        from ultralytics.nn.modules.block import A2C2f as UltralyticsA2C2f

        return UltralyticsA2C2f

    def _cv2_fused_params(self, x: Tensor, y: Tensor):
        """Folded (w, b) of cv2 when it runs as the fused yolov12_fast::conv1x1_silu_residual kernel, else None.
        It does for backend='triton' ('auto' keeps cuDNN's conv and the addcmul until a GPU benchmark shows the
        kernel faster) when cv2 is a plain foldable 1x1 SiLU Conv without hooks and x, y and gamma share a
        dtype (under autocast ultralytics' addcmul promotes an fp16 cv2 output with the fp32 gamma to fp32: that
        case keeps the unfused math)."""
        if (self.backend != "triton" or y.dtype not in DTYPES or _decomposing() or not _tokens_flatten(y)
                or not _tokens_flatten(x)):
            return None
        cv2, gamma = self.cv2, self.gamma
        if gamma is not None and not (x.dtype == y.dtype == gamma.dtype):
            return None
        if not (_hookless(cv2) and _foldable_conv(cv2, nn.SiLU) and cv2.conv.kernel_size == (1, 1)
                and cv2.conv.groups == 1 and cv2.conv.in_channels == y.shape[1]):
            return None

        def fold(dtype):
            w, b = _fold_conv(cv2, dtype)
            return w, b if b is not None else torch.zeros(w.shape[0], dtype=dtype, device=w.device)

        return self._folded("_yf_cv2_cache", _conv_tensors(cv2), fold, y.dtype)

    def _out(self, x: Tensor, y: Tensor) -> Tensor:
        """cv2(y), plus the L/X residual x + gamma * cv2(y)."""
        gamma = self.gamma
        p = self._cv2_fused_params(x, y)
        if p is not None:
            if gamma is None:
                return conv1x1_silu_residual(y, *p, backend=self.backend)
            return conv1x1_silu_residual(y, *p, residual=x, gamma=gamma, backend=self.backend)
        z = _conv1x1(self.cv2, y)
        if gamma is None:
            return z
        return torch.addcmul(x, gamma.view(1, -1, 1, 1), z)  # x + gamma * z

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or _decomposing() or _compiling():
            return self._forward_cat(x)
        if _cpu_inside_channels_last(x):  # one conversion each way, channels_last in between
            return self._forward_buffer(x.contiguous(memory_format=torch.channels_last)).contiguous()
        return self._forward_buffer(x)

    def _forward_cat(self, x: Tensor) -> Tensor:
        y = [_conv1x1(self.cv1, x)]
        y.extend(m(y[-1]) for m in self.m)
        return self._out(x, torch.cat(y, 1))

    def _forward_buffer(self, x: Tensor) -> Tensor:
        """cv1 and each entry of m write into channel slices of one buffer; cv2 reads it once."""
        conv1 = getattr(self.cv1, "conv", None)
        if type(conv1) is not nn.Conv2d:
            return self._forward_cat(x)
        c_, n = conv1.out_channels, len(self.m)
        B, _, H, W = x.shape
        cl = _channels_last(x)
        if (B > 1 or cl) and not all(isinstance(m, nn.Sequential) and len(m) and isinstance(m[-1], ABlock)
                                     for m in self.m):
            # C3k blocks (A2C2f without attention) would read their input, a channel slice of the buffer, through
            # convolutions that copy a slice that is not contiguous (batch > 1, channels_last) first: as many copies
            # as torch.cat saves. Only at batch 1 in NCHW are the slices contiguous.
            return self._forward_cat(x)
        # cv1's output dtype: the autocast dtype under autocast, else x's (conv needs x and weight to agree)
        dev = x.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        buf = torch.empty((B, (1 + n) * c_, H, W), dtype=dtype, device=x.device,
                          memory_format=torch.channels_last if cl else torch.contiguous_format)
        prev = buf[:, :c_]
        _conv1x1(self.cv1, x, out=prev)
        for i, m in enumerate(self.m, start=1):
            out = buf[:, i * c_:(i + 1) * c_]
            blocks = list(m) if isinstance(m, nn.Sequential) else []
            if blocks and isinstance(blocks[-1], ABlock) and _hookless(m) and _hookless(blocks[-1]):
                y = prev
                for blk in blocks[:-1]:
                    y = blk(y)
                blocks[-1].forward_into(y, out)
            else:
                out.copy_(m(prev))
            prev = out
        return self._out(x, buf)
