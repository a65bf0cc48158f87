"""Building ultralytics detection models for the block and model suites and the proxies.

Models are built from their configs (no pretrained weights offline) with random weights; for timing that is what
matters, but BatchNorm is still calibrated (yolov12_fast.utils.calibrate_bn) so activations have unit scale and
the numbers a block produces are those of a real model (REFERENCE.md). Builds are cached per process.
"""

from __future__ import annotations

import copy
import functools

import torch

# the A2C2f layers that hold attention (backbone P4 and P5), REFERENCE.md
ATTENTION_LAYERS = {"P4": 6, "P5": 8}
YOLO12 = ("yolo12n", "yolo12s", "yolo12m", "yolo12l", "yolo12x")
YOLO11 = ("yolo11n", "yolo11s")


def offline() -> None:
    from yolov12_fast.utils import ultralytics_offline

    ultralytics_offline()
    import os

    os.environ.setdefault("YOLO_VERBOSE", "False")


@functools.lru_cache(maxsize=None)
def _built(cfg: str):
    offline()
    from ultralytics.nn.tasks import DetectionModel

    with torch.random.fork_rng(devices=[]):  # same weights every run, global RNG untouched
        torch.manual_seed(0)
        return DetectionModel(f"{cfg}.yaml", verbose=False)


def build(cfg: str, *, calibrate_imgsz: int | None = 640, fuse: bool = True, device="cpu",
          dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A fresh copy of `cfg` (e.g. "yolo12n"), BN-calibrated on the bundled images at calibrate_imgsz (None: skip),
    fused like ultralytics' inference (fuse=True), in eval mode, on device/dtype."""
    model = copy.deepcopy(_built(cfg)).float()
    if calibrate_imgsz:
        from yolov12_fast.utils import calibrate_bn, load_images

        model = model.to(device)
        calibrate_bn(model, load_images(imgsz=calibrate_imgsz).to(device))
    if fuse:
        with torch.no_grad():  # older ultralytics fuses with autograd on (weights that are no leaves)
            model = model.fuse(verbose=False)
    return model.eval().to(device=device, dtype=dtype)


def training_model(cfg: str, device) -> torch.nn.Module:
    """An unfused fp32 model in train mode with ultralytics' default hyper-parameters (for model.loss)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG

    model = copy.deepcopy(_built(cfg)).float().to(device)
    model.args = get_cfg(DEFAULT_CFG)
    return model.train()


def synthetic_batch(imgs: torch.Tensor, boxes_per_image: int = 8, seed: int = 0) -> dict:
    """An ultralytics training batch with random normalised xywh boxes and classes (fresh random, never empty)."""
    B = imgs.shape[0]
    g = torch.Generator().manual_seed(seed)
    n = B * boxes_per_image
    xy = 0.2 + 0.6 * torch.rand(n, 2, generator=g)
    wh = 0.05 + 0.3 * torch.rand(n, 2, generator=g)
    dev = imgs.device
    return {"img": imgs, "batch_idx": torch.arange(B).repeat_interleave(boxes_per_image).float().to(dev),
            "cls": torch.randint(0, 80, (n, 1), generator=g).float().to(dev),
            "bboxes": torch.cat([xy, wh], 1).to(dev)}


def block_inputs(model: torch.nn.Module, imgsz: int, device) -> dict:
    """{(level, kind): (module, input shape without batch)} for kind in A2C2f / ABlock / AAttn at both attention
    layers, shapes found with forward pre-hooks during one batch-1 forward at imgsz."""
    found, hooks = {}, []
    for level, idx in ATTENTION_LAYERS.items():
        layer = model.model[idx]
        blk = layer.m[0][0]
        for kind, mod in (("A2C2f", layer), ("ABlock", blk), ("AAttn", blk.attn)):
            def pre(m, args, key=(level, kind)):
                found[key] = (m, tuple(args[0].shape[1:]))
            hooks.append(mod.register_forward_pre_hook(pre))
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.rand(1, 3, imgsz, imgsz, device=device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
    return found
