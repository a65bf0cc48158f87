"""yolov12_fast.patch / unpatch / patched and the yolov12_fast.YOLO drop-in: what is swapped, what is kept, what
is restored, what nothing else sees; turbo objects inside ultralytics' AAttn class; checkpoints that plain
ultralytics loads without yolov12_fast; ONNX export of a patched model."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import ultra_utils as U
import yolov12_fast as yf
from tolerances import FACTOR, MODEL_RTOL_FP32, TRAIN_GRAD_RTOL, assert_close_to_oracle
from yolov12_fast import reference as R
from yolov12_fast.patch import module_kind

BACKEND = os.environ.get("YOLOV12_FAST_TEST_BACKEND", "auto")
IMGSZ = 320  # the bookkeeping tests need no large inputs (numerics: tests/test_modules.py)


def _small_model(variant="ultralytics", fused=False):
    return U.build_model("n", variant, IMGSZ, fused)


def _kinds(model):
    return {n: type(m) for n, m in model.named_modules() if module_kind(m) is not None}


def _forward(model, x):
    with torch.no_grad():
        out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


# --------------------------------------------------------------------------------------------------------------
# patch / unpatch / idempotence / filter / context manager / no leakage


def test_patch_keeps_parameters_keys_and_restores():
    from ultralytics.nn.modules.block import A2C2f, AAttn, ABlock

    model = _small_model()
    x = U.images(IMGSZ)
    before = _forward(model, x)
    classes = _kinds(model)
    params = {n: p for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    keys = list(model.state_dict())

    assert yf.patch(model, backend=BACKEND) is model
    for n, m in model.named_modules():
        if n in classes:
            assert isinstance(m, yf.nn.FastModule) and isinstance(m, classes[n]), n
    assert isinstance(model.model[6], A2C2f) and isinstance(model.model[6].m[0][0], ABlock)
    assert isinstance(model.model[6].m[0][0].attn, AAttn)
    assert all(p is params[n] for n, p in model.named_parameters())  # the same Parameter objects
    assert all(b is buffers[n] for n, b in model.named_buffers())
    assert list(model.state_dict()) == keys
    patched_out = _forward(model, x)

    yf.patch(model, backend=BACKEND)  # idempotent
    assert list(model.state_dict()) == keys and all(p is params[n] for n, p in model.named_parameters())
    torch.testing.assert_close(_forward(model, x), patched_out, rtol=0, atol=0)

    assert yf.unpatch(model) is model
    assert _kinds(model) == classes
    assert not any(k.startswith("_yf_") for m in model.modules() for k in m.__dict__)
    assert all(p is params[n] for n, p in model.named_parameters())
    torch.testing.assert_close(_forward(model, x), before, rtol=0, atol=0)


def test_filter_and_backend_attribute():
    model = _small_model()
    in_layer6 = lambda name: name == "model.6" or name.startswith("model.6.")
    yf.patch(model, backend="reference", filter=lambda name, m: in_layer6(name))
    for n, m in model.named_modules():
        if module_kind(m) is None:
            continue
        assert isinstance(m, yf.nn.FastModule) == in_layer6(n), n
    assert model.model[6].m[0][0].attn.backend == "reference"
    model.model[6].backend = "auto"  # set on a block: reaches every fast module inside
    assert all(m.backend == "auto" for m in model.model[6].modules() if isinstance(m, yf.nn.FastModule))
    with pytest.raises(ValueError, match="unknown backend"):
        model.model[6].backend = "nope"
    with pytest.raises(ValueError, match="unknown backend"):
        yf.patch(model, backend="nope")
    with pytest.raises(TypeError):
        yf.patch("not a model")


def test_context_manager_restores_exactly_what_it_changed():
    model = _small_model()
    classes = _kinds(model)
    yf.patch(model, backend="reference", filter=lambda n, m: n.startswith("model.8."))
    pre = _kinds(model)
    with yf.patched(model, backend=BACKEND) as m:
        assert m is model
        assert all(isinstance(mod, yf.nn.FastModule) for n, mod in model.named_modules() if n in classes)
        assert model.model[8].m[0][0].attn.backend == BACKEND
    assert _kinds(model) == pre  # layer 8 stays patched (it was before), the rest is back
    assert model.model[8].m[0][0].attn.backend == "reference"
    with pytest.raises(RuntimeError, match="boom"):
        with yf.patched(model):
            raise RuntimeError("boom")
    assert _kinds(model) == pre
    yf.unpatch(model)
    assert _kinds(model) == classes


def test_no_leakage_into_other_models():
    from ultralytics.nn.modules.block import AAttn

    a, b = _small_model(), _small_model()
    forward_before = AAttn.forward
    b_classes = _kinds(b)
    yf.patch(a, backend=BACKEND)
    assert _kinds(b) == b_classes
    assert not any(isinstance(m, yf.nn.FastModule) for m in b.modules())
    assert AAttn.forward is forward_before and "forward" not in vars(b.model[6].m[0][0].attn)
    fresh = AAttn(64, 2, 4)
    assert type(fresh) is AAttn
    x = U.images(IMGSZ)[:1]
    torch.testing.assert_close(_forward(b, x), _forward(_small_model(), x), rtol=0, atol=0)


def test_other_attention_blocks_are_left_alone():
    """YOLO11's PSABlock / Attention (qkv, proj, pe too, but no areas) are not area attention."""
    from ultralytics import YOLO

    model = YOLO("yolo11n.yaml").model
    classes = [type(m) for m in model.modules()]
    assert any(c.__name__ == "PSABlock" for c in classes)
    with pytest.warns(UserWarning, match="nothing patched"):
        yf.patch(model, backend=BACKEND)
    assert [type(m) for m in model.modules()] == classes


