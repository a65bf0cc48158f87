"""`python -m benchmarks proxies [--check]`: figures that predict GPU speed and need no GPU.

1. Kernel launches per forward, counted on CPU with a TorchDispatchMode: every ATen op that reaches the dispatcher
   is classified as a launch (it computes or copies, in place or not), a view (every output shares storage with an
   input: no kernel, whatever the schema says; a reshape that had to copy is a launch), an allocation (empty*: no
   kernel) or a host sync (.item()). Counted under no_grad, where composite ops (matmul, reshape, contiguous)
   decompose into what they run, so the copies hidden inside them show. A yolov12_fast custom op counts as what it runs on a GPU
   with backend "auto" (GPU_MODEL below): area_attention_fwd is one fused kernel; pe_add is one kernel when
   ops/pe.py's auto picks a fused kernel for CUDA, else (today: cuDNN until a GPU run shows a fused kernel faster)
   it is expanded into the ATen ops of the reference it runs (an NCHW copy of v and the depthwise conv).
   Cases: the attention op alone (ultralytics math vs ours, 640 P4 and P5 of yolo12n), one AAttn module (layer 6)
   and the whole yolo12n at 640 batch 1 (BN folded as after model.fuse()), ultralytics vs patched, and patched with
   backend="triton" (every op a fused kernel: also the MLP and cv2 ones that auto leaves to cuDNN until measured);
   and a yolo12n training step (forward + backward, 640, batch 1) in each `recompute` mode.
2. Modeled HBM bytes, a model and not a measurement: the sum over launches of the bytes of every tensor input
   (read once) and every output (written once), numel x element size of the tensor as the op sees it (fp32 here;
   fp16 on GPU halves it). Caches, re-reads inside a kernel and cuDNN workspaces are not modeled.
3. Peak memory of a training step (forward + backward under bf16 autocast, AMP's 2-byte activations) of yolo12n at
   640 and 1280, batch 16, ultralytics vs patched (with each `recompute` mode; "patched" is "mlp", the CUDA default until the -27c H100 run measured "none" faster), and of one
   AAttn, tracked with torch's MemTracker on fake tensors (nothing allocated): the prediction for issue #5's "peak
   memory at 1280 <= 0.7x" before a GPU measures it.
4. Registers / spills / shared memory of every Triton kernel variant the ops launch (yolov12_fast._aot.compile_all,
   head_dim 32 only, for sm_75/80/90) and of every CUDA C++ kernel (nvcc -Xptxas -v, the parser of
   tests/test_cuda_compile.py).

Results: benchmarks/results/proxies.json. `--check` recomputes and compares with that (committed) file; it fails
on more launches (slack 0), more modeled bytes (slack 1%), more registers (slack 8 per kernel) or any new spill
(slack 0 bytes). New or vanished kernels are listed, not failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .harness import RESULTS_DIR, ROOT, machine_meta

PROXIES_FILE = RESULTS_DIR / "proxies.json"
SLACK = {"launches": 0, "bytes_rel": 0.01, "regs": 8, "spills": 0, "loop_instr": 2}
ALLOC_OPS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted"}


def _gpu_model() -> dict:
    """What a yolov12_fast op runs on a CUDA GPU with backend "auto": "kernel" = one fused launch, "expand" = count the
    ATen ops of its reference implementation (run under the counter). Attention: a Triton or CUDA C++ kernel. PE: read
    from ops/pe.py's own dispatch rule (which needs no GPU to answer for a CUDA device)."""
    from yolov12_fast.ops import pe as pe_op

    try:
        pe_auto = pe_op.resolve_backend("auto", torch.device("cuda"))
    except Exception:
        pe_auto = "kernel"
    return {"area_attention_fwd": "kernel", "pe_add": "expand" if pe_auto == "reference" else "kernel"}


GPU_MODEL = _gpu_model()
# Backends whose ops are one fused GPU kernel each: a model patched with backend="triton" is counted with every
# yolov12_fast op as one launch (its inputs read once, its output written once), the values computed on this CPU by
# the reference implementation.
GPU_ONLY = ("triton", "cuda")


# ----------------------------------------------------------------------------------------------------------------
# launches and bytes


def _nbytes(t) -> int:
    return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0


def _tensors(x) -> list:
    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]


