"""The torch custom ops `torch.ops.yolov12_fast.*`: schemas, fake kernels, autograd, backend dispatch.

Importing this package registers every op. Kernels live below (kernels/ for Triton, csrc/ for C++/CUDA) and
are loaded on first use, so registering the ops never needs a GPU, Triton or the compiled extension.
"""

from . import area_attention  # noqa: F401  (registers yolov12_fast::area_attention_fwd / _bwd)
from . import pe  # noqa: F401  (registers yolov12_fast::pe_add)
from . import mlp  # noqa: F401  (registers yolov12_fast::mlp_residual / _out)

# Ops this package registers, each with sample inputs in tests/op_samples.py (a test fails for an op without).
OPS = ("area_attention_fwd", "area_attention_bwd", "pe_add", "mlp_residual", "mlp_residual_out")
