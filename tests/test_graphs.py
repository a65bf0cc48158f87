"""yolov12_fast.cuda_graphs: eager inference replayed from CUDA graphs (GPU), the module itself everywhere else.

CPU: the wrapper steps aside (CPU input, training, autograd, extra arguments), forwards attributes and state_dict,
copies without graphs, and its staleness probe sees every change that would make a captured graph wrong. GPU
(marked): replays equal eager bit for bit, outputs are copies, a new signature captures a new graph, eviction,
re-capture after .half() / patch(), a capture failure leaves the module eager with a warning.
"""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
import torch.nn as nn

import yolov12_fast as yf

HAS_CUDA = torch.cuda.is_available()


def _a2c2f():
    from ultralytics.nn.modules.block import A2C2f

    torch.manual_seed(0)
    return A2C2f(128, 128, 1, True, 4, True, 1.2).eval()


def test_steps_aside_off_the_gpu_and_outside_eager_inference():
    m = yf.patch(_a2c2f())
    g = yf.cuda_graphs(m)
    x = torch.randn(1, 128, 8, 8)
    with torch.inference_mode():
        assert torch.equal(g(x), m(x)) and g.num_graphs == 0  # CPU input: the module itself
    y = g(x.requires_grad_(True))  # autograd: the module itself, differentiable
    y.sum().backward()
    assert x.grad is not None and g.num_graphs == 0
    assert not g._eligible((x,), {"augment": True}) and not g._eligible((x, x), {})


def test_attributes_state_dict_and_copies():
    from benchmarks import yolo

    m = yf.patch(yolo.build("yolo12n", calibrate_imgsz=None))
    g = yf.cuda_graphs(m, max_graphs=2)
    assert torch.equal(g.stride, m.stride) and g.names == m.names and g.module is m  # ultralytics reads these
    sd = g.state_dict()
    assert set(sd) == {f"module.{k}" for k in m.state_dict()}
    g.__dict__["_fingerprint"] = g._probe()
    for clone in (copy.deepcopy(g), pickle.loads(pickle.dumps(g))):
        assert isinstance(clone, yf.CUDAGraphed) and clone.num_graphs == 0 and clone.__dict__["_fingerprint"] is None
        assert clone.max_graphs == 2 and clone.module is not m
        x = torch.rand(1, 3, 64, 64)
        with torch.inference_mode():
            assert torch.equal(clone(x)[0], m(x)[0])
    with pytest.raises(ValueError, match="max_graphs and warmup must be >= 1"):
        yf.cuda_graphs(m, max_graphs=0)
    with pytest.raises(TypeError, match="expected an nn.Module"):
        yf.cuda_graphs(lambda x: x)


def test_the_staleness_probe_sees_what_would_make_a_graph_wrong():
    """Re-allocated tensors, swapped classes, replaced children or parameters, and in-place updates (the patched
    modules re-fold BatchNorm into cached weights in Python, which a replay would skip) each make the graphs stale."""
    def fresh():
        g = yf.cuda_graphs(_a2c2f())
        g.__dict__["_fingerprint"] = g._probe()
        assert g._probe_still_valid()
        return g

    g = fresh()
    with torch.no_grad():
        g.module.cv1.conv.weight.mul_(2)  # in place
    assert not g._probe_still_valid()
    g = fresh()
    g.module.m[0][0].attn.pe.bn.running_var.add_(1)  # a buffer in place (BatchNorm statistics)
    assert not g._probe_still_valid()
    g = fresh()
    yf.patch(g.module)
    g.__dict__["_fingerprint"] = g._probe()
    yf.patch(g.module, backend="reference")  # a patched model's setting changed in place
    assert not g._probe_still_valid()
    g = fresh()
    g.module.half()  # re-allocates every tensor
    assert not g._probe_still_valid()
    g = fresh()
    yf.patch(g.module)  # classes swapped in place
    assert not g._probe_still_valid()
    g = fresh()
    g.module.cv2 = copy.deepcopy(g.module.cv2)  # a child replaced
    assert not g._probe_still_valid()
    g = fresh()
    g.module.load_state_dict(copy.deepcopy(g.module.state_dict()), assign=True)  # parameters replaced
    assert not g._probe_still_valid()
    g = fresh()
    g.reset()
    assert g.__dict__["_fingerprint"] is None and not g._probe_still_valid()