def test_look_alike_a2c2f_without_gamma_is_left_alone():
    """A class named A2C2f with cv1 / cv2 / m but no gamma (a C2f-style block of another codebase) is not
    ultralytics' A2C2f: patch leaves it, and says nothing was patched."""
    from yolov12_fast.patch import module_kind

    class A2C2f(nn.Module):
        def __init__(self):
            super().__init__()
            self.cv1, self.cv2 = nn.Conv2d(8, 8, 1), nn.Conv2d(16, 8, 1)
            self.m = nn.ModuleList([nn.Identity()])

    model = nn.Sequential(A2C2f())
    assert module_kind(model[0]) is None
    with pytest.warns(UserWarning, match="nothing patched"):
        yf.patch(model, backend=BACKEND)
    assert type(model[0]) is A2C2f


def test_unpatched_puts_every_setting_back():
    """yolov12_fast.unpatched (around checkpoint saving) restores the fast classes with their backend and
    recompute settings, not the defaults."""
    model = yf.patch(_small_model(), backend="reference", recompute="block")
    with yf.unpatched(model):
        assert not any(isinstance(m, yf.nn.FastModule) for m in model.modules())
    fast = [m for m in model.modules() if isinstance(m, yf.nn.FastModule)]
    with_backend, with_recompute = ([m for m in fast if hasattr(m, a)] for a in ("backend", "recompute"))
    assert with_backend and all(m.backend == "reference" for m in with_backend)
    assert with_recompute and all(m.recompute == "block" for m in with_recompute)


def test_repatching_keeps_settings_not_given():
    """patch(m) on a patched model changes only what it is given: backend and recompute left out stay."""
    model = yf.patch(_small_model(), backend="reference", recompute="block")
    attn, blk = model.model[6].m[0][0].attn, model.model[6].m[0][0]
    yf.patch(model)
    assert attn.backend == "reference" and blk.recompute == "block"
    yf.patch(model, backend="auto")
    assert attn.backend == "auto" and blk.recompute == "block"
    fresh = yf.patch(_small_model())  # swapped now without settings: the defaults
    assert fresh.model[6].m[0][0].attn.backend == "auto" and fresh.model[6].m[0][0].recompute == "auto"


def test_hooks_on_the_pe_branch_run():
    """Folding the PE conv + BN would skip their forward calls: a module with hooks there (feature capture,
    ablation) runs them, and its output is what ultralytics gives with the same hooks."""
    ref = _small_model()
    fast = yf.patch(copy.deepcopy(ref), backend=BACKEND)
    x = U.images(IMGSZ)[:1]
    calls = []
    for m, tag in ((ref, "ref"), (fast, "fast")):
        attn = m.model[6].m[0][0].attn
        attn.pe.register_forward_hook(lambda mod, i, o, tag=tag: calls.append(tag) or o * 0)  # ablate P
        attn.pe.bn.register_forward_hook(lambda mod, i, o, tag=tag: calls.append(tag + "-bn"))
    out_ref, out_fast = _forward(ref, x), _forward(fast, x)
    assert calls.count("fast") == calls.count("ref") >= 1 and calls.count("fast-bn") == calls.count("ref-bn")
    rel = ((out_fast - out_ref).abs().max() / out_ref.abs().max()).item()
    assert rel < MODEL_RTOL_FP32, rel


