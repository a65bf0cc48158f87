"""Suite `ops`: area attention (forward, and forward+backward), the PE branch, ABlock's MLP and A2C2f's cv2 (+ L/X
residual) at the real shapes.

What is timed per provider (baselines.py): the qkv conv output -> the tensor `proj` consumes, so the baselines pay
their layout copies and every provider pays the PE branch (depthwise 7x7 + bias, as after model.fuse()).

Shapes (REFERENCE.md): head_dim 32; P4 = stride 16 map, area 4, heads 2/4/8/12 (n, s, m/l, x); P5 = stride 32 map,
area 1, heads 4/8/12. Tokens per area: 400 at 640x640, 1600 at 1280x1280, 240 at 384x640, 300 at 480x640 (areas
cut rows). Batches 1, 8, 32 at 640; 1 and 8 elsewhere. fp16 on GPU, fp32 on CPU. On CPU the default run is the
640 batch-1 layers (the cases of benchmarks/cpu_attention.py, which this suite supersedes) at 1 and 2 threads.

Conventions (stated in every row through flops / bytes):
- FLOPs: forward 4 * sequences * heads * n^2 * head_dim (two matmuls; softmax and PE not counted); forward+backward
  = 3.5x that (backward = 2.5x forward: five matmuls against two; FlashAttention's convention; recomputation not
  counted). Exponentials (`exp2`, GPU `% exp floor`): one per score forward, two forward+backward.
- Bytes (each input read once, each output written once): forward = qkv (3*B*C*N) + pe weights + out (B*C*N);
  forward+backward adds dout (B*C*N) read, qkv read again and dqkv (3*B*C*N) written: 7*B*C*N more.
- Timer: do_bench_cudagraph for batch-1 forwards (microsecond work: kernel time without launch gaps), do_bench (L2
  flushed) otherwise; CPU: interleaved rounds. Peak memory: torch.cuda.max_memory_allocated over one call.
- MLP (`mlp-*` rows): x + conv2(silu(conv1(x))) with BN folded, C / hidden per scale and level at 640 (odd 307,
  460); baseline `torch` = what a fused ultralytics model runs (two 1x1 convs, SiLU, add); FLOPs 4*B*C*N*hidden,
  bytes = x read + out written + weights.
- cv2 (`cv2-*` rows): A2C2f's output conv, silu(conv1x1(x)) with BN folded, plus (l/x) the residual
  x + gamma * that, K -> C channels per scale and level at 640; baseline `torch` = a fused ultralytics A2C2f (conv,
  SiLU, addcmul); FLOPs 2*B*C*K*N, bytes = x read + residual read + out written + weights.
- Each provider's output is compared once with the float32 (GPU) / float64 (CPU) result of the ultralytics math:
  `max_abs_err`, and `check` = FAIL when it exceeds 4x the ultralytics same-dtype error + a floor.
"""

from __future__ import annotations

import dataclasses
import re
import time
import zlib
from dataclasses import dataclass

import torch

from yolov12_fast.ops.area_attention import cuda_backward_by_default
from yolov12_fast.utils import exact_fp32

from . import baselines as bl
from .harness import Budget, Context, compile_budget_s, add_speedups, gpu_peak_memory, is_oom, make_row, set_threads, time_cpu_interleaved, time_gpu

SUITE = "ops"
HEAD_DIM = 32
PE_K = 7
LEVELS = {"P4": (16, 4, (2, 4, 8, 12)), "P5": (32, 1, (4, 8, 12))}  # stride, area, heads
# A provider passes its check when its max |error| against the oracle is <= 4x the same-dtype ultralytics math's
# error + FLOOR x max(1, max |oracle|). The floor only covers cases where the naive error is near zero: at 2e-2
# (absolute, the old fp16 floor) a softmax scale 1% off passed at P4; at 2e-3 it fails.
FLOOR = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def bound(naive_err: float, ref: torch.Tensor, dtype) -> float:
    return 4.0 * naive_err + FLOOR[dtype] * max(1.0, ref.abs().max().item())

# torch.compile cases (each is a fresh max-autotune compile, tens of seconds): yolo12n latency, s/m/l throughput
COMPILE_CASES = {("fwd", "640x640", "P4", 2, 1), ("fwd", "640x640", "P4", 8, 32), ("fwd", "640x640", "P5", 8, 32),
                 ("fwd", "1280x1280", "P4", 8, 8), ("fwdbwd", "640x640", "P4", 8, 32)}
