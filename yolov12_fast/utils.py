"""Helpers shared by the demo, the verify tool, the benchmarks and the tests: offline ultralytics settings, the
bundled images, and BatchNorm calibration of randomly initialised models (REFERENCE.md: without it, activations
at the attention layers are ~1e-6 and any kernel, even a wrong one, "matches" the reference)."""

from __future__ import annotations

import os
import shutil
import tempfile

import torch
import torch.nn as nn


def ultralytics_offline() -> None:
    """Run ultralytics without network: no downloads, no auto-install, a private config dir holding a font
    (training and plotting would otherwise try to download Arial.ttf). Only sets what the user has not set."""
    cfg = os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolov12_fast_ultra_"))
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