def test_clear_caches_after_in_place_data_edits():
    """Folded weights are cached for inference keyed on torch's version counters; `.data` edits bypass those, and
    yolov12_fast.clear_caches(model) is the documented remedy (in-place ops on the parameters themselves are
    detected). Compared with a model patched after the edit, which never cached the old weights."""
    ref = _small_model()
    fast = yf.patch(copy.deepcopy(ref), backend=BACKEND)
    x = U.images(IMGSZ)[:1]
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()
    with torch.inference_mode():
        fast(x)  # fills the caches
    for m in (ref, fast):
        m.model[6].m[0][0].attn.pe.conv.weight.data.mul_(1.5)
    with torch.inference_mode():
        want = yf.patch(copy.deepcopy(ref), backend=BACKEND)(x)[0]
        assert rel(fast(x)[0], want) > 1e-4, "the stale cache was not used: this test would not see a missing clear"
        yf.clear_caches(fast)
        assert rel(fast(x)[0], want) < 1e-6
    with torch.no_grad():  # an in-place op on the parameter itself bumps its version: no clear needed
        for m in (ref, fast):
            m.model[6].m[0][0].attn.pe.conv.weight.mul_(0.5)
    with torch.inference_mode():
        assert rel(fast(x)[0], yf.patch(copy.deepcopy(ref), backend=BACKEND)(x)[0]) < 1e-6


def test_patching_an_ultralytics_yolo_follows_it_into_training():
    """patch(YOLO(...)) in place: its train() builds a new model in the trainer, so patch installs the same trainer
    callback yolov12_fast.YOLO uses (with the patch settings); unpatch removes it, patched() restores the previous."""
    from types import SimpleNamespace

    from ultralytics import YOLO

    y = YOLO("yolo12n.yaml")
    cbs = y.callbacks["on_pretrain_routine_end"]
    n0 = len(cbs)
    yf.patch(y, recompute="block")
    assert len(cbs) == n0 + 1 and cbs[-1].keywords == {"backend": "auto", "recompute": "block"}
    yf.patch(y, backend="reference")  # one callback, settings merged
    assert len(cbs) == n0 + 1 and cbs[-1].keywords == {"backend": "reference", "recompute": "block"}
    trainer = SimpleNamespace(model=_small_model(), ema=None, save_model=lambda: None)
    cbs[-1](trainer)  # what the trainer does after building its model
    blk = trainer.model.model[6].m[0][0]
    assert isinstance(blk, yf.nn.FastModule) and blk.recompute == "block" and blk.attn.backend == "reference"
    with yf.patched(y, backend="auto"):
        assert len(cbs) == n0 + 1 and cbs[-1].keywords["backend"] == "auto"
    assert len(cbs) == n0 + 1 and cbs[-1].keywords["backend"] == "reference"
    yf.unpatch(y)
    assert len(cbs) == n0


def test_verify_leaves_the_environment_alone(monkeypatch):
    """The library function does not switch the caller's process (and its children) to ultralytics' offline
    settings; only the CLI commands do, for themselves."""
    from yolov12_fast import verify as V

    monkeypatch.delenv("YOLO_OFFLINE", raising=False)
    monkeypatch.delenv("YOLO_AUTOINSTALL", raising=False)
    ours = lambda: {k: v for k, v in os.environ.items() if k.startswith("YOLO")}  # libraries set their own too
    before = ours()
    from yolov12_fast.utils import asset_paths

    V.verify("yolo12n.yaml", images=[asset_paths()[0]], imgsz=64, backend=BACKEND, device="cpu")
    assert ours() == before


def test_deepcopy_keeps_fast_classes():
    model = yf.patch(_small_model(), backend="reference")
    clone = copy.deepcopy(model)
    assert isinstance(clone.model[6].m[0][0].attn, yf.nn.FastModule)
    assert clone.model[6].m[0][0].attn.backend == "reference"
    assert clone.model[6].m[0][0].attn.qkv.conv.weight is not model.model[6].m[0][0].attn.qkv.conv.weight
    assert type(copy.copy(model.model[6])) is type(model.model[6])


# --------------------------------------------------------------------------------------------------------------
# turbo-style attention inside ultralytics' AAttn class (an authors' turbo checkpoint loaded by ultralytics)


def _turbo_in_ultralytics_aattn(dim=64, heads=2, area=4):
    """An object of ultralytics' AAttn class carrying the turbo layout (qk, v, 5x5 pe), built by hand the way
    unpickling an authors' turbo checkpoint with pip ultralytics builds it."""
    from ultralytics.nn.modules.block import AAttn
    from ultralytics.nn.modules.conv import Conv

    m = AAttn(dim, heads, area)
    del m.qkv
    C = m.num_heads * m.head_dim  # (ultralytics >= 8.3.9x also keeps it as m.all_head_dim)
    m.qk = Conv(dim, 2 * C, 1, act=False)
    m.v = Conv(dim, C, 1, act=False)
    m.proj = Conv(C, dim, 1, act=False)
    m.pe = Conv(C, dim, 5, 1, 2, g=dim, act=False)
    if hasattr(m, "all_head_dim"):
        del m.all_head_dim  # the authors' turbo AAttn has no such attribute
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Conv2d):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / mod.weight[0].numel() ** 0.5)
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))
                mod.running_mean.copy_(0.1 * torch.randn(mod.running_mean.shape, generator=g))
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
    return m.eval()