COMPILE_BUDGET_S = compile_budget_s(150.0)  # all compile cases together; none starts with less than 90 s of suite budget left


@dataclass(frozen=True)
class Case:
    pass_: str  # "fwd" or "fwdbwd"
    imgsz: str  # "640x640"
    level: str  # "P4" / "P5" / "tiny"
    H: int
    W: int
    area: int
    heads: int
    batch: int
    head_dim: int = HEAD_DIM
    tag: str = ""  # " bf16" for rows of a --dtype other than the device's default (part of the name)
    layout: str = "nchw"  # "cl": the qkv conv output channels_last (a model moved there; ultralytics >= 8.4 trains so)

    @property
    def n(self) -> int:
        return self.H * self.W // self.area

    @property
    def C(self) -> int:
        return self.heads * self.head_dim

    @property
    def name(self) -> str:
        if self.pass_ in ("pe", "pebwd"):  # the PE conv runs over the whole map: no areas
            return f"{self.pass_} {self.level} {self.imgsz} h{self.heads} b{self.batch} ({self.H}x{self.W} map){self.tag}"
        cl = " cl" if self.layout == "cl" else ""
        return f"{self.pass_} {self.level} {self.imgsz} h{self.heads} b{self.batch} (n={self.n}){cl}{self.tag}"

    @property
    def params(self) -> dict:
        return {"pass": self.pass_, "imgsz": self.imgsz, "level": self.level, "H": self.H, "W": self.W,
                "area": self.area, "n": self.n, "heads": self.heads, "head_dim": self.head_dim, "batch": self.batch,
                **({"layout": "channels_last"} if self.layout == "cl" else {})}

    def flops(self) -> float:
        f = 4.0 * self.batch * self.area * self.heads * self.n ** 2 * self.head_dim
        return 3.5 * f if self.pass_ == "fwdbwd" else f

    def exp2(self) -> float:
        """Exponentials the task needs: one per score forward; forward+backward recomputes P once more (a backward
        that recomputes it in two kernels, dK/dV and dQ, does 3 per score: the deterministic price)."""
        e = float(self.batch * self.area * self.heads * self.n ** 2)
        return 2.0 * e if self.pass_ == "fwdbwd" else e

    def nbytes(self, elt: int) -> float:
        bcn = self.batch * self.C * self.H * self.W
        b = (4 * bcn + self.C * (PE_K * PE_K + 1)) * elt
        return b + 7 * bcn * elt if self.pass_ == "fwdbwd" else b


def _shape(imgsz: str, level: str) -> tuple[int, int, int, tuple]:
    h, w = map(int, imgsz.split("x"))
    stride, area, heads = LEVELS[level]
    return h // stride, w // stride, area, heads


def attention_cases(device: torch.device, quick: bool) -> list:
    """Ordered by priority (a run that hits its budget keeps the most useful figures)."""
    if quick:
        return [Case("fwd", "tiny", "tiny", 8, 8, 4, 2, 1), Case("fwdbwd", "tiny", "tiny", 8, 8, 4, 2, 1),
                Case("fwd", "tiny-r", "tiny", 6, 10, 4, 2, 1)]  # 15 tokens per area: rows cut, odd n
    cases = []

    def add(pass_, imgsz, batches, levels=("P4", "P5"), layout="nchw", heads_of=None):
        for b in batches:
            for level in levels:
                H, W, area, heads = _shape(imgsz, level)
                cases.extend(Case(pass_, imgsz, level, H, W, area, h, b, layout=layout) for h in heads
                             if heads_of is None or h in heads_of)

    # channels_last qkv (ultralytics >= 8.4 runs CPU inference on x86 and CUDA training channels_last): the views
    # our kernels read in place have token stride 3C, the baselines' reshapes copy; last, the lowest priority
    if device.type == "cpu":
        add("fwd", "640x640", (1,))
        add("fwdbwd", "640x640", (1,))
        add("fwd", "640x640", (1,), layout="cl", heads_of=(2, 4))  # yolo12n's heads (P4: 2, P5: 4)
        return cases
    add("fwd", "640x640", (1, 8, 32))
    add("fwdbwd", "640x640", (8, 32))
    add("fwd", "1280x1280", (1, 8))
    add("fwdbwd", "1280x1280", (8,), levels=("P4",))
    add("fwd", "480x640", (1, 8))
    add("fwd", "384x640", (1, 8))
    add("fwd", "640x640", (1, 32), layout="cl", heads_of=(8,))
    add("fwdbwd", "640x640", (32,), layout="cl", heads_of=(8,))
    return cases


