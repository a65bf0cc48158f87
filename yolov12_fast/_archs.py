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
