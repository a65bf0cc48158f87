"""`python -m benchmarks report [FILES]`: a markdown table and PNG plots from result rows.

For each `<stem>.jsonl` (default: every one under benchmarks/results/) writes `<stem>.md` and, per suite with
measurements, `<stem>-<suite>.png` next to it. When a file holds several runs of the same (suite, case, provider,
threads), the last one wins (the file is appended to in order).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from .harness import RESULTS_DIR


def load(path: Path) -> list:
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not a JSON row ({e})") from e
    latest = OrderedDict()
    for r in rows:
        latest[(r.get("suite"), r.get("case"), r.get("provider"), r.get("threads") if r.get("device_kind") == "cpu" else None)] = r
    return list(latest.values())


# ----------------------------------------------------------------------------------------------------------------
# markdown


def _f(x, fmt="{:.3g}", none="–"):
    return none if x is None else fmt.format(x)


# A row whose timings spread this much (p80 / p20) is marked noisy: a ratio read from it is uncertain by about as much.
# The H100 runs of 2026-11-27 had such rows (auto and cuda fwd P4 h8 b32: identical kernels, medians 0.39 and 0.27 ms,
# the first with p20-p80 0.30-0.41).
NOISY_SPREAD = 1.2


def spread(r) -> float | None:
    """p80 / p20 of an ok row (None where the row has no such timings)."""
    if r.get("status") != "ok" or not r.get("p20_ms") or not r.get("p80_ms"):
        return None
    return r["p80_ms"] / r["p20_ms"]


def _ms(r):
    if r.get("status") != "ok":
        return r.get("status", "?")
    noisy = (spread(r) or 0) > NOISY_SPREAD
    return f"{r['median_ms']:.4g} ({r['p20_ms']:.3g}–{r['p80_ms']:.3g}){' noisy' if noisy else ''}"


def _noisy_section(rows: list) -> list:
    noisy = [(r, spread(r)) for r in rows if (spread(r) or 0) > NOISY_SPREAD]
    if not noisy:
        return []
    timed = sum(1 for r in rows if spread(r) is not None)
    lines = ["## Noisy timings", "",
             f"{len(noisy)} of {timed} timed rows spread more than {NOISY_SPREAD:g}x between their 20th and 80th "
             "percentile (marked `noisy` in the tables): their medians, and the ratios and targets read from them, "
             "are uncertain by about that much. Rerun those cases before trusting a ratio they decide.", "",
             "| suite | case | provider | median ms | p80 / p20 |", "|---|---|---|---|---|"]
    for r, sp in sorted(noisy, key=lambda x: -x[1]):
        lines.append(f"| {r.get('suite')} | {r.get('case')} | {r.get('provider')} | {r['median_ms']:.4g} | {sp:.2f} |")
    return lines + [""]


def _speed(r, b):
    s = (r.get("speedup_vs") or {}).get(b)
    return "–" if s is None else f"{s:.2f}x"


def _check(r):
    c = r.get("check")
    return "" if c is None else ("ok" if c == "pass" else "**" + c + "**")


def _header(names) -> list:
    return ["| " + " | ".join(names) + " |", "|" + "|".join("---" for _ in names) + "|"]


def _section(title: str, intro: str, columns: list) -> list:
    """A measured section's heading, its explanation and its table header (the rows follow)."""
    return [f"## {title}", "", intro, ""] + _header(columns)


def _table(rows: list, cols: list) -> list:
    out = _header([h for h, _ in cols])
    for r in rows:
        out.append("| " + " | ".join(str(fn(r)).replace("|", "/") for _, fn in cols) + " |")
    return out


def _threads_col(rows):
    return [("thr", lambda r: r.get("threads"))] if any(r.get("device_kind") == "cpu" for r in rows) else []


