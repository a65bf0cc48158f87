"""Ultralytics YOLO12 models for tests: built from the configs, BatchNorm calibrated on real images, cached.

A YOLO12 built from its YAML has random conv weights and BatchNorm running stats of 0/1, so activations shrink
about fourfold per layer and are ~1e-6 at the attention layers: there any kernel, even a wrong one, "matches".
`build_model` therefore gives every BatchNorm a random affine and calibrates its running statistics on the two
bundled images (../shared/docs/REFERENCE.md, "Comparing against the reference without pretrained weights"), so
every layer's activations have unit scale. It also gives the A2C2f `gamma` (0.01 at init) a random value around
1, so that the attention branch is not scaled down 100x in the layer output of the l/x models.

variant="turbo" swaps each ultralytics AAttn for `TurboAAttn` (the authors' turbo layout: qk, v, pe 5x5) and
uses the turbo MLP ratio (1.5 instead of 1.2 on l/x), before calibration. The building (TurboAAttn, to_turbo,
calibrated_model) lives in yolov12_fast.utils, shared with `yolov12-fast verify`.

Importing this module sets nothing; tests/conftest.py already configures ultralytics for offline use.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn as nn

from yolov12_fast.utils import TurboAAttn, calibrated_model  # noqa: F401  (TurboAAttn: the tests use U.TurboAAttn)

SCALES = ("n", "s", "m", "l", "x")
ATTENTION_LAYERS = (6, 8)  # the A2C2f layers with a2=True (P4 area 4, P5 area 1)
CALIB_SEED = 1234


def is_aattn(m: nn.Module) -> bool:
    return type(m).__name__ in ("AAttn", "TurboAAttn") and (hasattr(m, "qkv") or hasattr(m, "qk"))


def is_ablock(m: nn.Module) -> bool:
    return type(m).__name__ == "ABlock"


def is_attention_a2c2f(m: nn.Module) -> bool:
    return (type(m).__name__ == "A2C2f" and len(m.m) > 0 and isinstance(m.m[0], nn.Sequential)
            and all(is_ablock(b) for b in m.m[0]))


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) for every AAttn/TurboAAttn, ABlock and attention A2C2f (a2=True), model order."""
    return [(n, m) for n, m in model.named_modules() if is_aattn(m) or is_ablock(m) or is_attention_a2c2f(m)]


# --------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------

def _shape(imgsz) -> tuple[int, int]:
    return (int(imgsz), int(imgsz)) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))


@functools.lru_cache(maxsize=None)
def _images(hw: tuple[int, int]) -> torch.Tensor:
    from yolov12_fast.utils import asset_paths, load_images

    return load_images(asset_paths(), hw)


def images(imgsz=640) -> torch.Tensor:
    """bus.jpg and zidane.jpg letterboxed to imgsz (int: square, or (h, w)): float32 (2, 3, h, w) in [0, 1], RGB."""
    return _images(_shape(imgsz)).clone()


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _built(scale: str, variant: str, hw: tuple[int, int], fused: bool) -> nn.Module:
    if fused:
        model = copy.deepcopy(_built(scale, variant, hw, False))
        model.fuse(verbose=False)
        return model.eval()
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    model = calibrated_model(f"yolo12{scale}.yaml", variant, _images(hw), init_seed=CALIB_SEED + SCALES.index(scale),
                             calib_seed=CALIB_SEED + 7 * SCALES.index(scale) + (variant == "turbo"))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_model(scale: str, variant: str = "ultralytics", imgsz=640, fused: bool = False) -> nn.Module:
    """Ultralytics YOLO12 DetectionModel `yolo12{scale}.yaml` (eval, float32, CPU, requires_grad off), random weights,
    BatchNorm calibrated on `images(imgsz)` (see the module docstring). fused=True: model.fuse() after calibration
    (Conv2d with bias, no BN). Built once per (scale, variant, imgsz, fused) per session; each call returns a deep
    copy, free to modify."""
    return copy.deepcopy(_built(scale, variant, _shape(imgsz), bool(fused)))


# --------------------------------------------------------------------------------------------------------------
# Capturing layer inputs
# --------------------------------------------------------------------------------------------------------------

def predictor_module(predictor) -> nn.Module:
    """The nn.Module an ultralytics predictor calls (predictor.model.backend.model from 8.4, predictor.model.model
    before), found the way yolov12_fast.YOLO finds it."""
    from yolov12_fast.model import _predictor_module_slot

    holder, attr = _predictor_module_slot(predictor)
    assert holder is not None, f"no PyTorch module in predictor.model ({type(predictor.model).__name__})"
    return getattr(holder, attr)


def _first_tensor(x):
    return x[0] if isinstance(x, (tuple, list)) else x


class _Captured(Exception):
    """Raised by the last hook: the rest of the network (neck, head) is not needed."""


@torch.no_grad()
def module_io(model: nn.Module, imgs: torch.Tensor, names) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (input, output)} of the named submodules (names as in model.named_modules()) for one eval forward,
    which stops as soon as all of them have run (the head is skipped when only backbone layers are asked for)."""
    names = list(dict.fromkeys(names))
    mods = dict(model.named_modules())
    missing = [n for n in names if n not in mods]
    if missing:
        raise KeyError(f"no submodules named {missing}")
    got: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for n in names:
        def hook(mod, inp, out, n=n):
            got[n] = (_first_tensor(inp).detach().clone(), _first_tensor(out).detach().clone())
            if len(got) == len(names):
                raise _Captured
        hooks.append(mods[n].register_forward_hook(hook))
    try:
        model.eval()
        model(imgs)
    except _Captured:
        pass
    finally:
        for h in hooks:
            h.remove()
    return got


def layer_inputs(model: nn.Module, imgs: torch.Tensor, layers=ATTENTION_LAYERS) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{i: (input, output)} of model.model[i] for each i in layers, from one eval forward of imgs."""
    io = module_io(model, imgs, [f"model.{i}" for i in layers])
    return {i: io[f"model.{i}"] for i in layers}


def attention_io(model: nn.Module, imgs: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (input, output)} of every module in attention_modules(model) (A2C2f, ABlock, AAttn)."""
    return module_io(model, imgs, [n for n, _ in attention_modules(model)])
