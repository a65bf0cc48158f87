"""`yolov12-fast verify`: check that the patched model computes what ultralytics computes, on your model.

The model (a config name such as `yolo12n.yaml`, with random weights and BatchNorm calibrated on the images so
that every layer has unit-scale activations, or a checkpoint: ultralytics .pt or the authors' turbo format) is run
twice on the same weights and images: by ultralytics' own modules (the reference; turbo-layout AAttn objects run
`yolov12_fast.utils.TurboAAttn`'s plain forward) and patched (`yolov12_fast.patch(backend=...)`). Forward hooks on
every swapped module (AAttn, ABlock, A2C2f) capture its output in both runs; the report gives each one's max
absolute and relative error (relative to the reference output's max magnitude), the final output's (each part
apart, their scales differ: boxes and class scores, plus mask coefficients and prototypes of a segmentation model,
keypoints of a pose model, angles of an OBB model; class probabilities and logits of a classifier), and whether the
detections after NMS agree (rotated NMS and probabilistic IoU for OBB; the top-1 class for a classifier).

Tolerance (yolov12_fast/_tolerances.py, the table and the principle the tests use): the same model is also run by
ultralytics in higher precision (float64 for a float32 check, float32 for float16 / bfloat16: the oracle), and each
output of the patched model may be at most FACTOR[dtype] times as far from the oracle as ultralytics' own output in
the checked dtype is (the yardstick), plus a floor ATOL_FLOOR[dtype] (about two units of roundoff of the dtype),
all relative to the output's max magnitude. A fixed relative bound such as MODEL_RTOL_FP32 (1e-3) is too loose
for this: an AAttn whose softmax scale is off by 0.1%, or whose output is shifted by 1e-2, stays within 1e-3 of
ultralytics at its own output (and is then named only by the errors it causes downstream); against the yardstick
(ultralytics' float32 error is ~1e-5 here) it fails where it happens.
Detections: per image the same number, each reference box matched by a patched box of the same class with
IoU >= 0.99; a detection whose score is within the score tolerance of the confidence threshold, or a pair that NMS
resolved the other way because two overlapping boxes' scores are within tolerance, is counted as borderline, not
as a disagreement. Random-weight models score low: their confidence threshold is picked per image in a gap of the
reference scores so that 30 to 100 candidates enter NMS.

The hooked patched run checks the modules; a second, hook-free patched run gives the final output and detections
(hooks switch A2C2f off its buffer path, which must be checked too).
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Optional

DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16", "half": "float16",
          "bfloat16": "bfloat16", "bf16": "bfloat16"}
MATCH_IOU = 0.99


# ----------------------------------------------------------------------------------------------------------------
# report


@dataclass
class Row:
    """One compared tensor: a swapped module's output or a part of the final output."""
    name: str
    kind: str
    shape: list
    ref_max: float     # max |ultralytics|
    abs_err: float     # max |patched - ultralytics|
    rel_err: float     # abs_err / ref_max
    oracle_err: float  # max |patched - oracle| / max |oracle|: what the tolerance applies to
    yardstick: float   # max |ultralytics - oracle| / max |oracle|
    tol: float         # FACTOR[dtype] * yardstick + ATOL_FLOOR[dtype]
    passed: bool
    order: int = -1    # completion order in the forward pass (the first failing module is the culprit)


