"""yolov12_fast: fused area-attention and R-ELAN kernels and drop-in modules that make YOLOv12 fast.

`import yolov12_fast` never needs a GPU, Triton or the compiled extension: kernels load on first use, and
`yolov12-fast info` (or `yolov12_fast.info()`) says which backends can run here and why not.
"""

from . import ops  # noqa: F401  (registers torch.ops.yolov12_fast.*)
from . import reference  # noqa: F401
from ._backends import can_use_cpp, can_use_cuda_ext, can_use_flash_attn, can_use_triton
from .functional import area_attention, area_attention_add_, conv1x1_silu_residual, mlp_residual, pe_add
from . import nn  # noqa: F401  (fast AAttn / ABlock / A2C2f; ultralytics is imported only to build them)
from .patch import clear_caches, is_patched, patch, patched, unpatch, unpatched
from .graphs import CUDAGraphed, cuda_graphs

__version__ = "0.1.0"

__all__ = ["area_attention", "area_attention_add_", "pe_add", "mlp_residual", "conv1x1_silu_residual", "reference", "ops", "can_use_triton", "can_use_cpp", "can_use_cuda_ext",
           "can_use_flash_attn", "__version__"]
__all__ += ["nn", "patch", "unpatch", "patched", "unpatched", "is_patched", "clear_caches", "YOLO", "info",
            "cuda_graphs", "CUDAGraphed"]


def info(as_text: bool = False):
    """What can run here (the text of `yolov12-fast info`): versions, devices, and per backend whether it is usable
    and why not. Printed (returns None, so a REPL shows it once); as_text=True returns the text instead."""
    from .cli import info_lines

    text = "\n".join(info_lines())
    if as_text:
        return text
    print(text)
    return None


def __getattr__(name):
    # yolov12_fast.YOLO subclasses ultralytics.YOLO: import ultralytics only when it is asked for.
    if name == "YOLO":
        from .model import YOLO

        return YOLO
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