def _columns(suite: str, rows: list, fused: str | None = None) -> list:
    """Table columns; `fused` names the ops-suite prefix (pe, mlp, cv2) of a fused-conv table, whose baseline is
    `<prefix>-torch`."""
    base = [("case", lambda r: r["case"])] + _threads_col(rows) + [("provider", lambda r: r["provider"])]
    if suite == "ceilings":
        return base + [("ms", _ms), ("TFLOP/s", lambda r: _f(r.get("tflops"))), ("GB/s", lambda r: _f(r.get("gbps"), "{:.3g}")),
                       ("exp2 G/s", lambda r: _f(r.get("exp2_gps"), "{:.4g}"))]
    if suite == "ops":
        bl = ([f"{fused}-torch"] + (["pebwd-torch-cl"] if fused == "pebwd" else [])) if fused else \
            ["ultralytics", "flash", "sdpa", "compile"]
        ran = lambda r: (r.get("backend_ran") or "") + (f" [{r['tiles']}]" if r.get("tiles") else "")
        return base + [("ran", ran), ("ms (p20–p80)", _ms),
                       ("TFLOP/s", lambda r: _f(r.get("tflops"))), ("GB/s", lambda r: _f(r.get("gbps"), "{:.3g}")),
                       ("% roofline", lambda r: _f(r.get("pct_roofline"), "{:.1f}"))] + \
            ([] if fused or not any(r.get("pct_exp_floor") for r in rows) else
             [("% exp floor", lambda r: _f(r.get("pct_exp_floor"), "{:.1f}"))]) + \
            [("peak MB", lambda r: _f(r.get("peak_mem_mb"), "{:.0f}"))] + \
            [(f"vs {b}", (lambda b_: lambda r: _speed(r, b_))(b)) for b in bl] + [("check", _check)]
    if suite == "blocks":
        return base + [("ms (p20–p80)", _ms), ("peak MB", lambda r: _f(r.get("peak_mem_mb"), "{:.0f}")),
                       ("vs ultralytics", lambda r: _speed(r, "ultralytics")), ("check", _check)]
    if suite == "model":
        cross = sorted({k for r in rows for k in (r.get("speedup_vs") or {}) if k.startswith("yolo11")})
        bl = ["eager", "eager+graphs", "eager-cl", "compile", "train-eager", "train-eager-cl"] + cross
        bl = [b for b in bl if any(b in (r.get("speedup_vs") or {}) for r in rows)]
        return base + [("ms (p20–p80)", _ms), ("img/s", lambda r: _f(r.get("images_per_s"), "{:.1f}")),
                       ("peak MB", lambda r: _f(r.get("peak_mem_mb"), "{:.0f}"))] + \
            [(f"vs {b}", (lambda b_: lambda r: _speed(r, b_))(b)) for b in bl] + [("check", _check)]
    return base + [("ms", _ms)]


CONVENTIONS = """\
Conventions: median of the timed runs with the 20th–80th percentiles; GPU timed with triton.testing.do_bench
(L2 flushed per rep) or do_bench_cudagraph for batch-1 attention forwards (kernel time, no launch gaps), CPU with
interleaved rounds at the pinned thread count (`thr`). Attention FLOPs = 4·sequences·heads·n²·head_dim forward,
3.5x that for forward+backward; bytes = each input read once + each output written once; % roofline =
max(FLOPs / matmul peak, bytes / copy bandwidth) / time, with both ceilings measured in the same run; % exp floor
(GPU attention) = (exponentials needed, one per score forward and two forward+backward, / the measured exp2 rate) /
time: the softmax's floor, which at head_dim 32 can sit above the matmuls' (benchmarks/README.md). `vs X` =
time(X) / time(row): > 1 means this row is faster. `check` compares each output with the float32/float64 result
of the ultralytics math (ops) or with the ultralytics module (blocks, model)."""


def _ceiling_value(r: dict) -> str:
    """What a ceilings row measured: matmul TFLOP/s, copy GB/s or (GPU) the exp2 rate."""
    if r.get("tflops"):
        return f"{r['tflops']:.3g} TFLOP/s"
    if r.get("gbps"):
        return f"{r['gbps']:.3g} GB/s"
    if r.get("exp2_gps"):
        return f"{r['exp2_gps'] / 1e3:.3g} T exp2/s"
    return f"{r.get('median_ms', float('nan')):.4g} ms"