@dataclass
class ImageDetections:
    image: str
    conf: float
    ref: int
    patched: int
    matched: int
    borderline: int
    min_iou: Optional[float]
    max_score_diff: Optional[float]
    problems: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    model: str
    variant: str
    weights: str
    images: list
    imgsz: list
    device: str
    dtype: str
    backend: str
    fused: bool
    modules: list
    outputs: list
    detections: list
    oracle: str = "float64"
    notes: list = field(default_factory=list)
    task: str = "detect"
    channels_last: bool = False

    @property
    def failed_rows(self) -> list:
        return [r for r in self.modules + self.outputs if not r.passed]

    @property
    def passed(self) -> bool:
        return not self.failed_rows and all(d.passed for d in self.detections)

    @property
    def culprit(self) -> Optional[str]:
        """The first swapped module, in the order they finish in the forward pass, whose output is over tolerance
        (inner modules finish before the ones that contain them; later layers inherit its error)."""
        bad = sorted((r for r in self.modules if not r.passed), key=lambda r: r.order)
        return bad[0].name if bad else None

    def failures(self) -> list[str]:
        """One line per kind of failure: the swapped modules (naming the first over tolerance), the final output,
        the detections of each image."""
        out = []
        bad = sorted((r for r in self.modules if not r.passed), key=lambda r: r.order)
        if bad:
            r = bad[0]
            out.append(f"{len(bad)} of {len(self.modules)} swapped modules over tolerance; the first in forward order "
                       f"is {r.name} ({r.kind}): relative error {r.oracle_err:.3g} against the {self.oracle} oracle > "
                       f"tolerance {r.tol:.3g} (ultralytics' own {self.dtype} error {r.yardstick:.3g})"
                       + ("; the others inherit its error or have their own" if len(bad) > 1 else ""))
        bad_out = [r for r in self.outputs if not r.passed]
        if bad_out:
            out.append("final output over tolerance: " + ", ".join(
                f"{r.name} {r.oracle_err:.3g} > {r.tol:.3g}" for r in bad_out))
        for d in self.detections:
            if d.problems:
                out.append(f"detections disagree on {d.image}: {len(d.problems)} without partner, e.g. "
                           + "; ".join(d.problems[:2]))
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        d["culprit"] = self.culprit
        d["failures"] = self.failures()
        for det, dd in zip(self.detections, d["detections"]):
            dd["passed"] = det.passed
        return d

    def format(self) -> str:
        lines = [f"yolov12-fast verify: {self.model} ({self.task}, {self.variant}, {self.weights}) on "
                 f"{len(self.images)} image(s) at {'x'.join(map(str, self.imgsz))}, {self.device}, {self.dtype}, backend {self.backend}"
                 f"{', fused' if self.fused else ''}{', channels_last' if self.channels_last else ''}"]
        hdr = (f"{'module':<20} {'kind':<6} {'shape':<14} {'max|ref|':>8}  {'max|err|':>8} {'rel err':>8}  "
               f"{'rel err':>9} {'yardstick':>9} {'tol':>8}")
        rule = "-" * (len(hdr) + 6)
        group = f"{'':<53}{' vs ultralytics ':-^18}  {' vs the ' + self.oracle + ' oracle ':-^28}"
        lines += ["", group, hdr, rule]

        def fmt(r: Row) -> str:
            return (f"{r.name:<20} {r.kind:<6} {'x'.join(map(str, r.shape)):<14} {r.ref_max:>8.3g}  {r.abs_err:>8.2e} "
                    f"{r.rel_err:>8.2e}  {r.oracle_err:>9.2e} {r.yardstick:>9.2e} {r.tol:>8.2e}"
                    + ("  ok" if r.passed else "  FAIL"))

        lines += [fmt(r) for r in self.modules] + [rule] + [fmt(r) for r in self.outputs]
        lines.append(f"errors are max |diff| / max |reference|; yardstick: ultralytics' own {self.dtype} error; "
                     f"tol = FACTOR x yardstick + floor")
        if self.task == "classify":
            lines += ["", "top-1 class per image (borderline: another class within the score tolerance):"]
            for d in self.detections:
                what = "same class" if d.matched else ("near-tie" if d.borderline else d.problems[0])
                lines.append(f"  {d.image:<14} ultralytics top-1 probability {d.conf:<9.3g} {what}  "
                             f"{'ok' if d.passed else 'FAIL'}")
        else:
            iou_kind = "probabilistic IoU" if self.task == "obb" else "IoU"
            lines += ["", f"detections after NMS (match: same class, {iou_kind} >= {MATCH_IOU}):"]
        for d in self.detections if self.task != "classify" else []:
            extra = (f", min IoU {d.min_iou:.4f}, max |score diff| {d.max_score_diff:.2e}" if d.min_iou is not None
                     else "")
            lines.append(f"  {d.image:<14} conf {d.conf:<9.3g} ultralytics {d.ref:>4}  patched {d.patched:>4}  "
                         f"matched {d.matched:>4}  borderline {d.borderline}{extra}  {'ok' if d.passed else 'FAIL'}")
            if d.ref == 0 and d.patched == 0:
                lines.append("    (no detections at this threshold: the comparison is vacuous; lower --conf)")
        lines += [f"note: {n}" for n in self.notes]
        n = len(self.modules)
        if self.passed:
            vacuous = " (partly vacuous: see the notes above)" if any(x.startswith("vacuous:") for x in self.notes) else ""
            lines += ["", f"PASS{vacuous}: {n} swapped modules, the final output and the detections are within "
                          "tolerance."]
        else:
            lines += [""] + [f"FAIL: {f}" for f in self.failures()]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _vacuous_notes(mod_rows: list, dets: list, task: str) -> list:
    """Notes for the parts of a report that compared nothing: modules whose output is exactly 0 on these inputs, and
    images without a detection on either side at the compared threshold (format() then says PASS is partly vacuous)."""
    notes = []
    zero = [r.name for r in mod_rows if r.ref_max == 0]
    if zero:
        notes.append(f"vacuous: {len(zero)} swapped module(s) output exactly 0 on these inputs ({', '.join(zero[:3])}"
                     f"{', ...' if len(zero) > 3 else ''}): their rows check nothing")
    empty = [d.image for d in dets if task != "classify" and d.ref == 0 and d.patched == 0]
    if empty:
        notes.append(f"vacuous: no detections on {', '.join(empty)} at the compared threshold, so nothing was "
                     "matched there; lower --conf")
    return notes


