"""Suite `ceilings`: this device's matmul peak and copy bandwidth, measured in the run (the roofline's two axes).

- GPU: an 8192^3 bf16 matmul (2 * 8192^3 FLOPs) and a 1 GiB device-to-device copy (bytes = 2 x 1 GiB: read and
  write), timed with do_bench. Both ceilings are read from their timings' 20th percentile (a ceiling is the most
  the device does; the cases report medians). The fp16 attention kernels run on the same tensor cores as the bf16 matmul.
- CPU: a 2048^3 fp32 matmul and a 256 MiB copy, at each pinned thread count.
- GPU only, a third axis: the exp2 rate (fp32 `tl.math.exp2`, the special-function unit the attention softmax
  runs on), from a Triton kernel that keeps 4 independent chains of exp2 per thread in registers (`_exp2_kernel`;
  its SASS is checked for MUFU.EX2 by tests/test_triton_aot.py). Attention rows get `pct_exp_floor` = (exp2 calls
  the task needs / this rate) / measured time. At head_dim 32 a score costs 4 * 32 = 128 tensor-core FLOPs and one
  exp2, so where the exp2 rate is below matmul peak / 128 (H100: about 4e12/s against 990e12 / 128 = 7.7e12/s, by
  the data sheet) the softmax, not the matmuls, is the floor; `benchmarks/README.md` has the prediction.
--quick shrinks both (4096^3 / 256 MiB on GPU, 256^3 / 16 MiB on CPU): figures for a smoke test, not for a table.
"""

from __future__ import annotations

from typing import Optional

import torch

from .harness import Context, Timing, make_row, set_threads, time_cpu_interleaved, time_gpu

SUITE = "ceilings"


EXP2_CHAINS = 4  # independent exp2 chains per element (instruction-level parallelism; the unit stays busy)
EXP2_BLOCK = 1024


def _exp2_kernel():
    """Built on first use: triton is optional for the benchmarks' CPU runs."""
    import triton
    import triton.language as tl

    @triton.jit
    def exp2_rate(x_ptr, out_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs)  # in [-1, 0]: every chain stays in [-1, 0] (exp2(a) - 1 maps [-1, 0] into it)
        a0, a1, a2, a3 = x, x * 0.5, x * 0.25, x * 0.75
        for _ in range(ITERS):
            a0 = tl.math.exp2(a0) - 1.0
            a1 = tl.math.exp2(a1) - 1.0
            a2 = tl.math.exp2(a2) - 1.0
            a3 = tl.math.exp2(a3) - 1.0
        tl.store(out_ptr + offs, (a0 + a1) + (a2 + a3))

    return exp2_rate


def exp2_rate(x: torch.Tensor, out: torch.Tensor, iters: int) -> float:
    """Run the exp2 kernel over x (numel a multiple of EXP2_BLOCK); returns the number of exp2 it computes."""
    if x.numel() % EXP2_BLOCK or out.shape != x.shape:
        raise ValueError(f"exp2_rate needs numel a multiple of {EXP2_BLOCK} and out shaped like x")
    # FMA contraction on, as the attention kernels pin it (kernels/area_attention.py, COMPILE_OPTIONS)
    _exp2_kernel()[(x.numel() // EXP2_BLOCK,)](x, out, ITERS=iters, BLOCK=EXP2_BLOCK, num_warps=4,
                                               enable_fp_fusion=True)
    return float(EXP2_CHAINS * iters * x.numel())


def _exp2_ceiling(ctx: Context) -> tuple[Optional[float], Optional[Timing], float, str]:
    """(exp2 per second, timing, exp2 count, what was run), or Nones where triton cannot run here."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return None, None, 0.0, "triton not installed"
    numel, iters = (2**20, 64) if ctx.quick else (2**22, 256)
    x = -torch.rand(numel, device=ctx.device, dtype=torch.float32)
    out = torch.empty_like(x)
    count = exp2_rate(x, out, iters)
    t = time_gpu(lambda: exp2_rate(x, out, iters))
    return count / (t.p20_ms * 1e-3), t, count, f"{numel} x {EXP2_CHAINS} x {iters} fp32 exp2"


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
    # A ceiling is the most this device does, so it is read from the fast end of its timings (20th percentile), not
    # the median the cases report: on a noisy shared CPU the median matmul ran below what some GEMM-bound cases then
    # achieved (cv2 rows at 104-108% of a median-based roof). On a GPU the two differ by a percent or so.
    ceil = {"matmul_tflops": flops / (t_mm.p20_ms * 1e-3) / 1e12, "copy_gbps": moved / (t_cp.p20_ms * 1e-3) / 1e9,
            "matmul": f"{n}^3 {str(dtype).replace('torch.', '')}", "copy": f"{copy_bytes / 2**20:.0f} MiB",
            "threads": torch.get_num_threads() if dev.type == "cpu" else None}
    ceil["_rows"] = (n, dtype, flops, t_mm, moved, t_cp)
    if dev.type == "cuda":
        rate, t_exp, count, what = _exp2_ceiling(ctx)
        ceil.update(exp2_gps=None if rate is None else rate / 1e9, exp2=what)
        ceil["_exp2_row"] = (t_exp, count)
    return ceil, t_mm, t_cp


def measure(ctx: Context) -> dict:
    """Ceilings at the current settings (Context.ceilings caches them per run and thread count)."""
    ceil, _, _ = _measure(ctx)
    return ceil


def _rows(ctx: Context, ceil: dict) -> list:
    n, dtype, flops, t_mm, moved, t_cp = ceil["_rows"]
    rows = []
    if "_exp2_row" in ceil:
        t_exp, count = ceil["_exp2_row"]
        if t_exp is None:
            rows.append(make_row(ctx, SUITE, "exp2", {}, "triton", status="skipped", reason=ceil["exp2"]))
        else:
            rows.append(make_row(ctx, SUITE, f"exp2 {ceil['exp2']}", {"exp2": count}, "triton", timing=t_exp,
                                 dtype=torch.float32, exp2_gps=ceil["exp2_gps"]))
    return rows + [
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