def matching(cases: list, pattern: str) -> list:
    """The cases whose name matches `pattern` (re.search), for the tools that take a case regex (fwd_warps, host
    --step, profile): the channels_last ones (`... cl`) only where the pattern names them (the word `cl`)."""
    return [c for c in cases if re.search(pattern, c.name) and (c.layout == "nchw" or re.search(r"\bcl\b", pattern))]


def pe_cases(device: torch.device, quick: bool) -> list:
    if quick:
        return [Case("pe", "tiny", "tiny", 8, 8, 1, 2, 1)]
    cases = []
    for b in ((1,) if device.type == "cpu" else (1, 8, 32)):
        for level in ("P4", "P5"):
            H, W, area, heads = _shape("640x640", level)
            cases.extend(Case("pe", "640x640", level, H, W, area, h, b) for h in heads)
    return cases


def pebwd_cases(device: torch.device, quick: bool) -> list:
    """The PE backward at the PE cases' shapes (batches 8 and 32 on a GPU: training batches)."""
    if quick:
        return [Case("pebwd", "tiny", "tiny", 8, 8, 1, 2, 1)]
    return [dataclasses.replace(c, pass_="pebwd") for c in pe_cases(device, quick) if device.type == "cpu" or c.batch > 1]


# ----------------------------------------------------------------------------------------------------------------
# inputs and callables


def seed(case) -> int:
    """The inputs' seed: from the case's fields, the same in every process (hash() of strings is salted per
    process), so a case's inputs are reproducible across runs and machines."""
    return zlib.crc32(repr(case).encode())


def _inputs(case: Case, device, dtype, grad: bool):
    g = torch.Generator(device="cpu").manual_seed(seed(case))
    qkv = torch.randn(case.batch, 3 * case.C, case.H, case.W, generator=g).to(device, dtype)
    if case.layout == "cl":
        qkv = qkv.contiguous(memory_format=torch.channels_last)
    w = (0.1 * torch.randn(case.C, 1, PE_K, PE_K, generator=g)).to(device, dtype)
    b = (0.1 * torch.randn(case.C, generator=g)).to(device, dtype)
    if grad:
        for t in (qkv, w, b):
            t.requires_grad_(True)
    return qkv, w, b


def _callable(fn, case: Case, args, dout=None):
    qkv, w, b = args
    if case.pass_ == "fwd":
        return lambda: fn(qkv, w, b, case.area, case.heads, case.head_dim)

    def step():
        for t in (qkv, w, b):
            t.grad = None
        fn(qkv, w, b, case.area, case.heads, case.head_dim).backward(dout)

    return step


GRAD_NAMES = ("out", "dqkv", "dpe_w", "dpe_b")


def _results(fn, case: Case, args, dout=None) -> list:
    """[out] of fn, and for fwdbwd (dout given) [out, d qkv, d pe weight, d pe bias] after out.backward(dout)."""
    qkv, w, b = args
    if dout is None:
        return [fn(qkv, w, b, case.area, case.heads, case.head_dim).detach()]
    for t in args:
        t.grad = None
    out = fn(qkv, w, b, case.area, case.heads, case.head_dim)
    out.backward(dout)
    res = [out.detach()] + [t.grad for t in args]
    for t in args:
        t.grad = None
    return res


def _check(fn, case: Case, args, oracle, naive_err, dtype, dout=None) -> tuple[float, str]:
    """(max |err| of the output, "pass" / "FAIL (...)"): the output and, for fwdbwd, every gradient against the
    oracle's, each within bound() of the naive same-dtype error. Grad mode as timed (a no_grad call would make
    torch.compile recompile)."""
    fails = []
    res = _results(fn, case, args, dout)
    errs = []
    for name, got, ref, nerr in zip(GRAD_NAMES, res, oracle, naive_err):
        err = (got.cpu().double() - ref).abs().max().item()
        errs.append(err)
        lim = bound(nerr, ref, dtype)
        if not (err <= lim and torch.isfinite(got).all().item()):
            fails.append(f"{name}: max |err| {err:.3g} > bound {lim:.3g}")
    return errs[0], "pass" if not fails else "FAIL (" + "; ".join(fails) + ")"