def _parse_imgsz(imgsz) -> tuple[int, int]:
    if isinstance(imgsz, str):
        parts = [p for p in imgsz.replace("x", ",").replace(" ", ",").split(",") if p]
        imgsz = int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    hw = (int(imgsz), int(imgsz)) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
    if hw[0] <= 0 or hw[1] <= 0 or hw[0] % 32 or hw[1] % 32:
        raise ValueError(f"imgsz must be positive multiples of 32 (the model's stride), got {hw[0]}x{hw[1]}")
    return hw


def _is_config(model: str) -> bool:
    return str(model).endswith((".yaml", ".yml"))


def _load(model, variant: Optional[str], imgs, seed: int):
    """(float32 CPU nn.Module, variant, weights description, random weights?)."""
    import torch.nn as nn

    from .patch import _torch_root
    from .utils import calibrated_model

    if not isinstance(model, (str, os.PathLike)):
        root = _torch_root(model)
        if variant is not None:
            raise ValueError("variant= applies to config names only; a model's layout is read from its modules")
        return copy.deepcopy(root).float().cpu(), _layout(root), "given model", False
    name = str(model)
    if _is_config(name):
        variant = variant or "ultralytics"
        return (calibrated_model(name, variant, imgs, init_seed=seed, calib_seed=seed), variant,
                f"random weights, seed {seed}, BatchNorm calibrated on the images", True)
    if variant is not None:
        raise ValueError(f"--variant applies to config names only; the layout of {name} is read from its modules")
    if not os.path.isfile(name):
        raise FileNotFoundError(f"no such checkpoint: {name} (a config name ends in .yaml)")
    from ultralytics import YOLO

    try:
        root = YOLO(name).model
    except Exception as e:  # not a checkpoint ultralytics can load: the argument is wrong, say why
        raise ValueError(f"{name}: ultralytics cannot load it ({type(e).__name__}: {e})") from e
    if not isinstance(root, nn.Module):
        raise ValueError(f"{name} holds no PyTorch model")
    return root.float().cpu(), _layout(root), f"checkpoint {os.path.basename(name)}", False


