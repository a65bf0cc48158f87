"""Ahead-of-time compilation of the Triton kernels for real GPU archs, on a machine without a GPU.

For every kernel variant the ops can launch (`aot_variants` of each module in kernels/) and each arch, compile with
`triton.compile` (PTX -> cubin through the ptxas bundled with triton), then read registers, stack/local bytes
(spills) and static shared memory with cuobjdump, dynamic shared memory from the compile metadata, and look
for tensor-core instructions in the SASS (HMMA on sm_75/sm_80, HGMMA (wgmma) or HMMA on sm_90).

Run in its own process (`python -m yolov12_fast._aot --json`): compiling for a target needs TRITON_INTERPRET
unset, which an interpreter test session cannot do in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor

ARCHS = (75, 80, 90)
SMEM_LIMIT = {75: 64 * 1024, 80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


def _bin(tool: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", tool)


def _resource_usage(cubin_path: str) -> dict:
    out = subprocess.run([_bin("cuobjdump"), "--dump-resource-usage", cubin_path], capture_output=True, text=True,
                         check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not m:
        raise RuntimeError(f"cuobjdump gave no resource usage for {cubin_path}:\n{out}")
    reg, stack, shared, local = map(int, m.groups())
    return {"regs": reg, "stack": stack, "static_smem": shared, "local": local}


def _sass_counts(cubin_path: str) -> dict:
    sass = subprocess.run([_bin("cuobjdump"), "-sass", cubin_path], capture_output=True, text=True, check=True).stdout
    ops = re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)", sass)
    count = lambda *names: sum(1 for o in ops if o in names)
    return {"mma": count("HMMA", "HGMMA", "IMMA"), "wgmma": count("HGMMA"), "spill_instr": count("STL", "LDL"),
            "loop_spill_instr": loop_spills(sass), "loop": hot_loop(sass)}


def loop_spills(sass: str) -> int:
    """Spill instructions (LDL / STL: local memory) inside any loop of the SASS (between a backward branch and its
    target): those cost every iteration; a spill outside every loop costs once per program."""
    ins = [(int(a, 16), op, args) for a, op, args in re.findall(
        r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(?:\.[A-Za-z0-9_]+)*\s*([^;]*);", sass)]
    loops = []
    for addr, op, args in ins:
        target = re.search(r"0x([0-9a-f]+)", args) if op == "BRA" else None
        if target is not None and int(target.group(1), 16) < addr:
            loops.append((int(target.group(1), 16), addr))
    return sum(1 for addr, op, _ in ins if op in ("LDL", "STL") and any(lo <= addr <= hi for lo, hi in loops))


# --------------------------------------------------------------------------------------------------------------
# A static model of the hot loop (GPU-free prediction, checked against the measured % roofline on a GPU)
#
# The hot loop is the loop of the SASS with the most tensor-core instructions (a backward branch to an earlier
# address delimits it). Each instruction class goes to its pipe; per SM and clock a pipe takes `rate` warp
# instructions (data-sheet figures: 4 schedulers issue 1 instruction each; FP32 FMA lanes 64 per SM on sm_75/sm_80
# and 128 on sm_90; the ALU pipe (compares, selects, min/max, integer logic) 64 lanes; 16 special-function lanes
# (MUFU: exp2, rcp) everywhere; dense fp16/bf16 tensor-core FLOPs per SM and clock: 1024 T4, 2048 A100, 4096 H100
# (wgmma; mma.sync on sm_90 taken at 2/3 of that, as published microbenchmarks find; TF32 at half rate).
# Assuming enough warps to hide latency, the loop's time is set by its busiest pipe; `tensor_pct` = tensor-core
# time / that time is an upper bound on the fraction of the tensor-core peak the loop can reach.

PIPE_RATES = {  # warp instructions per SM per clock; tensor: FLOPs per SM per clock
    75: {"issue": 4, "fma": 2, "alu": 2, "mufu": 0.5, "tensor": 1024, "tensor_sync": 1024},
    80: {"issue": 4, "fma": 2, "alu": 2, "mufu": 0.5, "tensor": 2048, "tensor_sync": 2048},
    90: {"issue": 4, "fma": 4, "alu": 2, "mufu": 0.5, "tensor": 4096, "tensor_sync": 4096 * 2 / 3},
}
_FMA_OPS = ("FADD", "FMUL", "FFMA", "HADD2", "HMUL2", "HFMA2", "IMAD", "FMUL2", "FADD2", "FFMA2")
_ALU_OPS = ("FMNMX", "FSEL", "FSETP", "FSET", "ISETP", "LOP3", "SEL", "IADD3", "SHF", "PRMT", "LEA", "VIADD", "IMNMX",
            "PLOP3", "F2FP", "IABS", "LOP")


def _sass_instructions(sass: str) -> list:
    return [(int(a, 16), op, mods, args) for a, op, mods, args in re.findall(
        r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Za-z0-9_]+)*)\s*([^;]*);", sass)]


def _mma_loops(ins: list) -> list:
    """(start, end, tensor-core instruction count) of every loop (a backward branch and its target) with any."""
    loops = []
    for addr, op, _, args in ins:
        target = re.search(r"0x([0-9a-f]+)", args) if op == "BRA" else None
        if target is None or int(target.group(1), 16) >= addr:
            continue
        lo = int(target.group(1), 16)
        mma = sum(1 for i in ins if lo <= i[0] <= addr and i[1] in ("HMMA", "HGMMA"))
        if mma:
            loops.append((lo, addr, mma))
    return loops


def hot_loop(sass: str) -> dict | None:
    """Instruction mix of the hot loop (see above): counts per pipe, tensor-core FLOPs per warp per iteration, and
    the loop's scalar (2-byte) global loads and shared stores, which a vectorised tile load does not have."""
    ins = _sass_instructions(sass)
    loops = _mma_loops(ins)
    if not loops:
        return None
    lo, hi, _ = max(loops, key=lambda t: t[2])  # the first of the most tensor-core instructions
    return _loop_mix([i for i in ins if lo <= i[0] <= hi])


