"""TORCH_CUDA_ARCH_LIST <-> one shell-safe identifier: setup.py passes the arch list a build compiles for to the
compiler as a -D macro (ninja runs commands through a shell, where ';' and '+' would not survive), csrc/ops.cpp
exposes it as yolov12_fast._C.CUDA_ARCHS, and `info` / the tests decode it. Pure Python: setup.py loads this file
by path, without importing the package."""

from __future__ import annotations

import re


def encode(arch_list: str) -> str:
    """"7.5;8.0+PTX;9.0a" (or space-separated) -> "A7d5_8d0PTX_9d0a"."""
    archs = [a for a in arch_list.replace(" ", ";").split(";") if a]
    return "A" + "_".join(re.sub(r"[^0-9A-Za-z]", "", a.replace(".", "d").replace("+PTX", "PTX")) for a in archs)


def decode(token: str) -> str | None:
    """"A7d5_8d0PTX_9d0a" -> "7.5;8.0+PTX;9.0a"; None for anything else."""
    if not token or not token.startswith("A"):
        return None
    archs = [re.sub(r"^(\d+)d(\d+)", r"\1.\2", a).replace("PTX", "+PTX") for a in token[1:].split("_") if a]
    return ";".join(archs) or None


# Why a build has no CUDA code, the same way: setup.py decides (cuda_plan), passes the reason as one identifier
# (-D YOLOV12_FAST_NO_CUDA_WHY=...), csrc/ops.cpp exposes it as yolov12_fast._C.NO_CUDA_WHY, and `info` / the
# backend checks say it in words (no_cuda_reason).

def _v(version: str) -> str:
    return version.replace(".", "d")


def cuda_plan(torch_cuda: str | None, cuda_home: str | None, nvcc_release: str | None, opt_out: bool,
              require: bool, torch_hip: str | None = None) -> tuple[bool, str | None]:
    """(build the CUDA kernels?, why not as a token) for torch's CUDA version (None: a CPU build of torch), the CUDA
    toolkit found (CUDA_HOME, None: none) and its nvcc's release ("13.0"), YOLOV12_FAST_NO_CUDA and
    YOLOV12_FAST_REQUIRE_CUDA. torch refuses to build against a toolkit of another major version than its own; rather
    than failing the whole install, the build then leaves the CUDA kernels out (the GPU runs the Triton ones) and
    records why, unless YOLOV12_FAST_REQUIRE_CUDA=1 asks for the CUDA kernels or nothing (SystemExit with the fix)."""
    if torch_cuda is None:
        why = "rocm" if torch_hip else "cputorch"
    elif opt_out:
        why = "optout"
    elif cuda_home is None or not nvcc_release:
        why = f"nokit_T{_v(torch_cuda)}"
    elif nvcc_release.split(".")[0] != torch_cuda.split(".")[0]:
        why = f"mismatch_K{_v(nvcc_release)}_T{_v(torch_cuda)}"
    else:
        return True, None
    if require and why not in ("optout",):
        raise SystemExit(f"yolov12_fast: YOLOV12_FAST_REQUIRE_CUDA=1 but the CUDA kernels cannot be built: "
                         f"{no_cuda_reason(why, cuda_home)}")
    return False, why


def no_cuda_reason(token: str | None, cuda_home: str | None = None) -> str:
    """The words for a cuda_plan token (what was found, and what to do for the CUDA C++ kernels)."""
    token = token or ""
    tail = ("then reinstall yolov12_fast (`pip install --no-build-isolation`, with `-e .` in a clone); meanwhile GPUs run "
            "the Triton kernels")
    m = re.fullmatch(r"mismatch_K(\d+)d(\d+)_T(\d+)d(\d+)", token)
    if m:
        kit, tc = f"{m[1]}.{m[2]}", f"{m[3]}.{m[4]}"
        where = f" at {cuda_home}" if cuda_home else ""
        return (f"the CUDA toolkit{where} is {kit} but torch was built with CUDA {tc}, and torch builds extensions "
                f"only with a toolkit of its own major version: install a CUDA {m[3]}.x toolkit (or torch built for "
                f"CUDA {m[1]}) and point CUDA_HOME at it, {tail}")
    m = re.fullmatch(r"nokit_T(\d+)d(\d+)", token)
    if m:
        return (f"torch has CUDA {m[1]}.{m[2]} but no CUDA toolkit (nvcc) was found at build time: install a CUDA "
                f"{m[1]}.x toolkit and set CUDA_HOME, {tail}")
    if token == "cputorch":
        return ("torch is a CPU build (torch.version.cuda is None), which runs no GPU: for GPUs install a CUDA build "
                "of torch, then reinstall yolov12_fast (`pip install --no-build-isolation`, with `-e .` in a clone)")
    if token == "rocm":
        return ("torch is a ROCm build: the CUDA C++ kernels are for NVIDIA GPUs (the C++ CPU kernels are built; this "
                "project does not test AMD GPUs)")
    if token == "optout":
        return "built with YOLOV12_FAST_NO_CUDA=1 (C++ CPU kernels only)"
    return "no CUDA toolkit or a CPU build of torch at build time"  # builds from before the reason was recorded