def _layout(root) -> str:
    kinds = {"turbo" if "qk" in m._modules else "ultralytics" for m in root.modules()
             if "proj" in m._modules and "pe" in m._modules and ("qkv" in m._modules or "qk" in m._modules)}
    return "+".join(sorted(kinds)) or "none"


def _first_tensor(x):
    return x[0] if isinstance(x, (tuple, list)) else x


TASK_EXTRA = {"segment": "mask coefs", "pose": "keypoints", "obb": "angle"}  # columns after the class scores


def _final_parts(task: str, out, nc: int) -> list:
    """[(name, tensor)] of a model's eval-mode output, one entry per part of its own scale. detect / segment / pose /
    obb: the prediction (B, 4 + nc + extra, anchors) cut into boxes, scores and the task's extra columns, plus a
    segmentation model's mask prototypes; classify: the probabilities and, where the head returns them, logits."""
    if task == "classify":
        probs, logits = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
        return [("probs", probs)] + ([("logits", logits)] if isinstance(logits, type(probs)) else [])
    first = out[0] if isinstance(out, (tuple, list)) else out
    pred, proto = (first[0], first[1]) if isinstance(first, (tuple, list)) else (first, None)
    if proto is None and task == "segment" and isinstance(out, (tuple, list)) and len(out) > 1:
        rest = out[1]  # ultralytics before 8.4: (prediction, (feature maps, mask coefs, prototypes))
        proto = rest[-1] if isinstance(rest, (tuple, list)) and getattr(rest[-1], "dim", lambda: 0)() == 4 else None
    parts = [("boxes", pred[:, :4]), ("scores", pred[:, 4:4 + nc])]
    if pred.shape[1] > 4 + nc:
        parts.append((TASK_EXTRA.get(task, "extra"), pred[:, 4 + nc:]))
    if proto is not None:
        parts.append(("proto", proto))
    return parts


def _prediction(task: str, out):
    """The (B, 4 + nc + extra, anchors) tensor NMS runs on (None for a classifier)."""
    if task == "classify":
        return None
    first = out[0] if isinstance(out, (tuple, list)) else out
    return first[0] if isinstance(first, (tuple, list)) else first


def _run(model, x, names: Optional[list]):
    """One no-grad forward: (final output, {name: output}, {name: completion index})."""
    import torch

    got, order, hooks = {}, {}, []
    mods = dict(model.named_modules())
    for n in names or []:
        def hook(mod, inp, out, n=n):
            got[n] = _first_tensor(out).detach().clone()
            order.setdefault(n, len(order))
        hooks.append(mods[n].register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out, got, order


def _rel(a, b) -> tuple[float, float, float]:
    """(max |a - b|, max |b|, max |a - b| / max |b|) in float64."""
    a, b = a.double(), b.double()
    err = (a - b).abs().max().item() if a.numel() else 0.0
    scale = b.abs().max().item() if b.numel() else 0.0
    if not math.isfinite(err):
        return float("inf"), scale, float("inf")
    return err, scale, err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))


def _compare(name, kind, fast, ref, oracle, order=-1) -> Row:
    """A Row for one tensor: patched `fast` and ultralytics `ref` in the checked dtype, `oracle` in higher precision."""
    from ._tolerances import ATOL_FLOOR, FACTOR

    abs_err, ref_max, rel = _rel(fast, ref)
    _, _, e_fast = _rel(fast, oracle)
    _, _, e_ref = _rel(ref, oracle)
    tol = FACTOR[ref.dtype] * e_ref + ATOL_FLOOR[ref.dtype]
    return Row(name, kind, list(fast.shape), ref_max, abs_err, rel, e_fast, e_ref, tol, e_fast <= tol, order)


def _output_rows(task: str, nc: int, fast, ref, oracle) -> list:
    """Each part of the final output apart (_final_parts): with random weights boxes and class scores differ in scale
    by five orders of magnitude."""
    return [_compare(f"output[{name}]", "head", f, r, o) for (name, f), (_, r), (_, o) in
            zip(_final_parts(task, fast, nc), _final_parts(task, ref, nc), _final_parts(task, oracle, nc))]


