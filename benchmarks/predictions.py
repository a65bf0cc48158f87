"""Predictions made before a GPU run, checked against its rows by `python -m benchmarks report`.

BENCHMARKS.md: predict before you optimise, then check the prediction. A change whose effect only a GPU can show is
committed with a prediction (its commit message and the README say it); the entry below makes the next GPU run's
report say whether it held, so that a session with a GPU reads the verdicts instead of re-deriving them.

Each entry (built by `_prediction`): `id`, the commit that made it (`made`), what was predicted (`what`), the rows
it concerns (`suite`, "ops" unless given; case regex `case`; `provider`; the GPU's compute capability `cc`, as the
rows give it, "sm_90" unless given) and the predicted range [`lo`, `hi`] of a metric: "ms" (the row's median) or,
where `over` names a provider, "speedup" (the row's speed-up over that provider's row of the same case and file).
Predictions whose rows only logs carry (benchmarks/fwd_warps.py, benchmarks/profile.py) are listed in the README and
the issue notes, not here.
"""

from __future__ import annotations

import re


def _prediction(id: str, made: str, what: str, case: str, provider: str, lo: float, hi: float, over: str | None = None,
                suite: str = "ops", cc: str | None = "sm_90") -> dict:
    """One entry: the matching rows' median in ms within [lo, hi], or with `over` their speed-up over that provider's
    row of the same case."""
    p = {"id": id, "made": made, "cc": cc, "suite": suite, "what": what, "case": case, "provider": provider,
         "metric": "speedup" if over else "ms", "lo": lo, "hi": hi}
    if over:
        p["over"] = over
    return p


def _model(id: str, made: str, what: str, case: str, provider: str, over: str, lo: float, hi: float) -> dict:
    """A model-suite entry: `provider`'s speed-up over `over` on the rows of the case named `case` exactly (model
    case names hold no regex metacharacters)."""
    return _prediction(id, made, what, f"^{case}$", provider, lo, hi, over=over, suite="model")


PREDICTIONS = [
    _prediction("pe-triton-layout", "e6c9215",
                "Triton PE kernel after the tap-token fix (Triton 3.6's layout): 0.15-0.3 ms (was 2.39)",
                r"^pe P4 640x640 h8 b32 ", "pe-triton", 0.15, 0.30),
    _prediction("pe-cuda-row-staging", "46f2d18", "CUDA PE kernel with row-wise halo staging: 100-115 us (was 135)",
                r"^pe P4 640x640 h8 b32 ", "pe-cuda", 0.100, 0.115),
    _prediction("pe-backward-vs-aten", "81659ed",
                "our PE backward (flipped forward + weight-gradient kernel) about 6x ATen's NCHW depthwise backward",
                r"^pebwd P4 640x640 h8 b32 ", "pebwd-cuda", 4.0, 9.0, over="pebwd-torch"),
    _prediction("pe-backward-vs-cudnn", "81659ed",
                "our PE backward 0.8-1.3x ATen on channels_last copies (cuDNN's NHWC kernels, copies untimed)",
                r"^pebwd P4 640x640 h8 b32 ", "pebwd-cuda", 0.8, 1.3, over="pebwd-torch-cl"),
    _prediction("fwdbwd-with-pe-backward", "81659ed",
                "attention fwd+bwd (CUDA) with the PE backward and the delta kernel fixed: 0.7-1.2 ms (was 2.33)",
                r"^fwdbwd P4 640x640 h8 b32 ", "cuda", 0.7, 1.2),
    _prediction("fwd-b1-cp-async", "3fcda2a",
                "CUDA forward at batch 1 (PE included) with cp.async K/V staging: 1-2 us off 17.1 us",
                r"^fwd P4 640x640 h8 b1 ", "cuda", 0.0140, 0.0165),
    _prediction("fwd-b32-pe-and-staging", "3fcda2a",
                "CUDA forward at batch 32 (PE included): the PE 100-115 us and the attention a few % faster: "
                "0.24-0.27 ms (was 0.273)",
                r"^fwd P4 640x640 h8 b32 ", "cuda", 0.24, 0.27),
    _prediction("fwd-functional-direct", "2393d59",
                "CUDA forward at P5 h4 batch 32 through the functional API without the custom-op layer in eager "
                "inference (28 -> 15 us of host per PE + attention call here, same run): kernel-bound, 0.045-0.060 ms "
                "(was 0.0725 for 0.049 ms of kernels)",
                r"^fwd P5 640x640 h4 b32 ", "cuda", 0.045, 0.060),
    _model("train-auto-none-640", "6b948e2",
           "yolo12n AMP training step at 640, batch 16, with recompute=\"auto\" now \"none\" (the -27c run: 1.04x "
           "as \"none\", 0.87x as the old \"mlp\" default): 0.95-1.15x ultralytics",
           "train yolo12n 640 b16", "train-patched", "train-eager", 0.95, 1.15),
    _model("train-auto-none-1280", "6b948e2",
           "the same step at 1280 (the -27c run: 1.60x as \"none\", 1.54x as \"mlp\"): 1.5-1.7x ultralytics",
           "train yolo12n 1280 b16", "train-patched", "train-eager", 1.5, 1.7),
    # channels_last models (e6b249c, rows 14fa269). The -27c profile of yolo12n at 640 (fp16, NCHW): cuDNN wraps most
    # convolutions in nchwToNhwc / nhwcToNchw transposes, 1.14 ms of the patched model's 7.82 ms of kernels at batch
    # 32 and 0.19 of 1.33 ms at batch 1, which a channels_last model does not run; it adds one copy per AAttn (proj's
    # input, ~0.1 ms at batch 32) and reads q/k/v and V through the kernels' d-fastest staging (guess: attention + PE
    # up to 1.3x slower, +0.17 ms).
    _model("model-cl-b32", "14fa269",
           "yolo12n 640 b32, patched channels_last over patched NCHW: 1.03-1.22x (8.19 -> ~7.3 ms)",
           "yolo12n 640 b32", "patched-cl", "patched", 1.03, 1.22),
    _model("model-cl-eager-b32", "14fa269",
           "the same for ultralytics' own model (its transposes too, its attention's copies stay): 1.03-1.2x",
           "yolo12n 640 b32", "eager-cl", "eager", 1.03, 1.20),
    _model("model-cl-b1-graphs", "14fa269",
           "yolo12n 640 b1 replayed from CUDA graphs, channels_last over NCHW (kernel-bound: 1.41 -> ~1.25 ms): "
           "1.05-1.2x",
           "yolo12n 640 b1", "patched-cl+graphs", "patched+graphs", 1.05, 1.20),
    # GEMM_CONV "cuda" (a5ca6a1): the patched blocks' fused 1x1 convs
    # (cv1, cv2, qkv, proj, the MLP's) of a channels_last model as cuBLAS GEMMs with the bias in the epilogue. They
    # write 31 % of yolo12n's biased conv outputs (forward hooks on a yolo12n at 640: 6.8 of 21.6 M elements per
    # image), and the -27c profile spent 2.2 ms of a 7.8 ms batch-32 forward on broadcast bias adds: about 0.7 ms
    # of adds at stake, less what cuBLAS loses or gains against cuDNN's NHWC kernels.
    _model("model-cl-gemm-b32", "a5ca6a1",
           "yolo12n 640 b32 channels_last, the patched blocks' 1x1 convs as GEMMs over cuDNN: 1.02-1.12x",
           "yolo12n 640 b32", "patched-cl-gemm", "patched-cl", 1.02, 1.12),
    # BIAS_ACT "cuda" (71698cb): the same convs of the NCHW model
    # through cuDNN without bias, then one vectorised pass adding the bias and applying the SiLU: the SiLU convs
    # (cv1, cv2, the MLP's first) lose their broadcast-add pass, the others get a vectorised add for the generic one.
    _model("model-bias-act-b32", "71698cb",
           "yolo12n 640 b32 NCHW, the patched blocks' conv bias + SiLU in one pass: 1.02-1.10x the patched model",
           "yolo12n 640 b32", "patched-bias-act", "patched", 1.02, 1.10),
]

