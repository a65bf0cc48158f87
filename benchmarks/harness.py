"""What every suite shares: the machine's metadata, the timers, the row format, and the run context.

Timing (BENCHMARKS.md):
- GPU: `triton.testing.do_bench` (L2 flushed before every rep; median with 20th/80th percentiles), or
  `do_bench_cudagraph` for microsecond cases (kernel time without launch gaps). Rows say which timer ran.
- CPU: interleaved rounds: every provider of a case runs once per round, rounds repeat, and the median (p20, p80)
  per provider is taken over rounds, so load from other processes hits all providers alike. Threads are pinned
  with torch.set_num_threads and recorded in the row.

Roofline (per row with FLOPs and bytes): t_roof = max(FLOPs / matmul peak, bytes / copy bandwidth), both ceilings
measured in the same run (ceilings.py); % roofline = t_roof / measured time. Attention rows on GPU also get the
exp floor: exponentials needed / the measured exp2 rate (% exp floor = that / measured time).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCHEMA = 1
QUANTILES = (0.5, 0.2, 0.8)


# ----------------------------------------------------------------------------------------------------------------
# machine and versions


def _version(pkg: str) -> Optional[str]:
    import importlib.metadata

    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def git_commit() -> Optional[str]:
    """Short commit of the working tree (with '+dirty' when it has uncommitted changes); YOLOV12_FAST_COMMIT where
    no .git came along (the GPU machine gets a copy of the tree: run_gpu.sh's header); None otherwise."""
    if os.environ.get("YOLOV12_FAST_COMMIT"):
        return os.environ["YOLOV12_FAST_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=20).stdout.strip()
        if not sha:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=20).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine_meta(device: torch.device) -> dict:
    """Device name, versions, commit and date: copied into every row."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        name, cc = p.name, f"sm_{p.major}{p.minor}"
    else:
        name, cc = cpu_name(), None
    return {
        "device": name, "device_kind": device.type, "compute_capability": cc,
        "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,  # a busy host is noisy
        "torch": torch.__version__, "triton": _version("triton"), "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(), "ultralytics": _version("ultralytics"),
        "flash_attn": _version("flash-attn") or _version("flash_attn"),
        "yolov12_fast": _version("yolov12_fast"), "commit": git_commit(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].rstrip("-") or "device"


def results_path(out_dir: Path, meta: dict, quick: bool = False) -> Path:
    """<out>/<device>-<date>.jsonl, e.g. nvidia-h100-80gb-hbm3-2025-11-25.jsonl or cpu-intel-xeon-...-2025-11-25.jsonl;
    a --quick smoke run writes <device>-<date>-quick.jsonl (git-ignored: smoke rows never mix with recorded figures)."""
    dev = meta["device"] if meta["device_kind"] == "cuda" else "cpu-" + meta["device"]
    return Path(out_dir) / f"{slug(dev)}-{meta['date'][:10]}{'-quick' if quick else ''}.jsonl"


# ----------------------------------------------------------------------------------------------------------------
# timers


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    timer: str
    samples: int = 0


def compile_budget_s(default: float) -> float:
    """Seconds a suite may spend compiling its torch.compile baselines: `default`, or YOLOV12_FAST_BENCH_COMPILE_S
    (0 skips them: run_gpu.sh quick, where minutes of inductor compilation do not fit)."""
    return float(os.environ.get("YOLOV12_FAST_BENCH_COMPILE_S", default))


def time_gpu(fn: Callable[[], object], *, cudagraph: bool = False, warmup_ms: int = 25, rep_ms: int = 100) -> Timing:
    """Median / p20 / p80 of fn on the current CUDA device. cudagraph=True captures fn in a CUDA graph (microsecond
    kernels: no launch gaps, no L2 flush); if capture fails it falls back to do_bench and says so in `timer`."""
    import triton.testing as tt

    note = "do_bench"
    if cudagraph:
        try:
            med, p20, p80 = tt.do_bench_cudagraph(fn, rep=rep_ms, quantiles=list(QUANTILES))
            return Timing(med, p20, p80, "do_bench_cudagraph")
        except Exception as e:  # not capturable (host sync, allocation pattern, ...): plain do_bench below
            torch.cuda.synchronize()
            note = f"do_bench (cudagraph capture failed: {type(e).__name__})"
    med, p20, p80 = tt.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=list(QUANTILES))
    return Timing(med, p20, p80, note)


def _quantile(xs: list, q: float) -> float:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def time_cpu_interleaved(fns: dict, *, rounds: int = 15, min_round_s: float = 0.02, warmup: int = 2,
                         budget_s: Optional[float] = None) -> dict:
    """{name: Timing} for CPU callables measured in interleaved rounds (see the module docstring). Each call in a
    round repeats `inner` times, chosen from the warm-up so one round of one provider lasts about min_round_s."""
    inner = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        for _ in range(max(warmup, 1)):
            fn()
        per_call = max((time.perf_counter() - t0) / max(warmup, 1), 1e-6)
        inner[name] = max(1, min(100, int(min_round_s / per_call)))
    samples = {name: [] for name in fns}
    start = time.perf_counter()
    for r in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            samples[name].append((time.perf_counter() - t0) / inner[name] * 1e3)
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {name: Timing(statistics.median(s), _quantile(s, 0.2), _quantile(s, 0.8),
                         f"cpu interleaved x{inner[name]}", len(s)) for name, s in samples.items()}


def gpu_peak_memory(fn: Callable[[], object]) -> tuple[int, int]:
    """(peak bytes allocated during one call of fn, peak minus what was allocated before: the call's own need)."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return peak, peak - before


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


# ----------------------------------------------------------------------------------------------------------------
# rows


def make_row(ctx: "Context", suite: str, case: str, params: dict, provider: str, *, timing: Optional[Timing] = None,
             status: str = "ok", reason: Optional[str] = None, flops: Optional[float] = None,
             nbytes: Optional[float] = None, dtype: Optional[torch.dtype] = None, peak: Optional[tuple] = None,
             exp2: Optional[float] = None, **extra) -> dict:
    """One result row. FLOPs and bytes are the case's (the same for every provider: the work the task needs, not
    what a provider happens to do); TFLOP/s, GB/s and % roofline follow from the median time and the ceilings.
    `exp2` (attention rows): the exponentials the task needs; with a measured exp2 rate (GPU ceilings) the row gets
    `exp_floor_ms` and `pct_exp_floor`, the softmax's own floor next to the roofline's."""
    row = {"schema": SCHEMA, "suite": suite, "case": case, "params": params, "provider": provider, "status": status,
           "reason": reason, **ctx.meta, "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
           "threads": torch.get_num_threads(), "quick": ctx.quick}
    if timing is not None:
        row.update(median_ms=timing.median_ms, p20_ms=timing.p20_ms, p80_ms=timing.p80_ms, timer=timing.timer)
        s = timing.median_ms * 1e-3
        if flops:
            row["flops"] = flops
            row["tflops"] = flops / s / 1e12
        if nbytes:
            row["bytes"] = nbytes
            row["gbps"] = nbytes / s / 1e9
        ceil = ctx.ceilings_if_known()
        if ceil and (flops or nbytes):
            t_flop = (flops or 0) / (ceil["matmul_tflops"] * 1e12)
            t_byte = (nbytes or 0) / (ceil["copy_gbps"] * 1e9)
            row["roofline_ms"] = max(t_flop, t_byte) * 1e3
            row["roofline_bound"] = "compute" if t_flop >= t_byte else "memory"
            row["pct_roofline"] = 100.0 * row["roofline_ms"] / timing.median_ms
        if ceil and exp2 and ceil.get("exp2_gps"):
            row["exp2"] = exp2
            row["exp_floor_ms"] = exp2 / (ceil["exp2_gps"] * 1e9) * 1e3
            row["pct_exp_floor"] = 100.0 * row["exp_floor_ms"] / timing.median_ms
    if peak is not None:
        row["peak_mem_mb"] = peak[0] / 2**20
        row["extra_mem_mb"] = peak[1] / 2**20
    row.update(extra)
    return row


def timer_kind(timer: Optional[str]) -> str:
    """The timing method of a row's `timer`: "do_bench_cudagraph", "do_bench" (also after a failed capture) or
    "cpu" (interleaved rounds, whatever their repeat count)."""
    return (timer or "").split(" ")[0]


def add_speedups(rows: list, baselines: Iterable[str]) -> list:
    """row["speedup_vs"][b] = median(b) / median(row) for every baseline b measured (status ok) in `rows` (one case)
    by the same timing method: a provider whose CUDA graph capture failed was timed by do_bench (launch gaps, L2
    flushed) and is not divided by one timed in a graph; `speedup_skipped` names such baselines."""
    times = {r["provider"]: (r["median_ms"], timer_kind(r.get("timer"))) for r in rows
             if r.get("status") == "ok" and r.get("median_ms")}
    for r in rows:
        if r.get("status") != "ok" or not r.get("median_ms"):
            continue
        kind = timer_kind(r.get("timer"))
        mine = [b for b in baselines if b in times and b != r["provider"]]
        r["speedup_vs"] = {b: times[b][0] / r["median_ms"] for b in mine if times[b][1] == kind}
        other = [b for b in mine if times[b][1] != kind]
        if other:
            r["speedup_skipped"] = {b: f"timed by {times[b][1]}, this row by {kind}" for b in other}
    return rows


# ----------------------------------------------------------------------------------------------------------------
# run context


@dataclass
class Context:
    """Options of one run plus the output file. Suites call `emit` as soon as a case is done, so a run cut short
    (timeout, crash) keeps what it measured."""

    device: torch.device
    quick: bool = False
    out_dir: Path = RESULTS_DIR
    threads: tuple = (1, 2)
    budget_s: Optional[float] = None  # per suite; remaining cases are recorded as skipped
    progress: bool = True
    echo: bool = True  # one console line per row
    cases: Optional[str] = None  # regex: only cases whose name matches (re.search)
    dtype: Optional[str] = None  # the ops suite's dtype on CUDA ("float16" default, "bfloat16")
    meta: dict = field(default_factory=dict)
    path: Optional[Path] = None
    written: list = field(default_factory=list)
    _ceilings: dict = field(default_factory=dict)  # {threads (0 on GPU): ceilings}

    def __post_init__(self):
        self.device = torch.device(self.device)
        if not self.meta:
            self.meta = machine_meta(self.device)
        if self.path is None:
            self.path = results_path(self.out_dir, self.meta, self.quick)

    def emit(self, rows) -> None:
        rows = [rows] if isinstance(rows, dict) else list(rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            for r in rows:
                f.write(json.dumps(r, default=_json_default) + "\n")
        self.written.extend(rows)
        if self.echo:
            for r in rows:
                if r.get("status") == "skipped" and "budget" in str(r.get("reason")):
                    continue  # one line per suite counts these (python -m benchmarks' summary), not one per row
                print(format_row(r), flush=True)

    def _ceiling_key(self) -> int:
        return 0 if self.device.type == "cuda" else torch.get_num_threads()

    def ceilings(self) -> dict:
        """This device's measured ceilings (on CPU: at the current thread count), measured once per run on first use."""
        key = self._ceiling_key()
        if key not in self._ceilings:
            from . import ceilings

            self._ceilings[key] = ceilings.measure(self)
        return self._ceilings[key]

    def ceilings_if_known(self) -> Optional[dict]:
        return self._ceilings.get(self._ceiling_key())

    def tqdm(self, iterable, **kw):
        try:
            from tqdm import tqdm
        except ImportError:  # progress bars are a nicety: never fail a GPU run over them
            return iterable
        return tqdm(iterable, disable=self.quick or not self.progress, mininterval=5.0, dynamic_ncols=True, **kw)

    def wants(self, case_name: str) -> bool:
        return self.cases is None or re.search(self.cases, case_name) is not None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def format_row(r: dict) -> str:
    """One console line per row (what a GPU log shows)."""
    head = f"{r.get('suite')} | {r.get('case')} | {r.get('provider')}"
    if r.get("device_kind") == "cpu":
        head += f" | {r.get('threads')} thr"
    if r.get("status") != "ok":
        return f"{head} | {r.get('status')}: {r.get('reason')}"
    parts = [f"{r['median_ms']:.4g} ms"]
    if r.get("tflops"):
        parts.append(f"{r['tflops']:.3g} TFLOP/s")
    if r.get("pct_roofline"):
        parts.append(f"{r['pct_roofline']:.1f}% roof")
    if r.get("peak_mem_mb") is not None:
        parts.append(f"{r['peak_mem_mb']:.0f} MB peak")
    parts += [f"{v:.2f}x vs {k}" for k, v in (r.get("speedup_vs") or {}).items()]
    if r.get("check") not in (None, "pass"):
        parts.append(str(r["check"]))
    return f"{head} | " + ", ".join(parts)


def _json_default(o):
    if isinstance(o, (torch.dtype, torch.device, Path)):
        return str(o)
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class Budget:
    """Deadline of one suite: `over()` is True once the suite has run `seconds` (None: never)."""

    def __init__(self, seconds: Optional[float]):
        self.seconds, self.start = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over(self) -> bool:
        return self.seconds is not None and self.elapsed() > self.seconds

    def reason(self) -> str:
        return f"suite time budget of {self.seconds:.0f} s used up (raise --budget-s to run it)"


def set_threads(n: int) -> int:
    """Pin intra-op threads; returns the previous setting."""
    prev = torch.get_num_threads()
    torch.set_num_threads(int(n))
    return prev