def _auto_conf(scores) -> float:
    """A threshold in the widest (ratio) gap between the 30th and 100th best anchor scores of one image."""
    s = scores.double().sort(descending=True).values
    lo, hi = min(30, len(s) - 1), min(100, len(s) - 1)
    if hi < 1 or lo >= hi:
        return 0.0
    a, b = s[lo - 1:hi], s[lo:hi + 1].clamp_min(1e-30)
    k = int((a / b).argmax())
    return math.sqrt(float(a[k]) * float(b[k]))


def _nms(pred, conf: float, iou: float, nc: int = 0, rotated: bool = False):
    """ultralytics' NMS on one image: rows (x1, y1, x2, y2, score, class, extra...); rotated (OBB): (x, y, w, h,
    score, class, angle)."""
    try:
        from ultralytics.utils.nms import non_max_suppression
    except ImportError:  # older ultralytics
        from ultralytics.utils.ops import non_max_suppression
    # a copy: ultralytics before 8.4 converts the boxes to xyxy in place in the tensor it is given, and verify runs
    # NMS twice on one prediction when the first threshold finds nothing (the second run then read xyxy as xywh)
    return non_max_suppression(pred.float().clone(), conf_thres=conf, iou_thres=iou, max_det=300, nc=nc,
                               rotated=rotated)[0].cpu().double()


def _iou_matrix(ref, fast, rotated: bool):
    """Pairwise IoU of NMS rows: box IoU, or for rotated boxes ultralytics' probabilistic IoU of (x, y, w, h, angle)."""
    import torch

    if rotated:
        from ultralytics.utils.metrics import batch_probiou

        xywhr = lambda d: torch.cat([d[:, :4], d[:, -1:]], 1)
        return batch_probiou(xywhr(ref), xywhr(fast))
    from torchvision.ops import box_iou

    return box_iou(ref[:, :4], fast[:, :4])


def _match(ref, fast, conf: float, iou_nms: float, rtol: float, image: str, rotated: bool = False) -> ImageDetections:
    """Greedy matching in reference score order: same class and IoU >= MATCH_IOU. Unmatched detections are
    borderline when their score is within rtol (relative) of the threshold, or when an unmatched pair of the same
    class overlaps by >= the NMS IoU with scores within rtol (NMS kept the other of two near-equal boxes)."""
    d = ImageDetections(image, conf, len(ref), len(fast), 0, 0, None, None)
    free = [True] * len(fast)
    un_ref, ious, diffs = [], [], []
    iou_mat = _iou_matrix(ref, fast, rotated) if len(ref) and len(fast) else None
    for i in range(len(ref)):
        best, best_j = -1.0, -1
        for j in range(len(fast)):
            if free[j] and fast[j, 5] == ref[i, 5] and iou_mat[i, j] > best:
                best, best_j = float(iou_mat[i, j]), j
        if best >= MATCH_IOU:
            free[best_j] = False
            d.matched += 1
            ious.append(best)
            diffs.append(abs(float(ref[i, 4] - fast[best_j, 4])))
        else:
            un_ref.append(i)
    un_fast = [j for j in range(len(fast)) if free[j]]

    def near(a, b):
        return abs(a - b) <= rtol * max(abs(a), abs(b))

    for i in list(un_ref):  # NMS near-ties
        for j in un_fast:
            if (fast[j, 5] == ref[i, 5] and iou_mat[i, j] >= iou_nms and near(float(ref[i, 4]), float(fast[j, 4]))):
                un_ref.remove(i)
                un_fast.remove(j)
                d.borderline += 2
                break
    for which, dets, idx in (("ultralytics", ref, un_ref), ("patched", fast, un_fast)):
        for i in idx:
            score = float(dets[i, 4])
            if near(score, conf):
                d.borderline += 1
            else:
                d.problems.append(f"{which} detection (class {int(dets[i, 5])}, score {score:.4g}, box "
                                  f"{[round(v, 1) for v in dets[i, :4].tolist()]}) has no partner")
    if ious:
        d.min_iou, d.max_score_diff = min(ious), max(diffs)
    return d


