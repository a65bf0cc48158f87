"""What can run here, and why not: one `can_use_*` check per backend, each returning (ok, reason).

Nothing in this module imports triton or the compiled extension at import time; every check is cached after
its first call, so the hot path pays a dict lookup.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys

import torch

BACKENDS = ("auto", "triton", "cuda", "cpp", "reference")


_OWN_FILES = (os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(torch.__file__)))


def user_stacklevel() -> int:
    """The warnings.warn stacklevel of the first caller outside yolov12_fast and torch (a warning raised inside an op
    or a module's forward then points at the user's line, not at torch's custom-op or nn.Module machinery)."""
    f, level = sys._getframe(1), 1
    while f is not None and f.f_code.co_filename.startswith(_OWN_FILES):
        f, level = f.f_back, level + 1
    return level


def eager_direct(*tensors) -> bool:
    """Whether an op call may skip the custom-op layer and run its body (for inference) or a plain autograd.Function
    over its bodies (for training): eager mode, nothing that traces or watches the ops (torch.compile, jit tracing /
    scripting, ONNX export, a TorchDispatchMode such as fake tensors or export's functionalization, functorch
    transforms) and plain tensors (no subclasses)."""
    return (not torch.compiler.is_compiling() and not torch.jit.is_tracing()
            and not torch.jit.is_scripting() and not torch.onnx.is_in_onnx_export()
            and torch._C._len_torch_dispatch_stack() == 0 and not torch._C._are_functorch_transforms_active()
            and all(t is None or type(t) is torch.Tensor or type(t) is torch.nn.Parameter for t in tensors))


def eager_autograd(*tensors) -> bool:
    """Whether an op call may run as a plain torch.autograd.Function over the op bodies instead of the custom op:
    eager autograd (grad mode on), nothing that traces or watches the ops (torch.compile, jit tracing / scripting,
    ONNX export, a TorchDispatchMode such as fake tensors or export's functionalization, functorch transforms) and
    plain tensors (no subclasses). The custom-op layer (schema binding, its autograd wrapper, redispatch) costs
    about as much host time as the kernels' own launch path: 124 against 62 us per attention forward + backward on
    the CPU here, and a small training step on a GPU is host-bound."""
    return torch.is_grad_enabled() and eager_direct(*tensors)


def check(cond, message) -> None:
    """torch._check(cond, message) for the ops' input checks, with a fast path: a plain Python True (every check on
    real tensors) returns at once; a SymBool (fake tensors under torch.compile / export) or False goes to
    torch._check. torch._check costs about 3 us a call on these CPUs, and an op runs about ten checks per call."""
    if cond is not True:
        torch._check(cond, message)


def triton_interpret() -> bool:
    """True when Triton kernels run in the interpreter (TRITON_INTERPRET=1, set before triton is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@functools.lru_cache(maxsize=None)
def _triton_import() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install triton; it ships with CUDA builds of torch on Linux)"
    try:
        importlib.import_module("yolov12_fast.kernels.area_attention")
    except Exception as e:  # a broken triton install must not break the package
        return False, f"the Triton kernels failed to import: {type(e).__name__}: {e}"
    return True, ""


def can_use_triton(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Triton runs on CUDA tensors, or on CPU tensors under the interpreter (TRITON_INTERPRET=1)."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        if triton_interpret():
            return False, "TRITON_INTERPRET=1 is set: the interpreter runs CPU tensors only; unset it for CUDA"
        if not torch.cuda.is_available():
            return False, "no CUDA device is visible"
        if torch.cuda.get_device_capability(device) < (7, 5):
            return False, "Triton kernels need compute capability 7.5 (Turing) or newer"
    elif device.type == "cpu":
        if not triton_interpret():
            return False, ("Triton kernels need CUDA tensors; on CPU use backend='cpp' (the C++ kernels) or "
                           "set TRITON_INTERPRET=1 before importing triton to debug in the interpreter")
    else:
        return False, f"no Triton kernels for device type {device.type!r}"
    return _triton_import()


# Triton releases whose compiler fails on some of our kernels for Turing (sm_75) in some dtypes, found by compiling
# every kernel variant ahead of time with each release (`python -m yolov12_fast._aot` with that triton installed):
# 3.2 (torch 2.6) fails the float32 and bfloat16 attention, MLP and cv2 kernels ("IndexError: map::at", a PTX codegen
# error), 3.3 (torch 2.7) the float16 and bfloat16 ones (ConvertTritonGPUToLLVM); 3.4 and 3.8 compile all, and every
# release compiles all of them for sm_80 and sm_90.
TRITON_TURING_GAPS = {(3, 2): (torch.float32, torch.bfloat16), (3, 3): (torch.float16, torch.bfloat16)}


@functools.lru_cache(maxsize=None)
def triton_version() -> tuple[int, int] | None:
    try:
        from importlib.metadata import version

        major, minor = version("triton").split(".")[:2]
        return int(major), int(minor)
    except Exception:  # not installed, or a version string we cannot read
        return None


def triton_gap(device: torch.device, dtype: torch.dtype | None) -> str:
    """Why the installed Triton cannot compile our kernels for this GPU in this dtype ("" when it can)."""
    if device.type != "cuda" or dtype is None or not torch.cuda.is_available():
        return ""
    cc = torch.cuda.get_device_capability(device)
    ver = triton_version()
    if cc >= (8, 0) or dtype not in TRITON_TURING_GAPS.get(ver, ()):
        return ""
    return (f"triton {ver[0]}.{ver[1]} cannot compile these kernels in {str(dtype).replace('torch.', '')} for "
            f"sm_{cc[0]}{cc[1]} (a compiler bug of that release); install triton >= 3.4 (it comes with torch >= 2.8), "
            "or use backend='cuda' (float16 / bfloat16 attention and PE) or 'reference'")


@functools.lru_cache(maxsize=None)
def _extension() -> tuple[object | None, str]:
    try:
        mod = importlib.import_module("yolov12_fast._C")
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name == "yolov12_fast._C":
            return None, (f"the compiled extension yolov12_fast._C is not available ({e}); reinstall with "
                          "`pip install --no-build-isolation .` in an environment that has torch and a C++ compiler")
        return None, (f"the compiled extension yolov12_fast._C is built but does not load ({e}): it was probably "
                      f"built against another torch than this {torch.__version__}; rebuild it with "
                      "`pip install --no-build-isolation .` in this environment")
    importlib.import_module("yolov12_fast.ops.cxx").register_fakes()  # fake kernels of the *_cxx ops
    return mod, ""


def source_tree_problem() -> str | None:
    """Why this yolov12_fast is not a usable install, or None: imported from a bare source tree (a clone's root
    first on sys.path, while nothing or a non-editable copy is installed), the Triton kernels (kernels/, installed
    as yolov12_fast.kernels) and the compiled extension are missing there, so tests and benchmarks would silently
    exercise the reference math instead."""
    if importlib.util.find_spec("yolov12_fast.kernels") is not None:
        return None
    where = os.path.dirname(os.path.abspath(__file__))
    return (f"yolov12_fast is imported from the source tree {where} without its install: yolov12_fast.kernels (the "
            "Triton kernels, kernels/ in the clone) and the compiled extension are missing there. Install the clone "
            "editable, `pip install --no-build-isolation -e .`, then run again")


def extension():
    """The loaded yolov12_fast._C module (its ops are then registered), or None."""
    return _extension()[0]


def can_use_cpp() -> tuple[bool, str]:
    """The C++ CPU kernels (csrc/cpu)."""
    mod, why = _extension()
    if mod is None:
        return False, why
    if not hasattr(torch.ops.yolov12_fast, "area_attention_fwd_cxx"):
        return False, "yolov12_fast._C loaded but registered no area-attention kernels (stale build?)"
    return True, ""


def can_use_cuda_ext(device: torch.device | str | None = None) -> tuple[bool, str]:
    """The CUDA C++ kernels (csrc/cuda)."""
    mod, why = _extension()
    if mod is None:
        return False, why
    if not getattr(mod, "WITH_CUDA", False):
        from ._archs import no_cuda_reason

        return False, f"yolov12_fast._C was built without CUDA: {no_cuda_reason(getattr(mod, 'NO_CUDA_WHY', None))}"
    if not torch.cuda.is_available():
        return False, "no CUDA device is visible"
    if device is not None and torch.device(device).type == "cuda":
        if torch.cuda.get_device_capability(device) < (7, 5):
            return False, "the CUDA C++ kernels need compute capability 7.5 (Turing) or newer"
    return True, ""


def _cuobjdump() -> str | None:
    """cuobjdump from the CUDA toolkit (CUDA_HOME, PATH) or the copy bundled with triton; None if none is found."""
    import shutil

    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.isfile(os.path.join(home, "bin", "cuobjdump")):
            return os.path.join(home, "bin", "cuobjdump")
    if shutil.which("cuobjdump"):
        return shutil.which("cuobjdump")
    spec = importlib.util.find_spec("triton")
    if spec and spec.origin:
        bundled = os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", "cuobjdump")
        if os.path.isfile(bundled):
            return bundled
    return None


@functools.lru_cache(maxsize=None)
def cuda_code() -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The CUDA code in yolov12_fast._C: (machine-code archs, PTX archs), e.g. (("sm_75", "sm_80", "sm_90a"),
    ("sm_80",)) for the default TORCH_CUDA_ARCH_LIST "7.5;8.0+PTX;9.0a"; None where the extension has no CUDA or
    no cuobjdump can read it. For `info` (diagnostics only: the dispatcher never runs a subprocess)."""
    import re
    import subprocess

    mod, _ = _extension()
    tool = _cuobjdump()
    if mod is None or not getattr(mod, "WITH_CUDA", 0) or tool is None:
        return None
    try:
        out = subprocess.run([tool, "--list-elf", "--list-ptx", mod.__file__], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    archs = lambda kind: tuple(sorted(set(re.findall(rf"^{kind} file\s+\d+: \S+?\.(sm_\d+[af]?)\.", out, re.M)),
                                     key=lambda a: (int(re.sub(r"\D", "", a)), a)))
    sass, ptx = archs("ELF"), archs("PTX")
    return (sass, ptx) if sass or ptx else None


def built_cuda_arch_list() -> str | None:
    """The TORCH_CUDA_ARCH_LIST yolov12_fast._C was compiled with (e.g. "7.5;8.0+PTX;9.0a"), decoded from the
    identifier setup.py passes to the compiler ("A7d5_8d0PTX_9d0a"); None without a CUDA build (or one built before
    the extension recorded it)."""
    from ._archs import decode

    mod, _ = _extension()
    return decode(getattr(mod, "CUDA_ARCHS", "")) if mod is not None else None


def code_for_gpu(cc: tuple[int, int], sass, ptx) -> tuple[str, int] | None:
    """What a GPU of compute capability `cc` runs from the code of `cuda_code()`: ("sm", arch) for machine code
    (a cubin of the same major version and a minor <= cc's; an arch-specific sm_XYa / sm_XYf only on XY itself),
    else ("ptx", arch) JIT-compiled from the newest PTX <= cc, as the CUDA runtime chooses; None: no code runs."""
    import re

    major, minor = cc
    num = lambda a: int(re.sub(r"\D", "", a))
    fits = [num(a) for a in sass
            if num(a) // 10 == major and (num(a) == 10 * major + minor if a[-1] in "af" else num(a) % 10 <= minor)]
    if fits:
        return "sm", max(fits)
    jit = [num(a) for a in ptx if num(a) <= 10 * major + minor]
    return ("ptx", max(jit)) if jit else None


def can_use_flash_attn() -> tuple[bool, str]:
    """flash-attn, only ever an optional benchmark baseline."""
    if importlib.util.find_spec("flash_attn") is None:
        return False, "flash-attn is not installed (optional baseline only)"
    if not torch.cuda.is_available():
        return False, "no CUDA device is visible"
    if torch.cuda.get_device_capability() < (8, 0):
        return False, "FlashAttention-2 needs compute capability 8.0 or newer"
    return True, ""


def check_image_extent(op: str, tensors, hint: str) -> None:
    """The Triton kernels index inside one image (and head) with 32-bit offsets (image and head bases are 64-bit):
    refuse, with a clear error, any tensor whose last two dims span 2**31 elements or more, instead of letting
    the offsets wrap (a silent out-of-bounds read)."""
    import torch

    for t in tensors:
        if t is None:
            continue
        a, b = t.shape[-2], t.shape[-1]
        extent = max((a - 1) * abs(t.stride(-2)) + (b - 1) * abs(t.stride(-1)), a * b)
        check(extent < 2**31, lambda: f"{op}: one image's feature map spans more than 2**31 elements; {hint}")


@functools.lru_cache(maxsize=None)
def cpu_vendor() -> str:
    """'intel', 'amd' or 'other': the CPU's vendor (/proc/cpuinfo's vendor_id on Linux, else platform.processor()),
    for the CPU paths whose fastest library differs by vendor (nn.modules._gemm_conv: MKL's sgemm or oneDNN's
    convolution)."""
    text = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    text = line
                    break
    except OSError:
        pass
    if not text:
        import platform

        text = platform.processor()
    return "intel" if "GenuineIntel" in text else "amd" if ("AuthenticAMD" in text or "HygonGenuine" in text) else "other"
