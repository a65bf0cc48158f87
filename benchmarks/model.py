"""Suite `model`: whole YOLO12 n..x and YOLO11 n/s, inference latency and throughput, and one AMP training step.

Inference (GPU, fp16, BN-calibrated and fused models as ultralytics runs them; the model forward only: no letterbox,
no NMS): batch 1 (latency) and 32 (throughput) at 640, batch 1 and 8 at 1280 (batch 32 at 1280 does not fit the
reference's n x n matrices for the large scales). Variants:
- `eager`: the ultralytics model; `eager+graphs`: the same captured in a torch.cuda.CUDAGraph after warm-up;
- `patched`: yolov12_fast.patch (backend auto); `patched+graphs`: the same through yolov12_fast.cuda_graphs (the
  public wrapper: its per-call staleness probe and output copies are timed, the baseline's bare capture has none);
- `compile`: torch.compile(model) with ultralytics' default mode ("default", what `compile=True` uses), warm: for
  yolo12n and yolo11n only (a minute or more per model and shape; COMPILE_CASES);
- `eager-cl`, `patched-cl`, `patched-cl+graphs`, `patched-cl-gemm`: the same models moved to channels_last
  (`model.to(memory_format=torch.channels_last)`, the input stays NCHW as a predictor feeds it): cuDNN's fp16
  convolutions run NHWC natively there, where an NCHW model pays a layout transpose around most of them (the H100's
  yolo12n profile of 2026-11-27c: 93 transposes per batch-1 forward, 1.14 ms of a 7.8 ms batch-32 forward). A
  user can do this with ultralytics alone, so `eager-cl` is a baseline too. `patched-cl-gemm` runs the patched
  blocks' fused 1x1 convs as cuBLAS GEMMs (yolov12_fast.nn.modules.GEMM_CONV with "cuda", off by default until
  measured: the bias in the GEMM's epilogue instead of cuDNN's conv and a broadcast add). `patched-bias-act`: the
  NCHW patched model with yolov12_fast.nn.modules.BIAS_ACT's "cuda" (off by default until measured): the blocks'
  1x1 convs run without their bias and csrc/cuda/bias_act.cu adds it and applies the SiLU in one pass.
`rel_err` = max |variant - oracle| / max |oracle| on the detection output, the oracle being the same model one
precision up (GPU: float32 with TF32 off; CPU: float64); `check` holds each variant to the tolerance table's
principle against the eager model's own error (`rel_err_naive`), see _model_check.
Speed-ups are against `eager`, `eager+graphs` and `compile` of the same model and shape, and for YOLO12 n/s against
YOLO11 of the same scale (`yolo11n-eager`, `yolo11n-eager+graphs`): is YOLOv12 still slower than YOLO11?

Training (GPU): one step of yolo12n at batch 16, AMP (fp16 autocast + GradScaler), SGD as ultralytics configures it,
ultralytics' detection loss on synthetic boxes: forward + loss + backward + optimizer step, eager vs patched, at 640
and 1280, with peak memory; also both channels_last (`train-eager-cl`, `train-patched-cl`: ultralytics' trainer
moves the model to channels_last on CUDA by default since 8.4, so these are the rows its users run). `train-patched` runs the default recompute ("auto": what yolov12_fast.nn.modules.AUTO_RECOMPUTE
gives CUDA, today "none"); `train-patched-recompute-mlp` / `-block` show the two recomputing modes (the ABlock MLPs, or
the whole ABlocks, run again in backward instead of keeping their activations). Each row's params name the mode it ran
(`recompute`), so the report gives the memory / time trade-off of each (issue #5: >= 1.15x faster, peak <= 0.7x at 1280).

CPU: yolo12n batch 1 at 640, eager vs patched, each also channels_last (`-cl`), and yolo11n eager / eager-cl (the
YOLO11 comparison), fp32, at each pinned thread count (interleaved rounds), as torch runs (denormals kept); full
runs add rows with denormals flushed on every thread (yolov12_fast.utils.flush_denormals), where Intel CPUs' denormal
assists would otherwise dominate the baseline.
"""