def _match_top1(ref_probs, fast_probs, rtol: float, image: str) -> ImageDetections:
    """A classifier's agreement on one image: the same top-1 class, or (borderline) a different one whose reference
    probability is within rtol (relative) of the reference top-1's."""
    r, f = int(ref_probs.argmax()), int(fast_probs.argmax())
    pr, pf = float(ref_probs[r]), float(ref_probs[f])
    d = ImageDetections(image, pr, 1, 1, int(r == f), 0, 1.0 if r == f else None,
                        abs(pr - float(fast_probs[r])) if r == f else None)
    if r != f:
        if abs(pr - pf) <= rtol * pr:
            d.borderline = 2
        else:
            d.problems.append(f"top-1 class {f} (reference probability {pf:.4g}) instead of {r} ({pr:.4g})")
    return d


# ----------------------------------------------------------------------------------------------------------------
# the check


def verify(model="yolo12n.yaml", images=None, imgsz=640, *, variant: Optional[str] = None, dtype="float32",
           backend: str = "auto", device=None, fuse: bool = True, conf: Optional[float] = None, iou: float = 0.7,
           seed: int = 0, channels_last: bool = False) -> VerifyReport:
    """Run `model` through ultralytics and through yolov12_fast.patch(backend=backend) on the same weights and
    images; return a VerifyReport (`.passed`, `.format()`, `.to_dict()`, `.failures()`, `.culprit`).

    model: a config name (`yolo12n.yaml`; random weights, BatchNorm calibrated on the images), a checkpoint path
        (ultralytics or the authors' turbo format), an nn.Module or an ultralytics YOLO object (copied, not changed).
    images: image paths (default: ultralytics' bundled bus.jpg and zidane.jpg), letterboxed to imgsz (int, (h, w) or
        "HxW"), run as one batch.
    variant: "ultralytics" (default) or "turbo", for config names only (checkpoints carry their layout).
    dtype: "float32", "float16" or "bfloat16" (both models are cast; the low-precision check also runs ultralytics
        in float32 as the oracle). device: default cuda if available, else cpu.
    fuse: model.fuse() first, as ultralytics does for inference. conf / iou: NMS thresholds (conf default: per
        image, in a gap of the reference scores, for random weights; 0.25 for trained weights, or per image as for
        random weights where nothing reaches 0.25).
    channels_last: run both models with channels_last weights and activations (`.to(memory_format=...)`), as
        ultralytics >= 8.4 runs CPU inference on x86 and CUDA training by default (the oracle too; images stay NCHW).
    """
    import torch

    import yolov12_fast

    from .nn.modules import FastModule, _check_backend
    from .ops.area_attention import resolve_backend
    from .patch import module_kind
    from .utils import asset_paths, exact_fp32, load_images, turbo_reference

    _check_backend(backend)
    if variant not in (None, "ultralytics", "turbo"):
        raise ValueError(f"variant must be 'ultralytics' or 'turbo', got {variant!r}")
    dt_name = DTYPES.get(str(dtype).replace("torch.", ""))
    if dt_name is None:
        raise ValueError(f"dtype must be one of {sorted(set(DTYPES.values()))}, got {dtype!r}")
    dt = getattr(torch, dt_name)
    try:
        dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise ValueError(f"device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device is visible here; use device='cpu'")
    if backend != "auto":  # before minutes of building and calibrating: can this backend run on dev at all?
        ok, why = _usable_anywhere(backend, dev)
        if not ok:
            raise ValueError(f"backend {backend!r} cannot run on {dev.type}: {why}")
    hw = _parse_imgsz(imgsz)
    paths = [str(p) for p in (images or asset_paths())]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"no such image: {', '.join(missing)}")
    imgs = load_images(paths, hw)

    base, layout, weights, random_weights = _load(model, variant, imgs, seed)
    for p in base.parameters():  # before fuse(): ultralytics < 8.3.9x fuses with grad on, leaving non-leaf weights
        p.requires_grad_(False)
    if fuse:
        with torch.no_grad():
            base.fuse(verbose=False)
    base.eval()

    ref = turbo_reference(yolov12_fast.unpatch(copy.deepcopy(base)))
    if any(isinstance(m, FastModule) for m in ref.modules()):
        raise ValueError("the model is built from yolov12_fast.nn modules: there is no ultralytics reference to "
                         "compare with")
    fast = yolov12_fast.patch(copy.deepcopy(base), backend=backend)
    names = [n for n, m in fast.named_modules() if isinstance(m, FastModule)]
    if not names:
        raise ValueError(f"{model}: no YOLOv12 attention modules (AAttn / ABlock / A2C2f) to swap")
    kinds = {n: module_kind(m) for n, m in fast.named_modules() if n in names}
    ref, fast = ref.to(dev, dt), fast.to(dev, dt)
    if channels_last:
        ref, fast = (m.to(memory_format=torch.channels_last) for m in (ref, fast))
    x = imgs.to(dev, dt)
    resolved = backend
    if backend == "auto":
        hd = next((m.head_dim for m in fast.modules() if module_kind(m) == "aattn"), None)
        resolved = f"auto -> {resolve_backend('auto', dev, dt, hd)}"

    task = getattr(base, "task", "detect")
    nc = int(getattr(base.model[-1], "nc", 0) or 0) if task != "classify" else 0
    ref_out, ref_layers, order = _run(ref, x, names)
    _, fast_layers, _ = _run(fast, x, names)
    fast_out, _, _ = _run(fast, x, None)  # hook-free: A2C2f's buffer path, as in production
    del fast

    names = [n for n in names if n in ref_layers]  # (a swapped module the forward pass never calls has no row)
    # the oracle: ultralytics on the same (already rounded) weights in higher precision
    o_dt = torch.float64 if dt == torch.float32 else torch.float32
    with exact_fp32():
        oracle_out, oracle_layers, _ = _run(copy.deepcopy(ref).to(dtype=o_dt), imgs.to(dev, o_dt), names)
    mod_rows = [_compare(n, kinds[n], fast_layers[n], ref_layers[n], oracle_layers[n], order[n]) for n in names]
    out_rows = _output_rows(task, nc, fast_out, ref_out, oracle_out)

    notes = []
    worst = max(r.yardstick for r in mod_rows + out_rows)
    if worst > 0.1:
        notes.append(f"ultralytics' own {dt_name} error reaches {worst:.2g} of the output scale on this model: the "
                     f"tolerance is that loose too; verify in float32 for a tight check")
    score_tol = next(r.tol for r in out_rows if r.name in ("output[scores]", "output[probs]"))
    dets = []
    ref_pred, fast_pred = _prediction(task, ref_out), _prediction(task, fast_out)
    rotated = task == "obb"
    for i, p in enumerate(paths):
        if ref_pred is None:  # classifier: the top-1 class
            probs = lambda out: _final_parts(task, out, nc)[0][1][i].double()
            dets.append(_match_top1(probs(ref_out), probs(fast_out), score_tol, os.path.basename(p)))
            continue
        auto = _auto_conf(ref_pred[i, 4:4 + nc].amax(0))
        c = conf if conf is not None else (auto if random_weights else 0.25)
        nms = lambda pred, c: _nms(pred[i:i + 1], c, iou, nc, rotated)
        ref_dets = nms(ref_pred, c)
        if conf is None and not random_weights and len(ref_dets) == 0:
            notes.append(f"{os.path.basename(p)}: no detection at conf 0.25; compared at conf {auto:.3g} instead")
            c, ref_dets = auto, nms(ref_pred, auto)
        dets.append(_match(ref_dets, nms(fast_pred, c), c, iou, score_tol, os.path.basename(p), rotated))

    notes += _vacuous_notes(mod_rows, dets, task)
    name = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    return VerifyReport(name, layout, weights, paths, list(hw), str(dev) + (f" ({torch.cuda.get_device_name(dev)})"
                        if dev.type == "cuda" else ""), dt_name, resolved, fuse, mod_rows, out_rows, dets,
                        str(o_dt).replace("torch.", ""), notes, task, bool(channels_last))


