"""Warps per CTA of the CUDA C++ attention forward, and its K / V staging, timed: which suits this GPU.

    python -m benchmarks.fwd_warps [--warps 4,5,8,...] [--cases REGEX]

The forward kernel (csrc/cuda/area_attention_fwd.cu) gives each warp 16 query rows at a time; its warps per CTA are a
launch parameter ($YOLOV12_FAST_CUDA_FWD_WARPS, read at each call; default 8 for head_dim 32). The count decides two
things the kernel's speed hangs on:
- rounds: an area of n = 400 tokens has 25 query tiles; 8 warps take 4 rounds with one warp busy in the last (25 of
  32 warp-rounds do work), 5 warps 5 full rounds, 13 warps 2 rounds (25 of 26);
- CTAs per SM: by shared memory (an area's K and V, 51 KB at n = 400, plus 1.5 KB per warp) and registers (<= 128
  per thread): 2 CTAs of 8 warps per SM on an H100, 3 of 5 warps; 1 CTA on a T4 (64 KB), whatever the count.
The H100 of 2026-11-27b ran the default kernel at 153 us at P4 h8 batch 32 (Triton's forward kernel: 122 us).
Prediction, if the kernel is latency-bound (16 warps per SM at the default, 3x its issue bound): more warps in flight
and no idle last round help; 5 or 6 warps on the H100 about 1.2x faster at batch 32. (A T4 would gain most, 2 rounds
instead of 4 at 13 warps with one CTA per SM either way, but Turing code keeps its 8 warps: a runtime count spilled
there within the 128 registers that give its streamed plan 2 CTAs per SM.)

Staging: on sm_80+ the kernels copy K and V into shared memory with cp.async, every copy of a thread in flight at
once ($YOLOV12_FAST_CUDA_STAGING unset or "async"); "registers" keeps the older path, 4 loads per thread in flight
and then stored (4 dependent memory round trips per CTA for an n = 400 area at 256 threads, where cp.async takes one).
The `registers` column times that path at the default warps. Prediction (3fcda2a): cp.async about 1-2 us faster at
batch 1 (11.1 us on the H100 of 2026-11-27b), where every CTA stages once and then computes one tile per warp; a few
per cent at batch 32, where a second CTA per SM computes while one stages.

Key blocks: the head_dim-32 kernel steps through the keys 64 at a time (127 registers: 16 warps per SM on an H100);
$YOLOV12_FAST_CUDA_FWD_KEYS=32 runs its 32-key variant (80 registers: 3 CTAs of 8 warps, 24 warps per SM on sm_90;
19 % more instructions per key: 154 per 32-key step against 259 per 64 in the sm_90a SASS). The `k32/W` columns
time it at W warps per CTA. Prediction (6b948e2+; H100 -27c: the default 140-146 us at P4 h8 b32, about 3x its
issue bound; Triton's 66-90 register kernel 124 us): 1.5x the warps in flight outweigh the extra instructions while
the kernel stays latency-bound: 0.85-1.0x the default's time at batch 32 with 8 warps; at batch 1 (one wave or
less, latency of one CTA's sweep) within 10 % of the default.
Its output matches the default's up to rounding (checked: within 2 ulps of the largest output).

Each count's output (and the register staging's) is checked bit for bit against the default's (a tile's arithmetic does not depend on which warp
runs it). Prints a table of microseconds per count and case (CUDA events, triton.testing.do_bench), the best count per
case, and the speed-up over the default. CUDA only; Turing code takes only the default count.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

ENV = "YOLOV12_FAST_CUDA_FWD_WARPS"
STAGING_ENV = "YOLOV12_FAST_CUDA_STAGING"
KEYS_ENV = "YOLOV12_FAST_CUDA_FWD_KEYS"
KEYS32_WARPS = (4, 6, 8)
DEFAULT_CASES = r"^fwd P[45] 640x640 h[48] b(1|32) "


def _timer(dev: torch.device):
    """Milliseconds per call: CUDA events (triton.testing.do_bench) on a GPU; on the CPU (where the count has no
    effect: the C++ CPU kernel runs; tests/test_benchmarks.py checks the plumbing there) a median of a few calls."""
    if dev.type == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100)
    import statistics
    import time

    def cpu(fn):
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)

    return cpu


def sweep(warps=(4, 5, 6, 7, 8, 10, 12, 13, 16), pattern: str = DEFAULT_CASES, dtype=torch.float16,
          device: str = "cuda", keys32_warps=KEYS32_WARPS) -> list:
    """[{case, warps: {count: ms or why refused}, default_ms, registers_ms, keys32: {count: ms or why refused}}] for
    the ops suite's forward cases matching `pattern` (registers_ms: the default count with register staging;
    keys32: the 32-key variant at each count)."""
    import yolov12_fast  # noqa: F401 - registers torch.ops.yolov12_fast

    from . import ops

    dev = torch.device(device)
    bench = _timer(dev)
    rows = []
    prev = {e: os.environ.get(e) for e in (ENV, STAGING_ENV, KEYS_ENV)}
    try:
        for case in ops.matching(ops.attention_cases(dev, quick=False), pattern):
            qkv, _, _ = ops._inputs(case, dev, dtype, False)
            N = case.H * case.W
            q, k, v = qkv.view(case.batch, case.heads, 3 * case.head_dim, N).split(case.head_dim, dim=2)

            def run():
                return torch.ops.yolov12_fast.area_attention_fwd_cxx(q, k, v, case.area, case.head_dim ** -0.5, None)

            for e in prev:
                os.environ.pop(e, None)
            ref = run()[0]
            times = {}
            for w in warps:
                os.environ[ENV] = str(w)
                try:
                    out = run()[0]
                except RuntimeError as e:  # a count this GPU's code does not take (Turing: only the default)
                    times[w] = f"refused: {str(e).splitlines()[0][:80]}"
                    continue
                if not torch.equal(out, ref):
                    raise AssertionError(f"{case.name}: {w} warps per CTA changed the output (max |diff| "
                                         f"{(out.float() - ref.float()).abs().max().item():.3g})")
                times[w] = bench(run)
            os.environ.pop(ENV, None)
            default_ms = bench(run)
            os.environ[STAGING_ENV] = "registers"
            out = run()[0]
            if not torch.equal(out, ref):
                raise AssertionError(f"{case.name}: register staging changed the output (max |diff| "
                                     f"{(out.float() - ref.float()).abs().max().item():.3g})")
            registers_ms = bench(run)
            os.environ.pop(STAGING_ENV, None)
            keys32 = {}
            os.environ[KEYS_ENV] = "32"
            for w in keys32_warps:
                os.environ[ENV] = str(w)
                try:
                    out = run()[0]
                except RuntimeError as e:
                    keys32[w] = f"refused: {str(e).splitlines()[0][:80]}"
                    continue
                diff = (out.float() - ref.float()).abs().max().item()
                ulps2 = 2 * torch.finfo(out.dtype).eps * max(1.0, ref.float().abs().max().item())
                if not diff <= ulps2:  # rounding only: a couple of ulps of the largest output
                    raise AssertionError(f"{case.name}: 32-key steps at {w} warps differ from the default by {diff:.3g}")
                keys32[w] = bench(run)
            os.environ.pop(KEYS_ENV, None)
            os.environ.pop(ENV, None)
            rows.append({"case": case.name, "warps": times, "default_ms": default_ms, "registers_ms": registers_ms,
                         "keys32": keys32})
    finally:
        for e, val in prev.items():
            if val is None:
                os.environ.pop(e, None)
            else:
                os.environ[e] = val
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fwd_warps", description=__doc__.split("\n\n")[0])
    p.add_argument("--warps", default="4,5,6,7,8,10,12,13,16", help="counts to time (comma-separated)")
    p.add_argument("--cases", default=DEFAULT_CASES, help="regex over the ops suite's forward case names")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("fwd_warps: needs a CUDA GPU (it times the CUDA C++ kernel); none is visible")
        return 2
    try:
        import yolov12_fast._C  # noqa: F401
    except ImportError as e:
        print(f"fwd_warps: the compiled extension is missing ({e}); build it (pip install -e .)")
        return 2
    warps = tuple(int(w) for w in a.warps.split(","))
    rows = sweep(warps, a.cases)
    print(f"CUDA attention forward, us per call by warps per CTA ({torch.cuda.get_device_name()}; default 8, "
          f"cp.async staging; `registers`: the default count with register staging; `k32/W`: 32-key steps at W warps)")
    print(f"{'case':<32}" + "".join(f"{w:>8}" for w in warps) + f"{'default':>9}{'registers':>10}"
          + "".join(f"{'k32/' + str(w):>8}" for w in KEYS32_WARPS) + "    best")
    cell = lambda t: f"{t * 1e3:8.1f}" if isinstance(t, float) else f"{'-':>8}"
    for r in rows:
        timed = {w: t for w, t in r["warps"].items() if isinstance(t, float)}
        timed.update({f"k32/{w}": t for w, t in r["keys32"].items() if isinstance(t, float)})
        best = min(timed, key=timed.get) if timed else None
        cells = "".join(cell(t) for t in r["warps"].values())
        gain = f"{best} ({r['default_ms'] / timed[best]:.2f}x the default)" if best else "-"
        staging = f"{r['default_ms'] * 1e3:9.1f}{r['registers_ms'] * 1e3:10.1f}"
        k32 = "".join(cell(r["keys32"].get(w)) for w in KEYS32_WARPS)
        print(f"{r['case']:<32}{cells}{staging}{k32}    {gain}; cp.async {r['registers_ms'] / r['default_ms']:.2f}x "
              "registers")
    refused = {t for r in rows for d in (r["warps"], r["keys32"]) for t in d.values() if isinstance(t, str)}
    for why in sorted(refused):
        print(f"  -: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