from __future__ import annotations

import copy
import time
import zlib

import torch

from . import yolo
from .harness import Budget, Context, compile_budget_s, add_speedups, gpu_peak_memory, is_oom, make_row, set_threads, time_cpu_interleaved, time_gpu

SUITE = "model"
ORDER = ("yolo11n", "yolo12n", "yolo11s", "yolo12s", "yolo12m", "yolo12l", "yolo12x")
SHAPES = ((640, 1), (640, 32), (1280, 1), (1280, 8))
COMPILE_CASES = {("yolo12n", 640, 1), ("yolo11n", 640, 1), ("yolo12n", 640, 32), ("yolo11n", 640, 32)}
COMPILE_BUDGET_S = compile_budget_s(150.0)
TRAIN_SHAPES = ((640, 16), (1280, 16))
BASELINES = ("eager", "eager+graphs", "eager-cl", "compile")
CL = torch.channels_last


def run(ctx: Context) -> list:
    return _run_gpu(ctx) if ctx.device.type == "cuda" else _run_cpu(ctx)


def _case(cfg, imgsz, batch):
    return f"{cfg} {imgsz} b{batch}", {"model": cfg, "imgsz": imgsz, "batch": batch}


# ----------------------------------------------------------------------------------------------------------------
# CPU


def _run_cpu(ctx: Context) -> list:
    import yolov12_fast

    imgsz = 128 if ctx.quick else 640
    if not (ctx.wants(_case("yolo12n", imgsz, 1)[0]) or ctx.wants(_case("yolo11n", imgsz, 1)[0])):
        return []  # --cases names none of the CPU suite's two cases: build nothing
    eager = yolo.build("yolo12n", calibrate_imgsz=imgsz)
    patched = yolov12_fast.patch(copy.deepcopy(eager))
    yolo11 = yolo.build("yolo11n", calibrate_imgsz=imgsz)  # is YOLOv12 still slower than YOLO11 here?
    models = {"eager": eager, "eager-cl": copy.deepcopy(eager).to(memory_format=CL), "patched": patched,
              "patched-cl": copy.deepcopy(patched).to(memory_format=CL), "yolo11n": yolo11,
              "yolo11n-cl": copy.deepcopy(yolo11).to(memory_format=CL)}
    x = _image(_case("yolo12n", imgsz, 1)[0], 1, imgsz, torch.device("cpu"), torch.float32)
    oracle = _oracle(eager, x)
    # Denormal floats: a random-weight YOLO12's attention probabilities underflow into them, and on Intel CPUs each
    # denormal operation takes a microcode assist (measured on a 2-core Xeon, 1 thread: ultralytics yolo12n 599 ms
    # with them, 100 ms flushed; the AMD EPYC runs show no such cost: ultralytics yolo12n ran at 0.68-0.82x yolo11n's
    # speed there, 0.19x on the Xeon). The main rows run as torch and ultralytics do (denormals kept); full runs add
    # rows with them flushed on every thread (yolov12_fast.utils.flush_denormals: torch.set_flush_denormal alone
    # reaches the calling thread only) for every variant and thread count, cases "... denormals flushed".
    rows = _cpu_rows(ctx, models, x, oracle, *_case("yolo12n", imgsz, 1), *_case("yolo11n", imgsz, 1), ctx.threads)
    if not ctx.quick:
        from yolov12_fast.utils import flush_denormals

        (case, params), (case11, params11) = _case("yolo12n", imgsz, 1), _case("yolo11n", imgsz, 1)
        rows += _cpu_rows(ctx, models, x, oracle, case + " denormals flushed",
                          dict(params, flush_denormal=True), case11 + " denormals flushed",
                          dict(params11, flush_denormal=True), ctx.threads, flush=flush_denormals)
    return rows