# ----------------------------------------------------------------------------------------------------------------
# command line


def add_parser(sub) -> None:
    from ._backends import BACKENDS

    p = sub.add_parser("verify", help="compare the patched model with ultralytics, layer by layer; non-zero exit on "
                                      "a tolerance exceeded or a detection that disagrees",
                       description="Check that the patched model computes what ultralytics computes, on your model "
                                   "and images: per swapped module, final output, detections after NMS.")
    p.add_argument("model", nargs="?", default="yolo12n.yaml",
                   help="config name (random weights, BatchNorm calibrated on the images) or checkpoint path "
                        "(ultralytics or turbo .pt); default yolo12n.yaml")
    p.add_argument("--images", nargs="+", default=None, help="image paths (default: ultralytics' bus.jpg, zidane.jpg)")
    p.add_argument("--imgsz", default="640", help="640, or HxW such as 480x640 (multiples of 32)")
    p.add_argument("--variant", choices=("ultralytics", "turbo"), default=None,
                   help="AAttn layout for a config name (default ultralytics); a checkpoint carries its own")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="model and input dtype")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="area-attention backend (default auto)")
    p.add_argument("--device", default=None, help="cuda or cpu (default cuda if available)")
    p.add_argument("--no-fuse", dest="fuse", action="store_false", help="do not fuse Conv+BN first")
    p.add_argument("--channels-last", action="store_true",
                   help="run both models channels_last (ultralytics >= 8.4's layout for CPU inference on x86 and "
                        "CUDA training)")
    p.add_argument("--conf", type=float, default=None,
                   help="NMS confidence threshold (default 0.25; per image for random weights)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (default 0.7)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights of a config name")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    p.add_argument("--json-out", default=None, metavar="FILE", help="also write the report as JSON to FILE")
    p.set_defaults(fn=run)


