"""Suite `ceilings`: this device's matmul peak and copy bandwidth, measured in the run (the roofline's two axes).

- GPU: an 8192^3 bf16 matmul (2 * 8192^3 FLOPs) and a 1 GiB device-to-device copy (bytes = 2 x 1 GiB: read and
  write), timed with do_bench. The fp16 attention kernels run on the same tensor cores as the bf16 matmul.
- CPU: a 2048^3 fp32 matmul and a 256 MiB copy, at each pinned thread count.
--quick shrinks both (4096^3 / 256 MiB on GPU, 256^3 / 16 MiB on CPU): figures for a smoke test, not for a table.
"""

from __future__ import annotations

import torch

from .harness import Context, Timing, make_row, set_threads, time_cpu_interleaved, time_gpu

SUITE = "ceilings"


def _sizes(ctx: Context) -> tuple[int, int, torch.dtype]:
    if ctx.device.type == "cuda":
        return (4096, 256 * 2**20, torch.bfloat16) if ctx.quick else (8192, 2**30, torch.bfloat16)
    return (256, 16 * 2**20, torch.float32) if ctx.quick else (2048, 256 * 2**20, torch.float32)


def _measure(ctx: Context) -> tuple[dict, Timing, Timing]:
    n, copy_bytes, dtype = _sizes(ctx)
    dev = ctx.device
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    src = torch.randn(copy_bytes // 4, device=dev, dtype=torch.float32)
    dst = torch.empty_like(src)
    mm = lambda: torch.mm(a, b)
    cp = lambda: dst.copy_(src)
    if dev.type == "cuda":
        t_mm, t_cp = time_gpu(mm), time_gpu(cp)
    else:
        t = time_cpu_interleaved({"mm": mm, "copy": cp}, rounds=2 if ctx.quick else 7)
        t_mm, t_cp = t["mm"], t["copy"]
    flops = 2.0 * n ** 3
    moved = 2.0 * src.numel() * src.element_size()
    ceil = {"matmul_tflops": flops / (t_mm.median_ms * 1e-3) / 1e12, "copy_gbps": moved / (t_cp.median_ms * 1e-3) / 1e9,
            "matmul": f"{n}^3 {str(dtype).replace('torch.', '')}", "copy": f"{copy_bytes / 2**20:.0f} MiB",
            "threads": torch.get_num_threads() if dev.type == "cpu" else None}
    ceil["_rows"] = (n, dtype, flops, t_mm, moved, t_cp)
    return ceil, t_mm, t_cp


def measure(ctx: Context) -> dict:
    """Ceilings at the current settings (Context.ceilings caches them per run and thread count)."""
    ceil, _, _ = _measure(ctx)
    return ceil


def _rows(ctx: Context, ceil: dict) -> list:
    n, dtype, flops, t_mm, moved, t_cp = ceil["_rows"]
    return [
        make_row(ctx, SUITE, f"matmul {n}^3", {"n": n}, "torch.mm", timing=t_mm, flops=flops, dtype=dtype,
                 matmul_tflops=ceil["matmul_tflops"]),
        make_row(ctx, SUITE, f"copy {ceil['copy']}", {"bytes": moved / 2}, "copy_", timing=t_cp, nbytes=moved,
                 dtype=torch.float32, copy_gbps=ceil["copy_gbps"]),
    ]


def run(ctx: Context) -> list:
    rows = []
    if ctx.device.type == "cuda":
        rows += _rows(ctx, ctx.ceilings())
    else:
        for th in ctx.threads:
            prev = set_threads(th)
            try:
                rows += _rows(ctx, ctx.ceilings())
            finally:
                set_threads(prev)
    ctx.emit(rows)
    return rows
