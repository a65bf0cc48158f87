"""`yolov12-fast verify` (yolov12_fast/verify.py): passes on YOLO12 built from the configs (both AAttn layouts, 640
and 480x640 where areas cut rows) and on checkpoints (ultralytics and the authors' turbo format), and fails loudly,
naming the module, when one fast module is wrong: through the Python API and through `python -m yolov12_fast
verify` (exit code and message).

Default run: yolo12n on CPU, each layout once; the other sizes and scales are marked slow. YOLOV12_FAST_TEST_BACKEND
picks the backend (default "auto").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ultra_utils as U
from yolov12_fast import verify as V
from yolov12_fast.utils import asset_paths

BACKEND = os.environ.get("YOLOV12_FAST_TEST_BACKEND", "auto")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"640": 640, "480x640": "480x640"}
BAD = "model.8.m.0.0.attn"  # the module the corruption below hits: the first AAttn of layer 8 (area 1) to run

# Adds 1e-2 to the output of one fast AAttn (the first area-1 one that runs, i.e. BAD): ~1e-3 of its output scale,
# about MODEL_RTOL_FP32 from ultralytics, far outside ultralytics' own float32 error.
CORRUPT = textwrap.dedent("""
    from yolov12_fast.nn import modules as _M

    _forward, _hit = _M.AAttn.forward, []

    def _corrupt(self, x):
        out = _forward(self, x)
        if self.area == 1 and (not _hit or _hit[0] is self):
            _hit[:1] = [self]
            out = out + 1e-2
        return out

    _M.AAttn.forward = _corrupt
""")


def _check_passed(report: V.VerifyReport, n_aattn: int = 8) -> None:
    assert report.passed, report.format()
    kinds = [r.kind for r in report.modules]
    assert kinds.count("aattn") == n_aattn and kinds.count("ablock") == n_aattn, kinds
    assert all(r.oracle_err <= r.tol for r in report.modules + report.outputs)
    assert all(d.ref >= 5 for d in report.detections), "vacuous detection comparison"
    assert all(d.ref == d.patched for d in report.detections), report.format()


def _cli(*args, corrupt: bool = False, tmp_path=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    path = [ROOT]
    if corrupt:
        (tmp_path / "sitecustomize.py").write_text(CORRUPT)  # runs at interpreter start, before -m yolov12_fast
        path.insert(0, str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join(path + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, "-m", "yolov12_fast", "verify", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


# --------------------------------------------------------------------------------------------------------------
# passes


def _default(s, v, sz):  # default CI: n in each layout once (ultralytics at 640, turbo at 480x640: rows cut)
    return s == "n" and (v, sz) in (("ultralytics", "640"), ("turbo", "480x640"))


CASES = [pytest.param(s, v, sz, id=f"{s}-{v}-{sz}", marks=[] if _default(s, v, sz) else [pytest.mark.slow])
         for s in U.SCALES for v in ("ultralytics", "turbo") for sz in SIZES if s == "n" or sz == "640"]


@pytest.mark.parametrize("scale,variant,size", CASES)
def test_verify_passes_on_configs(scale, variant, size):
    # both bundled images (one batch: areas must never mix images) for n-ultralytics-640, bus.jpg alone elsewhere
    # (time: the 2-core CI machine)
    both = (scale, variant, size) == ("n", "ultralytics", "640")
    report = V.verify(f"yolo12{scale}.yaml", images=None if both else asset_paths()[:1], imgsz=SIZES[size],
                      variant=variant, backend=BACKEND, device=DEVICE)
    n_aattn = 8 if scale in ("n", "s", "m") else 16  # 2 layers x 2 (n/s/m) or 4 (l/x) pairs x 2 ABlocks
    _check_passed(report, n_aattn)
    assert len(report.detections) == (2 if both else 1)
    assert report.variant == variant and report.imgsz == ([640, 640] if size == "640" else [480, 640])
    if variant == "turbo":
        assert report.modules[0].kind == "a2c2f"
    d = report.to_dict()
    assert d["passed"] and d["culprit"] is None and json.loads(json.dumps(d))["modules"][0]["name"] == "model.6"


def _save_checkpoint(path, variant: str) -> None:
    """A YOLO12n checkpoint written by ultralytics. variant="turbo": the authors' turbo format, whose AAttn objects
    are ultralytics' AAttn class holding qk, v, proj and a 5x5 pe."""
    from ultralytics import YOLO
    from ultralytics.nn.modules.block import AAttn

    model = U.build_model("n", variant, 640)
    for m in model.modules():
        if isinstance(m, U.TurboAAttn):
            m.__class__ = AAttn
    yolo = YOLO("yolo12n.yaml")
    yolo.model = model
    yolo.save(str(path))