def _cpu_rows(ctx, models, x, oracle, case, params, case11, params11, threads, flush=None) -> list:
    """Rows of the models (eager, patched, yolo11n, each also channels_last) at each thread count; `flush`
    (flush_denormals) switches denormal flushing on for every thread of each count's pool, and off again
    afterwards."""
    rows = []
    with torch.inference_mode():
        naive_err = _rel(models["eager"](x), oracle)
        rel = {name: _rel(models[name](x), oracle) for name in ("eager-cl", "patched", "patched-cl")}
        for th in threads:
            prev = set_threads(th)
            try:
                if flush is not None:
                    flush(True)
                t = time_cpu_interleaved({name: (lambda m=m: m(x)) for name, m in models.items()},
                                         rounds=2 if ctx.quick else 11, min_round_s=0.0 if ctx.quick else 0.2)
                r = [make_row(ctx, SUITE, case, params, "eager", timing=t["eager"], dtype=torch.float32,
                              images_per_s=1e3 / t["eager"].median_ms)]
                for name in ("eager-cl", "patched", "patched-cl"):
                    extra = {"backend_ran": _backend_ran(ctx)} if name.startswith("patched") else {}
                    r.append(make_row(ctx, SUITE, case, params, name, timing=t[name], dtype=torch.float32,
                                      images_per_s=1e3 / t[name].median_ms, rel_err=rel[name], rel_err_naive=naive_err,
                                      check=_model_check(rel[name], naive_err, torch.float32), **extra))
                add_speedups(r, ("eager", "eager-cl"))
                for row in r:
                    for name11 in ("yolo11n", "yolo11n-cl"):
                        row.setdefault("speedup_vs", {})[name11.replace("n", "n-eager", 1)] = \
                            t[name11].median_ms / row["median_ms"]
                r11 = [make_row(ctx, SUITE, case11, params11, prov, timing=t[name11], dtype=torch.float32,
                                images_per_s=1e3 / t[name11].median_ms)
                       for prov, name11 in (("eager", "yolo11n"), ("eager-cl", "yolo11n-cl"))]
                ctx.emit(r + r11)
                rows += r + r11
            finally:
                if flush is not None:
                    flush(False)  # torch's default
                set_threads(prev)
    return rows


def _rel(out, oracle: torch.Tensor) -> float:
    out = out[0] if isinstance(out, (tuple, list)) else out
    return ((out.double().cpu() - oracle).abs().max() / oracle.abs().max().clamp_min(1e-12)).item()


def _image(case: str, batch: int, imgsz: int, device, dtype) -> torch.Tensor:
    """The case's input: uniform noise from a generator seeded by the case name, the same in every run and process
    (the numerics check of a random-weight model depends on its input: unseeded, the CPU quick case's own fp32 error
    ranged 0.005-0.13 from run to run)."""
    g = torch.Generator().manual_seed(zlib.crc32(case.encode()))
    return torch.rand(batch, 3, imgsz, imgsz, generator=g).to(device=device, dtype=dtype)