def markdown(rows: list, source: str) -> str:
    if not rows:
        return f"# Benchmarks\n\nNo rows in {source}.\n"
    m = rows[-1]
    lines = [f"# Benchmarks: {m.get('device')} ({m.get('device_kind')}), {m.get('date', '')[:10]}", "",
             f"torch {m.get('torch')}, triton {m.get('triton')}, CUDA {m.get('cuda')}, cuDNN {m.get('cudnn')}, "
             f"python {m.get('python')}, ultralytics {m.get('ultralytics')}, flash-attn {m.get('flash_attn') or 'not installed'}, "
             f"commit {m.get('commit')}, CPU {m.get('cpu')} ({m.get('cpu_count')} cores, load average "
             f"{m.get('loadavg_1m', '?')} at the start). Source: `{source}`"
             + (" (includes --quick rows: smoke figures)" if any(r.get("quick") for r in rows) else "") + ".", ""]
    ceil = [r for r in rows if r.get("suite") == "ceilings" and r.get("status") == "ok"]
    if ceil:
        parts = [f"{r['case']}{' @' + str(r['threads']) + ' thr' if r.get('device_kind') == 'cpu' else ''}: "
                 + _ceiling_value(r) for r in ceil]
        lines += ["Ceilings (measured in this run): " + "; ".join(parts) + ".", ""]
    lines += [CONVENTIONS, ""]
    by_suite = defaultdict(list)
    for r in rows:
        by_suite[r.get("suite")].append(r)
    for suite in ("ceilings", "ops", "blocks", "model"):
        srows = [r for r in by_suite.get(suite, []) if r.get("status") != "skipped"]
        if not srows:
            continue
        if suite == "ops":
            fused = {p: [r for r in srows if r["provider"].startswith(p + "-")] for p in (*FUSED, "pebwd")}
            att = [r for r in srows if not any(r["provider"].startswith(p + "-") for p in fused)]
            if att:
                lines += ["## ops: area attention (qkv conv output -> proj input, PE included)", ""]
                lines += _table(att, _columns(suite, att)) + [""]
            titles = {"pe": "PE branch (depthwise 7x7 + bias + add)", "mlp": "ABlock MLP + residual",
                      "cv2": "A2C2f cv2 (+ the L/X residual)",
                      "pebwd": "PE branch backward (dv, dw, db; torch-cl: ATen on channels_last copies made untimed)"}
            for p, prow in fused.items():
                if prow:
                    lines += [f"## ops: {titles[p]}", ""] + _table(prow, _columns(suite, prow, fused=p)) + [""]
            lines += _auto_section(rows)
        else:
            lines += [f"## {suite}", ""] + _table(srows, _columns(suite, srows)) + [""]
            if suite == "model":
                lines += _recompute_section(srows)
    lines += _targets_section(rows)
    lines += _predictions_section(rows)
    lines += _noisy_section(rows)
    skipped = [r for r in rows if r.get("status") in ("skipped", "error")]
    if skipped:
        lines += ["## Skipped and failed", ""]
        groups = OrderedDict()
        for r in skipped:
            groups.setdefault((r.get("status"), r.get("suite"), r.get("provider"), r.get("reason")), []).append(r["case"])
        for (status, suite, prov, reason), cases in groups.items():
            shown = ", ".join(cases[:4]) + (f", … ({len(cases)} cases)" if len(cases) > 4 else "")
            lines.append(f"- {status}: {suite} / {prov} — {reason} [{shown}]")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# what `auto` should pick, by measurement

# Fused pointwise ops: (baseline provider, fused providers). A fused kernel replaces the cuDNN / ATen default of auto
# only where it is faster by MARGIN in the geometric mean over the measured cases of an (arch, dtype) and in at least
# two thirds of them (the issue's rule: a fusion that does not beat cuDNN is not the default).
FUSED = {"pe": ("pe-torch", ("pe-triton", "pe-cuda")), "mlp": ("mlp-torch", ("mlp-triton",)),
         "cv2": ("cv2-torch", ("cv2-triton",))}
MARGIN = 1.05


def _geomean(xs: list) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def auto_choices(rows: list) -> list:
    """Rows (dicts) of the measured choice per (what, arch, dtype): the candidates' geometric-mean speed ratio over
    the cases where both ran and passed their check, how many cases each won, and the suggestion, next to what the
    code picks today (ops/area_attention.py AUTO_CUDA; reference for the fused convs)."""
    ok = [r for r in rows if r.get("suite") == "ops" and r.get("status") == "ok" and r.get("device_kind") == "cuda"
          and r.get("check") in (None, "pass") and r.get("median_ms")]
    times = defaultdict(dict)
    for r in ok:
        times[(r.get("compute_capability"), r.get("dtype"), r["case"], (r.get("params") or {}).get("batch"),
               (r.get("params") or {}).get("pass"))][r["provider"]] = r["median_ms"]
    groups = defaultdict(list)
    for (arch, dt, case, batch, pass_), t in times.items():
        # attention: how much faster cuda is; against Triton attention with the CUDA PE where that ran (the same PE
        # on both sides: the attention choice alone), else against the all-Triton row
        tri = "triton+cuda-pe" if "triton+cuda-pe" in t else "triton"
        if pass_ in ("fwd", "fwdbwd") and tri in t and "cuda" in t:
            groups[("attention " + pass_ + (" batch 1" if batch == 1 else " batch > 1"), arch, dt, f"cuda vs {tri}")
                   ].append(t[tri] / t["cuda"])
        for op, (base, fused) in FUSED.items():
            for f in fused:
                if base in t and f in t:
                    groups[(op, arch, dt, f"{f} vs {base}")].append(t[base] / t[f])
    out = []
    for (what, arch, dt, compared), ratios in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        g, wins = _geomean(ratios), sum(x > 1 for x in ratios)
        if what.startswith("attention"):
            suggestion = "cuda first" if g > 1 else "triton first"
            today = _today_attention(arch, dt)
        else:
            fused = compared.split(" vs ")[0].split("-")[1]
            suggestion = (f"auto -> {fused}" if g >= MARGIN and 3 * wins >= 2 * len(ratios)
                          else "keep the reference (cuDNN)")
            today = _today_fused(what, arch, dt)
        out.append({"what": what, "arch": arch, "dtype": dt, "compared": compared, "cases": len(ratios),
                    "geomean": g, "wins": wins, "suggestion": suggestion, "today": today})
    return out