def test_turbo_objects_in_ultralytics_class_run():
    from ultralytics.nn.modules.block import AAttn

    m = _turbo_in_ultralytics_aattn()
    x = torch.randn(2, 64, 10, 12)  # 120 tokens, 30 per area = 2.5 rows
    with pytest.raises(AttributeError, match="has no attribute 'qkv'"):
        m(x)  # what users hit with ultralytics alone
    assert module_kind(m) == "aattn"
    turbo = U.TurboAAttn(64, 2, 4).eval()
    turbo.load_state_dict(m.state_dict())
    yf.patch(m, backend=BACKEND)
    assert isinstance(m, AAttn) and m.variant == "turbo"
    with torch.no_grad():
        actual, naive, oracle = m(x), turbo(x), R.aattn(turbo, x.double())
    assert_close_to_oracle(actual, naive, oracle, "turbo-in-ultralytics AAttn")


def test_turbo_checkpoint_model_in_ultralytics_classes():
    """A whole turbo YOLO12n whose AAttns are ultralytics' class (as loaded from an authors' checkpoint): plain
    ultralytics fails, the patched model matches the turbo model."""
    from ultralytics.nn.modules.block import AAttn

    turbo = _small_model("turbo")
    loaded = copy.deepcopy(turbo)
    for m in loaded.modules():
        if isinstance(m, U.TurboAAttn):
            m.__class__ = AAttn
    x = U.images(IMGSZ)
    with pytest.raises(AttributeError, match="qkv"):
        _forward(loaded, x)
    yf.patch(loaded, backend=BACKEND)
    a, e = _forward(loaded, x), _forward(turbo, x)
    from test_modules import assert_outputs_close

    assert_outputs_close(a, e, "turbo checkpoint")


# --------------------------------------------------------------------------------------------------------------
# the YOLO drop-in and checkpoints that plain ultralytics loads


def test_yolo_dropin_patches_and_predicts():
    from ultralytics import YOLO as UltralyticsYOLO
    from ultralytics.utils import ASSETS

    y = yf.YOLO("yolo12n.yaml", backend=BACKEND)
    assert isinstance(y, UltralyticsYOLO) and y.backend == BACKEND
    assert isinstance(y.model.model[6].m[0][0].attn, yf.nn.FastModule)
    res = y.predict(str(ASSETS / "bus.jpg"), imgsz=IMGSZ, conf=0.0, max_det=5, verbose=False)
    assert len(res) == 1 and res[0].boxes is not None
    assert isinstance(U.predictor_module(y.predictor).model[6], yf.nn.FastModule)  # predictor's fused copy
    yf.unpatch(y)
    # no predictor runs a patched copy after unpatch: ultralytics >= 8.4 predicts through a fused copy, which unpatch
    # drops; before 8.4 the predictor runs y.model itself, which unpatch restored in place
    assert y.predictor is None or U.predictor_module(y.predictor) is y.model
    assert not any(isinstance(m, yf.nn.FastModule) for m in y.model.modules())
    yf.patch(y, backend=BACKEND)
    assert isinstance(y.model.model[8], yf.nn.FastModule)


_LOADER = textwrap.dedent("""
    import json, os, sys
    import torch
    from ultralytics import YOLO
    from ultralytics.nn.modules.block import A2C2f, AAttn
    args = json.loads(sys.argv[1])
    report = {}
    y = YOLO(args["saved"])
    report["yolo_classes"] = sorted({type(m).__module__ + "." + type(m).__name__ for m in y.model.modules()
                                     if isinstance(m, (A2C2f, AAttn))})
    sd = torch.load(args["expected_sd"])
    got = y.model.float().state_dict()
    report["same_state"] = list(got) == list(sd) and all(torch.equal(got[k], sd[k].to(got[k].dtype)) for k in sd)
    raw = torch.load(args["raw"], weights_only=False)
    report["raw_classes"] = sorted({type(m).__module__ + "." + type(m).__name__ for m in raw.modules()
                                    if isinstance(m, (A2C2f, AAttn))})
    x = torch.load(args["x"])
    with torch.no_grad():
        torch.save(raw.eval()(x)[0], args["raw_out"])
    report["imports_yolov12_fast"] = any(k.split(".")[0] == "yolov12_fast" for k in sys.modules)
    print("REPORT" + json.dumps(report))
""")