def _descends(made: str, commit) -> bool | None:
    """Whether the rows' commit contains the predicting commit (git merge-base --is-ancestor), None where git cannot
    say (no repository, an unknown commit)."""
    import subprocess
    from pathlib import Path

    if not commit or commit == "None":
        return None
    try:
        r = subprocess.run(["git", "merge-base", "--is-ancestor", made, str(commit)], capture_output=True,
                           cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: True, 1: False}.get(r.returncode)


def _usable(r: dict) -> bool:
    return (r.get("suite") in ("ops", "model") and r.get("status") == "ok" and r.get("device_kind") == "cuda"
            and r.get("check") in (None, "pass") and bool(r.get("median_ms")) and not r.get("quick"))


def check(rows: list, predictions: list = PREDICTIONS) -> list:
    """Per prediction: its verdict over the matching rows of `rows` ("held", "missed", or "no rows" where the file has
    none: another GPU, a case not run, or only rows of commits before the prediction's), the measured values and the
    rows' commits. Rows of a commit that git knows does not contain the predicting one do not count."""
    ok = [r for r in rows if _usable(r)]
    out = []
    known = {}
    for p in predictions:
        match = [r for r in ok if r["suite"] == p.get("suite", "ops") and re.search(p["case"], r["case"])
                 and r["provider"] == p["provider"]
                 and (r.get("params") or {}).get("layout") == p.get("layout")  # NCHW rows unless it says otherwise
                 and (p.get("cc") is None or str(r.get("compute_capability")) == p["cc"])]
        for r in match:
            key = (p["made"], r.get("commit"))
            if key not in known:
                known[key] = _descends(*key)
        match = [r for r in match if known[(p["made"], r.get("commit"))] is not False]
        values = []
        for r in match:
            if p["metric"] == "ms":
                values.append(r["median_ms"])
            else:
                base = [b for b in ok if b["suite"] == r["suite"] and b["case"] == r["case"]
                        and b["provider"] == p["over"]
                        and b.get("compute_capability") == r.get("compute_capability")]
                if base:
                    values.append(base[0]["median_ms"] / r["median_ms"])
        verdict = ("no rows" if not values else
                   "held" if all(p["lo"] <= v <= p["hi"] for v in values) else "missed")
        out.append({**p, "verdict": verdict, "values": values,
                    "commit": sorted({str(r.get("commit")) for r in match}) if match else []})
    return out