def _today_fused(op: str, arch, dtype: str) -> str:
    """What auto runs today for a fused pointwise op: the PE's CUDA kernel where ops.pe.AUTO_CUDA_PE has the (arch
    class, dtype); cuDNN otherwise (the MLP and cv2 have no measured fused default)."""
    if op != "pe":
        return "reference (cuDNN)"
    try:
        import torch

        from yolov12_fast.ops.area_attention import arch_classes
        from yolov12_fast.ops.pe import AUTO_CUDA_PE

        digits = arch[3:].rstrip("a") if arch else "80"
        classes = arch_classes((int(digits[:-1]), int(digits[-1])))
        hit = any((c, getattr(torch, dtype or "", None)) in AUTO_CUDA_PE for c in classes)
        return "cuda" if hit else "reference (cuDNN)"
    except Exception as e:  # the report must render without the package
        return f"? ({type(e).__name__})"


def _today_attention(arch, dtype: str) -> str:
    try:
        import torch

        from yolov12_fast.ops.area_attention import auto_cuda_order

        digits = arch[3:].rstrip("a") if arch else "80"  # "sm_90" -> (9, 0)
        cap = (int(digits[:-1]), int(digits[-1]))
        return " then ".join(auto_cuda_order(cap, getattr(torch, dtype or "", None)))
    except Exception as e:  # the report must render without the package
        return f"? ({type(e).__name__})"


def _auto_section(rows: list) -> list:
    choices = auto_choices(rows)
    if not choices:
        return []
    lines = _section(
        "What `auto` should pick here (measured)",
        "Geometric mean of the speed ratio (> 1: the first named is faster) over the cases both ran and passed; "
        f"a fused conv becomes the default only at >= {MARGIN}x and faster in two thirds of the cases. Update "
        "`AUTO_CUDA` (yolov12_fast/ops/area_attention.py) and the pe / mlp / cv2 `resolve_backend` rules where "
        "the suggestion differs from today.",
        ["what", "arch", "dtype", "compared", "cases", "geomean", "faster in", "suggestion", "today"])
    for c in choices:
        lines.append(f"| {c['what']} | {c['arch']} | {c['dtype']} | {c['compared']} | {c['cases']} | "
                     f"{c['geomean']:.3g}x | {c['wins']}/{c['cases']} | {c['suggestion']} | {c['today']} |")
    return lines + [""]


# The speed and memory targets the issues set, as data (Target). A metric maps (row, rows of its case by provider) to
# a ratio or a percentage that must be >= the threshold (<= for `lower` targets).
# Attention cases: head_dim 32, 400 tokens per area, 640x640 (P4 area 4 and P5 area 1).
def _att(pass_, batch, dtype):
    """The attention rows of a target: NCHW qkv (the channels_last rows, `... cl`, are reported, not targeted)."""
    return lambda r: ((r.get("params") or {}).get("pass") == pass_ and (r.get("params") or {}).get("batch") == batch
                      and (r.get("params") or {}).get("n") == 400 and (r.get("params") or {}).get("head_dim") == 32
                      and (r.get("params") or {}).get("imgsz") == "640x640" and r.get("dtype") == dtype
                      and (r.get("params") or {}).get("layout") is None)


def _vs(base, same_case=True):
    """The row's speed-up over `base`; for a baseline of the same case only where its own row passed its check (is
    in `case`). YOLO11 baselines are rows of another case (model.py's cross speed-ups)."""
    return lambda r, case: (r.get("speedup_vs") or {}).get(base) if base in case or not same_case else None


def _time_ratio(base):  # this row's speed over another provider's in the same case (not a baseline of the row)
    return lambda r, case: (case[base]["median_ms"] / r["median_ms"] if base in case else None)


def _peak_vs_io(r, case):
    """Attention forward: (inputs + what the call allocated at its peak) / (inputs + output), the inputs being the
    row's bytes less the output (B * heads * head_dim * H * W elements)."""
    p = r.get("params") or {}
    elt = {"float16": 2, "bfloat16": 2, "float32": 4}.get(r.get("dtype"))
    if r.get("extra_mem_mb") is None or not r.get("bytes") or elt is None:
        return None
    out = p["batch"] * p["heads"] * p["head_dim"] * p["H"] * p["W"] * elt
    return (r["bytes"] - out + r["extra_mem_mb"] * 2**20) / r["bytes"]


