"""Suite `blocks`: AAttn, ABlock and A2C2f of every YOLO12 scale, ultralytics modules vs patched.

Each block is taken from a BN-calibrated, fused model (as ultralytics runs inference) at both attention layers
(P4: layer 6, area 4; P5: layer 8, area 1) with its real input shape at 640x640; inputs are fresh unit-scale random
tensors of that shape. Providers: `ultralytics` (a copy of the module as is), `patched` (yolov12_fast.patch on a copy,
backend auto), and on GPU `patched-cuda` (backend "cuda", the CUDA C++ forward) and `patched-triton` (backend
"triton": Triton attention and PE, and ABlock's MLP as the fused mlp_residual kernel). fp16 on GPU (batch 1, 8, 32,
do_bench: eager modules as users run them, launch overhead included), fp32 on CPU (batch 1, interleaved rounds, at
each pinned thread count). `rel_err` = max |patched - ultralytics| / max |ultralytics| in the same dtype.
"""

from __future__ import annotations

import copy

import torch

from . import yolo
from .baselines import resolved_backends
from .harness import Budget, Context, add_speedups, gpu_peak_memory, is_oom, make_row, set_threads, time_cpu_interleaved, time_gpu

SUITE = "blocks"
KINDS = ("AAttn", "ABlock", "A2C2f")
REL_TOL = {torch.float16: 5e-2, torch.float32: 1e-3}


def _providers(ctx: Context) -> dict:
    """{name: backend or None (ultralytics)}, with a skip reason for the ones that cannot run here."""
    from yolov12_fast import _backends

    prov = {"ultralytics": (None, ""), "patched": ("auto", "")}
    if ctx.device.type == "cuda":
        ok, why = _backends.can_use_cuda_ext(ctx.device)
        prov["patched-cuda"] = ("cuda", "" if ok else why)
        ok, why = _backends.can_use_triton(ctx.device)
        prov["patched-triton"] = ("triton", "" if ok else why)
    return prov


def run(ctx: Context) -> list:
    budget = Budget(ctx.budget_s)
    gpu = ctx.device.type == "cuda"
    dtype = torch.float16 if gpu else torch.float32
    scales = ("yolo12n",) if ctx.quick else yolo.YOLO12
    imgsz = 128 if ctx.quick else 640
    batches = (1,) if ctx.quick or not gpu else (1, 8, 32)
    out = []
    for scale in ctx.tqdm(scales, desc="blocks"):
        if not any(ctx.wants(_case(scale, lv, k, b, imgsz, None)[0]) for lv in yolo.ATTENTION_LAYERS
                   for k in KINDS for b in batches):
            continue
        if budget.over():
            skipped = [make_row(ctx, SUITE, *_case(scale, level, kind, b, imgsz, None), "ultralytics",
                                status="skipped", reason=budget.reason(), dtype=dtype)
                       for level in yolo.ATTENTION_LAYERS for kind in KINDS for b in batches]
            ctx.emit(skipped)
            out += skipped
            continue
        model = yolo.build(scale, calibrate_imgsz=imgsz, device=ctx.device, dtype=dtype)
        blocks = yolo.block_inputs(model, imgsz, ctx.device)
        for (level, kind), (module, shape) in blocks.items():
            mods = _variants(ctx, module)
            for b in batches:
                if not ctx.wants(_case(scale, level, kind, b, imgsz, None)[0]):
                    continue
                if budget.over():
                    row = make_row(ctx, SUITE, *_case(scale, level, kind, b, imgsz, shape), "ultralytics",
                                   status="skipped", reason=budget.reason(), dtype=dtype)
                    ctx.emit(row)
                    out.append(row)
                    continue
                out += _measure(ctx, scale, level, kind, b, imgsz, shape, mods, dtype)
        del model, blocks
        if gpu:
            torch.cuda.empty_cache()
    return out


def _case(scale, level, kind, batch, imgsz, shape):
    case = f"{scale} {level} {kind} b{batch}"
    params = {"model": scale, "level": level, "block": kind, "batch": batch, "imgsz": imgsz,
              "input_shape": list(shape) if shape else None}
    return case, params


def _variants(ctx: Context, module) -> dict:
    import yolov12_fast

    mods = {}
    for name, (backend, why) in _providers(ctx).items():
        if why:
            mods[name] = why
            continue
        m = copy.deepcopy(module)
        mods[name] = (m if backend is None else yolov12_fast.patch(m, backend=backend), backend)
    return mods


def _measure(ctx: Context, scale, level, kind, batch, imgsz, shape, mods, dtype) -> list:
    case, params = _case(scale, level, kind, batch, imgsz, shape)
    gpu = ctx.device.type == "cuda"
    x = torch.randn(batch, *shape, device=ctx.device, dtype=dtype)
    rows, ref = [], None
    thread_list = (None,) if gpu else ctx.threads
    for th in thread_list:
        prev = set_threads(th) if th is not None else None
        try:
            rows_t, fns, meta = [], {}, {}
            for name, entry in mods.items():
                if isinstance(entry, str):
                    rows_t.append(make_row(ctx, SUITE, case, params, name, status="skipped", reason=entry, dtype=dtype))
                    continue
                m, backend = entry
                call = (lambda mm: lambda: mm(x))(m)
                try:
                    with torch.inference_mode():
                        y = call()
                        if ref is None and name == "ultralytics":
                            ref = y.float()
                    extra = {"backend_ran": "ultralytics modules" if backend is None else resolved_backends(backend, ctx.device)}
                    if ref is not None and name != "ultralytics":
                        rel = ((y.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
                        extra.update(rel_err=rel, check="pass" if rel <= REL_TOL[dtype] else f"FAIL (rel err {rel:.3g})")
                    if gpu:
                        def timed(f=call):
                            with torch.inference_mode():
                                return f()
                        peak = gpu_peak_memory(timed)
                        rows_t.append(make_row(ctx, SUITE, case, params, name, timing=time_gpu(timed), dtype=dtype,
                                               peak=peak, **extra))
                    else:
                        fns[name] = (lambda f: lambda: _no_grad(f))(call)
                        meta[name] = extra
                except Exception as e:
                    if gpu:
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
                    rows_t.append(make_row(ctx, SUITE, case, params, name, status="error",
                                           reason=("out of memory: " if gpu and is_oom(e) else "") + f"{type(e).__name__}: {e}"[:400],
                                           dtype=dtype))
            if fns:
                timings = time_cpu_interleaved(fns, rounds=2 if ctx.quick else 11, min_round_s=0.0 if ctx.quick else 0.05)
                for name, t in timings.items():
                    rows_t.append(make_row(ctx, SUITE, case, params, name, timing=t, dtype=dtype, **meta[name]))
            add_speedups(rows_t, ("ultralytics",))
            ctx.emit(rows_t)
            rows += rows_t
        finally:
            if prev is not None:
                set_threads(prev)
    return rows


def _no_grad(f):
    with torch.inference_mode():
        return f()