def inner_mma_loop(sass: str) -> dict | None:
    """hot_loop's mix for the innermost loop with the most tensor-core instructions (one holding no other such
    loop): for code that unrolls several loop bodies inside an outer loop (the CUDA attention kernels' 64-key,
    16-key and masked key blocks, per scale sign), the key-block loop itself rather than the whole sweep."""
    ins = _sass_instructions(sass)
    loops = _mma_loops(ins)
    inner = [(lo, hi, m) for lo, hi, m in loops
             if not any((lo2, hi2) != (lo, hi) and lo <= lo2 and hi2 <= hi for lo2, hi2, _ in loops)]
    if not inner:
        return None
    lo, hi, _ = max(inner, key=lambda t: (t[2], -(t[1] - t[0])))
    return _loop_mix([i for i in ins if lo <= i[0] <= hi])


def _loop_mix(body: list) -> dict:
    mix = {"instr": len(body), "fma": 0, "alu": 0, "mufu": 0, "mma": 0, "tensor_flops": 0.0, "tensor_sync_flops": 0.0,
           "fsel": 0, "scalar_ldg": 0, "scalar_sts": 0}
    for _, op, mods, _ in body:
        mix["fsel"] += op == "FSEL"  # masks applied per score
        if op in _FMA_OPS:
            mix["fma"] += 1
        elif op in _ALU_OPS:
            mix["alu"] += 1
        elif op == "MUFU":
            mix["mufu"] += 1
        elif op in ("HMMA", "HGMMA"):
            mix["mma"] += 1
            tf32 = ".TF32" in mods
            if op == "HGMMA":  # HGMMA.64xNxK: one warpgroup (4 warps) computes 64 x N x K
                m = re.match(r"\.64x(\d+)x(\d+)", mods)
                flops = 2 * 64 * int(m.group(1)) * int(m.group(2)) / 4 if m else 0
                mix["tensor_flops"] += flops * (2 if tf32 else 1)
            else:  # HMMA.16816 / HMMA.1688: m16 n8 k16 / k8 per warp
                m = re.match(r"\.(16)(8)(16|8)", mods)
                flops = 2 * 16 * 8 * int(m.group(3)) if m else 0
                mix["tensor_sync_flops"] += flops * (2 if tf32 else 1)
        elif op in ("LDG", "STS") and (".U16" in mods or ".16" in mods):
            mix["scalar_ldg" if op == "LDG" else "scalar_sts"] += 1
    return mix


def loop_model(arch: int, mix: dict | None) -> dict | None:
    """Per-pipe cycles of one hot-loop iteration per warp (any common factor cancels), the bounding pipe and the
    tensor-core share of the loop's time (see PIPE_RATES)."""
    if not mix or arch not in PIPE_RATES:
        return None
    r = PIPE_RATES[arch]
    t = {"issue": mix["instr"] / r["issue"], "fma": mix["fma"] / r["fma"], "alu": mix["alu"] / r["alu"],
         "mufu": mix["mufu"] / r["mufu"],
         "tensor": mix["tensor_flops"] / r["tensor"] + mix["tensor_sync_flops"] / r["tensor_sync"]}
    bound = max(t, key=t.get)
    return {"cycles": t, "bound": bound, "tensor_pct": 100.0 * t["tensor"] / t[bound]}


KERNEL_MODULES = ("yolov12_fast.kernels.area_attention", "yolov12_fast.kernels.pe", "yolov12_fast.kernels.mlp",
                  "yolov12_fast.kernels.conv")