class Target(NamedTuple):
    issue: str
    text: str
    kind: str      # device kind of the rows
    suite: str
    provider: str  # the row measured (ours)
    match: Callable[[dict], bool]
    metric: Callable[[dict, dict], Optional[float]]  # (row, rows of its case by provider) -> value
    threshold: float
    lower: bool = False  # met when the value is <= threshold (memory), else >=


def _model(name=None, batch=None, imgsz=640, dtype="float16", flushed=False):
    return lambda r: ((r.get("params") or {}).get("imgsz") == imgsz and not (r.get("params") or {}).get("train")
                      and bool((r.get("params") or {}).get("flush_denormal")) == flushed  # CPU: denormals flushed
                      and (r.get("params") or {}).get("batch") == batch and r.get("dtype") == dtype
                      and str((r.get("params") or {}).get("model", "")).startswith(name or "yolo12"))


TARGETS = [Target(*t) for t in (
    ("#3", "attention fwd, batch 32: >= 3x ultralytics", "cuda", "ops", "auto", _att("fwd", 32, "float16"),
     _vs("ultralytics"), 3.0),
    ("#3", "attention fwd, batch 32: >= 1.5x the authors' flash path", "cuda", "ops", "auto",
     _att("fwd", 32, "float16"), _vs("flash"), 1.5),
    ("#3", "attention fwd, batch 32: >= 1.5x SDPA (flash, same copies)", "cuda", "ops", "auto",
     _att("fwd", 32, "float16"), _vs("sdpa"), 1.5),
    ("#3", "attention fwd, batch 32: >= 1.3x torch.compile of the reference", "cuda", "ops", "auto",
     _att("fwd", 32, "float16"), _vs("compile"), 1.3),
    ("#3", "attention fwd, batch 32: >= 50% of the roofline floor", "cuda", "ops", "auto", _att("fwd", 32, "float16"),
     lambda r, case: r.get("pct_roofline"), 50.0),
    ("#3", "attention fwd+bwd, batch 32: >= 2x ultralytics", "cuda", "ops", "auto", _att("fwdbwd", 32, "float16"),
     _vs("ultralytics"), 2.0),
    ("#3", "attention fwd+bwd, batch 32: >= 1.2x SDPA", "cuda", "ops", "auto", _att("fwdbwd", 32, "float16"),
     _vs("sdpa"), 1.2),
    ("#3", "attention fwd, batch 1: >= 1x SDPA", "cuda", "ops", "auto", _att("fwd", 1, "float16"), _vs("sdpa"), 1.0),
    ("#3", "attention fwd, batch 1: >= 2x ultralytics", "cuda", "ops", "auto", _att("fwd", 1, "float16"),
     _vs("ultralytics"), 2.0),
    ("#3", "attention fwd at 1280x1280, batch 8: peak memory <= 1.2x inputs + output", "cuda", "ops", "auto",
     lambda r: (r.get("params") or {}).get("imgsz") == "1280x1280" and (r.get("params") or {}).get("pass") == "fwd"
     and (r.get("params") or {}).get("batch") == 8 and r.get("dtype") == "float16", _peak_vs_io, 1.2, True),
    ("#4", "CUDA C++ attention fwd, batch 1: >= the Triton fwd", "cuda", "ops", "cuda", _att("fwd", 1, "float16"),
     _time_ratio("triton"), 1.0),
    ("#4", "CUDA C++ attention fwd, batch 32: >= 3x ultralytics", "cuda", "ops", "cuda", _att("fwd", 32, "float16"),
     _vs("ultralytics"), 3.0),
    ("#4", "C++ CPU attention fwd, fp32, batch 1: >= 1.5x ultralytics", "cpu", "ops", "auto",
     _att("fwd", 1, "float32"), _vs("ultralytics"), 1.5),
    ("#4", "C++ CPU attention fwd, fp32, batch 1: >= 1.2x SDPA", "cpu", "ops", "auto", _att("fwd", 1, "float32"),
     _vs("sdpa"), 1.2),
    ("#5", "YOLO12 n..x at 640, batch 32: patched >= 1.25x eager", "cuda", "model", "patched", _model(batch=32),
     _vs("eager"), 1.25),
    ("#5", "the same, channels_last: patched-cl >= 1.25x ultralytics channels_last (eager-cl, a baseline any user "
           "has)", "cuda", "model", "patched-cl", _model(batch=32), _vs("eager-cl"), 1.25),
    ("#5", "YOLO12 n..x at 640, batch 1: patched + CUDA graphs >= 2x eager", "cuda", "model", "patched+graphs",
     _model(batch=1), _vs("eager"), 2.0),
    ("#5", "yolo12n at 640, batch 1: patched no slower than yolo11n eager", "cuda", "model", "patched",
     _model("yolo12n", batch=1), _vs("yolo11n-eager", same_case=False), 1.0),
    ("#5", "yolo12n at 640, batch 1, fp32, 2 threads: patched >= 1.1x eager", "cpu", "model", "patched",
     lambda r: r.get("threads") == 2 and _model("yolo12n", batch=1, dtype="float32")(r), _vs("eager"), 1.1),
    ("#5", "the same with denormals flushed on every thread (no Intel denormal assists in the baseline)", "cpu",
     "model", "patched", lambda r: r.get("threads") == 2 and _model("yolo12n", batch=1, dtype="float32",
                                                                    flushed=True)(r), _vs("eager"), 1.1),
    ("#5", "the same, channels_last: patched-cl >= 1.1x ultralytics channels_last (eager-cl, a baseline any user has)",
     "cpu", "model", "patched-cl", lambda r: r.get("threads") == 2 and _model("yolo12n", batch=1, dtype="float32",
                                                                       flushed=True)(r), _vs("eager-cl"), 1.1),
)]


