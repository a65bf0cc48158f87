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
    return {"mma": count("HMMA", "HGMMA", "IMMA"), "wgmma": count("HGMMA"), "spill_instr": count("STL", "LDL")}


KERNEL_MODULES = ("yolov12_fast.kernels.area_attention", "yolov12_fast.kernels.pe", "yolov12_fast.kernels.mlp",
                  "yolov12_fast.kernels.conv")


def _variants(module: str, arch: int, head_dims):
    import importlib

    return list(importlib.import_module(module).aot_variants(arch, head_dims=head_dims))


def compile_variant(args) -> dict:
    module, index, arch, head_dims = args
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    v = _variants(module, arch, head_dims)[index]
    row = {"kernel": v["name"], "arch": f"sm_{arch}", "dtype": v["dtype"]}
    t0 = time.perf_counter()
    try:
        k = triton.compile(ASTSource(fn=v["fn"], signature=v["signature"], constexprs=v["constexprs"], attrs=v["attrs"]),
                           target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": v["num_warps"], "num_stages": v["num_stages"]})
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
    lines = [f"{'kernel':<88} {'arch':<6} {'regs':>4} {'spill B':>7} {'smem KB':>7} {'mma':>5}"]
    for r in rows:
        if not r.get("ok"):
            lines.append(f"{r['kernel']:<88} {r['arch']:<6} FAILED: {r.get('error')}")
            continue
        lines.append(f"{r['kernel']:<88} {r['arch']:<6} {r['regs']:>4} {r['spills']:>7} {r['smem'] / 1024:>7.1f} "
                     f"{r['mma']:>5}")
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