def _oracle(case: Case, args, device, dout=None) -> list:
    """The ultralytics math in float32 without TF32 (GPU) / float64 (CPU), as _results returns it, kept on the CPU
    so GPU peak memory is the providers'."""
    hi = torch.float32 if device.type == "cuda" else torch.float64
    leaves = [t.detach().to(hi).requires_grad_(dout is not None) for t in args]
    with exact_fp32(), torch.set_grad_enabled(dout is not None):
        res = _results(bl.ultralytics_eager, case, leaves, None if dout is None else dout.to(hi))
    return [r.cpu().double() for r in res]


# ----------------------------------------------------------------------------------------------------------------
# the suite


def run(ctx: Context) -> list:
    out = []
    budget = Budget(ctx.budget_s)
    dtype = torch.float16 if ctx.device.type == "cuda" else torch.float32
    tag = ""
    if ctx.dtype and ctx.device.type == "cuda" and getattr(torch, ctx.dtype) != dtype:  # --dtype bfloat16
        dtype, tag = getattr(torch, ctx.dtype), " " + ctx.dtype.replace("float", "fp").replace("bfp", "bf")
    tagged = lambda cs: [dataclasses.replace(c, tag=tag) for c in cs] if tag else cs
    cases = [c for c in tagged(attention_cases(ctx.device, ctx.quick)) if ctx.wants(c.name)]
    pes = [c for c in tagged(pe_cases(ctx.device, ctx.quick)) if ctx.wants(c.name)]
    pebwds = [c for c in tagged(pebwd_cases(ctx.device, ctx.quick)) if ctx.wants(c.name)]
    mlps = [c for c in tagged(mlp_cases(ctx.device, ctx.quick)) if ctx.wants(c.name)]
    cv2s = [c for c in tagged(cv2_cases(ctx.device, ctx.quick)) if ctx.wants(c.name)]

    def run_all(threads):
        ctx.ceilings()
        return (_run_attention(ctx, cases, dtype, budget, threads=threads)
                + _run_pe(ctx, pes, dtype, budget, threads=threads)
                + _run_pebwd(ctx, pebwds, dtype, budget)
                + _run_mlp(ctx, mlps, dtype, budget, threads=threads) + _run_cv2(ctx, cv2s, dtype, budget))

    if ctx.device.type == "cuda":
        return run_all(None)
    for th in ctx.threads:  # CPU: every case at each pinned thread count
        prev = set_threads(th)
        try:
            out += run_all(th)
        finally:
            set_threads(prev)
    return out


def _skip_rows(ctx, case: Case, providers: dict, reason: str, dtype, prefix: str = "") -> list:
    return [make_row(ctx, SUITE, case.name, case.params, prefix + name, status="skipped", reason=reason, dtype=dtype)
            for name in providers]