def targets(rows: list) -> list:
    """Per target with measured rows: the cases, the worst and the geometric mean of the metric, how many cases
    meet the threshold, and the cases that miss it. Rows of a failed numerics check do not count."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("median_ms") and r.get("check") in (None, "pass")
          and not r.get("quick")]
    by_case = defaultdict(dict)
    for r in ok:
        by_case[(r.get("suite"), r.get("case"), r.get("threads") if r.get("device_kind") == "cpu" else None)][
            r["provider"]] = r
    out = []
    for t in TARGETS:
        values = []
        for (s, case, threads), by in by_case.items():
            r = by.get(t.provider)
            if s != t.suite or r is None or r.get("device_kind") != t.kind or not t.match(r):
                continue
            v = t.metric(r, by)
            if v is not None:
                values.append((case + (f" @{threads} thr" if threads else ""), v))
        if not values:
            continue
        vs = [v for _, v in values]
        ok = (lambda v: v <= t.threshold) if t.lower else (lambda v: v >= t.threshold)
        out.append({"issue": t.issue, "target": t.text, "threshold": t.threshold, "cases": len(values),
                    "worst": max(vs) if t.lower else min(vs), "geomean": _geomean(vs) if min(vs) > 0 else None,
                    "met": sum(ok(v) for v in vs), "missed": [c for c, v in values if not ok(v)]})
    return out


def _targets_section(rows: list) -> list:
    ts = targets(rows)
    if not ts:
        return []
    lines = _section(
        "The issues' speed targets (measured in this file)",
        "Each target over every matching case of this file (ratios in x, roofline in %); met = cases that meet it "
        "(>= the threshold; <= for memory). Quick rows and rows whose numerics check failed do not count.",
        ["issue", "target", "cases", "worst", "geomean", "met", "missed in"])
    for t in ts:
        unit = "%" if "roofline" in t["target"] else "x"
        missed = ", ".join(t["missed"][:3]) + (f", … ({len(t['missed'])})" if len(t["missed"]) > 3 else "")
        geo = "–" if t["geomean"] is None else f"{t['geomean']:.3g}{unit}"
        met = "**all**" if t["met"] == t["cases"] else f"{t['met']}/{t['cases']}"
        lines.append(f"| {t['issue']} | {t['target']} | {t['cases']} | {t['worst']:.3g}{unit} | {geo} | {met} | "
                     f"{missed or '–'} |")
    return lines + [""]


def _predictions_section(rows: list) -> list:
    """benchmarks/predictions.py's entries that this file's rows decide (held / missed), with what was measured."""
    from .predictions import check

    decided = [p for p in check(rows) if p["verdict"] != "no rows"]
    if not decided:
        return []
    lines = _section(
        "Predictions made before this run (benchmarks/predictions.py)",
        "Each prediction's range against this file's matching rows: held when every one falls inside.",
        ["prediction", "made at", "predicted", "measured", "verdict"])
    for p in decided:
        unit = " ms" if p["metric"] == "ms" else f"x over {p['over']}"
        vals = ", ".join(f"{v:.4g}" for v in p["values"])
        lines.append(f"| {p['what']} | {p['made']} | {p['lo']:.4g}-{p['hi']:.4g}{unit} | {vals} | "
                     f"{'**' + p['verdict'] + '**' if p['verdict'] == 'missed' else p['verdict']} |")
    return lines + [""]


# The training targets of issue #5 (yolo12n, AMP, batch 16): step time >= 1.15x ultralytics', peak memory at the
# largest measured size <= 0.7x. A training row names the recompute mode it ran in params["recompute"]; rows written
# before that (up to the -27c run) ran these modes by provider (train-patched ran "auto" = "mlp" on CUDA then).
TRAIN_SPEEDUP, TRAIN_PEAK = 1.15, 0.7
LEGACY_RECOMPUTE_PROVIDERS = {"train-patched-recompute-none": "none", "train-patched": "mlp",
                              "train-patched-recompute-block": "block"}


def _recompute_mode(r: dict):
    mode = (r.get("params") or {}).get("recompute")
    return mode if mode else LEGACY_RECOMPUTE_PROVIDERS.get(r["provider"])


def recompute_choice(rows: list) -> dict | None:
    """From the model suite's CUDA training rows: per recompute mode, the step-time speed-up over `train-eager` and
    the peak memory ratio at every measured size, and the suggested default for recompute="auto" on CUDA: the
    fastest mode (at the largest size) whose peak at the largest size meets TRAIN_PEAK, else the lowest-memory
    mode. None without such rows. NCHW rows only (the channels_last ones, `-cl`, compare layouts, not modes)."""
    ok = [r for r in rows if r.get("suite") == "model" and r.get("status") == "ok" and r.get("device_kind") == "cuda"
          and (r.get("params") or {}).get("train") and r.get("median_ms") and not r["provider"].endswith("-cl")]
    cases = defaultdict(dict)
    for r in ok:
        cases[(r["params"].get("imgsz"), r["case"])][r["provider"]] = r
    table, largest = [], None
    for (imgsz, case), by in sorted(cases.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1])):
        eager = by.get("train-eager")
        if eager is None:
            continue
        modes = {}
        for prov, r in by.items():
            mode = _recompute_mode(r) if prov != "train-eager" else None
            if mode is not None:
                modes.setdefault(mode, r)
        for mode in ("none", "mlp", "block"):
            r = modes.get(mode)
            if r is None:
                continue
            peak = (r["peak_mem_mb"] / eager["peak_mem_mb"] if r.get("peak_mem_mb") and eager.get("peak_mem_mb")
                    else None)
            table.append({"case": case, "imgsz": imgsz, "mode": mode, "speedup": eager["median_ms"] / r["median_ms"],
                          "peak_ratio": peak})
        largest = imgsz
    at_largest = [t for t in table if t["imgsz"] == largest and t["peak_ratio"] is not None]
    if not at_largest:
        return None
    meeting = [t for t in at_largest if t["peak_ratio"] <= TRAIN_PEAK]
    best = (max(meeting, key=lambda t: t["speedup"]) if meeting else min(at_largest, key=lambda t: t["peak_ratio"]))
    return {"table": table, "suggestion": best["mode"], "meets_peak": bool(meeting),
            "meets_speed": best["speedup"] >= TRAIN_SPEEDUP, "today": _today_recompute()}


def _today_recompute() -> str:
    from yolov12_fast.nn.modules import AUTO_RECOMPUTE
    return AUTO_RECOMPUTE["cuda"]


def _recompute_section(rows: list) -> list:
    choice = recompute_choice(rows)
    if choice is None:
        return []
    lines = _section(
        "Training: what recompute=\"auto\" should pick on CUDA (measured)",
        f"Speed-up of the step over ultralytics (`train-eager`) and peak memory relative to it, per recompute mode. "
        f"Suggested: the fastest mode whose peak at the largest size is <= {TRAIN_PEAK}x (issue #5), else the "
        f"smallest. Set `AUTO_RECOMPUTE['cuda']` (yolov12_fast/nn/modules.py) if it differs from today's.",
        ["case", "recompute", "vs train-eager", "peak vs train-eager"])
    for t in choice["table"]:
        peak = f"{t['peak_ratio']:.3f}x" if t["peak_ratio"] is not None else "–"
        lines.append(f"| {t['case']} | {t['mode']} | {t['speedup']:.3g}x | {peak} |")
    lines += ["", f"Suggestion: **{choice['suggestion']}** (today: {choice['today']}); peak target "
              f"{'met' if choice['meets_peak'] else 'NOT met by any mode'}, speed target (>= {TRAIN_SPEEDUP}x) "
              f"{'met' if choice['meets_speed'] else 'NOT met'} by it.", ""]
    return lines


# ----------------------------------------------------------------------------------------------------------------
# plots


def _label(r):
    return r["case"] + (f" @{r['threads']}thr" if r.get("device_kind") == "cpu" else "")


def plot(rows: list, stem: Path) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    ok = [r for r in rows if r.get("status") == "ok"]

    def save(fig, suite):
        p = stem.parent / f"{stem.name}-{suite}.png"
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)

    # ops: time per provider per case (log), forward and forward+backward panels
    att = [r for r in ok if r.get("suite") == "ops" and not any(r["provider"].startswith(p + "-") for p in FUSED)]
    if att:
        passes = [p for p in ("fwd", "fwdbwd") if any(r["params"].get("pass") == p for r in att)]
        fig, axes = plt.subplots(len(passes), 1, figsize=(max(8, 0.35 * len({_label(r) for r in att})), 4.5 * len(passes)),
                                 squeeze=False)
        for ax, p in zip(axes[:, 0], passes):
            prs = [r for r in att if r["params"].get("pass") == p]
            cases = list(OrderedDict.fromkeys(_label(r) for r in prs))
            for prov in OrderedDict.fromkeys(r["provider"] for r in prs):
                pts = {_label(r): r["median_ms"] for r in prs if r["provider"] == prov}
                xs = [i for i, c in enumerate(cases) if c in pts]
                ax.plot(xs, [pts[cases[i]] for i in xs], marker="o", ms=3, lw=1, label=prov)
            ax.set_yscale("log")
            ax.set_ylabel("ms (median)")
            ax.set_title(f"area attention {'forward' if p == 'fwd' else 'forward+backward'}: qkv conv output -> proj input")
            ax.set_xticks(range(len(cases)))
            ax.set_xticklabels(cases, rotation=90, fontsize=6)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, ncol=4)
        save(fig, "ops")

    # blocks: speed-up of patched over ultralytics
    blk = [r for r in ok if r.get("suite") == "blocks" and "ultralytics" in (r.get("speedup_vs") or {})]
    if blk:
        cases = list(OrderedDict.fromkeys(_label(r) for r in blk))
        fig, ax = plt.subplots(figsize=(max(8, 0.3 * len(cases)), 4.5))
        provs = list(OrderedDict.fromkeys(r["provider"] for r in blk))
        width = 0.8 / max(len(provs), 1)
        for j, prov in enumerate(provs):
            pts = {_label(r): r["speedup_vs"]["ultralytics"] for r in blk if r["provider"] == prov}
            xs = [i for i, c in enumerate(cases) if c in pts]
            ax.bar([i + j * width for i in xs], [pts[cases[i]] for i in xs], width, label=prov)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_ylabel("speed-up over ultralytics (x)")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
        ax.set_xticklabels(cases, rotation=90, fontsize=6)
        ax.legend(fontsize=7)
        ax.set_title("YOLO12 attention blocks")
        save(fig, "blocks")

    # model: latency / throughput per variant, one panel per (imgsz, batch)
    mdl = [r for r in ok if r.get("suite") == "model" and not r["params"].get("train")]
    if mdl:
        shapes = list(OrderedDict.fromkeys((r["params"]["imgsz"], r["params"]["batch"]) for r in mdl))
        fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 4.5), squeeze=False)
        for ax, (s, b) in zip(axes[0], shapes):
            prs = [r for r in mdl if (r["params"]["imgsz"], r["params"]["batch"]) == (s, b)]
            models = list(OrderedDict.fromkeys(r["params"]["model"] + (f"@{r['threads']}" if r.get("device_kind") == "cpu" else "")
                                               for r in prs))
            variants = list(OrderedDict.fromkeys(r["provider"] for r in prs))
            width = 0.8 / max(len(variants), 1)
            for j, v in enumerate(variants):
                pts = {r["params"]["model"] + (f"@{r['threads']}" if r.get("device_kind") == "cpu" else ""): r["median_ms"]
                       for r in prs if r["provider"] == v}
                xs = [i for i, m in enumerate(models) if m in pts]
                ax.bar([i + j * width for i in xs], [pts[models[i]] for i in xs], width, label=v)
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(models))])
            ax.set_xticklabels(models, rotation=45, fontsize=7)
            ax.set_ylabel("ms per batch (median)")
            ax.set_title(f"{s}x{s}, batch {b}")
            ax.legend(fontsize=6)
        save(fig, "model")
    return written


def render(path: Path) -> list:
    path = Path(path)
    rows = load(path)
    stem = path.with_suffix("")
    md = stem.with_suffix(".md")
    md.write_text(markdown(rows, path.name) + "\n")
    return [md] + plot(rows, stem)


def main(argv=None, prog="python -m benchmarks report") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", type=Path,
                   help=f"result .jsonl files (default: the newest under {RESULTS_DIR}, the run you just made)")
    p.add_argument("--all", action="store_true", help=f"render every .jsonl under {RESULTS_DIR}")
    a = p.parse_args(argv)
    found = sorted(RESULTS_DIR.glob("*.jsonl"))
    files = a.files or (found if a.all else sorted(found, key=lambda f: f.stat().st_mtime)[-1:])
    if not files:
        print(f"no result files under {RESULTS_DIR}: run `python -m benchmarks` first")
        return 1
    for f in files:
        for out in render(f):
            print(f"wrote {out}")
        if len(files) == 1:  # the run just made: its targets on the console too (a GPU lease's output shows them)
            print("\n".join(_targets_section(load(f))), end="")
    return 0