def test_verify_passes_on_turbo_checkpoint(tmp_path):
    from ultralytics import YOLO

    ckpt = tmp_path / "yolo12n-turbo.pt"
    _save_checkpoint(ckpt, "turbo")
    with pytest.raises(AttributeError, match="qkv"), torch.no_grad():  # really the turbo format: plain ultralytics
        YOLO(str(ckpt)).model.float().eval()(U.images(320)[:1])       # cannot run it
    report = V.verify(str(ckpt), images=asset_paths()[:1], backend=BACKEND, device=DEVICE)
    _check_passed(report)
    assert report.variant == "turbo" and "checkpoint" in report.weights
    assert any("no detection at conf 0.25" in n for n in report.notes)  # random weights score low


def test_cli_checkpoint_json(tmp_path):
    """An ultralytics checkpoint through the command line, JSON out (320: time)."""
    ckpt = tmp_path / "yolo12n.pt"
    _save_checkpoint(ckpt, "ultralytics")
    r = _cli(str(ckpt), "--images", str(asset_paths()[0]), "--imgsz", "320", "--conf", "0.002", "--backend",
             BACKEND, "--device", DEVICE, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(r.stdout)
    assert d["passed"] and d["variant"] == "ultralytics" and d["imgsz"] == [320, 320]
    assert len(d["modules"]) >= 16 and d["detections"][0]["ref"] >= 5


# --------------------------------------------------------------------------------------------------------------
# fails loudly, naming the module


def test_a_check_that_compares_nothing_says_so():
    """A report still passes where nothing differs, but its notes, its JSON and its PASS line say which parts compared
    nothing: a module whose output is exactly 0, an image without a detection on either side."""
    row = lambda name, ref_max: V.Row(name, "aattn", [1, 64, 8, 8], ref_max, 0.0, 0.0, 0.0, 1e-6, 4e-6, True)
    det = lambda image, n: V.ImageDetections(image, 0.25, n, n, n, 0, None, None)
    rows, dets = [row("model.6.m.0.0.attn", 0.0), row("model.8.m.0.0.attn", 3.0)], [det("bus.jpg", 0), det("z.jpg", 4)]
    notes = V._vacuous_notes(rows, dets, "detect")
    assert len(notes) == 2 and "1 swapped module(s) output exactly 0" in notes[0] and "model.6.m.0.0.attn" in notes[0]
    assert "no detections on bus.jpg at the compared threshold" in notes[1] and "z.jpg" not in notes[1]
    assert V._vacuous_notes(rows[1:], dets[1:], "detect") == []
    report = V.VerifyReport("yolo12n.yaml", "ultralytics", "random", ["bus.jpg", "z.jpg"], [320, 320], "cpu", "float32",
                            "cpp", True, rows, [], dets, notes=notes)
    assert report.passed and report.to_dict()["notes"] == notes
    assert "PASS (partly vacuous: see the notes above)" in report.format()
    report.notes = []
    assert "\nPASS: " in report.format()


def test_verify_fails_on_a_corrupted_module(monkeypatch):
    from yolov12_fast.nn import modules as M

    monkeypatch.setattr(M.AAttn, "forward", M.AAttn.forward)  # restored after the test
    exec(CORRUPT, {})
    report = V.verify("yolo12n.yaml", images=[asset_paths()[0]], imgsz=320, backend=BACKEND, device=DEVICE)
    assert not report.passed
    assert report.culprit == BAD
    bad = {r.name for r in report.modules if not r.passed}
    assert BAD in bad and not any(n.startswith("model.6") for n in bad), bad  # layer 6 runs before: untouched
    row = next(r for r in report.modules if r.name == BAD)
    # ~MODEL_RTOL_FP32 (1e-3) from ultralytics, yet over 4x the tolerance: ultralytics' own fp32 error is ~5e-5
    assert row.rel_err < 2e-3 and row.oracle_err > 4 * row.tol, row
    assert any(BAD in f for f in report.failures())
    assert "FAIL: " in report.format() and BAD in report.format()


def test_verify_channels_last(monkeypatch):
    """--channels-last (ultralytics >= 8.4's layout for CPU inference on x86 and CUDA training): both models run
    channels_last (the patched modules see channels_last inputs), the check passes and says so; a corrupted AAttn
    still fails it by name."""
    from yolov12_fast.nn import modules as M

    seen = []
    real = M.AAttn.forward
    monkeypatch.setattr(M.AAttn, "forward", lambda self, x: (seen.append(M._channels_last(x)), real(self, x))[1])
    report = V.verify("yolo12n.yaml", images=[asset_paths()[0]], imgsz=320, backend=BACKEND, device=DEVICE,
                      channels_last=True)
    assert report.passed and report.channels_last and ", channels_last" in report.format(), report.format()
    assert seen and all(seen), seen
    assert report.to_dict()["channels_last"] is True
    monkeypatch.setattr(M.AAttn, "forward", M.AAttn.forward)
    exec(CORRUPT, {})
    bad = V.verify("yolo12n.yaml", images=[asset_paths()[0]], imgsz=320, backend=BACKEND, device=DEVICE,
                   channels_last=True)
    assert not bad.passed and bad.culprit == BAD, bad.format()


TASK_PARTS = {"segment": {"boxes", "scores", "mask coefs", "proto"}, "pose": {"boxes", "scores", "keypoints"},
              "obb": {"boxes", "scores", "angle"}, "classify": {"probs", "logits"}}


@pytest.mark.parametrize("cfg,task", [("yolo12n-seg.yaml", "segment"), ("yolo12n-pose.yaml", "pose"),
                                      ("yolo12n-obb.yaml", "obb"), ("yolo12n-cls.yaml", "classify")])
def test_verify_other_tasks(cfg, task, monkeypatch):
    """Segmentation, pose, OBB and classification models: every part of the final output gets its own row, the
    detections (rotated for OBB) or the top-1 classes agree, and (classification and OBB, whose checks differ most
    from detection's) a corrupted AAttn fails the check by name."""
    report = V.verify(cfg, imgsz=320, backend=BACKEND, device=DEVICE)
    assert report.passed and report.task == task, report.format()
    assert {r.name[len("output["):-1] for r in report.outputs} == TASK_PARTS[task]
    assert len(report.detections) == 2 and all(d.matched == d.ref > 0 for d in report.detections), report.format()
    if task not in ("classify", "obb"):
        return
    from yolov12_fast.nn import modules as M

    monkeypatch.setattr(M.AAttn, "forward", M.AAttn.forward)  # restored after the test
    exec(CORRUPT, {})
    bad = V.verify(cfg, images=[asset_paths()[0]], imgsz=320, backend=BACKEND, device=DEVICE)
    assert not bad.passed and bad.culprit == BAD, bad.format()


def test_cli_exit_code_on_a_corrupted_module(tmp_path):
    r = _cli("--images", str(asset_paths()[0]), "--imgsz", "320", "--backend", BACKEND, "--device", DEVICE,
             corrupt=True, tmp_path=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"first module over tolerance: {BAD}" in r.stderr, r.stderr
    assert f"{BAD} (aattn)" in r.stdout and "FAIL" in r.stdout, r.stdout


def test_cli_usage_errors(tmp_path):
    r = _cli(str(tmp_path / "missing.pt"))
    assert r.returncode == 2 and "no such checkpoint" in r.stderr, r.stderr
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    r = _cli(str(junk))
    assert r.returncode == 2 and "junk.pt: ultralytics cannot load it" in r.stderr, r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without a GPU")
@pytest.mark.parametrize("kw,msg", [(dict(device="cuda"), "no CUDA device is visible here; use device='cpu'"),
                                    (dict(backend="cuda"), "backend 'cuda' cannot run on cpu"),
                                    (dict(device="cpu", backend="triton"), "backend 'triton' cannot run on cpu"),
                                    (dict(device="gpu0"), "device 'gpu0'"),
                                    (dict(images=["nope.jpg"]), "no such image: nope.jpg")],
                         ids=["device-cuda", "backend-cuda", "backend-triton", "bad-device", "missing-image"])
def test_arguments_that_cannot_work_here_are_refused_before_any_model_is_built(kw, msg, monkeypatch):
    """Before the minutes of building and calibrating two models: a CUDA device or a GPU backend on a machine
    without one, a malformed device, a missing image (the command line prints these as usage errors, exit 2)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the interpreter would let triton run on CPU
    monkeypatch.setattr(V, "_load", lambda *a: pytest.fail("a model was built"))
    import yolov12_fast.utils

    monkeypatch.setattr(yolov12_fast.utils, "load_images", lambda *a: pytest.fail("images were loaded"))
    with pytest.raises((ValueError, FileNotFoundError), match=msg):
        V.verify("yolo12n.yaml", **kw)


def test_a_failure_inside_verify_is_not_reported_as_a_usage_error(monkeypatch):
    """Exit 2 means 'your arguments': a RuntimeError from inside (a kernel, a bug) propagates with its traceback
    (exit 1 from the interpreter) instead of being printed as a usage error."""
    import argparse

    def broken(*a, **k):
        raise RuntimeError("a kernel failed")

    monkeypatch.setattr(V, "verify", broken)
    args = argparse.Namespace(model="yolo12n.yaml", images=None, imgsz="640", variant=None, dtype="float32",
                              backend="auto", device="cpu", fuse=True, conf=None, iou=0.7, seed=0, json=False,
                              json_out=None)
    with pytest.raises(RuntimeError, match="a kernel failed"):
        V.run(args)


def test_parse_imgsz():
    assert V._parse_imgsz(640) == (640, 640)
    assert V._parse_imgsz("480x640") == (480, 640) == V._parse_imgsz("480,640") == V._parse_imgsz((480, 640))
    with pytest.raises(ValueError, match="multiples of 32"):
        V._parse_imgsz("500")


def _dets(*rows):
    """NMS rows (x1, y1, x2, y2, score, class) as verify's matcher takes them."""
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, 6)


def test_detection_matching_rules():
    """The agreement check after NMS on hand-made detections: identical sets match; a class change, a moved box
    or a missing detection is a problem; a detection whose score sits within rtol of the threshold, or an NMS
    near-tie (two overlapping boxes of near-equal score, each model keeping the other), is borderline only."""
    conf, iou_nms, rtol = 0.25, 0.7, 1e-3
    ref = _dets([10, 10, 50, 50, 0.9, 1], [100, 100, 150, 160, 0.6, 2])

    d = V._match(ref, ref.clone(), conf, iou_nms, rtol, "same")
    assert d.passed and d.matched == 2 and d.borderline == 0 and d.min_iou == 1.0 and d.max_score_diff == 0.0

    other_class = ref.clone()
    other_class[1, 5] = 3
    d = V._match(ref, other_class, conf, iou_nms, rtol, "class")
    assert not d.passed and d.matched == 1 and len(d.problems) == 2  # each side's detection lacks a partner

    moved = ref.clone()
    moved[0, :4] += 2.0  # IoU about 0.82: below the match IoU, above the NMS IoU, but scores equal -> near-tie
    moved[0, 4] = 0.5    # scores far apart: no near-tie either
    d = V._match(ref, moved, conf, iou_nms, rtol, "moved")
    assert not d.passed and d.matched == 1 and any("score 0.9" in p for p in d.problems)

    tie = ref.clone()
    tie[0, :4] += 2.0
    tie[0, 4] = 0.9 * (1 + rtol / 2)
    d = V._match(ref, tie, conf, iou_nms, rtol, "near-tie")
    assert d.passed and d.matched == 1 and d.borderline == 2

    at_threshold = _dets([10, 10, 50, 50, 0.9, 1], [100, 100, 150, 160, conf * (1 + rtol / 2), 2])
    d = V._match(at_threshold, ref[:1], conf, iou_nms, rtol, "threshold")
    assert d.passed and d.matched == 1 and d.borderline == 1

    d = V._match(ref, ref[:1], conf, iou_nms, rtol, "missing")
    assert not d.passed and any("ultralytics detection (class 2" in p for p in d.problems)


def test_classification_top1_rules():
    rtol = 1e-3
    probs = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    d = V._match_top1(probs, probs.clone(), rtol, "same")
    assert d.passed and d.matched == 1
    near = torch.tensor([0.1, 0.6, 0.6 * (1 - rtol / 2)], dtype=torch.float64)
    d = V._match_top1(near, torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64), rtol, "near")
    assert d.passed and d.borderline == 2
    d = V._match_top1(probs, torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64), rtol, "wrong")
    assert not d.passed and "top-1 class 2" in d.problems[0]
    # rtol is relative: small probabilities 2e-4 apart (4e-3 relative) are a real disagreement
    small = torch.tensor([0.9, 0.05, 0.0498], dtype=torch.float64)
    d = V._match_top1(small[1:], torch.tensor([0.01, 0.02], dtype=torch.float64), rtol, "relative")
    assert not d.passed