def test_yolo_cuda_graphs_option_wraps_the_predictors_module():
    """yolov12_fast.YOLO(..., cuda_graphs=True): predict() calls the model through the wrapper (on CPU it steps
    aside: the same detections as without it); the setting flips at the next predict(); the callback pickles
    (ultralytics ships callbacks to DDP workers)."""
    from ultralytics.utils import ASSETS

    from yolov12_fast.model import _predictor_module_slot

    yolo = yf.YOLO("yolo12n.yaml", cuda_graphs=True)
    kw = dict(imgsz=160, conf=1e-4, verbose=False)
    a = yolo.predict(ASSETS / "bus.jpg", **kw)[0].boxes.data
    holder, attr = _predictor_module_slot(yolo.predictor)
    assert isinstance(getattr(holder, attr), yf.CUDAGraphed)
    yolo.cuda_graphs = False
    b = yolo.predict(ASSETS / "bus.jpg", **kw)[0].boxes.data
    assert not isinstance(getattr(holder, attr), yf.CUDAGraphed) and yolo.cuda_graphs is False
    assert len(a) > 0 and torch.equal(a, b)
    cb = pickle.loads(pickle.dumps(yolo.__dict__["_yf_predict_graphs"]))
    assert cb.enabled is False


def test_yolo_channels_last_option_sets_the_predictors_model_layout():
    """yolov12_fast.YOLO(..., channels_last=...): "auto" moves the predictor's model to channels_last on the CPU
    (AUTO_CHANNELS_LAST), False keeps or brings it back to NCHW, True forces channels_last; the detections match
    the NCHW model's; the setting applies at the next predict(); a bad value is refused with what to pass."""
    from ultralytics.utils import ASSETS

    import platform

    from yolov12_fast.model import AUTO_CHANNELS_LAST, _is_channels_last, _predictor_module_slot, _want_channels_last

    assert AUTO_CHANNELS_LAST.get("cpu") is True
    x86 = platform.machine() in ("x86_64", "AMD64")
    # the rule: explicit settings win; "auto" follows predict(channels_last=...) where given, else the table
    assert _want_channels_last(True, "cuda") and not _want_channels_last(False, "cpu", True)
    assert _want_channels_last("auto", "cuda", True) and not _want_channels_last("auto", "cpu", False)
    assert _want_channels_last("auto", "cpu") == x86 and not _want_channels_last("auto", "cuda")
    yolo = yf.YOLO("yolo12n.yaml", channels_last=False)
    kw = dict(imgsz=160, conf=1e-4, verbose=False)
    nchw = yolo.predict(ASSETS / "bus.jpg", **kw)[0].boxes.data
    holder, attr = _predictor_module_slot(yolo.predictor)
    assert not _is_channels_last(getattr(holder, attr))
    for setting in (("auto", True) if x86 else (True,)):
        yolo.channels_last = setting
        cl = yolo.predict(ASSETS / "bus.jpg", **kw)[0].boxes.data
        module = getattr(holder, attr)
        assert _is_channels_last(module), setting
        assert len(nchw) > 0 and cl.shape == nchw.shape and torch.allclose(cl, nchw, rtol=1e-3, atol=1e-2), setting
    yolo.channels_last = False
    yolo.predict(ASSETS / "bus.jpg", **kw)
    assert not _is_channels_last(getattr(holder, attr))
    if "channels_last" in vars(yolo.predictor.args):  # ultralytics >= 8.4: "auto" keeps a user's explicit choice
        yolo.channels_last = "auto"
        yolo.predict(ASSETS / "bus.jpg", channels_last=False, **kw)
        assert not _is_channels_last(getattr(yolo.predictor.model.backend if hasattr(yolo.predictor.model, "backend")
                                             else yolo.predictor.model, "model"))
    cb = pickle.loads(pickle.dumps(yolo.__dict__["_yf_predict_graphs"]))
    assert cb.channels_last == yolo.channels_last
    with pytest.raises(ValueError, match="channels_last must be True, False or 'auto'"):
        yf.YOLO("yolo12n.yaml", channels_last="yes")


