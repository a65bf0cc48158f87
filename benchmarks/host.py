"""Host time of AAttn's inference path: the custom-op layer vs the op bodies called directly.

    python -m benchmarks.host [--device cpu|cuda] [--repeat N]
    python -m benchmarks.host --model [BATCHES] [--device cpu|cuda] [--calls N]   (whole yolo12n, see model_host)
    python -m benchmarks.host --step [REGEX] [--device cpu|cuda]   (the ops suite's fwd+bwd steps, see step_host)

A batch-1 forward of a small YOLO12 on a GPU is host-bound: the GPU finishes each kernel before Python has issued the
next, so every microsecond of Python per call is latency. In eager inference AAttn calls the op bodies
(ops.pe.run, ops.area_attention.plus_residual) instead of the public ops yolov12_fast::pe_add and
yolov12_fast::area_attention_add_; this measures what that saves per AAttn call, at a tiny shape so that the kernels
themselves cost next to nothing:

- on CUDA the real kernels run (auto backends); calls are issued back to back and synchronised once at the end, so
  the time per call is the host's (the GPU drains each tiny launch faster than the host issues the next);
- on CPU the kernels are replaced by stubs that return their output buffer (CPU kernels are synchronous, their
  time would hide the host's); what remains is dispatch, checks, backend resolution and the launchers' Python.

Rows: `ops` (the functional API: through the custom-op layer until 2026-11-27, since then eager calls skip it too),
`direct` (what AAttn's
inference path now runs, including its checks and backend resolution), both PE + attention; and the whole fused
module, `ultralytics AAttn` vs `patched AAttn` (on CUDA: the host-bound latency of one block at batch 1). Median of
--repeat rounds, microseconds per call. Not a suite of `python -m benchmarks`: it times host code, with stubs on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from unittest import mock

import torch


def _stubs(device: torch.device):
    """On CPU: the kernels replaced by stubs returning their output buffer, the backends "auto" resolves to made
    those it resolves to on a GPU (Triton attention, reference PE). On CUDA: nothing replaced."""
    if device.type == "cuda":
        return contextlib.nullcontext()
    from yolov12_fast.kernels import area_attention as tk
    from yolov12_fast.ops import area_attention as aa
    from yolov12_fast.ops import pe

    real_usable = aa._usable
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(tk, "area_attention_fwd", lambda q, k, v, area, scale, residual=None,
                                          out=None: (out, None)))
    stack.enter_context(mock.patch.object(aa, "_usable", lambda b, d, dt=None: (True, "") if b == "triton"
                                          else real_usable(b, d, dt)))
    stack.enter_context(mock.patch.object(aa, "_auto_order", lambda device, dtype, head_dim: ("triton",)))
    stack.enter_context(mock.patch.object(pe, "_usable", lambda b, d, dt=None: (False, "stubbed") if b == "cpp"
                                          else real_usable(b, d, dt)))  # PE: the reference (cuDNN on a GPU)
    stack.enter_context(mock.patch.object(pe, "_reference", lambda v, w, b, x, H, W: torch.empty_like(
        v, memory_format=torch.contiguous_format)))
    return stack


def _aattn_modules(dev: torch.device, dtype: torch.dtype):
    """A fused ultralytics AAttn (dim 64, 2 heads, as `model.fuse()` leaves it for predict) and its patched copy."""
    import copy

    from ultralytics.nn.modules.block import AAttn
    from ultralytics.utils.torch_utils import fuse_conv_and_bn

    import yolov12_fast

    plain = AAttn(64, 2, 1).eval()
    for m in plain.modules():
        if hasattr(m, "bn") and hasattr(m, "forward_fuse"):
            with torch.no_grad():  # older ultralytics fuses with autograd on (weights that are no leaves)
                m.conv = fuse_conv_and_bn(m.conv, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
    plain = plain.to(dev, dtype)
    return plain, yolov12_fast.patch(copy.deepcopy(plain))


def measure(device: str = "cpu", repeat: int = 7, calls: int = 2000) -> dict:
    """Microseconds per AAttn call, median of `repeat` rounds of `calls` calls, on a 2x2 map with 2 heads of
    head_dim 32: {"ops": .., "direct": ..} for PE + attention, and {"ultralytics AAttn": .., "patched AAttn": ..} for
    the whole fused module (qkv, PE, attention, proj; on CPU ultralytics' small matmuls and the convs are real)."""
    from yolov12_fast.functional import area_attention_add_, pe_add
    from yolov12_fast.ops import area_attention as aa
    from yolov12_fast.ops import pe

    dev = torch.device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    qkv = torch.randn(1, 2, 96, 4, device=dev, dtype=dtype)  # the interleaved qkv conv output, 2 heads, 2x2 map
    q, k, v = qkv.split(32, dim=2)
    w, b = torch.randn(64, 1, 7, 7, device=dev, dtype=dtype), torch.randn(64, device=dev, dtype=dtype)

    def through_ops():
        return area_attention_add_(pe_add(v, w, b, 2, 2), q, k, v, 1, 32 ** -0.5)

    def direct():  # what AAttn._direct + forward run
        if not aa._inputs_ok(q, k, v, 1, None, "auto"):
            raise AssertionError("the direct path would not run on these inputs")
        p = pe.run(v, w, b, None, 2, 2, pe.resolve_backend("auto", dev, dtype, 7))
        return aa.plus_residual(q, k, v, 1, 32 ** -0.5, p, aa.resolve_backend("auto", dev, dtype, 32))

    plain, patched = _aattn_modules(dev, dtype)
    x = torch.randn(1, 64, 2, 2, device=dev, dtype=dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = {}
    with _stubs(dev), torch.inference_mode():
        fns = {"ops": through_ops, "direct": direct, "ultralytics AAttn": lambda: plain(x),
               "patched AAttn": lambda: patched(x)}
        rounds = {name: [] for name in fns}
        for f in fns.values():
            for _ in range(min(200, calls)):
                f()
        sync()
        for _ in range(repeat):
            for name, f in fns.items():  # interleaved rounds: drift hits both alike
                t0 = time.perf_counter()
                for _ in range(calls):
                    f()
                sync()
                rounds[name].append((time.perf_counter() - t0) / calls * 1e6)
        for name, r in rounds.items():
            out[name] = statistics.median(r)
    return out


def hot_spots(device: str = "cpu", calls: int = 2000, top: int = 25) -> str:
    """cProfile of `calls` patched-AAttn calls (after warm-up; on CPU with the kernels stubbed): the functions with
    the most own time, to say where the host time of the patched module goes (Python checks, backend resolution,
    torch ops' bindings, the C++ op's dispatch)."""
    import cProfile
    import io
    import pstats

    dev = torch.device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    _, patched = _aattn_modules(dev, dtype)
    x = torch.randn(1, 64, 2, 2, device=dev, dtype=dtype)
    with _stubs(dev), torch.inference_mode():
        for _ in range(200):
            patched(x)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(calls):
            patched(x)
        prof.disable()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("tottime").print_stats(top)
    total = sum(v[2] for v in st.stats.values()) / calls * 1e6  # own times add up to the total
    return f"patched AAttn under cProfile: {total:.1f} us per call (profiler overhead included); top {top} by own time:\n" \
        + "\n".join(line for line in buf.getvalue().splitlines()[6:] if line.strip())


def _sync_sites(model, x) -> dict:
    """{"file:line": count} of the synchronizing CUDA calls one forward makes (torch's sync debug mode warns at each:
    a host-device sync inside a forward serialises host and GPU, so eager time = host time + GPU time instead of
    the larger of the two). Empty on CPU (nothing to sync with)."""
    if x.device.type != "cuda":
        return {}
    import warnings
    from collections import Counter

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            model(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return dict(Counter(f"{w.filename}:{w.lineno}" for w in seen if "synchroniz" in str(w.message)))


def _allocator_counts(dev: torch.device) -> dict:
    """cudaMalloc / cudaFree calls of torch's caching allocator so far (a cudaFree synchronises the device, as a
    sync inside the forward would: torch's sync debug mode does not report it). Empty on CPU."""
    if dev.type != "cuda":
        return {}
    st = torch.cuda.memory_stats(dev)
    return {k: st.get(k, 0) for k in ("num_device_alloc", "num_device_free", "num_alloc_retries")}


def model_host(device: str = "cpu", batches=(1, 32), calls: int = 20, imgsz: int = 640, top: int = 20,
               cfg: str = "yolo12n") -> dict:
    """Host time of whole-model inference, ultralytics' fused `cfg` against its patched copy (auto backends), per
    batch: `call_ms` (from an idle GPU until model(x) returns: the host's time to issue the forward, when nothing
    in it waits for the GPU), `total_ms` (until the GPU is done), `sync_sites` (where one forward synchronises),
    `device_mallocs_per_call` (the caching allocator's cudaMalloc / cudaFree per forward in steady state: a cudaFree
    synchronises too).
    On a GPU, a forward whose call_ms is near total_ms at a batch where the GPU work dominates (batch 32) waits for
    the GPU somewhere inside: sync_sites says where. Also a cProfile of the patched model's batch-1 calls (the
    functions with the most own time). fp16 on CUDA, fp32 on CPU (real kernels on both)."""
    import copy
    import cProfile
    import io
    import pstats

    import yolov12_fast

    from . import yolo

    dev = torch.device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    plain = yolo.build(cfg, calibrate_imgsz=imgsz, device=dev, dtype=dtype)
    models = {"ultralytics": plain, "patched": yolov12_fast.patch(copy.deepcopy(plain))}
    out = {"rows": []}
    with torch.inference_mode():
        for batch in batches:
            x = torch.rand(batch, 3, imgsz, imgsz, device=dev, dtype=dtype)
            for name, m in models.items():
                for _ in range(3):
                    m(x)
                call, total = [], []
                before = _allocator_counts(dev)
                for _ in range(calls):
                    sync()
                    t0 = time.perf_counter()
                    m(x)
                    t1 = time.perf_counter()
                    sync()
                    call.append((t1 - t0) * 1e3)
                    total.append((time.perf_counter() - t0) * 1e3)
                after = _allocator_counts(dev)
                out["rows"].append({"model": name, "batch": batch, "call_ms": statistics.median(call),
                                    "total_ms": statistics.median(total), "sync_sites": _sync_sites(m, x),
                                    "device_mallocs_per_call": {k: (after[k] - before[k]) / calls for k in after}})
        x = torch.rand(1, 3, imgsz, imgsz, device=dev, dtype=dtype)
        out["layers"] = _layer_host_us(models, x, calls, sync)
        for name, m in models.items():
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(calls):
                m(x)
            prof.disable()
            sync()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
            out["profile" if name == "patched" else f"profile_{name}"] = \
                "\n".join(line for line in buf.getvalue().splitlines()[6:] if line.strip())
    return out


def _layer_host_us(models: dict, x, calls: int, sync) -> list:
    """Per top-level layer of each model (ultralytics' model.model[i]): the median time from the layer's forward
    pre-hook to its forward hook over `calls` batch-1 forwards, in microseconds, the models interleaved. On a GPU
    nothing waits for the device inside a forward (model_host's sync_sites says so), so this is the host's time to
    issue each layer: where a patched model's extra host time goes (on the H100 of 2026-11-27c the patched
    yolo12n's batch-1 forward took 8.9 ms of host time against ultralytics' 6.9, with fewer kernels; a CPU proxy of
    its CUDA path, the batch-1 GEMM off, measures it 5 % faster than ultralytics here). Rows: (layer, {model: us})."""
    times, hooks = {}, []

    def pre(mod, args):
        mod.__dict__["_yf_host_t0"] = time.perf_counter()

    def post(mod, args, result):
        times.setdefault(mod.__dict__["_yf_host_key"], []).append(time.perf_counter() - mod.__dict__["_yf_host_t0"])

    for name, m in models.items():
        for i, layer in enumerate(getattr(m, "model", [])):
            layer.__dict__["_yf_host_key"] = (f"{i}:{type(layer).__name__.removeprefix('Fast')}", name)
            hooks += [layer.register_forward_pre_hook(pre), layer.register_forward_hook(post)]
    try:
        for _ in range(3):
            for m in models.values():
                m(x)
        sync()
        times.clear()
        for _ in range(calls):
            for m in models.values():
                sync()
                m(x)
        sync()
    finally:
        for h in hooks:
            h.remove()
        for m in models.values():
            for layer in getattr(m, "model", []):
                layer.__dict__.pop("_yf_host_key", None)
                layer.__dict__.pop("_yf_host_t0", None)
    layers = {}
    for (layer, name), ts in times.items():
        layers.setdefault(layer, {})[name] = statistics.median(ts) * 1e6
    return sorted(layers.items(), key=lambda kv: int(kv[0].split(":")[0]))


def step_host(device: str = "cuda", pattern: str = r"^fwdbwd P[45] 640x640 h[48] b32 ",
              providers=("ultralytics", "flash", "sdpa", "triton", "triton+cuda-pe", "cuda", "auto"),
              steps: int = 20) -> list:
    """Where a training step's time goes, for the ops suite's attention cases matching `pattern` (default its fwd+bwd
    rows at batch 32): per provider, `call_ms` (from an idle GPU until forward + backward return: the host's time to
    issue them, if nothing inside waits for the GPU), `total_ms` (until the GPU is done), the syncs one step makes and
    the caching allocator's cudaMalloc / cudaFree per step. On the H100 (2026-11-27b) these rows took 2-3x their
    kernels' time (fwdbwd P5 h4 b32, CUDA: 0.94 ms for 0.36 ms of kernels; flash likewise, ultralytics not): this says
    whether the host, a sync or the allocator is the gap. fp16 on CUDA, fp32 on CPU."""

    from . import baselines as bl
    from . import ops

    dev = torch.device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rows = []
    for case in ops.matching(ops.attention_cases(dev, quick=False), pattern):
        backward = case.pass_ == "fwdbwd"
        args = ops._inputs(case, dev, dtype, backward)
        dout = torch.randn(case.batch, case.C, case.H, case.W, device=dev, dtype=dtype) if backward else None
        for name in providers:
            p = bl.ATTENTION_PROVIDERS.get(name)
            ok, why = p.available(dev, dtype, backward, False) if p else (False, "no such provider")
            if not ok:
                rows.append({"case": case.name, "provider": name, "skipped": why})
                continue
            step = ops._callable(p.fn, case, args, dout)
            for _ in range(3):
                step()
            call, total = [], []
            before = _allocator_counts(dev)
            for _ in range(steps):
                sync()
                t0 = time.perf_counter()
                step()
                t1 = time.perf_counter()
                sync()
                call.append((t1 - t0) * 1e3)
                total.append((time.perf_counter() - t0) * 1e3)
            after = _allocator_counts(dev)
            rows.append({"case": case.name, "provider": name, "call_ms": statistics.median(call),
                         "total_ms": statistics.median(total), "sync_sites": _sync_sites(lambda _x: step(), args[0]),
                         "device_mallocs_per_call": {k: (after[k] - before[k]) / steps for k in after}})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.host", description=__doc__.split("\n\n")[1])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: host time is one thread's; more only adds contention)")
    p.add_argument("--hot-spots", action="store_true", help="also print a cProfile of the patched AAttn calls")
    p.add_argument("--model", nargs="?", const="1,32", default=None, metavar="BATCHES",
                   help="instead: host time of a whole yolo12n forward, ultralytics vs patched, at these batches "
                        "(default 1,32; --calls forwards each, default 20 here), the syncs inside one forward, and a "
                        "cProfile of the patched batch-1 forward")
    p.add_argument("--imgsz", type=int, default=640, help="--model's image size")
    p.add_argument("--step", nargs="?", const=r"^fwdbwd P[45] 640x640 h[48] b32 ", default=None, metavar="REGEX",
                   help="instead: host vs device time, syncs and allocator calls of the ops suite's attention cases "
                        "matching REGEX (default its fwd+bwd rows at batch 32), per provider")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    if a.step is not None:
        rows = step_host(a.device, a.step)
        print(f"ops attention cases on {a.device}, median of 20 calls: call = until forward (+ backward) return, "
              "total = until the device is done")
        for row in rows:
            if "skipped" in row:
                print(f"  {row['case']:<32} {row['provider']:<12} skipped: {row['skipped']}")
                continue
            print(f"  {row['case']:<32} {row['provider']:<12} call {row['call_ms']:7.3f} ms, total "
                  f"{row['total_ms']:7.3f} ms, syncs per call: {sum(row['sync_sites'].values())} "
                  f"{row['sync_sites'] or ''}" + (f", device allocator calls per call: {row['device_mallocs_per_call']}"
                                                  if row["device_mallocs_per_call"] else ""))
        return 0
    if a.model is not None:
        calls = a.calls if "--calls" in (argv if argv is not None else __import__("sys").argv) else 20
        r = model_host(a.device, tuple(int(b) for b in a.model.split(",")), calls, a.imgsz)
        print(f"yolo12n {a.imgsz}x{a.imgsz} inference on {a.device} (torch threads {torch.get_num_threads()}), median "
              f"of {calls} forwards: call = until model(x) returns, total = until the device is done")
        for row in r["rows"]:
            print(f"  {row['model']:<12} batch {row['batch']:>3}: call {row['call_ms']:8.2f} ms, total "
                  f"{row['total_ms']:8.2f} ms, syncs in one forward: {sum(row['sync_sites'].values())} "
                  f"{row['sync_sites'] or ''}" + (f", device allocator calls per forward: {row['device_mallocs_per_call']}"
                                                  if row["device_mallocs_per_call"] else ""))
        print("host time per layer of a batch-1 forward (forward hooks, median us; hooks on both models):")
        names = list(r["layers"][0][1]) if r["layers"] else []
        print("  " + f"{'layer':<14}" + "".join(f"{n:>14}" for n in names) + f"{'diff':>10}")
        for layer, us in r["layers"]:
            diff = us.get("patched", 0.0) - us.get("ultralytics", 0.0)
            print("  " + f"{layer:<14}" + "".join(f"{us.get(n, float('nan')):14.1f}" for n in names) + f"{diff:+10.1f}")
        print(f"ultralytics batch-1 forwards under cProfile, top by own time:\n{r['profile_ultralytics']}")
        print(f"patched batch-1 forwards under cProfile, top by own time:\n{r['profile']}")
        return 0
    print(f"timing AAttn's inference path: {a.repeat} rounds x {a.calls} calls of 4 variants ...", flush=True)
    r = measure(a.device, a.repeat, a.calls)
    what = "real kernels, host-bound" if a.device == "cuda" else "kernels stubbed"
    print(f"AAttn host time per call ({a.device}, {what}, torch threads {torch.get_num_threads()}): "
          f"PE + attention through the ops {r['ops']:.1f} us, direct {r['direct']:.1f} us, saved "
          f"{r['ops'] - r['direct']:.1f} us; whole fused AAttn: ultralytics {r['ultralytics AAttn']:.1f} us, patched "
          f"{r['patched AAttn']:.1f} us")
    if a.hot_spots:
        print(hot_spots(a.device, a.calls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