def _variants(module: str, arch: int, head_dims):
    import importlib

    return list(importlib.import_module(module).aot_variants(arch, head_dims=head_dims))


def _ast_source(ASTSource, v: dict):
    """The compiler's source object for variant `v` (written in triton >= 3.3's terms: constexprs by name in the
    signature, divisibility attributes per parameter path). Triton 3.2, torch 2.6's, takes the constexprs as
    `constants`, only the other parameters in the signature and the attributes as an AttrsDescriptor."""
    import inspect

    if "constexprs" in inspect.signature(ASTSource.__init__).parameters:
        return ASTSource(fn=v["fn"], signature=v["signature"], constexprs=v["constexprs"], attrs=v["attrs"])
    from triton.backends.compiler import AttrsDescriptor

    hints = {path[0]: 16 for path, attrs in v["attrs"].items() if ["tt.divisibility", 16] in attrs}
    return ASTSource(fn=v["fn"], signature={k: t for k, t in v["signature"].items() if t != "constexpr"},
                     constants=dict(v["constexprs"]), attrs=AttrsDescriptor.from_hints(hints))


def compile_variant(args) -> dict:
    module, index, arch, head_dims = args
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    v = _variants(module, arch, head_dims)[index]
    from yolov12_fast.kernels.area_attention import COMPILE_OPTIONS  # as every launch passes them
    row = {"kernel": v["name"], "arch": f"sm_{arch}", "dtype": v["dtype"]}
    t0 = time.perf_counter()
    try:
        k = triton.compile(_ast_source(ASTSource, v), target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": v["num_warps"], "num_stages": v["num_stages"],
                                    **COMPILE_OPTIONS})
    except Exception as e:  # a variant that does not compile is a finding, reported in the table
        row.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
        return row
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        row.update(_resource_usage(f.name))
        row.update(_sass_counts(f.name))
    row["smem"] = int(k.metadata.shared) + row["static_smem"]
    row["smem_limit"] = SMEM_LIMIT[arch]
    row["spills"] = row["stack"] + row["local"]
    model = loop_model(arch, row.get("loop"))
    if model:
        row["loop_bound"], row["loop_tensor_pct"] = model["bound"], round(model["tensor_pct"], 1)
    row["tensor_cores_expected"] = bool(v["tensor_cores_expected"])
    if "must_not_spill" in v:  # kernels without a head_dim say themselves whether spills are acceptable
        row["must_not_spill"] = bool(v["must_not_spill"])
    row["ok"] = True
    row["compile_s"] = round(time.perf_counter() - t0, 2)
    return row


def compile_all(archs=ARCHS, head_dims=None, jobs: int | None = None) -> list[dict]:
    """Compile every variant for every arch in a pool of worker processes; returns one row per (variant, arch).
    head_dims: restrict to these head dims (default: all the op supports)."""
    os.environ.pop("TRITON_INTERPRET", None)
    from yolov12_fast.kernels.area_attention import HEAD_DIMS

    head_dims = tuple(head_dims or HEAD_DIMS)
    work = [(m, i, a, head_dims) for a in archs for m in KERNEL_MODULES for i in range(len(_variants(m, a, head_dims)))]
    jobs = jobs or max(1, min(len(work), os.cpu_count() or 1))
    with ProcessPoolExecutor(jobs) as ex:
        return list(ex.map(compile_variant, work, chunksize=4))


def format_table(rows: list[dict]) -> str:
    lines = [f"{'kernel':<88} {'arch':<6} {'regs':>4} {'spill B':>7} {'smem KB':>7} {'mma':>5} {'loop':>5} "
             f"{'bound (tensor %)':>16}"]
    for r in rows:
        if not r.get("ok"):
            lines.append(f"{r['kernel']:<88} {r['arch']:<6} FAILED: {r.get('error')}")
            continue
        loop = (r.get("loop") or {}).get("instr", "")
        bound = f"{r['loop_bound']} ({r['loop_tensor_pct']:.0f}%)" if r.get("loop_bound") else ""
        lines.append(f"{r['kernel']:<88} {r['arch']:<6} {r['regs']:>4} {r['spills']:>7} {r['smem'] / 1024:>7.1f} "
                     f"{r['mma']:>5} {loop:>5} {bound:>16}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, action="append", help="compute capability x10 (default: 75, 80, 90)")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    p.add_argument("--head-dim", type=int, action="append", help="restrict to these head dims (default: all)")
    p.add_argument("--jobs", type=int, default=None)
    a = p.parse_args(argv)
    rows = compile_all(tuple(a.arch or ARCHS), a.head_dim, a.jobs)
    print(json.dumps(rows) if a.json else format_table(rows))
    return 0 if all(r.get("ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