def _oracle(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The detection output of `model` one precision up: float32 with TF32 off on a GPU, float64 on CPU."""
    from yolov12_fast.utils import exact_fp32

    hi = torch.float32 if x.device.type == "cuda" else torch.float64
    m = copy.deepcopy(model).to(hi)
    with exact_fp32(), torch.inference_mode():
        out = m(x.to(hi))
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.double().cpu()


def _model_check(err: float, naive_err: float, dtype: torch.dtype) -> str:
    """The tolerance table's principle at the model's output: err <= FACTOR[dtype] x the eager model's own error
    against the same oracle + MODEL_RTOL_FP32. A random-weight YOLO12 amplifies any rounding difference at its
    attention layers (benchmarks/results/logs/nvidia-h100-2026-11-26: ultralytics' own model with TF32 on ends 0.7
    off in float32, the fp16 model about as far), so in fp16 this only catches gross breakage (NaN, a wrong layer);
    the ops and blocks suites and `yolov12-fast verify` (per module, on the inputs ultralytics saw) are precise."""
    from yolov12_fast._tolerances import FACTOR, MODEL_RTOL_FP32

    lim = FACTOR[dtype] * naive_err + MODEL_RTOL_FP32
    return "pass" if err == err and err <= lim else f"FAIL (rel err {err:.3g} > {lim:.3g} = {FACTOR[dtype]:g} x eager's {naive_err:.3g} + {MODEL_RTOL_FP32:g})"


def _backend_ran(ctx: Context) -> str:
    from .baselines import resolved_backends

    return resolved_backends("auto", ctx.device)


# ----------------------------------------------------------------------------------------------------------------
# GPU


def _capture(model, x):
    """A CUDA graph of model(x) (after warm-up on a side stream, as torch's docs prescribe) and its replay."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.inference_mode():
        for _ in range(3):
            model(x)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(g):
        static_out = model(x)

    def replay():
        g.replay()
        return static_out  # the graph's output buffers, rewritten by each replay (checked like eager's output)

    return replay


def _eager_call(model, x):
    def call():
        with torch.inference_mode():
            return model(x)

    return call


def _cuda_in(setting: str, call):
    """`call` with the set yolov12_fast.nn.modules.<setting> holding "cuda" while it runs: GEMM_CONV (the patched
    blocks' fused 1x1 convs of a channels_last model as cuBLAS GEMMs, the bias in the epilogue) or BIAS_ACT (their
    conv's bias and SiLU in one pass after cuDNN's bias-free conv); both off by default until measured."""
    from yolov12_fast.nn import modules as M

    def run():
        s = getattr(M, setting)
        had = "cuda" in s
        s.add("cuda")
        try:
            return call()
        finally:
            if not had:
                s.discard("cuda")

    return run


def _run_gpu(ctx: Context) -> list:
    import yolov12_fast

    budget = Budget(ctx.budget_s)
    dtype = torch.float16
    order = ("yolo11n", "yolo12n") if ctx.quick else ORDER
    shapes = ((128, 1),) if ctx.quick else SHAPES
    compile_spent = 0.0
    out, yolo11_times = [], {}
    for cfg in ctx.tqdm(order, desc="model"):
        if budget.over():
            skipped = [make_row(ctx, SUITE, *_case(cfg, s, b), "eager", status="skipped", reason=budget.reason(),
                                dtype=dtype) for s, b in shapes]
            ctx.emit(skipped)
            out += skipped
            continue
        if not any(ctx.wants(_case(cfg, s, b)[0]) for s, b in shapes):
            continue
        is12 = cfg.startswith("yolo12")
        eager = yolo.build(cfg, calibrate_imgsz=128 if ctx.quick else 640, device=ctx.device, dtype=dtype)
        patched = yolov12_fast.patch(copy.deepcopy(eager)) if is12 else None
        eager_cl = copy.deepcopy(eager).to(memory_format=CL)
        patched_cl = copy.deepcopy(patched).to(memory_format=CL) if is12 else None
        for imgsz, batch in shapes:
            case, params = _case(cfg, imgsz, batch)
            if not ctx.wants(case):
                continue
            x = _image(case, batch, imgsz, ctx.device, dtype)
            variants = {"eager": lambda: _eager_call(eager, x), "eager+graphs": lambda: _capture(eager, x),
                        "eager-cl": lambda: _eager_call(eager_cl, x)}
            if is12:
                variants["patched"] = lambda: _eager_call(patched, x)
                # the public wrapper (its staleness probe and output copies included), against the bare capture
                # of the baseline
                variants["patched+graphs"] = lambda: _eager_call(yolov12_fast.cuda_graphs(patched), x)
                variants["patched-cl"] = lambda: _eager_call(patched_cl, x)
                variants["patched-cl+graphs"] = lambda: _eager_call(yolov12_fast.cuda_graphs(patched_cl), x)
                # the same with GEMM_CONV's "cuda" (off by default): the patched blocks' 1x1 convs as cuBLAS GEMMs
                variants["patched-cl-gemm"] = lambda: _cuda_in("GEMM_CONV", _eager_call(patched_cl, x))
                # BIAS_ACT's "cuda" (off by default): the blocks' conv bias + SiLU in one pass (NCHW model)
                variants["patched-bias-act"] = lambda: _cuda_in("BIAS_ACT", _eager_call(patched, x))
            variants["compile"] = None
            rows, oracle, naive_err = [], _oracle(eager, x), None
            for name, make in variants.items():
                extra = {}
                if name == "compile":
                    if (cfg, imgsz, batch) not in COMPILE_CASES or ctx.quick:
                        rows.append(make_row(ctx, SUITE, case, params, name, status="skipped", dtype=dtype,
                                             reason="torch.compile is measured for yolo12n/yolo11n at 640 only "
                                                    "(model.COMPILE_CASES; --quick skips it): a minute or more each"))
                        continue
                    if compile_spent >= COMPILE_BUDGET_S or (budget.seconds is not None
                                                            and budget.seconds - budget.elapsed() < 120):
                        rows.append(make_row(ctx, SUITE, case, params, name, status="skipped", dtype=dtype,
                                             reason=f"torch.compile budget ({COMPILE_BUDGET_S:.0f} s in all, none "
                                                    "with < 120 s of suite budget left) used up"))
                        continue
                try:
                    if name == "compile":
                        t0 = time.perf_counter()
                        torch._dynamo.reset()
                        cm = torch.compile(eager, mode="default")
                        call = _eager_call(cm, x)
                        call()
                        call()
                        torch.cuda.synchronize()
                        extra["compile_s"] = time.perf_counter() - t0
                        compile_spent += extra["compile_s"]
                    else:
                        call = make()
                    res = call()
                    if name.startswith("patched") and name.endswith("+graphs"):  # cuda_graphs runs a signature's
                        res = call()  # first call eagerly, captures at its second: check (and measure) replays
                    torch.cuda.synchronize()
                    if name.startswith("patched"):
                        extra["backend_ran"] = _backend_ran(ctx)
                    rel = _rel(res, oracle)
                    if name == "eager":
                        naive_err = rel
                        extra.update(rel_err=rel)
                    elif naive_err is not None:
                        extra.update(rel_err=rel, rel_err_naive=naive_err, check=_model_check(rel, naive_err, dtype))
                    peak = gpu_peak_memory(call)
                    timing = time_gpu(call, rep_ms=200)
                    rows.append(make_row(ctx, SUITE, case, params, name, timing=timing, dtype=dtype, peak=peak,
                                         images_per_s=batch * 1e3 / timing.median_ms, **extra))
                except Exception as e:
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    rows.append(make_row(ctx, SUITE, case, params, name, status="error", dtype=dtype,
                                         reason=("out of memory: " if is_oom(e) else "") + f"{type(e).__name__}: {e}"[:400]))
                finally:
                    call = None
            add_speedups(rows, BASELINES)
            _cross_speedups(cfg, imgsz, batch, rows, yolo11_times)
            ctx.emit(rows)
            out += rows
            del x
            torch.cuda.empty_cache()
        del eager, patched, eager_cl, patched_cl
        torch.cuda.empty_cache()
    out += _train(ctx, budget)
    return out


def _cross_speedups(cfg, imgsz, batch, rows, yolo11_times):
    """Record YOLO11 times; give YOLO12 rows of the same scale their speed-up against them."""
    scale = cfg[-1]
    if cfg.startswith("yolo11"):
        for r in rows:
            if r.get("status") == "ok":
                yolo11_times[(scale, imgsz, batch, r["provider"])] = r["median_ms"]
        return
    for r in rows:
        if r.get("status") != "ok":
            continue
        for prov in ("eager", "eager+graphs", "eager-cl", "compile"):
            t11 = yolo11_times.get((scale, imgsz, batch, prov))
            if t11:
                r.setdefault("speedup_vs", {})[f"yolo11{scale}-{prov}"] = t11 / r["median_ms"]


def _train(ctx: Context, budget: Budget) -> list:
    import yolov12_fast

    rows = []
    shapes = ((128, 2),) if ctx.quick else TRAIN_SHAPES
    for imgsz, batch in shapes:
        case = f"train yolo12n {imgsz} b{batch}"
        params = {"model": "yolo12n", "imgsz": imgsz, "batch": batch, "train": True, "amp": "fp16"}
        if not ctx.wants(case):
            continue
        rows_c = []
        # patched: the default recompute ("auto"); the recomputing modes show the memory/time trade-off
        # in priority order (a suite budget running out skips the last): the default against ultralytics in both
        # layouts, then the recomputing modes (measured in -27c; "auto" no longer picks them)
        for name in ("eager", "patched", "eager-cl", "patched-cl", "patched-recompute-mlp", "patched-recompute-block"):
            mode = name.rsplit("-", 1)[1] if "recompute" in name else None
            params_n = params if name.startswith("eager") else {**params, "recompute": _recompute_ran(mode, ctx.device)}
            if budget.over():
                rows_c.append(make_row(ctx, SUITE, case, params_n, f"train-{name}", status="skipped", reason=budget.reason(),
                                       dtype=torch.float16))
                continue
            model = opt = None
            try:
                model = yolo.training_model("yolo12n", ctx.device)
                if name.endswith("-cl"):  # what ultralytics' trainer (>= 8.4) does on CUDA by default
                    model = model.to(memory_format=CL)
                if name.startswith("patched"):
                    yolov12_fast.patch(model, recompute=mode)
                step = _train_step(model, imgsz, batch, ctx.device)
                step()
                step()
                torch.cuda.synchronize()
                peak = gpu_peak_memory(step)
                timing = time_gpu(step, warmup_ms=100, rep_ms=1000)
                rows_c.append(make_row(ctx, SUITE, case, params_n, f"train-{name}", timing=timing, dtype=torch.float16,
                                       peak=peak, images_per_s=batch * 1e3 / timing.median_ms,
                                       backend_ran=_backend_ran(ctx) if name.startswith("patched")
                                       else "ultralytics modules"))
            except Exception as e:
                torch.cuda.synchronize()
                rows_c.append(make_row(ctx, SUITE, case, params_n, f"train-{name}", status="error", dtype=torch.float16,
                                       reason=("out of memory: " if is_oom(e) else "") + f"{type(e).__name__}: {e}"[:400]))
            finally:
                del model, opt
                torch.cuda.empty_cache()
        add_speedups(rows_c, ("train-eager", "train-eager-cl"))
        ctx.emit(rows_c)
        rows += rows_c
    return rows


def _recompute_ran(mode, device) -> str:
    """The recompute mode a patched ABlock runs while training on `device` (mode None: the default, "auto")."""
    from yolov12_fast.nn.modules import AUTO_RECOMPUTE
    mode = mode or "auto"
    return AUTO_RECOMPUTE.get(torch.device(device).type, "none") if mode == "auto" else mode


def _train_step(model, imgsz: int, batch: int, device):
    """One ultralytics-style AMP step: zero_grad, autocast forward + loss, scaled backward, optimizer step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True)
    scaler = torch.amp.GradScaler("cuda")
    imgs = torch.rand(batch, 3, imgsz, imgsz, device=device)
    data = yolo.synthetic_batch(imgs)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            loss, _ = model.loss(data, model(imgs))
        scaler.scale(loss.sum()).backward()
        scaler.step(opt)
        scaler.update()

    return step