def test_each_graph_keeps_the_state_tensors_it_reads_alive():
    """ultralytics' Detect keeps anchors / strides of the last input shape as plain attributes and replaces them
    when the shape changes; the patched modules keep folded weights. A graph captured at one shape reads the
    anchors of that shape: they must outlive a forward at another shape."""
    from benchmarks import yolo
    from yolov12_fast.graphs import _state_tensors

    m = yf.patch(yolo.build("yolo12n", calibrate_imgsz=None))
    with torch.inference_mode():
        m(torch.rand(1, 3, 64, 64))
    detect = m.model[-1]
    kept = _state_tensors(m)
    ids = {id(t) for t in kept}
    assert id(detect.anchors) in ids and id(detect.strides) in ids
    folded = [v for mod in m.modules() for k, v in vars(mod).items() if k.startswith("_yf_") and k.endswith("cache")]
    assert folded and all(id(t) in ids for c in folded for t in pytree_leaves(c) if isinstance(t, torch.Tensor))


def pytree_leaves(x):
    from torch.utils import _pytree as pytree

    return pytree.tree_leaves(x)


def test_predict_resets_the_graphs_when_the_head_settings_change():
    """ultralytics' predictor sets head attributes per predict() (max_det, agnostic NMS of end-to-end heads), which
    no tensor shows: the predict callback drops the graphs when the head's plain settings changed, not otherwise.
    TorchScript / exported models are not wrapped."""
    from types import SimpleNamespace

    from ultralytics.utils import ASSETS

    from yolov12_fast.model import _PredictGraphs, _predictor_module_slot

    yolo = yf.YOLO("yolo12n.yaml", cuda_graphs=True)
    yolo.predict(ASSETS / "bus.jpg", imgsz=160, verbose=False)
    wrapper = getattr(*_predictor_module_slot(yolo.predictor))
    cb = yolo.__dict__["_yf_predict_graphs"]
    wrapper.__dict__["_seen"]["sentinel"] = None
    cb(yolo.predictor)  # same settings: nothing dropped
    assert "sentinel" in wrapper.__dict__["_seen"]
    wrapper.module.model[-1].max_det = 7
    cb(yolo.predictor)
    assert "sentinel" not in wrapper.__dict__["_seen"]
    ts = SimpleNamespace(model=SimpleNamespace(format="torchscript", backend=SimpleNamespace(model=nn.Linear(1, 1))))
    assert _predictor_module_slot(ts) == (None, None)
    _PredictGraphs(True)(ts)
    assert isinstance(ts.model.backend.model, nn.Linear)


def test_a_model_ultralytics_turns_into_another_class_still_builds():
    """A '-world' config makes ultralytics turn the object into a YOLOWorld (another class, another __dict__): the
    drop-in must not crash there; cuda_graphs=True is reported as not applied."""
    with pytest.warns(RuntimeWarning, match="cuda_graphs=True is not applied"):
        m = yf.YOLO("yolov8s-worldv2.yaml", cuda_graphs=True)
    assert type(m).__name__ == "YOLOWorld"


# ---------------------------------------------------------------------------------------------------------------
# GPU


def _gpu_model(dtype=torch.float16):
    return yf.patch(_a2c2f()).to("cuda", dtype)


@pytest.mark.gpu
def test_replays_equal_eager_and_return_copies():
    m = _gpu_model()
    g = yf.cuda_graphs(m)
    xs = [torch.randn(2, 128, 20, 20, device="cuda", dtype=torch.float16) for _ in range(3)]
    with torch.inference_mode():
        want = [m(x) for x in xs]
        got = [g(x) for x in xs]  # the first runs eagerly, the second captures, the third replays
    assert g.num_graphs == 1
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # same kernels, same inputs: same bits
    assert got[1].data_ptr() != got[2].data_ptr()  # copies: a later replay did not overwrite an earlier output
    with torch.no_grad():  # another grad mode is another signature (inference tensors are not writable outside)
        for _ in range(2):
            torch.testing.assert_close(g(xs[0]), want[0], rtol=0, atol=0)
    assert g.num_graphs == 2