def _run_attention(ctx: Context, cases: list, dtype, budget: Budget, threads) -> list:
    all_rows = []
    compile_spent = 0.0
    elt = torch.finfo(dtype).bits // 8
    for case in ctx.tqdm(cases, desc=f"ops attention{'' if threads is None else f' {threads} thr'}"):
        if budget.over():
            rows = _skip_rows(ctx, case, bl.ATTENTION_PROVIDERS, budget.reason(), dtype)
            ctx.emit(rows)
            all_rows += rows
            continue
        backward = case.pass_ == "fwdbwd"
        rows, fns, meta = [], {}, {}
        try:
            args = _inputs(case, ctx.device, dtype, backward)
            dout = torch.randn(case.batch, case.C, case.H, case.W, device=ctx.device, dtype=dtype) if backward else None
            oracle = _oracle(case, args, ctx.device, dout)
            naive = _results(bl.ultralytics_eager, case, args, dout)  # the same-dtype math: the error yardstick
            naive_err = [(x.cpu().double() - o).abs().max().item() for x, o in zip(naive, oracle)]
            del naive
        except Exception as e:
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
            rows = _skip_rows(ctx, case, bl.ATTENTION_PROVIDERS, f"inputs/oracle failed: {type(e).__name__}: {e}"[:300], dtype)
            rows = [dict(r, status="error") for r in rows]
            ctx.emit(rows)
            all_rows += rows
            continue
        for name, p in bl.ATTENTION_PROVIDERS.items():
            ok, why = p.available(ctx.device, dtype, backward, ctx.quick)
            key = (case.pass_, case.imgsz, case.level, case.heads, case.batch)
            if ok and name == "compile":
                if key not in COMPILE_CASES:
                    ok, why = False, "torch.compile is measured on a subset of cases (ops.COMPILE_CASES): minutes per case"
                elif compile_spent >= COMPILE_BUDGET_S:
                    ok, why = False, f"torch.compile time budget ({COMPILE_BUDGET_S:.0f} s) used up"
                elif budget.seconds is not None and budget.seconds - budget.elapsed() < 90:
                    ok, why = False, "less than 90 s of the suite budget left for a torch.compile"
            if not ok:
                rows.append(make_row(ctx, SUITE, case.name, case.params, name, status="skipped", reason=why, dtype=dtype))
                continue
            extra = {}
            try:
                fn = p.fn
                if name == "compile":
                    t0 = time.perf_counter()
                    torch._dynamo.reset()
                    fn = bl.compiled_reference()
                    _callable(fn, case, args, dout)()  # compile + autotune
                    ctx.sync()
                    extra["compile_s"] = time.perf_counter() - t0
                    compile_spent += extra["compile_s"]
                    extra["backend_ran"] = "inductor max-autotune-no-cudagraphs"
                elif name == "flash":
                    extra["backend_ran"] = bl.flash_impl()
                elif name == "sdpa":
                    extra["backend_ran"] = "sdpa " + bl.sdpa_backend(args[0].detach(), case.area, case.heads, case.head_dim)
                elif p.backend is not None:
                    extra["backend_ran"] = bl.resolved_backends(p.backend, ctx.device, dtype, case.head_dim)
                    if p.pe_backend:
                        extra["backend_ran"] = re.sub(r"pe=\w+", f"pe={p.pe_backend}", extra["backend_ran"])
                    if backward and p.backend == "auto" and "attention=cuda" in extra["backend_ran"]:
                        bwd = "cuda" if cuda_backward_by_default(ctx.device) else "triton"
                        extra["backend_ran"] += f" (attention backward: {bwd})"  # auto's backward on this device
                else:
                    extra["backend_ran"] = "eager matmul+softmax"
                call = _callable(fn, case, args, dout)
                bl.reset_triton_tiles(backward)
                call()  # warm-up: Triton autotune, cuDNN algorithm choice
                tiles = bl.triton_tiles(backward) if p.backend is not None else None
                if tiles:  # the autotuner's pick for this case (BLOCK_M x BLOCK_N, warps, stages) per kernel
                    extra["tiles"] = tiles
                err, check = _check(fn, case, args, oracle, naive_err, dtype, dout)
                extra.update(max_abs_err=err, check=check)
                if ctx.device.type == "cuda":
                    peak = gpu_peak_memory(call)
                    timing = time_gpu(call, cudagraph=case.batch == 1 and not backward)
                    rows.append(make_row(ctx, SUITE, case.name, case.params, name, timing=timing, flops=case.flops(),
                                         nbytes=case.nbytes(elt), exp2=case.exp2(), dtype=dtype, peak=peak, **extra))
                else:
                    fns[name] = call
                    meta[name] = extra
            except Exception as e:
                oom = ctx.device.type == "cuda" and is_oom(e)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                rows.append(make_row(ctx, SUITE, case.name, case.params, name, status="error",
                                     reason=("out of memory: " if oom else "") + f"{type(e).__name__}: {e}"[:400],
                                     dtype=dtype, **extra))
        if fns:  # CPU: interleaved rounds over every available provider of the case
            rounds = 2 if ctx.quick else 11
            timings = time_cpu_interleaved(fns, rounds=rounds, min_round_s=0.0 if ctx.quick else 0.05)
            for name, t in timings.items():
                rows.append(make_row(ctx, SUITE, case.name, case.params, name, timing=t, flops=case.flops(),
                                     nbytes=case.nbytes(elt), exp2=case.exp2(), dtype=dtype, **meta[name]))
        add_speedups(rows, bl.ATTENTION_BASELINES)
        order = list(bl.ATTENTION_PROVIDERS)
        rows.sort(key=lambda r: order.index(r["provider"]))
        ctx.emit(rows)
        all_rows += rows
        del args, dout, oracle
    return all_rows


