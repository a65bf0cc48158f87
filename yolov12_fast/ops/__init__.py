"""The torch custom ops `torch.ops.yolov12_fast.*`: schemas, fake kernels, autograd, backend dispatch.

Importing this package registers every op. Kernels live below (kernels/ for Triton, csrc/ for C++/CUDA) and
are loaded on first use, so registering the ops never needs a GPU, Triton or the compiled extension.
"""

from . import area_attention  # noqa: F401  (registers yolov12_fast::area_attention_fwd / _add_ / _bwd)
from . import pe  # noqa: F401  (registers yolov12_fast::pe_add)
from . import mlp  # noqa: F401  (registers yolov12_fast::mlp_residual / _out)
from . import conv  # noqa: F401  (registers yolov12_fast::conv1x1_silu_residual)

# Ops this package registers, each with sample inputs in tests/op_samples.py (a test fails for an op without).
OPS = ("area_attention_fwd", "area_attention_add_", "area_attention_bwd", "pe_add", "mlp_residual", "mlp_residual_out",
       "conv1x1_silu_residual")


def resolved_backends(backend: str, device, dtype=None, head_dim=None) -> dict:
    """What `backend` resolves to on `device` for each op family: {"attention": .., "pe": .., "mlp": .., "cv2": ..}
    ("unavailable" where it cannot run there). The attention's pick depends on the inputs' dtype and head_dim (on
    CUDA, auto takes the CUDA C++ kernel for float16 / bfloat16 at head_dim 32 / 64): give them for what a call with
    such inputs runs (the PE's for ultralytics' 7x7 kernel); without them, the pick for inputs the CUDA C++
    kernels do not take. The info command and the
    benchmark rows report it."""
    import warnings

    import torch

    device = torch.device(device)
    resolvers = {"attention": lambda b, d: area_attention.resolve_backend(b, d, dtype, head_dim),
                 "pe": lambda b, d: pe.resolve_backend(b, d, dtype, 7), "mlp": mlp.resolve_backend,
                 "cv2": lambda b, d: mlp.resolve_backend(b, d, "conv1x1_silu_residual")}
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, resolve in resolvers.items():
            try:
                out[name] = resolve(backend, device)
            except RuntimeError:
                out[name] = "unavailable"
    return out