def _path_without_this_repo() -> str:
    """PYTHONPATH minus this repository's entries: packages installed with --target + PYTHONPATH (the GPU machines'
    ultralytics) stay importable."""
    root = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
    keep = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and not os.path.realpath(p).startswith(root)]
    return os.pathsep.join(keep)


def _load_plain(tmp_path, **paths) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = _path_without_this_repo()  # nothing from this repository on the path
    r = subprocess.run([sys.executable, "-c", _LOADER, json.dumps({k: str(v) for k, v in paths.items()})],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("REPORT")][-1]
    return json.loads(line[len("REPORT"):])


def _assert_safe_load_is_plain(ckpt, cwd):
    """In a fresh process that never imports yolov12_fast, ultralytics with ULTRALYTICS_SAFE_LOAD (weights_only +
    allow-list) loads `ckpt` into its own classes."""
    code = ("import os, sys; os.environ['ULTRALYTICS_SAFE_LOAD'] = '1'\n"
            "from ultralytics import YOLO\n"
            f"y = YOLO({str(ckpt)!r}); print(type(y.model.model[6]).__module__)\n"
            "print(any(k.split('.')[0] == 'yolov12_fast' for k in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                       env={**os.environ, "PYTHONPATH": _path_without_this_repo()}, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.split() == ["ultralytics.nn.modules.block", "False"]


def test_checkpoints_load_with_plain_ultralytics(tmp_path):
    """YOLO.save() of the drop-in, and torch.save() of a patched module, load in a process that never imports
    yolov12_fast (also under ULTRALYTICS_SAFE_LOAD for the YOLO checkpoint), as ultralytics classes with the
    same weights, and the loaded module computes what the patched one does."""
    y = yf.YOLO("yolo12n.yaml", backend=BACKEND)
    y.model = yf.patch(_small_model(), backend=BACKEND)
    y.save(tmp_path / "saved.pt")
    assert isinstance(y.model.model[6], yf.nn.FastModule)  # still patched after saving
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in y.model.state_dict().items()},
               tmp_path / "expected_sd.pt")  # YOLO.save writes the model in half precision
    raw = y.model
    torch.save(raw, tmp_path / "raw.pt")
    x = U.images(IMGSZ)[:1]
    torch.save(x, tmp_path / "x.pt")
    paths = dict(saved=tmp_path / "saved.pt", expected_sd=tmp_path / "expected_sd.pt", raw=tmp_path / "raw.pt",
                 x=tmp_path / "x.pt", raw_out=tmp_path / "raw_out.pt")
    rep = _load_plain(tmp_path, **paths)
    assert not rep["imports_yolov12_fast"]
    assert rep["same_state"]
    want = ["ultralytics.nn.modules.block.A2C2f", "ultralytics.nn.modules.block.AAttn"]
    assert rep["yolo_classes"] == want and rep["raw_classes"] == want
    torch.testing.assert_close(torch.load(tmp_path / "raw_out.pt"), _forward(raw, x), rtol=1e-3, atol=1e-3)
    # ULTRALYTICS_SAFE_LOAD (weights_only=True + allow-list) for the checkpoint YOLO.save wrote
    _assert_safe_load_is_plain(tmp_path / "saved.pt", tmp_path)


# --------------------------------------------------------------------------------------------------------------
# ONNX export: the fast modules decompose into standard operators while traced


def _export_patched(tmp_path, monkeypatch, **kwargs):
    """ultralytics' exporter on the drop-in of a small yolo12n, in tmp_path: (the unpatched model, the exported
    file); exporting must leave the model patched."""
    monkeypatch.chdir(tmp_path)
    plain = _small_model()
    y = yf.YOLO("yolo12n.yaml", backend=BACKEND)
    y.model = yf.patch(copy.deepcopy(plain), backend=BACKEND)
    path = y.export(imgsz=IMGSZ, **kwargs)
    assert isinstance(y.model.model[6], yf.nn.FastModule)
    return plain, path


def test_onnx_export_of_patched_yolo12n(tmp_path, monkeypatch):
    """ultralytics' exporter (deep copy, fuse, torch.onnx.export tracing) on the drop-in: the graph holds only
    standard ONNX operators and onnxruntime reproduces the unpatched model."""
    import onnx
    import onnxruntime as ort

    from test_modules import assert_outputs_close

    plain, path = _export_patched(tmp_path, monkeypatch, format="onnx", simplify=False, dynamic=False)
    graph = onnx.load(path).graph
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}, {n.domain for n in graph.node}
    x = U.images(IMGSZ)[:1]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    assert_outputs_close(got, _forward(plain, x), "onnxruntime vs ultralytics")


