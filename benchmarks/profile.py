"""Where the GPU time of an ops case goes: each provider's kernels under torch.profiler, per call.

    python -m benchmarks.profile [--cases REGEX] [--providers a,b] [--iters N] [--json FILE]
    python -m benchmarks.profile --model [CFGS]   (whole-model forwards: kernels per forward by family)

The ops suite times whole calls; this names the kernels inside them (device time per call, launches per call), so a
ratio in a results file can be explained: how much of the attention op is the PE conv, the layout copies, the
attention kernel itself. The first H100 run (benchmarks/results/nvidia-h100-80gb-hbm3-2026-11-26) left one such
question: pe-cuda alone took 0.50 ms at P4 h8 b32, yet the whole cuda forward (PE + attention) took 0.53 ms.
Inputs are the ops suite's (ops._inputs, same seeds); fp16 on CUDA. CPU runs list the CPU ops instead (a smoke
test; the GPU is what it is for).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict

import torch

# fwd P5 h4 b32: the Triton rows there took 2-3x the wall time their kernels should (H100 -27c); which kernels run?
DEFAULT_CASES = r"^((fwd|pe) P4 640x640 h8 b(1|32)|(fwd|fwdbwd) P5 640x640 h4 b32) "


def _providers(pass_: str) -> dict:
    from . import baselines as bl

    if pass_ == "pe":
        return {f"pe-{k}": p for k, p in bl.PE_PROVIDERS.items()}
    return {k: p for k, p in bl.ATTENTION_PROVIDERS.items() if k != "compile"}


def _call(case, provider, device, dtype):
    """A no-argument callable running `provider` on the case's inputs (None when it cannot run here: the reason)."""
    from . import ops

    ok, why = provider.available(device, dtype, case.pass_ == "fwdbwd", False)
    if not ok:
        return None, why
    qkv, w, b = ops._inputs(case, device, dtype, case.pass_ == "fwdbwd")
    if case.pass_ == "pe":
        N = case.H * case.W
        v = qkv.view(case.batch, case.heads, 3 * case.head_dim, N)[:, :, 2 * case.head_dim:]
        x = torch.randn(case.batch, case.heads, case.head_dim, N, device=device, dtype=dtype)
        return (lambda: provider.fn(v, x, w, b, case.H, case.W)), ""
    dout = torch.randn(case.batch, case.C, case.H, case.W, device=device, dtype=dtype) if case.pass_ == "fwdbwd" else None
    return ops._callable(provider.fn, case, (qkv, w, b), dout), ""