class OpCounter(TorchDispatchMode):
    """Records (op name, kind, bytes read, bytes written) for every op dispatched while active."""

    def __init__(self, records: list | None = None, prefix: str = ""):
        super().__init__()
        self.records = records if records is not None else []
        self.prefix = prefix

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.name()  # e.g. "aten::add.Tensor", "yolov12_fast::area_attention_fwd"
        ns, _, op = name.partition("::")
        base = op.split(".")[0]
        if ns == "yolov12_fast":
            arg_names = [a.name for a in func._schema.arguments]
            named = dict(zip(arg_names, args), **kwargs)
            if named.get("backend", "auto") == "auto" and GPU_MODEL.get(base) == "expand":
                return self._expand(base, named)
            if named.get("backend") in GPU_ONLY:  # a fused GPU kernel (one launch): computed here by the reference
                named["backend"] = "reference"
                args, kwargs = tuple(named[n] for n in arg_names if n in named), {}
        out = func(*args, **kwargs)
        ins = _tensors([args, {k: v for k, v in kwargs.items() if k != "out"}])
        outs = _tensors(out)
        if ns == "yolov12_fast" and func._schema.is_mutable:  # in-place / out= ops: what they write is an output
            outs += [a for a, arg in zip(args, func._schema.arguments)
                     if isinstance(a, torch.Tensor) and arg.alias_info is not None and arg.alias_info.is_write]
        if ns == "yolov12_fast":
            kind = "launch"
        elif base == "_local_scalar_dense":
            kind = "sync"
        elif base in ALLOC_OPS:
            kind = "alloc"
        elif func._schema.is_mutable:
            kind = "launch"
        elif not outs:
            kind = "view"  # returns no tensor (metadata)
        else:
            # By what happened, not by the schema: reshape / contiguous are declared aliasing but copy when they must.
            in_ptrs = {t.untyped_storage().data_ptr() for t in ins}
            kind = "view" if all(t.untyped_storage().data_ptr() in in_ptrs for t in outs) else "launch"
        if kind == "launch":
            self.records.append((self.prefix + name, kind, sum(map(_nbytes, ins)), sum(map(_nbytes, outs))))
        else:
            self.records.append((self.prefix + name, kind, 0, 0))
        return out

    def _expand(self, base: str, a: dict):
        if base != "pe_add":
            raise NotImplementedError(f"proxies: no GPU model to expand yolov12_fast::{base}")
        from yolov12_fast.ops import pe as pe_op

        with OpCounter(self.records, prefix=f"{self.prefix}yolov12_fast::pe_add(reference)/"):
            return pe_op._reference(a["v"], a["weight"], a["bias"], a["x"], a["H"], a["W"])


def summarize(records: list) -> dict:
    launches = [r for r in records if r[1] == "launch"]
    return {
        "launches": len(launches),
        "views": sum(1 for r in records if r[1] == "view"),
        "allocs": sum(1 for r in records if r[1] == "alloc"),
        "syncs": sum(1 for r in records if r[1] == "sync"),
        "custom_ops": sum(1 for r in launches if r[0].startswith("yolov12_fast::") and "/" not in r[0]),
        "bytes_read": sum(r[2] for r in launches),
        "bytes_written": sum(r[3] for r in launches),
        "bytes": sum(r[2] + r[3] for r in launches),
        "by_op": dict(sorted(Counter(r[0] for r in launches).items())),
    }


def count(fn, grad: bool = False) -> dict:
    """Run fn() once under the counter and summarise. no_grad (unless `grad`: a training step's forward and
    backward), not inference_mode: under inference_mode composite ops (matmul, conv2d, reshape) reach the mode
    undecomposed and hide the copies they make."""
    counter = OpCounter()
    with torch.set_grad_enabled(grad), counter:
        fn()
    return summarize(counter.records)


TRAIN_COUNT_SHAPE = (1, 3, 640, 640)  # the size the issue targets; batch 1 keeps it a few seconds in CI