def _run_pe(ctx: Context, cases: list, dtype, budget: Budget, threads) -> list:
    def setup(case):
        qkv, w, b = _inputs(case, ctx.device, dtype, False)
        N = case.H * case.W
        v = qkv.view(case.batch, case.heads, 3 * case.head_dim, N)[:, :, 2 * case.head_dim:]
        x = torch.randn(case.batch, case.heads, case.head_dim, N, device=ctx.device, dtype=dtype)
        bcn = case.batch * case.C * N
        flops = 2.0 * bcn * PE_K * PE_K + bcn
        nbytes = (3 * bcn + case.C * (PE_K * PE_K + 1)) * torch.finfo(dtype).bits // 8  # v, x read; out; weights
        hi = torch.float64 if ctx.device.type == "cpu" else torch.float32
        with exact_fp32():
            oracle = bl.pe_torch(v.to(hi), x.to(hi), w.to(hi), b.to(hi), case.H, case.W).cpu().double()
        return (v, x, w, b, case.H, case.W), oracle, flops, nbytes

    return _run_simple(ctx, cases, dtype, budget, "pe", bl.PE_PROVIDERS, bl.PE_BASELINES, setup, "F.conv2d + add")


def _run_pebwd(ctx: Context, cases: list, dtype, budget: Budget) -> list:
    """PE backward rows (`pebwd-*`): dv, dw, db for a random dout, ours against ATen's convolution backward on NCHW
    tensors (the reference's) and on channels_last ones (cuDNN's NHWC kernels on a GPU), each checked against the
    float32 / float64 gradients."""
    def setup(case):
        qkv, w, _ = _inputs(case, ctx.device, dtype, False)
        N = case.H * case.W
        v = qkv.view(case.batch, case.heads, 3 * case.head_dim, N)[:, :, 2 * case.head_dim:]
        g = torch.Generator(device="cpu").manual_seed(seed(case) + 1)
        dout = torch.randn(case.batch, case.heads, case.head_dim, N, generator=g).to(ctx.device, dtype)
        shape = (case.batch, case.C, case.H, case.W)
        v_nchw = v.reshape(shape).contiguous()
        v_cl, dout_cl = (t.reshape(shape).contiguous(memory_format=torch.channels_last) for t in (v, dout))
        bcn = case.batch * case.C * N
        flops = 2 * 2.0 * bcn * PE_K * PE_K + bcn  # dv and dw: k*k multiply-adds per element each; db
        nbytes = 4 * bcn * torch.finfo(dtype).bits // 8  # dout read twice (dv, dw), v read, dv written
        hi = torch.float64 if ctx.device.type == "cpu" else torch.float32
        with exact_fp32():
            ref = bl.pebwd_aten_nchw(*(t.to(hi) for t in (v, v_nchw, v_cl, dout, dout_cl, w)), case.H, case.W)
        oracle = torch.cat([t.reshape(-1).cpu().double() for t in ref])
        return (v, v_nchw, v_cl, dout, dout_cl, w, case.H, case.W), oracle, flops, nbytes

    return _run_simple(ctx, cases, dtype, budget, "pebwd", bl.PEBWD_PROVIDERS, bl.PEBWD_BASELINES, setup,
                       "aten convolution_backward")


@dataclass(frozen=True)
class MlpCase:
    """ABlock's MLP + residual at one layer of one scale: C channels, HID hidden, an H x W map."""
    scale: str
    level: str
    C: int
    hid: int
    H: int
    W: int
    batch: int
    tag: str = ""  # as Case.tag

    @property
    def name(self) -> str:
        return f"mlp {self.level} {self.scale} C{self.C} h{self.hid} b{self.batch} ({self.H}x{self.W} map){self.tag}"

    @property
    def params(self) -> dict:
        return {"pass": "mlp", "scale": self.scale, "level": self.level, "C": self.C, "hidden": self.hid,
                "H": self.H, "W": self.W, "batch": self.batch}