def profile_call(fn, device: torch.device, iters: int) -> list:
    """[(kernel name, device us per call, launches per call)], longest first, over `iters` calls after 3 warm-ups."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    acts = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=acts) as prof:
        for _ in range(iters):
            fn()
        sync()
    per = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        on_device = getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
        if device.type == "cuda" and not on_device:
            continue
        t = e.device_time if on_device else e.cpu_time
        per[e.name][0] += t / iters
        per[e.name][1] += 1
    return sorted(((name, us, n / iters) for name, (us, n) in per.items()), key=lambda r: -r[1])


# Kernel families of a whole-model profile (first match wins), so yolo12n and yolo11n compare at a glance.
FAMILIES = [("attention", r"area_attention|flash|fmha|sdpa|softmax"), ("pe", r"pe_add|depthwise"),
            ("mlp/cv2 (ours)", r"mlp_residual|conv1x1_silu"), ("conv", r"conv|cudnn|implicit|xmma|winograd|fprop"),
            ("gemm", r"gemm|nvjet|cutlass|sm\d+_xmma"), ("copy", r"copy|cat|transpose|permute"),
            ("elementwise", r"elementwise|vectorized|silu|add|mul|sigmoid"), ("reduce/other", r".")]


def family(kernel: str) -> str:
    return next(name for name, rx in FAMILIES if re.search(rx, kernel, re.I))


def model_profile(cfgs=("yolo12n", "yolo11n"), batches=(1, 32), device: str = "cuda", iters: int = 5,
                  imgsz: int = 640) -> list:
    """[{model, batch, total_us, launches, families: {family: us}, kernels: [(name, us, launches)]}] per forward, for
    ultralytics' fused model and (YOLO12) its patched copy, fp16 on CUDA (fp32 CPU ops on the CPU: a smoke test).
    With CUDA graphs a batch-1 forward costs about its kernels' time: this says where yolo12n's goes against
    yolo11n's (H100 2026-11-27b: 1.41 against 1.16 ms replayed). On the CPU the profiler's ops nest (aten::conv2d
    holds aten::convolution ...), so the totals count time more than once there."""
    import copy

    import yolov12_fast

    from . import model as bm
    from . import yolo

    dev = torch.device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    out = []
    for cfg in cfgs:
        eager = yolo.build(cfg, calibrate_imgsz=None, device=dev, dtype=dtype)
        models = {cfg: eager}
        if cfg.startswith("yolo12"):
            models[f"{cfg} patched"] = yolov12_fast.patch(copy.deepcopy(eager))
        for batch in batches:
            x = bm._image(f"profile {cfg} {imgsz} b{batch}", batch, imgsz, dev, dtype)
            for name, m in models.items():
                with torch.inference_mode():
                    rows = profile_call(lambda: m(x), dev, iters)
                fam = defaultdict(float)
                for k, us, _ in rows:
                    fam[family(k)] += us
                out.append({"model": name, "batch": batch, "total_us": sum(us for _, us, _ in rows),
                            "launches": sum(n for *_, n in rows), "families": dict(fam), "kernels": rows})
    return out


def _print_models(rows: list, top: int) -> None:
    for r in rows:
        fams = ", ".join(f"{f} {us:.0f}" for f, us in sorted(r["families"].items(), key=lambda kv: -kv[1]))
        print(f"== {r['model']} batch {r['batch']}: {r['total_us']:.0f} us of kernels, {r['launches']:.0f} launches per "
              f"forward ({fams})")
        for k, us, n in r["kernels"][:top]:
            print(f"    {us:9.1f} us  x{n:<4.0f} {k[:110]}")


def main(argv=None) -> int:
    from . import ops

    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=DEFAULT_CASES, help=f"regex over ops case names (default {DEFAULT_CASES!r})")
    ap.add_argument("--providers", default=None, help="comma-separated provider names (default: all that run here)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--top", type=int, default=8, help="kernels listed per provider")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write every kernel row as JSON")
    ap.add_argument("--model", nargs="?", const="yolo12n,yolo11n", default=None, metavar="CFGS",
                    help="instead: whole-model forwards at 640 (ultralytics fused, and patched for YOLO12), batch 1 "
                         "and 32: kernels per forward and their families")
    args = ap.parse_args(argv)
    if args.model is not None:
        rows = model_profile(tuple(args.model.split(",")), device=args.device, iters=args.iters)
        _print_models(rows, args.top)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "models": rows},
                          f, indent=1)
        return 0
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    want = set(args.providers.split(",")) if args.providers else None
    every = {c.name: c for quick in (False, True) for c in ops.attention_cases(device, quick) + ops.pe_cases(device, quick)}
    cases = ops.matching(list(every.values()), args.cases)
    if not cases:
        print(f"no ops case matches {args.cases!r}", file=sys.stderr)
        return 1
    out = []
    for case in cases:
        print(f"== {case.name}")
        for name, p in _providers(case.pass_).items():
            if want and name not in want:
                continue
            try:
                fn, why = _call(case, p, device, dtype)
                if fn is None:
                    print(f"  {name}: skipped ({why})")
                    continue
                rows = profile_call(fn, device, args.iters)
            except Exception as e:  # one provider failing must not hide the others
                print(f"  {name}: error {type(e).__name__}: {str(e)[:200]}")
                continue
            total = sum(us for _, us, _ in rows) if device.type == "cuda" else None
            head = f"{total:.1f} us of kernels, {sum(n for *_, n in rows):.0f} launches" if total is not None else "CPU ops"
            print(f"  {name}: {head} per call")
            for k, us, n in rows[:args.top]:
                print(f"    {us:9.1f} us  x{n:<4.0f} {k[:110]}")
            out += [{"case": case.name, "provider": name, "kernel": k, "us_per_call": us, "launches_per_call": n}
                    for k, us, n in rows]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "rows": out}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
