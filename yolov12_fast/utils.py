"""Helpers shared by the demo, the verify tool, the benchmarks and the tests: offline ultralytics settings, the
bundled images, BatchNorm calibration of randomly initialised models (REFERENCE.md: without it, activations
at the attention layers are ~1e-6 and any kernel, even a wrong one, "matches" the reference), and the authors'
turbo AAttn layout (`TurboAAttn`, `to_turbo`) to build turbo models from the ultralytics configs."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings

import torch
import torch.nn as nn


def ultralytics_offline() -> None:
    """Run ultralytics without network: no downloads, no auto-install, a private config dir holding a font
    (training and plotting would otherwise try to download Arial.ttf). Only sets what the user has not set. For
    this process and its children: the CLI commands (demo, verify) and the benchmarks call it, the library
    functions do not. The config dir is one per user, reused across runs."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    cfg = os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), f"yolov12_fast_ultralytics_{uid}"))
    os.makedirs(cfg, exist_ok=True)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    font = os.path.join(cfg, "Arial.ttf")
    if not os.path.exists(font):
        try:
            import matplotlib

            shutil.copy(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf"), font)
        except Exception:  # no matplotlib: plotting falls back to cv2 text
            pass


def asset_paths() -> list:
    """The images ultralytics ships (bus.jpg, zidane.jpg)."""
    from ultralytics.utils import ASSETS

    return [ASSETS / "bus.jpg", ASSETS / "zidane.jpg"]


def load_images(paths=None, imgsz=640) -> torch.Tensor:
    """Letterbox images to imgsz (int: square, or (h, w)): float32 (B, 3, h, w) RGB in [0, 1]."""
    import cv2
    from ultralytics.data.augment import LetterBox

    hw = (int(imgsz), int(imgsz)) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
    lb = LetterBox(new_shape=hw, auto=False, scaleup=True, center=True)
    out = []
    for p in paths or asset_paths():
        im = cv2.imread(str(p))
        if im is None:
            raise FileNotFoundError(f"cannot read image {p}")
        out.append(torch.from_numpy(lb(image=im)[:, :, ::-1].copy()).permute(2, 0, 1))
    return (torch.stack(out).float() / 255.0).contiguous()


@torch.no_grad()
def calibrate_bn(model: nn.Module, imgs: torch.Tensor, seed: int = 0, randomize_gamma: bool = True) -> nn.Module:
    """Give every BatchNorm a random affine (weight U(0.5, 1.5), bias N(0, 0.1)) and set its running statistics to
    those of one forward pass over `imgs`, so a randomly initialised model has unit-scale activations everywhere.
    With randomize_gamma, A2C2f's residual `gamma` (0.01 at init) is drawn around 1 so the attention branch shows
    in the layer output. Returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch the running stats are that batch's
        elif randomize_gamma and isinstance(getattr(m, "gamma", None), nn.Parameter) and hasattr(m, "cv2"):
            m.gamma.copy_(torch.rand(m.gamma.shape, generator=g) + 0.5)
    model.train()
    model(imgs)
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.03  # ultralytics' value (irrelevant in eval mode)
    return model


# ----------------------------------------------------------------------------------------------------------------
# Turbo-variant AAttn (authors' repo, "turbo" generation), written from REFERENCE.md
# ----------------------------------------------------------------------------------------------------------------

class TurboAAttn(nn.Module):
    """AAttn with the turbo parameter layout: qk (1x1, C -> 2C; all q in [0, C), all k in [C, 2C)), v (1x1, C -> C),
    proj (1x1, C -> C), pe (depthwise 5x5, padding 2) over the whole V map. Explicit matmul/softmax in the input
    dtype, scale applied after the q^T k product as the turbo code does. Also the plain forward of the ultralytics
    AAttn objects an authors' turbo checkpoint loads into (same attribute names: see `turbo_reference`)."""

    def __init__(self, dim: int, num_heads: int, area: int = 1):
        super().__init__()
        from ultralytics.nn.modules.conv import Conv

        self.area = area
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.all_head_dim = self.head_dim * num_heads
        self.qk = Conv(dim, self.all_head_dim * 2, 1, act=False)
        self.v = Conv(dim, self.all_head_dim, 1, act=False)
        self.proj = Conv(self.all_head_dim, dim, 1, act=False)
        self.pe = Conv(self.all_head_dim, dim, 5, 1, 2, g=dim, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        N, A, heads, D = H * W, self.area, self.num_heads, self.head_dim
        qk = self.qk(x).flatten(2).transpose(1, 2)  # (B, N, 2C)
        v_map = self.v(x)
        pp = self.pe(v_map)
        v = v_map.flatten(2).transpose(1, 2)  # (B, N, C)
        # areas: contiguous runs of N // A tokens of one image
        qk = qk.reshape(B * A, N // A, 2 * C)
        v = v.reshape(B * A, N // A, C)
        q, k = qk.split([C, C], dim=2)
        q, k, v = (t.transpose(1, 2).reshape(B * A, heads, D, N // A) for t in (q, k, v))
        s = (q.transpose(-2, -1) @ k) * (D ** -0.5)  # (B*A, heads, n, n)
        p = torch.exp(s - s.max(dim=-1, keepdim=True).values)
        p = p / p.sum(dim=-1, keepdim=True)
        o = v @ p.transpose(-2, -1)  # (B*A, heads, D, n)
        o = o.reshape(B, A, C, N // A).transpose(1, 2).reshape(B, C, H, W)
        return self.proj(o + pp)


def _ablock_pairs(model: nn.Module) -> list:
    """The block pairs (nn.Sequential of ABlocks) of every attention A2C2f (a2=True), model order."""
    pairs = []
    for m in model.modules():
        if type(m).__name__ != "A2C2f" or len(m.m) == 0 or not isinstance(m.m[0], nn.Sequential):
            continue
        if all(type(b).__name__ == "ABlock" for b in m.m[0]):
            pairs.extend(m.m)
    return pairs


def to_turbo(model: nn.Module, scale: str) -> nn.Module:
    """Rebuild every ABlock of the attention A2C2f layers as turbo (in place): TurboAAttn and the turbo MLP ratio
    (1.5 instead of 1.2 on l/x), initialised like ultralytics' ABlock (draws from torch's global RNG)."""
    from ultralytics.nn.modules.block import ABlock

    mlp_ratio = 1.5 if scale in ("l", "x") else 2.0
    for pair in _ablock_pairs(model):
        for i, old in enumerate(pair):
            dim = old.attn.qkv.conv.in_channels
            blk = ABlock(dim, old.attn.num_heads, mlp_ratio, old.attn.area)
            blk.attn = TurboAAttn(dim, old.attn.num_heads, old.attn.area)
            blk.attn.apply(blk._init_weights)  # same init as the ultralytics ABlock's convs (a method before 8.3.8x)
            pair[i] = blk
    return model


def turbo_reference(model: nn.Module) -> nn.Module:
    """Give the turbo-layout ultralytics AAttn objects of `model` (what an authors' turbo checkpoint loads into;
    their own forward fails with "'AAttn' object has no attribute 'qkv'") the class TurboAAttn, in place, so the
    unpatched model runs. Other modules are untouched. Returns the model."""
    for m in model.modules():
        if (type(m).__name__ == "AAttn" and not hasattr(m, "qkv") and "qk" in m._modules and "v" in m._modules
                and not getattr(type(m), "_yf_plain_class", None)):
            m.__class__ = TurboAAttn
    return model


def calibrated_model(cfg: str = "yolo12n.yaml", variant: str = "ultralytics", imgs: torch.Tensor | None = None,
                     init_seed: int = 0, calib_seed: int = 0) -> nn.Module:
    """An ultralytics DetectionModel built from config `cfg` (float32, eval, on CPU) with random weights drawn after
    torch.manual_seed(init_seed), the turbo layout if variant="turbo", and BatchNorm calibrated on `imgs` (default:
    the bundled images at 640) by `calibrate_bn(seed=calib_seed)`, so its activations have unit scale."""
    if variant not in ("ultralytics", "turbo"):
        raise ValueError(f"variant must be 'ultralytics' or 'turbo', got {variant!r}")
    from ultralytics import YOLO
    from ultralytics.nn.tasks import guess_model_scale

    torch.manual_seed(init_seed)
    model = YOLO(cfg).model.float()
    if variant == "turbo":
        to_turbo(model, guess_model_scale(cfg))
    calibrate_bn(model, load_images() if imgs is None else imgs, seed=calib_seed, randomize_gamma=True)
    return model


@contextlib.contextmanager
def num_threads(n: int):
    """torch's intra-op thread count set to `n` inside the block, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def exact_fp32():
    """float32 matmuls and convolutions in float32 on CUDA inside the block (torch lets cuDNN's convolutions use
    TF32, 10 mantissa bits, by default): the float32 oracle of a float16 / bfloat16 check, or the float32 yardstick
    of a float32 one. The flags are restored afterwards."""
    with warnings.catch_warnings():  # newer torch warns that these legacy flags are deprecated
        warnings.simplefilter("ignore")
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def flush_denormals(on: bool = True) -> int:
    """Flush denormal floats to zero (on=True), or keep them (False, torch's default), on the calling thread and on
    every thread of torch's intra-op pool. Returns how many threads were set; 0 where the CPU has no such mode.

    Why: on Intel CPUs each arithmetic operation on a denormal float takes a microcode assist. The softmax of
    YOLO12's attention underflows into denormals, and ultralytics' yolo12n spent most of its CPU time in those
    assists on a 2-core Xeon: 599 ms at 1 thread with denormals, 100 ms flushed (benchmarks/README.md). AMD CPUs
    show no such cost; the patched model does not hit it either. Flushing changes results only where a value
    falls below 1.2e-38 (it becomes 0).

    torch.set_flush_denormal(on) sets the calling thread's mode only: the intra-op threads keep the mode they were
    created with (a 2-thread "flushed" model ran as slowly as an unflushed one). This sets each of them, through
    the compiled extension; without it, it falls back to torch.set_flush_denormal (calling thread only) and warns.
    Threads that torch's pool creates later inherit the calling thread's mode."""
    from . import _backends

    mod = _backends.extension()
    if mod is not None and hasattr(mod, "set_flush_denormal_all_threads"):
        n = mod.set_flush_denormal_all_threads(bool(on))
        return 0 if n is None else int(n)
    warnings.warn("yolov12_fast.utils.flush_denormals: the compiled extension is not available "
                  f"({_backends._extension()[1] or 'stale build'}); only the calling thread is set "
                  "(torch.set_flush_denormal)", RuntimeWarning, stacklevel=2)
    return int(torch.set_flush_denormal(bool(on)))