_TS_LOADER = textwrap.dedent("""
    import json, sys
    import torch
    args = json.loads(sys.argv[1])
    m = torch.jit.load(args["ts"])
    with torch.no_grad():
        out = m(torch.load(args["x"]))
    torch.save(out[0] if isinstance(out, (tuple, list)) else out, args["out"])
    print("IMPORTS_YOLOV12_FAST", any(k.split(".")[0] == "yolov12_fast" for k in sys.modules))
""")


def test_torchscript_export_of_patched_yolo12n(tmp_path, monkeypatch):
    """ultralytics' TorchScript export (torch.jit.trace) of the drop-in: the fast modules trace the reference math,
    so the file holds no yolov12_fast op and loads and runs in a process that never imports yolov12_fast, with the
    unpatched model's output (README: export)."""
    from test_modules import assert_outputs_close

    plain, path = _export_patched(tmp_path, monkeypatch, format="torchscript")
    assert "yolov12_fast::" not in str(torch.jit.load(path).inlined_graph)  # no custom op (class names stay)
    x = U.images(IMGSZ)[:1]
    torch.save(x, tmp_path / "x.pt")
    env = dict(os.environ, PYTHONPATH=_path_without_this_repo())
    r = subprocess.run([sys.executable, "-c", _TS_LOADER, json.dumps({"ts": str(path), "x": str(tmp_path / "x.pt"),
                                                                      "out": str(tmp_path / "out.pt")})],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "IMPORTS_YOLOV12_FAST False" in r.stdout, r.stdout
    assert_outputs_close(torch.load(tmp_path / "out.pt"), _forward(plain, x), "TorchScript vs ultralytics")


def test_openvino_export_of_patched_yolo12n(tmp_path, monkeypatch):
    """ultralytics' OpenVINO export (openvino's PyTorch frontend traces the module) of the drop-in: it converts (a
    yolov12_fast op would have no OpenVINO conversion) and OpenVINO's CPU plugin, held to fp32 (its default on CPUs
    with bf16 units is bf16: errors of ~70 in box pixels for the plain model too), reproduces the unpatched model."""
    import openvino as ov  # a test extra, like onnxruntime

    from test_modules import assert_outputs_close

    plain, path = _export_patched(tmp_path, monkeypatch, format="openvino")
    (xml,) = Path(path).glob("*.xml")
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = U.images(IMGSZ)[:1]
    got = torch.from_numpy(compiled(x.numpy())[0])
    assert_outputs_close(got, _forward(plain, x), "OpenVINO vs ultralytics")


# --------------------------------------------------------------------------------------------------------------
# training through ultralytics' trainer (smoke): the trainer's model and EMA run patched, checkpoints stay plain


def _leaves(out) -> list:
    """The tensors of a model output (any nesting of tuples, lists, dicts), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in _leaves(o)] if isinstance(out, (list, tuple)) else []


@pytest.mark.parametrize("task", ["seg", "pose", "obb", "cls"])
def test_other_task_models_patch_and_match(task):
    """YOLO12 segmentation, pose, OBB and classification models (ultralytics' yolo12-{task}.yaml) carry the same
    A2C2f / ABlock / AAttn modules: every one is swapped (as many as ultralytics' own modules of those kinds), the
    drop-in YOLO keeps the task, and every output tensor of the patched model is within the tolerance principle of
    ultralytics' fp32 output against the float64 model (random weights, BatchNorm calibrated on the bundled
    images)."""
    cfg, imgsz = f"yolo12n-{task}.yaml", (224 if task == "cls" else 320)
    imgs = U.images(imgsz)
    plain = yf.utils.calibrated_model(cfg, imgs=imgs)
    expected_kinds = sum(module_kind(m) is not None for m in plain.modules())
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND)
    assert sum(isinstance(m, yf.nn.FastModule) for m in fast.modules()) == expected_kinds > 0
    with torch.no_grad():
        got, want, oracle = (_leaves(m(x)) for m, x in ((fast, imgs), (plain, imgs),
                                                         (copy.deepcopy(plain).double(), imgs.double())))
    assert len(got) == len(want) == len(oracle) > 0
    for i, (a, n, o) in enumerate(zip(got, want, oracle)):
        assert a.shape == n.shape
        assert_close_to_oracle(a, n, o, f"{task} output {i}")
    assert yf.YOLO(cfg).task == {"seg": "segment", "pose": "pose", "obb": "obb", "cls": "classify"}[task]


def _tiny_dataset(root, copies: int = 1):
    import shutil

    from ultralytics.utils import ASSETS

    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(copies):
            for name in ("bus", "zidane"):
                stem = name if copies == 1 else f"{name}{i}"
                shutil.copy(ASSETS / f"{name}.jpg", root / "images" / split / f"{stem}.jpg")
                (root / "labels" / split / f"{stem}.txt").write_text("0 0.5 0.5 0.4 0.6\n1 0.3 0.3 0.2 0.2\n")
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\n"
                                    "names:\n  0: person\n  1: bus\n")
    return root / "data.yaml"


def test_training_runs_patched_and_checkpoints_stay_plain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _tiny_dataset(tmp_path / "data")
    seen = {}

    def spy(trainer):
        seen["model"] = isinstance(trainer.model.model[6], yf.nn.FastModule)
        seen["ema"] = isinstance(trainer.ema.ema.model[8].m[0][0].attn, yf.nn.FastModule)
        seen["training"] = trainer.model.training

    y = yf.YOLO("yolo12n.yaml", backend=BACKEND)
    y.add_callback("on_train_epoch_start", spy)
    y.train(data=str(data), epochs=1, imgsz=64, batch=2, workers=0, device="cpu", amp=False, plots=False,
            project=str(tmp_path / "runs"), name="t", exist_ok=True, verbose=False)
    assert seen == {"model": True, "ema": True, "training": True}
    assert isinstance(y.model.model[6], yf.nn.FastModule)  # the reloaded best checkpoint was patched again
    _assert_safe_load_is_plain(tmp_path / "runs" / "t" / "weights" / "last.pt", tmp_path)


def _reordered_aattn_forward(self, x):
    """ultralytics' AAttn (ultralytics / v1.0 layout) with the same convolutions and its attention computed in another
    order: the scale applied to k (ultralytics scales q from 8.4, the product before), areas as a batch dimension of
    views instead of reshaped copies. The same function, other rounding; plain autograd, no yolov12_fast kernel."""
    B, C, H, W = x.shape
    D, A = self.head_dim, self.area
    q, k, v = (t.transpose(2, 3) for t in self.qkv(x).view(B, self.num_heads, 3 * D, A, H * W // A).split(D, dim=2))
    o = v @ (q.transpose(-1, -2) @ (k * D ** -0.5)).softmax(dim=-1).transpose(-1, -2)  # (B, heads, A, D, n)
    return self.proj(o.transpose(2, 3).reshape(B, C, H, W) + self.pe(v.transpose(2, 3).reshape(B, C, H, W)))


def test_training_losses_and_gradients_match_the_unpatched_model(tmp_path, monkeypatch):
    """Four optimizer steps of yolo12n through ultralytics' trainer (seeded, deterministic, fp32 CPU): the patched
    model's per-step losses match the unpatched model's, and at the first optimizer step so do every parameter's
    gradient and every BatchNorm statistic (updated once per forward: a recomputing backward must not update them
    again). The patched model recomputes its ABlock MLPs in backward (recompute="mlp", opted in; on
    CPU "auto" keeps everything, the path every other training test runs). The trainer builds every model from the
    same seed; an unpatched rerun is bitwise identical (checked), so every difference is ours.

    Each gradient / statistic tensor may differ by TRAIN_GRAD_RTOL of its size or, where the unpatched model is
    itself that sensitive to rounding, by FACTOR times what a rounding-level change of the reference makes: the
    unpatched model with its attention computed in another order (_reordered_aattn_forward). Some gradients are
    sums that cancel to rounding noise (the key bias: softmax ignores a shift of every key; BatchNorm biases whose
    effect the next training-mode BatchNorm removes). The first step's gradients are compared rather than the
    parameters after several steps: the optimizer (AdamW, ultralytics' choice for short runs, scales each gradient
    by its own running size) and the tiny-image training-mode BatchNorm amplify rounding from step to step, by an
    amount that differs between ultralytics versions (up to 2x the update of some tensors, for either model)."""
    from ultralytics import YOLO
    from ultralytics.nn.modules.block import AAttn

    monkeypatch.chdir(tmp_path)
    data = _tiny_dataset(tmp_path / "data", copies=2)  # 4 images, batch 2: 2 steps per epoch

    def run(model):
        losses, first = [], {}
        items = lambda t: t.loss_items.values() if isinstance(t.loss_items, dict) else t.loss_items
        model.add_callback("on_train_batch_end", lambda t: losses.append(torch.tensor([float(v) for v in items(t)])))

        def catch_first_step(trainer):  # the gradients and BatchNorm statistics the first optimizer step sees
            step = trainer.optimizer_step

            def first_step():
                if not first:
                    m = trainer.model
                    no_grad = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
                    assert not no_grad, f"trainable parameters without a gradient: {no_grad}"
                    first.update({f"{n} grad": p.grad.detach().clone() for n, p in m.named_parameters()
                                  if p.grad is not None})
                    first.update({n: b.detach().clone() for n, b in m.named_buffers()})
                step()

            trainer.optimizer_step = first_step

        model.add_callback("on_pretrain_routine_end", catch_first_step)
        model.train(data=str(data), epochs=2, imgsz=64, batch=2, workers=0, device="cpu", amp=False, plots=False,
                    val=False, seed=0, deterministic=True, project=str(tmp_path / "runs"), name="t", exist_ok=True,
                    verbose=False)
        return torch.stack(losses), first

    run(YOLO("yolo12n.yaml"))  # some ultralytics versions (8.4.0) set up differently on the first run of a process
    loss_a, first_a = run(YOLO("yolo12n.yaml"))
    loss_b, first_b = run(YOLO("yolo12n.yaml"))
    loss_f, first_f = run(yf.YOLO("yolo12n.yaml", backend=BACKEND, recompute="mlp"))
    with monkeypatch.context() as m:
        m.setattr(AAttn, "forward", _reordered_aattn_forward)
        loss_r, first_r = run(YOLO("yolo12n.yaml"))
    assert loss_a.shape == (4, 3) and torch.isfinite(loss_a).all()
    assert torch.equal(loss_a, loss_b) and all(torch.equal(first_a[k], first_b[k]) for k in first_a), (
        "the unpatched run is not reproducible: the comparison would mean nothing")
    assert not torch.equal(loss_r, loss_a), "the reordered reference ran ultralytics' own forward"
    rel = lambda loss: ((loss - loss_a).abs() / loss_a.abs()).max().item()
    assert rel(loss_f) <= max(MODEL_RTOL_FP32, FACTOR[torch.float32] * rel(loss_r)), (
        f"per-step losses differ by {rel(loss_f):.3g} relative (bound {MODEL_RTOL_FP32}; the reordered reference "
        f"{rel(loss_r):.3g})")
    assert first_f.keys() == first_a.keys() == first_r.keys()
    assert any(".m.0.0.attn.qkv." in k and k.endswith(" grad") and first_a[k].abs().max() > 0 for k in first_a)
    relaxed = []
    for k in first_a:
        if not first_a[k].is_floating_point():  # num_batches_tracked: one forward per step
            assert torch.equal(first_f[k], first_a[k]), f"{k}: {first_f[k]} != {first_a[k]}"
            continue
        scale = first_a[k].abs().max().item()
        err = (first_f[k] - first_a[k]).abs().max().item()
        yardstick = (first_r[k] - first_a[k]).abs().max().item()
        assert err <= max(TRAIN_GRAD_RTOL * scale, FACTOR[torch.float32] * yardstick), (
            f"{k}: differs by {err:.3g} (size {scale:.3g}; the reordered reference differs by {yardstick:.3g})")
        relaxed += [k] if err > TRAIN_GRAD_RTOL * scale else []
    assert len(relaxed) <= len(first_a) // 20, f"{len(relaxed)} of {len(first_a)} tensors only within the yardstick"


def test_trainer_callback_reaches_ddp_workers(tmp_path):
    """ultralytics' DDP launcher pickles the trainer's callbacks for its worker processes: ours must pickle by
    reference and, in a fresh process that never imported yolov12_fast, patch the worker's model and EMA."""
    import pickle

    from yolov12_fast.model import _patch_trainer

    y = yf.YOLO("yolo12n.yaml", backend="reference")
    ours = [cb for cb in y.callbacks["on_pretrain_routine_end"] if getattr(cb, "func", None) is _patch_trainer]
    assert len(ours) == 1
    y.backend = "auto"
    y.recompute = "block"
    assert all(m.recompute == "block" for m in y.model.modules() if isinstance(m, yf.nn.FastModule))
    y._yf_add_callbacks()  # train() reinstalls it with the current settings, never twice
    ours = [cb for cb in y.callbacks["on_pretrain_routine_end"] if getattr(cb, "func", None) is _patch_trainer]
    assert len(ours) == 1 and ours[0].keywords == {"backend": "auto", "recompute": "block"}
    (tmp_path / "cb.pkl").write_bytes(pickle.dumps(ours[0]))
    code = textwrap.dedent(f"""
        import pickle, sys, types
        assert not any(k.startswith("yolov12_fast") for k in sys.modules)
        from ultralytics.nn.tasks import DetectionModel
        from ultralytics.utils.torch_utils import ModelEMA
        model = DetectionModel("yolo12n.yaml", verbose=False)
        trainer = types.SimpleNamespace(model=model, ema=ModelEMA(model))
        trainer.save_model = lambda: None
        pickle.loads(open({str(tmp_path / "cb.pkl")!r}, "rb").read())(trainer)
        print(model.model[6].m[0][1].recompute, trainer.ema.ema.model[8].recompute)
        print(type(model.model[6]).__module__, type(trainer.ema.ema.model[8]).__module__)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.split()[-4:] == ["block", "block", "yolov12_fast.patch", "yolov12_fast.patch"], r.stdout