# (scale, level, C, hidden) at 640 (REFERENCE.md): ultralytics mlp_ratio 2.0 (n/s/m), 1.2 (l/x: 307, 460); the
# turbo l/x ratio 1.5 gives 384 / 576.
MLP_LAYERS = [("n", "P4", 64, 128), ("n", "P5", 128, 256), ("s", "P5", 256, 512), ("l", "P4", 256, 307),
              ("l-turbo", "P4", 256, 384), ("x", "P4", 384, 460), ("x-turbo", "P4", 384, 576)]


def mlp_cases(device: torch.device, quick: bool) -> list:
    if quick:
        return [MlpCase("tiny", "tiny", 32, 70, 5, 7, 1)]
    out = []
    for b in ((1,) if device.type == "cpu" else (1, 8, 32)):
        for scale, level, C, hid in MLP_LAYERS:
            H, W, _, _ = _shape("640x640", level)
            out.append(MlpCase(scale, level, C, hid, H, W, b))
    return out


def _run_mlp(ctx: Context, cases: list, dtype, budget: Budget, threads) -> list:
    def setup(case):
        g = torch.Generator(device="cpu").manual_seed(seed(case))
        x = torch.randn(case.batch, case.C, case.H, case.W, generator=g).to(ctx.device, dtype)
        ws = [torch.randn(case.hid, case.C, 1, 1, generator=g) / case.C ** 0.5, 0.5 * torch.randn(case.hid, generator=g),
              torch.randn(case.C, case.hid, 1, 1, generator=g) / case.hid ** 0.5, 0.5 * torch.randn(case.C, generator=g)]
        ws = [t.to(ctx.device, dtype) for t in ws]
        bcn = case.batch * case.C * case.H * case.W
        flops = 4.0 * bcn * case.hid  # two GEMMs
        nbytes = (2 * bcn + 2 * case.C * case.hid + case.C + case.hid) * torch.finfo(dtype).bits // 8  # x in, out
        hi = torch.float64 if ctx.device.type == "cpu" else torch.float32
        with exact_fp32():
            oracle = bl.mlp_torch(x.to(hi), *(t.to(hi) for t in ws)).cpu().double()
        return (x, *ws), oracle, flops, nbytes

    return _run_simple(ctx, cases, dtype, budget, "mlp", bl.MLP_PROVIDERS, bl.MLP_BASELINES, setup,
                       "conv1x1 + silu + conv1x1 + add")


@dataclass(frozen=True)
class Cv2Case:
    """A2C2f's cv2 at one layer of one scale: K -> C channels on an H x W map, with the L/X residual or not."""
    scale: str
    level: str
    K: int
    C: int
    residual: bool
    H: int
    W: int
    batch: int
    tag: str = ""  # as Case.tag

    @property
    def name(self) -> str:
        return (f"cv2 {self.level} {self.scale} K{self.K} C{self.C}{' +residual' if self.residual else ''} "
                f"b{self.batch} ({self.H}x{self.W} map){self.tag}")

    @property
    def params(self) -> dict:
        return {"pass": "cv2", "scale": self.scale, "level": self.level, "K": self.K, "C": self.C,
                "residual": self.residual, "H": self.H, "W": self.W, "batch": self.batch}


# (scale, level, K, C, residual) of the A2C2f blocks at 640, read off the built yolo12 models: K = (1 + n) * c_;
# the l/x attention blocks carry the residual x + gamma * cv2(...); head = the P3 head block (C3k, no attention).
CV2_LAYERS = [("n", "P4", 192, 128, False), ("m", "P4", 768, 512, False), ("l", "P4", 1280, 512, True),
              ("l", "P5", 1280, 512, True), ("x", "P4", 1920, 768, True), ("x", "P5", 1920, 768, True),
              ("x", "P3-head", 576, 384, False)]


def cv2_cases(device: torch.device, quick: bool) -> list:
    if quick:
        return [Cv2Case("tiny", "tiny", 96, 40, True, 5, 7, 1)]
    out = []
    for b in ((1,) if device.type == "cpu" else (1, 8, 32)):
        for scale, level, K, C, res in CV2_LAYERS:
            H, W = (80, 80) if level == "P3-head" else _shape("640x640", level)[:2]
            out.append(Cv2Case(scale, level, K, C, res, H, W, b))
    return out


