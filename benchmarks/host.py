"""Host time of AAttn's inference path: the custom-op layer vs the op bodies called directly.

    python -m benchmarks.host [--device cpu|cuda] [--repeat N]

A batch-1 forward of a small YOLO12 on a GPU is host-bound: the GPU finishes each kernel before Python has issued the
next, so every microsecond of Python per call is latency. In eager inference AAttn calls the op bodies
(ops.pe.run, ops.area_attention.plus_residual) instead of the public ops yolov12_fast::pe_add and
yolov12_fast::area_attention_add_; this measures what that saves per AAttn call, at a tiny shape so that the kernels
themselves cost next to nothing:

- on CUDA the real kernels run (auto backends); calls are issued back to back and synchronised once at the end, so
  the time per call is the host's (the GPU drains each tiny launch faster than the host issues the next);
- on CPU the kernels are replaced by stubs that return their output buffer (CPU kernels are synchronous, their
  time would hide the host's); what remains is dispatch, checks, backend resolution and the launchers' Python.

Rows: `ops` (the functional API, through the custom-op layer, as before the direct path), `direct` (what AAttn's
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.host", description=__doc__.split("\n\n")[1])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: host time is one thread's; more only adds contention)")
    p.add_argument("--hot-spots", action="store_true", help="also print a cProfile of the patched AAttn calls")
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
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