@pytest.mark.gpu
def test_signatures_eviction_and_recapture_after_changes():
    m = _gpu_model()
    g = yf.cuda_graphs(m, max_graphs=2)
    with torch.inference_mode():
        # each shape twice (its second call captures); (16, 24) is the least recently used when (8, 8) comes
        for hw in ((20, 20), (20, 20), (16, 24), (16, 24), (20, 20), (8, 8), (8, 8)):
            x = torch.randn(1, 128, *hw, device="cuda", dtype=torch.float16)
            torch.testing.assert_close(g(x), m(x), rtol=0, atol=0)
        assert g.num_graphs == 2 and {k[0][2:] for k in g.__dict__["_graphs"]} == {(20, 20), (8, 8)}
        with torch.no_grad():
            m.cv1.conv.weight.mul_(0.5)  # in place: captured again (the folded weights are re-folded in Python)
        x = torch.randn(1, 128, 8, 8, device="cuda", dtype=torch.float16)
        torch.testing.assert_close(g(x), m(x), rtol=0, atol=0)
        m.float()  # re-allocated: captured again
        x = x.float()
        for _ in range(2):
            torch.testing.assert_close(g(x), m(x), rtol=0, atol=0)
        assert g.num_graphs == 1


@pytest.mark.gpu
def test_a_module_that_cannot_be_captured_stays_eager_with_a_warning():
    class Syncs(nn.Module):
        def forward(self, x):
            return x * float(x.sum().item())  # a host sync: illegal while capturing

    g = yf.cuda_graphs(Syncs().eval())  # eval: a train-mode module is never captured (its own test below)
    x = torch.randn(4, device="cuda")
    with torch.inference_mode():
        y0 = g(x)  # first call of the signature: eager
        rng = torch.cuda.get_rng_state()
        with pytest.warns(RuntimeWarning, match="runs eagerly from now on"):
            y = g(x)  # the capture fails
        torch.testing.assert_close(y, x * float(x.sum().item()))
        y2 = g(x)  # no second attempt, no second warning
    assert g.num_graphs == 0 and g.__dict__["_disabled"] and torch.equal(y, y2) and torch.equal(y0, y)
    assert torch.cuda.current_stream() == torch.cuda.default_stream()  # torch's capture stream is not left current
    # The failed capture leaves nothing broken behind: torch's generator left capture mode (on the H100, 2026-11-27,
    # every later torch.randn raised "Offset increment outside graph capture"), the random stream did not move, and
    # other modules still capture and replay.
    assert torch.equal(torch.cuda.get_rng_state(), rng)
    torch.cuda.set_rng_state(rng)
    r1 = torch.randn(8, device="cuda")
    torch.cuda.set_rng_state(rng)
    assert torch.equal(torch.randn(8, device="cuda"), r1)
    other = yf.cuda_graphs(nn.Linear(4, 4).cuda().eval())
    with torch.inference_mode():
        outs = [other(x) for _ in range(3)]
    assert other.num_graphs == 1 and all(torch.equal(o, outs[0]) for o in outs)