def _usable_anywhere(backend: str, dev: torch.device) -> tuple:
    """Whether the attention kernels of `backend` run on dev (the module's other ops fall back where they have no
    kernel of that backend: 'cuda' has no MLP kernel, for instance)."""
    from .ops.area_attention import _usable

    return _usable(backend, dev)


def run(args) -> int:
    """`yolov12-fast verify`: runs verify() offline (the command sets ultralytics' offline settings for its own
    process; the library function leaves the caller's environment alone), prints the report; exit 0 pass, 1 a
    tolerance exceeded, 2 bad arguments."""
    from .utils import ultralytics_offline

    os.environ.setdefault("YOLO_VERBOSE", "False")  # no ultralytics banners around the report
    ultralytics_offline()
    if args.json_out and not os.path.isdir(os.path.dirname(os.path.abspath(args.json_out))):
        print(f"yolov12-fast verify: error: --json-out {args.json_out}: no such directory", file=sys.stderr)
        return 2
    try:
        report = verify(args.model, args.images, args.imgsz, variant=args.variant, dtype=args.dtype,
                        backend=args.backend, device=args.device, fuse=args.fuse, conf=args.conf, iou=args.iou,
                        seed=args.seed, channels_last=getattr(args, "channels_last", False))
    except (ValueError, FileNotFoundError) as e:  # what the arguments name is wrong or missing; anything else is a
        print(f"yolov12-fast verify: error: {e}", file=sys.stderr)  # failure with its traceback (exit 1)
        return 2
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.format())
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report.to_dict(), f, indent=1)
    if not report.passed:
        what = f"first module over tolerance: {report.culprit}" if report.culprit else report.failures()[0]
        print(f"yolov12-fast verify: FAILED ({report.model}, {report.device}, {report.dtype}, "
              f"backend {report.backend}): {what}", file=sys.stderr)
        return 1
    return 0