def _run_cv2(ctx: Context, cases: list, dtype, budget: Budget) -> list:
    def setup(case):
        g = torch.Generator(device="cpu").manual_seed(seed(case))
        x = torch.randn(case.batch, case.K, case.H, case.W, generator=g).to(ctx.device, dtype)
        ws = [torch.randn(case.C, case.K, 1, 1, generator=g) / case.K ** 0.5, 0.5 * torch.randn(case.C, generator=g)]
        if case.residual:
            ws += [torch.randn(case.batch, case.C, case.H, case.W, generator=g), torch.rand(case.C, generator=g) + 0.5]
        ws = [t.to(ctx.device, dtype) for t in ws]
        n = case.batch * case.H * case.W
        flops = 2.0 * n * case.C * case.K
        nbytes = (n * case.K + n * case.C * (2 if case.residual else 1) + case.C * case.K) * torch.finfo(dtype).bits // 8
        hi = torch.float64 if ctx.device.type == "cpu" else torch.float32
        with exact_fp32():
            oracle = bl.cv2_torch(x.to(hi), *(t.to(hi) for t in ws)).cpu().double()
        return (x, *ws), oracle, flops, nbytes

    return _run_simple(ctx, cases, dtype, budget, "cv2", bl.CV2_PROVIDERS, bl.CV2_BASELINES, setup,
                       "conv1x1 + silu (+ addcmul)")


def _flat(res) -> torch.Tensor:
    """A provider's result as one float64 CPU vector: a tensor, or a tuple of them (gradients) concatenated."""
    if isinstance(res, (tuple, list)):
        return torch.cat([t.reshape(-1).cpu().double() for t in res])
    return res.cpu().double()


def _run_simple(ctx: Context, cases: list, dtype, budget: Budget, prefix: str, providers: dict, baselines,
                setup, torch_ran: str) -> list:
    """Single-call ops (PE, its backward, MLP, cv2): each provider checked against the oracle (bound: 4x the first baseline's
    same-dtype error + a floor), then timed (GPU: per provider; CPU: interleaved rounds)."""
    all_rows = []
    for case in ctx.tqdm(cases, desc=f"ops {prefix}"):
        if budget.over():
            rows = _skip_rows(ctx, case, providers, budget.reason(), dtype, prefix=f"{prefix}-")
            ctx.emit(rows)
            all_rows += rows
            continue
        args, oracle, flops, nbytes = setup(case)
        naive_err = (_flat(providers[baselines[0]].fn(*args)) - oracle).abs().max().item()
        rows, fns, meta = [], {}, {}
        for name, p in providers.items():
            ok, why = p.available(ctx.device, dtype, False, ctx.quick)
            if not ok:
                rows.append(make_row(ctx, SUITE, case.name, case.params, f"{prefix}-{name}", status="skipped",
                                     reason=why, dtype=dtype))
                continue
            call = (lambda f: lambda: f(*args))(p.fn)
            try:
                err = (_flat(call()) - oracle).abs().max().item()
                lim = bound(naive_err, oracle, dtype)
                extra = {"max_abs_err": err, "check": "pass" if err <= lim else f"FAIL (max |err| {err:.3g} > {lim:.3g})",
                         "backend_ran": torch_ran if p.backend is None else bl.resolved_backends(p.backend, ctx.device)}
                if ctx.device.type == "cuda":
                    peak = gpu_peak_memory(call)
                    timing = time_gpu(call, cudagraph=case.batch == 1)
                    rows.append(make_row(ctx, SUITE, case.name, case.params, f"{prefix}-{name}", timing=timing,
                                         flops=flops, nbytes=nbytes, dtype=dtype, peak=peak, **extra))
                else:
                    fns[f"{prefix}-{name}"] = call
                    meta[f"{prefix}-{name}"] = extra
            except Exception as e:
                rows.append(make_row(ctx, SUITE, case.name, case.params, f"{prefix}-{name}", status="error",
                                     reason=f"{type(e).__name__}: {e}"[:400], dtype=dtype))
        if fns:
            timings = time_cpu_interleaved(fns, rounds=2 if ctx.quick else 11, min_round_s=0.0 if ctx.quick else 0.05)
            for name, t in timings.items():
                rows.append(make_row(ctx, SUITE, case.name, case.params, name, timing=t, flops=flops, nbytes=nbytes,
                                     dtype=dtype, **meta[name]))
        add_speedups(rows, [f"{prefix}-{b_}" for b_ in baselines])
        ctx.emit(rows)
        all_rows += rows
    return all_rows