@pytest.mark.gpu
def test_a_forward_that_changes_its_buffers_is_not_replayed():
    class Counts(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls += 1
            return x * 2

    g = yf.cuda_graphs(Counts().cuda().eval())
    x = torch.randn(4, device="cuda")
    with torch.inference_mode():
        g(x)
        with pytest.warns(RuntimeWarning, match="changes the module's parameters or buffers in place"):
            g(x)
    assert g.num_graphs == 0


@pytest.mark.gpu
def test_a_train_mode_module_runs_eagerly_with_one_warning():
    """A module left in training mode is never captured (a replay would skip what train mode does per call:
    BatchNorm statistics, dropout); under no_grad on CUDA that would silently give no speed-up, so it warns once,
    saying to call .eval(). (Found on the H100: two tests here wrapped train-mode modules and never captured.)"""
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).cuda()
    g = yf.cuda_graphs(m)
    x = torch.randn(2, 4, device="cuda")
    with torch.inference_mode():
        with pytest.warns(RuntimeWarning, match=r"training mode.*\.eval\(\)"):
            y = g(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(3):
                y = g(x)  # once only, and still eager
        assert g.num_graphs == 0
        torch.testing.assert_close(y, m(x))
        m.eval()
        for _ in range(3):
            g(x)
    assert g.num_graphs == 1


@pytest.mark.gpu
def test_yolo_predict_with_cuda_graphs_gives_the_same_detections():
    from ultralytics.utils import ASSETS

    from yolov12_fast.model import _predictor_module_slot

    yolo = yf.YOLO("yolo12n.yaml", cuda_graphs=True)
    kw = dict(imgsz=320, conf=1e-4, verbose=False, device=0, half=True)
    graphed = [yolo.predict(ASSETS / n, **kw)[0].boxes.data for n in ("bus.jpg", "zidane.jpg", "bus.jpg")]
    wrapper = getattr(*_predictor_module_slot(yolo.predictor))
    assert isinstance(wrapper, yf.CUDAGraphed) and wrapper.num_graphs >= 1
    yolo.cuda_graphs = False
    eager = [yolo.predict(ASSETS / n, **kw)[0].boxes.data for n in ("bus.jpg", "zidane.jpg", "bus.jpg")]
    for a, b in zip(graphed, eager):
        assert len(a) > 0 and torch.equal(a, b)


@pytest.mark.gpu
def test_alternating_shapes_replay_their_own_detect_anchors():
    """A, B, A: the forward at B (warm-up of its capture) replaces Detect's anchors; A's replay must still read A's
    (kept alive with A's graph), bit for bit what eager gives."""
    from benchmarks import yolo

    m = yf.patch(yolo.build("yolo12n", calibrate_imgsz=None)).to("cuda", torch.float16)
    g = yf.cuda_graphs(m)
    with torch.inference_mode():
        for hw in ((320, 320), (256, 320), (320, 320), (256, 320)):
            x = torch.rand(1, 3, *hw, device="cuda", dtype=torch.float16)
            got = g(x)[0]
            torch.testing.assert_close(got, m(x)[0], rtol=0, atol=0)
    assert g.num_graphs == 2


def test_what_needs_the_modules_python_steps_aside():
    """A train-mode submodule or a forward hook (per module or global) needs the Python at every call; so does
    autocast (its weight cache dies with the context). Outputs are copied once per distinct tensor; a pickled
    wrapper gets a lock of its own."""
    from torch.nn.modules.module import register_module_forward_hook

    from yolov12_fast.graphs import _clone, _global_hooks, _probe_eligible

    g = yf.cuda_graphs(_a2c2f())
    assert _probe_eligible(g._probe())
    g.module.m[0][0].train()
    assert not _probe_eligible(g._probe())
    g.module.eval()
    h = g.module.cv1.register_forward_hook(lambda m, i, o: o)
    assert not _probe_eligible(g._probe())
    h.remove()
    assert _probe_eligible(g._probe()) and not _global_hooks()
    h = register_module_forward_hook(lambda m, i, o: o)
    try:
        assert _global_hooks() and not g._eligible((torch.empty(1),), {})
    finally:
        h.remove()
    t = torch.randn(3)
    a, b, c = _clone((t, [t, 1]))[0], _clone((t, [t, 1]))[1][0], _clone((t, [t, 1]))
    assert a is not t and torch.equal(a, t) and c[0] is c[1][0] and c[1][1] == 1
    p = pickle.loads(pickle.dumps(g))
    assert p.__dict__["_lock"] is not g.__dict__["_lock"]


@pytest.mark.gpu
def test_autocast_runs_the_module_itself():
    m = yf.patch(_a2c2f()).cuda()
    g = yf.cuda_graphs(m)
    x = torch.randn(1, 128, 16, 16, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        for _ in range(3):
            torch.testing.assert_close(g(x), m(x), rtol=0, atol=0)
    assert g.num_graphs == 0


@pytest.mark.gpu
def test_more_shapes_in_rotation_than_kept_graphs_stop_capturing():
    m = _gpu_model()
    g = yf.cuda_graphs(m, max_graphs=1)
    shapes = [(8, 8), (8, 16), (16, 8)]
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="new shapes run eagerly from now on"):
        for _ in range(4):
            for hw in shapes:
                for _ in range(2):
                    x = torch.randn(1, 128, *hw, device="cuda", dtype=torch.float16)
                    torch.testing.assert_close(g(x), m(x), rtol=0, atol=0)
    assert g.__dict__["_captures"] == 4 and g.num_graphs == 1