def train_launch_proxies(shape: tuple = TRAIN_COUNT_SHAPE) -> dict:
    """Launches and modeled bytes of a yolo12n training step (forward, a sum-of-squares loss, backward; fp32, no
    optimizer step), ultralytics vs patched in each recompute mode ("patched" = "mlp", recompute="auto"'s CUDA
    choice until the -27c H100 run measured "none" faster; the entry names stay for comparison with older files): the GPU-free prediction of what recomputation costs in memory traffic (issue #5: training step >= 1.15x)."""
    import copy

    import yolov12_fast

    from . import yolo

    model = yolo.build("yolo12n", calibrate_imgsz=None, fuse=False).train()
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    tag = f"yolo12n train step {shape[-1]} b{shape[0]} fp32"
    out = {}
    for which, recompute in (("ultralytics", None), ("patched", "mlp"), ("patched, recompute none", "none"),
                             ("patched, recompute block", "block")):
        m = copy.deepcopy(model) if recompute is None else yolov12_fast.patch(copy.deepcopy(model), recompute=recompute)

        def step(m=m):
            loss = sum(o.pow(2).mean() for o in _tensors(m(x)) if o.requires_grad)
            loss.backward()

        out[f"{tag}: {which}"] = count(step, grad=True)
    return out


def launch_proxies(imgsz: int = 640) -> dict:
    """{entry name: summary} for the attention op, one AAttn, and yolo12n at imgsz batch 1, ultralytics vs ours."""
    import copy

    import yolov12_fast

    from . import baselines as bl
    from . import yolo

    out = {}
    g = torch.Generator().manual_seed(0)
    for level, (hw, area, heads) in {"P4": (imgsz // 16, 4, 2), "P5": (imgsz // 32, 1, 4)}.items():
        C = heads * 32
        qkv = torch.randn(1, 3 * C, hw, hw, generator=g)
        w, b = 0.1 * torch.randn(C, 1, 7, 7, generator=g), 0.1 * torch.randn(C, generator=g)
        tag = f"op {level} {imgsz} h{heads} b1"
        out[f"{tag}: ultralytics"] = count(lambda: bl.ultralytics_eager(qkv, w, b, area, heads, 32))
        out[f"{tag}: ours"] = count(lambda: bl.ours("auto")(qkv, w, b, area, heads, 32))

    model = yolo.build("yolo12n", calibrate_imgsz=None, fuse=True)
    patched = yolov12_fast.patch(copy.deepcopy(model))
    fused = yolov12_fast.patch(copy.deepcopy(model), backend="triton")  # + the fused MLP and cv2 kernels
    x = torch.rand(1, 3, imgsz, imgsz, generator=g)
    attn_in = {}
    hook = model.model[6].m[0][0].attn.register_forward_pre_hook(lambda m, a: attn_in.setdefault("x", a[0]))
    with torch.no_grad():  # steady state: the Detect head builds its anchors on a model's first call
        model(x)
        patched(x)
        count(lambda: fused(x))
    hook.remove()
    xa = attn_in["x"].clone()
    out[f"AAttn layer 6 (P4) {imgsz} b1: ultralytics"] = count(lambda: model.model[6].m[0][0].attn(xa))
    out[f"AAttn layer 6 (P4) {imgsz} b1: patched"] = count(lambda: patched.model[6].m[0][0].attn(xa))
    out[f"yolo12n {imgsz} b1: ultralytics"] = count(lambda: model(x))
    out[f"yolo12n {imgsz} b1: patched"] = count(lambda: patched(x))
    out[f"yolo12n {imgsz} b1: patched, backend triton"] = count(lambda: fused(x))
    return out


# ----------------------------------------------------------------------------------------------------------------
# peak memory of a training step, predicted without a GPU

TRAIN_MEMORY_CASES = ((640, 16), (1280, 16))  # issue #5: yolo12n, AMP, batch 16; the peak at 1280 <= 0.7x


def _train_step_peak(module, x_shape: tuple, fake: bool = True) -> dict:
    """Peak memory (MB, by torch's MemTracker category) of forward + backward of `module` in training mode under
    bf16 autocast (AMP's element size: 2 bytes, as fp16 autocast on a GPU), with fake tensors: nothing is computed
    or allocated, so batch 16 at 1280 costs seconds, not tens of GB (fake=False: real CPU tensors, to check that
    the fake run tracks the same tensors). The loss is the sum of squares of the outputs."""
    import contextlib

    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    module.train()
    for p in module.parameters():
        p.requires_grad_(True)
    with FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext():
        x = torch.rand(*x_shape, requires_grad=len(x_shape) == 4 and x_shape[1] != 3)
        mt = MemTracker()
        mt.track_external(module)
        with mt:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = module(x)
                loss = sum(o.float().pow(2).mean() for o in _tensors(out) if o.requires_grad)
            loss.backward()
        peak = mt.get_tracker_snapshot("peak")
    cats = {}
    for by_cat in peak.values():
        for k, v in by_cat.items():
            name = str(k).split(".")[-1].lower()
            cats[name] = cats.get(name, 0) + v / 2**20
    return {"peak_mb": round(cats.get("total", 0), 1), "activations_mb": round(cats.get("act", 0), 1),
            "temp_mb": round(cats.get("temp", 0), 1)}


def train_memory_proxies(cases=TRAIN_MEMORY_CASES, other_modes=("none", "block")) -> dict:
    """{entry: peak} for a yolo12n training step (ultralytics vs patched) at each (imgsz, batch), and one AAttn of
    yolo12n's P4 stage (64 channels, 2 heads, area 4) at the same input size. What a GPU measures with
    torch.cuda.max_memory_allocated, up to the caching allocator's rounding (the model suite's training rows)."""
    import copy

    import yolov12_fast
    from ultralytics.nn.modules.block import AAttn

    from . import yolo

    out = {}
    model = yolo.build("yolo12n", calibrate_imgsz=None, fuse=False)
    for imgsz, batch in cases:
        variants = [("ultralytics", lambda: copy.deepcopy(model)),
                    # "mlp": auto's CUDA choice until the -27c H100 run (entry names kept for older files)
                    ("patched", lambda: yolov12_fast.patch(copy.deepcopy(model), recompute="mlp"))]
        variants += [(f"patched, recompute {r}", lambda r=r: yolov12_fast.patch(copy.deepcopy(model), recompute=r))
                     for r in other_modes]
        for which, make in variants:
            out[f"yolo12n train step {imgsz} b{batch} amp: {which}"] = _train_step_peak(make(), (batch, 3, imgsz, imgsz))
        attn = AAttn(64, 2, 4)
        for which, m in (("ultralytics", copy.deepcopy(attn)), ("patched", yolov12_fast.patch(copy.deepcopy(attn)))):
            out[f"AAttn P4 {imgsz} b{batch} amp: {which}"] = _train_step_peak(m, (batch, 64, imgsz // 16, imgsz // 16))
    return out


# ----------------------------------------------------------------------------------------------------------------
# registers / spills


def triton_aot(head_dims=(32,)) -> list:
    """Rows of yolov12_fast._aot for every Triton variant, compiled in a fresh process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "yolov12_fast._aot", "--json"]
    for d in head_dims:
        cmd += ["--head-dim", str(d)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    lines = p.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"yolov12_fast._aot printed nothing (rc {p.returncode}):\n{p.stderr[-3000:]}")
    keep = ("kernel", "arch", "dtype", "ok", "error", "regs", "spills", "smem", "mma", "wgmma", "spill_instr",
            "loop_bound", "loop_tensor_pct")
    rows = []
    for r in json.loads(lines[-1]):
        row = {k: r[k] for k in keep if k in r}
        if r.get("loop"):  # the static hot-loop model (yolov12_fast/_aot.py): instructions per warp per iteration
            row["loop_instr"] = r["loop"]["instr"]
        rows.append(row)
    return rows


def _load_cuda_compile():
    path = ROOT / "tests" / "test_cuda_compile.py"
    spec = importlib.util.spec_from_file_location("_yolov12_fast_test_cuda_compile", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def cuda_ptxas() -> list:
    """Rows (source, kernel, arch, regs, stack, spill bytes, static smem) from nvcc -Xptxas -v for every csrc/cuda/*.cu,
    and for the tensor-core kernels their innermost key-block loop's instructions (cuobjdump, _aot.inner_mma_loop)."""
    tc = _load_cuda_compile()
    if tc.NVCC is None:
        raise RuntimeError("nvcc not found (set CUDA_HOME or install the CUDA toolkit)")
    from yolov12_fast import _aot

    cuobjdump = tc._find_cuobjdump(tc.NVCC)
    rows = []
    with tempfile.TemporaryDirectory(prefix="yolov12_fast_ptxas_") as d:
        jobs = [(s, a) for s in tc.SOURCES for a in tc.ARCHS]
        with ThreadPoolExecutor(max_workers=2) as ex:
            compiled = list(ex.map(lambda sa: tc._compile(sa[0], sa[1], d), jobs))
        for c in compiled:
            if c.returncode != 0:
                rows.append({"source": os.path.basename(c.source), "arch": c.arch, "ok": False, "error": c.log[-500:]})
                continue
            sass = tc._sass(cuobjdump, c.cubin) if cuobjdump else {}
            for k in sorted(c.kernels, key=lambda k: k.name):
                row = {"source": os.path.basename(c.source), "kernel": k.name, "arch": c.arch, "ok": True,
                       "regs": k.regs, "stack": k.stack, "spills": max(k.spill_stores, 0) + max(k.spill_loads, 0),
                       "smem": k.smem}
                # the tensor-core kernels' key-block loop (instructions a warp and iteration), guarded by compare()
                loop = _aot.inner_mma_loop(sass.get(k.mangled, ""))
                if loop:
                    row["loop_instr"], row["loop_mma"] = loop["instr"], loop["mma"]
                rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# compute / compare


def compute(aot: bool = True) -> dict:
    """Every proxy. Minutes on a 2-core CPU (most of it the ahead-of-time compiles of every Triton variant and
    every .cu file; aot=False / --no-aot skips them): each phase prints a line to stderr as it starts."""
    t0 = time.perf_counter()

    def phase(what):
        print(f"proxies [{time.perf_counter() - t0:.0f} s]: {what}", file=sys.stderr, flush=True)

    meta = machine_meta(torch.device("cpu"))
    phase("kernel launches and modeled bytes of yolo12n forwards (reference, patched)")
    launches = launch_proxies()
    phase("launches of a training step")
    launches.update(train_launch_proxies())
    phase("peak memory of training steps (fake tensors)")
    res = {"schema": 1, "meta": {k: meta[k] for k in ("torch", "triton", "cuda", "ultralytics", "commit", "date")},
           "slack": SLACK, "gpu_model": GPU_MODEL, "launches": launches, "train_memory": train_memory_proxies()}
    if aot:
        for key, fn, what in (("triton_aot", triton_aot, "ahead-of-time compile of every Triton variant (minutes)"),
                              ("cuda_ptxas", cuda_ptxas, "nvcc -Xptxas -v of every .cu file for each arch")):
            phase(what)
            try:
                res[key] = fn()
            except Exception as e:
                res[key] = {"skipped": f"{type(e).__name__}: {e}"[:500]}
    phase("done")
    return res


def _kernel_key(r: dict) -> tuple:
    return (r.get("source", "triton"), r.get("kernel"), r.get("arch"))


def compare(old: dict, new: dict) -> tuple[list, list]:
    """(regressions, notes) of `new` against `old` (the committed file)."""
    bad, notes = [], []
    if old.get("meta", {}).get("torch") != new.get("meta", {}).get("torch"):
        notes.append(f"torch differs from the committed file's ({old.get('meta', {}).get('torch')} vs "
                     f"{new.get('meta', {}).get('torch')}): ATen-level counts may shift with it")
    for name, o in old.get("launches", {}).items():
        n = new.get("launches", {}).get(name)
        if n is None:
            notes.append(f"launches: entry {name!r} no longer computed")
            continue
        if n["launches"] > o["launches"] + SLACK["launches"]:
            grown = {k: v - o["by_op"].get(k, 0) for k, v in n["by_op"].items() if v > o["by_op"].get(k, 0)}
            bad.append(f"{name}: {n['launches']} launches > {o['launches']} committed (more of: {grown})")
        if n["bytes"] > o["bytes"] * (1 + SLACK["bytes_rel"]):
            bad.append(f"{name}: modeled bytes {n['bytes']:,} > {o['bytes']:,} committed (+{SLACK['bytes_rel']:.0%} slack)")
    for name, o in old.get("train_memory", {}).items():
        n = new.get("train_memory", {}).get(name)
        if n is None:
            if "train_memory" in new:
                notes.append(f"train_memory: entry {name!r} no longer computed")
            continue
        if n["peak_mb"] > o["peak_mb"] * (1 + SLACK["bytes_rel"]):
            bad.append(f"{name}: training-step peak {n['peak_mb']:.0f} MB > {o['peak_mb']:.0f} MB committed "
                       f"(+{SLACK['bytes_rel']:.0%} slack)")
    for key in ("triton_aot", "cuda_ptxas"):
        o_rows, n_rows = old.get(key), new.get(key)
        if not isinstance(o_rows, list) or not isinstance(n_rows, list):
            if key in new and isinstance(o_rows, list):
                notes.append(f"{key}: not compared ({n_rows.get('skipped') if isinstance(n_rows, dict) else 'absent'})")
            continue
        o_map = {_kernel_key(r): r for r in o_rows}
        n_map = {_kernel_key(r): r for r in n_rows}
        for k, n in n_map.items():
            o = o_map.get(k)
            if o is None:
                notes.append(f"{key}: new kernel {k}")
                continue
            if o.get("ok") and not n.get("ok"):
                bad.append(f"{key}: {k} no longer compiles: {n.get('error')}")
                continue
            if not n.get("ok"):
                continue
            if n["regs"] > o["regs"] + SLACK["regs"]:
                bad.append(f"{key}: {k} uses {n['regs']} registers > {o['regs']} committed + {SLACK['regs']}")
            if n["spills"] > o["spills"] + SLACK["spills"]:
                bad.append(f"{key}: {k} spills {n['spills']} B > {o['spills']} B committed")
            if "loop_instr" in o and n.get("loop_instr", 0) > o["loop_instr"] + SLACK["loop_instr"]:
                bad.append(f"{key}: {k} hot loop {n['loop_instr']} instructions a warp and iteration > "
                           f"{o['loop_instr']} committed + {SLACK['loop_instr']}")
        for k in o_map.keys() - n_map.keys():
            notes.append(f"{key}: kernel {k} vanished")
    return bad, notes


def format_launches(launches: dict) -> str:
    lines = [f"{'entry':<58} {'launches':>8} {'views':>6} {'syncs':>5} {'MB modeled':>10}"]
    for name, s in launches.items():
        lines.append(f"{name:<58} {s['launches']:>8} {s['views']:>6} {s['syncs']:>5} {s['bytes'] / 1e6:>10.2f}")
    return "\n".join(lines)


def main(argv=None, prog="python -m benchmarks proxies") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare with the committed file; exit 1 on a regression")
    p.add_argument("--no-aot", action="store_true", help="launch counts and bytes only (skip the Triton/nvcc compiles)")
    p.add_argument("--file", type=Path, default=PROXIES_FILE, help=f"proxies file (default {PROXIES_FILE})")
    a = p.parse_args(argv)
    from . import yolo

    yolo.offline()
    new = compute(aot=not a.no_aot)
    print(format_launches(new["launches"]))
    for name, r in new["train_memory"].items():
        base = new["train_memory"].get(name.rsplit(": ", 1)[0] + ": ultralytics")
        ratio = f" = {r['peak_mb'] / base['peak_mb']:.3f}x ultralytics" if base and base is not r else ""
        print(f"{name:<58} peak {r['peak_mb']:>9.0f} MB (activations {r['activations_mb']:.0f} MB){ratio}")
    for key in ("triton_aot", "cuda_ptxas"):
        if isinstance(new.get(key), list):
            rows = new[key]
            print(f"{key}: {len(rows)} kernels, max regs {max((r.get('regs', 0) for r in rows), default=0)}, "
                  f"{sum(1 for r in rows if r.get('spills'))} spilling, {sum(1 for r in rows if not r.get('ok'))} failed")
        elif key in new:
            print(f"{key}: skipped: {new[key]['skipped']}")
    if not a.check:
        old = json.loads(a.file.read_text()) if a.file.exists() else {}
        lost = [k for k in ("triton_aot", "cuda_ptxas") if isinstance(new.get(k), dict) and isinstance(old.get(k), list)]
        if lost:  # e.g. a broken install: do not replace committed register tables with "skipped"
            print(f"not writing {a.file}: {', '.join(lost)} could not be computed here but the file has them "
                  "(fix the cause above, or pass --no-aot to keep the file's tables)")
            return 1
        for k in ("triton_aot", "cuda_ptxas"):  # --no-aot: the committed tables stay
            if k not in new and k in old:
                new[k] = old[k]
        a.file.parent.mkdir(parents=True, exist_ok=True)
        a.file.write_text(json.dumps(new, indent=1) + "\n")
        print(f"wrote {a.file}")
        return 0
    if not a.file.exists():
        print(f"no committed proxies file at {a.file}: run `python -m benchmarks proxies` and commit it")
        return 1
    bad, notes = compare(json.loads(a.file.read_text()), new)
    for n in notes:
        print("note:", n)
    for b in bad:
        print("REGRESSION:", b)
    print("proxies check:", "FAILED" if bad else "ok")
    return 1 if bad else 0
