"""Fast drop-in modules for YOLOv12's attention blocks (ultralytics/v1.0 and turbo layouts).

`AAttn`, `ABlock` and `A2C2f` take the constructor arguments of the ultralytics modules (plus keyword-only
`variant="ultralytics"|"turbo"`, `backend="auto"` and, for ABlock / A2C2f, `recompute="auto"|"mlp"|"block"|"none"`)
and have the same attributes and state_dict keys. Building one needs ultralytics (their Conv children are
ultralytics' Conv); importing this package does not.
To speed up an existing model, use `yolov12_fast.patch(model)` instead.
"""

from .modules import RECOMPUTE, VARIANTS, A2C2f, AAttn, ABlock, FastModule

__all__ = ["AAttn", "ABlock", "A2C2f", "FastModule", "VARIANTS", "RECOMPUTE"]
