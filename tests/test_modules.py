"""Numerics of the fast modules (yolov12_fast.nn / yolov12_fast.patch) against ultralytics, in float32.

Layer by layer: each attention A2C2f layer (6 and 8) of a BN-calibrated YOLO12 (ultra_utils) and each AAttn in it
is run patched on the exact input the ultralytics module saw in a full forward (captured by hooks) and held to
the tolerances.py principle: |fast - oracle| <= FACTOR x |ultralytics fp32 - oracle| + floor, the oracle being
the float64 reference math (yolov12_fast.reference.aattn / ablock / a2c2f) of the same module. ABlock is checked
on its own (standalone tests). Final outputs: within MODEL_RTOL_FP32 of ultralytics, relative to each output's
scale (boxes and class scores separately: with random weights their scales differ by five orders of magnitude),
or, where random deep models amplify fp32 rounding beyond that, the same principle against the float64 model.
A module with its attention scale off by 0.1% fails the checks at every level. Gradients (input and all
parameters, train and eval mode) follow the same principle. Detections after NMS on the bundled images match.

Shapes: 640x640 (400 tokens per area) and 480x640 (P4 = 30x40, 300 tokens per area: areas cut rows), unfused and
fused (model.fuse()), ultralytics/v1.0 and turbo layouts; n and s in the default run, the rest marked slow.

YOLOV12_FAST_TEST_BACKEND picks the area-attention backend the fast modules run (default "auto").
"""

from __future__ import annotations

import collections
import contextlib
import copy
import os

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import ultra_utils as U
import yolov12_fast as yf
from tolerances import MODEL_RTOL_FP32, assert_close_to_oracle
from yolov12_fast import reference as R
from yolov12_fast.patch import module_kind
from yolov12_fast.utils import exact_fp32

BACKEND = os.environ.get("YOLOV12_FAST_TEST_BACKEND", "auto")
SIZES = {"640": 640, "480x640": (480, 640), "1280": 1280}  # 1280: 1600 tokens per area


# --------------------------------------------------------------------------------------------------------------
# helpers


TRITON_DEV = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the Triton interpreter (conftest.py)


@contextlib.contextmanager
def on_triton_device(enabled: bool = True):
    """For code that runs backend="triton": on a machine with a GPU, modules and inputs made inside are made on CUDA
    (the compiled kernels; Triton refuses CPU tensors there, the interpreter being off) with TF32 off, so the float32
    yardstick (ultralytics' math) is float32; without a GPU (or enabled=False), nothing changes: the interpreter
    runs on CPU tensors."""
    if TRITON_DEV == "cpu" or not enabled:
        yield "cpu"
        return
    with exact_fp32(), torch.device(TRITON_DEV):
        yield TRITON_DEV


@pytest.fixture
def triton_device():
    with on_triton_device() as dev:
        yield dev


@pytest.fixture
def use_triton_device():
    """use_triton_device(enabled): on_triton_device for the rest of the test (for tests parametrized by backend)."""
    with contextlib.ExitStack() as stack:
        yield lambda enabled=True: stack.enter_context(on_triton_device(enabled))


def _oracle(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """float64 reference of an attention module (kind from yolov12_fast.patch.module_kind)."""
    fn = {"aattn": R.aattn, "ablock": R.ablock, "a2c2f": R.a2c2f}[module_kind(module)]
    return fn(module, x.double())


def check_module(fast: nn.Module, plain: nn.Module, x: torch.Tensor, naive: torch.Tensor | None = None,
                 name: str = "") -> None:
    """fast(x) against the float64 oracle of `plain`, with plain(x) in float32 as the yardstick."""
    with torch.no_grad():
        if naive is None:
            naive = plain(x)
        actual = fast(x)
        oracle = _oracle(plain, x)
    assert actual.shape == naive.shape and actual.dtype == naive.dtype
    assert_close_to_oracle(actual, naive, oracle, name)


def assert_outputs_close(actual: torch.Tensor, expected: torch.Tensor, name: str = "") -> None:
    """Detection head outputs (B, 4 + nc, anchors): boxes and class scores each within MODEL_RTOL_FP32 of their
    own scale."""
    for part, sl in (("boxes", slice(0, 4)), ("scores", slice(4, None))):
        a, e = actual[:, sl].double(), expected[:, sl].double()
        bound = MODEL_RTOL_FP32 * e.abs().max().item()
        err = (a - e).abs()
        if err.max().item() > bound:
            idx = (err > bound).nonzero()[:5].tolist()
            raise AssertionError(f"{name} {part}: {int((err > bound).sum())}/{err.numel()} elements exceed "
                                 f"{bound:.3g} (= {MODEL_RTOL_FP32} x max |expected|); max error {err.max().item():.3g}; "
                                 f"first at {idx}")


def run_with_io(model: nn.Module, imgs: torch.Tensor, names: list[str]):
    """One full eval forward: (final output tensor, {name: (input, output)} of the named submodules)."""
    mods = dict(model.named_modules())
    got = {}
    hooks = [mods[n].register_forward_hook(
        lambda mod, inp, out, n=n: got.__setitem__(n, (inp[0].detach().clone(), out.detach().clone())))
        for n in names]
    try:
        with torch.no_grad():
            out = model(imgs)
    finally:
        for h in hooks:
            h.remove()
    return (out[0] if isinstance(out, (tuple, list)) else out), got


def _checked_modules(model: nn.Module) -> list[str]:
    """The A2C2f layers with attention and their AAttns (ABlocks sit between the two; the standalone tests below
    check ABlock on its own)."""
    return [n for n, m in U.attention_modules(model) if module_kind(m) in ("a2c2f", "aattn")]


def check_model(plain: nn.Module, imgs: torch.Tensor, label: str) -> None:
    """Patch a copy of `plain`; check each attention layer and AAttn on the input ultralytics gave it, then the
    final outputs."""
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND)
    names = _checked_modules(plain)
    assert len(names) >= 4, names
    expected, io = run_with_io(plain, imgs, names)
    for n in names:
        inp, out = io[n]
        check_module(fast.get_submodule(n), plain.get_submodule(n), inp, naive=out, name=f"{label} {n}")
    with torch.no_grad():
        actual = fast(imgs)[0]
    check_outputs(actual, expected, plain, imgs, f"{label} output")


def check_outputs(actual: torch.Tensor, expected: torch.Tensor, plain: nn.Module, imgs: torch.Tensor,
                  label: str) -> None:
    """Final outputs within MODEL_RTOL_FP32 of ultralytics'. That bound presumes a well-conditioned network; the
    random-weight l/x models at sizes they were not calibrated at amplify fp32 rounding up to ~1e-2 (ultralytics'
    own fp32 output is that far from its float64 one). Only when the fixed bound fails is the float64 model
    computed, and then the tolerances.py principle applies: fast within FACTOR x ultralytics' fp32 error of it."""
    try:
        assert_outputs_close(actual, expected, label)
    except AssertionError as first:
        with torch.no_grad():
            oracle = copy.deepcopy(plain).double()(imgs.double())[0]
        for part, sl in (("boxes", slice(0, 4)), ("scores", slice(4, None))):
            try:
                assert_close_to_oracle(actual[:, sl], expected[:, sl], oracle[:, sl], f"{label} {part} vs float64")
            except AssertionError as second:
                raise AssertionError(f"{first}\n{second}") from None


def _default_run(scale, variant, size, fused):
    """In the default run (about a minute of the 2-core budget): n in both layouts at 640 and the ultralytics layout
    at 480x640, fused and unfused, n fused at 1280 (1600 tokens per area), and s in the ultralytics layout at 640.
    The rest (n turbo at 480x640 and 1280, n unfused at 1280, s turbo, s at 480x640 and 1280, m, l, x) is slow."""
    if scale == "n":
        if size == "1280":
            return variant == "ultralytics" and fused
        return variant == "ultralytics" or size == "640"
    return scale == "s" and variant == "ultralytics" and size == "640"


MODEL_CASES = [pytest.param(s, v, sz, f, id=f"{s}-{v}-{sz}-{'fused' if f else 'unfused'}",
                            marks=[] if _default_run(s, v, sz, f) else [pytest.mark.slow])
               for s in U.SCALES for v in ("ultralytics", "turbo") for sz in SIZES for f in (False, True)]


# --------------------------------------------------------------------------------------------------------------
# whole models, layer by layer


@pytest.mark.parametrize("scale,variant,size,fused", MODEL_CASES)
def test_model_numerics(scale, variant, size, fused):
    # BatchNorm calibrated at 640 (shared with tests/test_reference.py); the 480x640 images reuse those statistics.
    # Both images (areas must never mix images) for yolo12n unfused, one image elsewhere (time).
    model = U.build_model(scale, variant, 640, fused)
    imgs = U.images(SIZES[size])
    if fused or scale != "n":
        imgs = imgs[:1]
    check_model(model, imgs, f"yolo12{scale}-{variant}-{size}-{'fused' if fused else 'unfused'}")


def test_patched_modules_are_the_fast_ones():
    model = yf.patch(U.build_model("n", "ultralytics", 640), backend=BACKEND)
    kinds = {}
    for n, m in model.named_modules():
        k = module_kind(m)
        if k is not None:
            assert isinstance(m, yf.nn.FastModule), n
            kinds[k] = kinds.get(k, 0) + 1
    # 4 A2C2f with attention or not (backbone 6, 8; neck 11, 14, ...), 8 ABlocks and 8 AAttns in layers 6 and 8
    assert kinds["aattn"] == 8 and kinds["ablock"] == 8 and kinds["a2c2f"] >= 2, kinds


# --------------------------------------------------------------------------------------------------------------
# detections after NMS on the bundled images


def _match_detections(a, b, src: str) -> None:
    """Same detections, order aside (equal-score detections may swap places): every box of `a` has a partner in
    `b` with the same class, coordinates within MODEL_RTOL_FP32 x 640 px and score within MODEL_RTOL_FP32
    relative."""
    assert len(a) == len(b), f"{src}: {len(a)} vs {len(b)} detections"
    free = torch.ones(len(b), dtype=torch.bool)
    tol_px = MODEL_RTOL_FP32 * 640
    for i in range(len(a)):
        ok = (free & (b.cls == a.cls[i]) & ((b.xyxy - a.xyxy[i]).abs().amax(1) <= tol_px)
              & ((b.conf - a.conf[i]).abs() <= MODEL_RTOL_FP32 * a.conf[i]))
        assert ok.any(), (f"{src}: detection {i} (class {int(a.cls[i])}, score {a.conf[i]:.4g}, box "
                          f"{a.xyxy[i].tolist()}) has no partner")
        free[ok.nonzero()[0, 0]] = False


def test_same_detections_after_nms_yolo12n():
    from ultralytics import YOLO
    from ultralytics.utils import ASSETS

    plain = YOLO("yolo12n.yaml")
    plain.model = U.build_model("n", "ultralytics", 640)
    fast = YOLO("yolo12n.yaml")
    fast.model = yf.patch(U.build_model("n", "ultralytics", 640), backend=BACKEND)
    # random weights: class scores are tiny (bus up to 0.27, zidane up to 8e-4), hence the low thresholds; max_det
    # far above the count, so the max_det cut cannot split equal scores. On the CPU (device pinned): a random-weight
    # yolo12n amplifies rounding ~200x from its first attention layer to the output (the H100 log
    # benchmarks/results/logs/nvidia-h100-2026-11-26/model-layers-chaos.log: 2e-4 after layer 6 in float32 with the
    # Triton kernels, 4.7e-2 at the output), so on a GPU this comparison would test the model's conditioning, not
    # the kernels; the GPU kernels are checked layer by layer on ultralytics' own inputs by test_model_numerics
    kw = dict(iou=0.7, max_det=1000, verbose=False, imgsz=640, device="cpu")
    for name, conf in (("bus.jpg", 2e-3), ("zidane.jpg", 2e-4)):  # one at a time: each its own letterbox
        src = str(ASSETS / name)
        with exact_fp32():  # on a GPU: float32 on both sides (ultralytics' cuDNN convs would otherwise run TF32)
            a, b = plain.predict(src, conf=conf, **kw)[0].boxes, fast.predict(src, conf=conf, **kw)[0].boxes
        assert isinstance(U.predictor_module(fast.predictor).model[6], yf.nn.FastModule)
        assert len(a) >= 5, f"{name}: {len(a)} detections: the comparison would be vacuous"
        _match_detections(a, b, name)


# --------------------------------------------------------------------------------------------------------------
# the check checks: a slightly wrong module must fail


class _WrongScaleAAttn(yf.nn.AAttn):
    """Softmax scale off by 0.1%."""

    def forward(self, x):
        B, _, H, W = x.shape
        q, k, v = self._qkv_views(x)
        nh, hd = q.shape[1], q.shape[2]
        p = self._pe(v, H, W)
        o = yf.area_attention(q, k, v, self.area, scale=1.001 * hd ** -0.5, residual=p, backend=self.backend)
        return self.proj(o.view(B, nh * hd, H, W))


def test_wrong_scale_fails_the_check():
    plain = U.build_model("n", "ultralytics", 640)
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND)
    names = _checked_modules(plain)
    io = U.module_io(plain, U.images(640)[:1], names)
    for n in names:  # the check passes on the right module ...
        check_module(fast.get_submodule(n), plain.get_submodule(n), io[n][0], naive=io[n][1], name=n)
    for m in fast.modules():
        if module_kind(m) == "aattn":
            m.__class__ = _WrongScaleAAttn
    failed = []
    for n in names:  # ... and fails on the wrong one, at every level
        try:
            check_module(fast.get_submodule(n), plain.get_submodule(n), io[n][0], naive=io[n][1], name=n)
        except AssertionError:
            failed.append(n)
    assert failed == names, f"not caught by: {sorted(set(names) - set(failed))}"


# --------------------------------------------------------------------------------------------------------------
# standalone modules: same construction, parameters, keys and numerics as the ultralytics ones


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Unit-scale conv weights and a random BN state (eval statistics), so a wrong kernel cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, device="cpu") / fan_in ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g, device="cpu"))
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g, device="cpu") + 0.5)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g, device="cpu"))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g, device="cpu"))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, device="cpu") + 0.5)
        for name, p in module.named_parameters():
            if name == "gamma":
                p.copy_(torch.rand(p.shape, generator=g, device="cpu") + 0.5)
    return module.eval()


def _ultralytics_ctor(kind):
    from ultralytics.nn.modules.block import A2C2f, AAttn, ABlock

    return {"aattn": AAttn, "ablock": ABlock, "a2c2f": A2C2f}[kind]


STANDALONE = [
    ("aattn", (64, 2, 4), (2, 64, 16, 20)),            # 320 tokens, 80 per area = 4 whole rows
    ("aattn", (96, 3, 4), (3, 96, 15, 20)),            # 300 tokens, 75 per area = 3.75 rows: areas cut rows; batch 3
    ("ablock", (64, 2, 1.2, 1), (1, 64, 7, 7)),        # 49 tokens; mlp hidden int(64 * 1.2) = 76
    ("a2c2f", (128, 128, 1, True, 4, True, 1.2), (2, 128, 8, 12)),  # residual gamma; c_ 64 = 2 heads
    ("a2c2f", (96, 64, 2, True, 1, False, 2.0), (1, 96, 6, 6)),    # two block pairs
    ("a2c2f", (64, 64, 1, False, 1), (2, 64, 8, 8)),                # a2=False: C3k entries
]


@pytest.mark.parametrize("kind,args,shape", STANDALONE, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(STANDALONE)])
def test_standalone_ultralytics_variant(kind, args, shape):
    fast_cls = {"aattn": yf.nn.AAttn, "ablock": yf.nn.ABlock, "a2c2f": yf.nn.A2C2f}[kind]
    torch.manual_seed(7)
    plain = _ultralytics_ctor(kind)(*args)
    torch.manual_seed(7)
    fast = fast_cls(*args, backend=BACKEND)
    # same construction order: identical parameters from the same seed, identical keys
    sd_p, sd_f = plain.state_dict(), fast.state_dict()
    assert list(sd_p) == list(sd_f)
    for k in sd_p:
        assert torch.equal(sd_p[k], sd_f[k]), k
    _randomize(plain)
    fast.load_state_dict(plain.state_dict())
    fast.eval()
    x = torch.randn(shape)
    check_module(fast, plain, x, name=f"{kind}{args}")
    fused_p = copy.deepcopy(plain)
    for m in fused_p.modules():  # what model.fuse() does to each Conv
        if hasattr(m, "bn") and hasattr(m, "forward_fuse"):
            from ultralytics.utils.torch_utils import fuse_conv_and_bn

            m.conv = fuse_conv_and_bn(m.conv, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
    fused_f = yf.patch(copy.deepcopy(fused_p), backend=BACKEND)
    check_module(fused_f, fused_p, x, name=f"fused {kind}{args}")


def test_standalone_turbo_variant():
    torch.manual_seed(3)
    plain = U.TurboAAttn(64, 2, 4)
    torch.manual_seed(3)
    fast = yf.nn.AAttn(64, 2, 4, variant="turbo", backend=BACKEND)
    assert fast.variant == "turbo" and plain.pe.conv.kernel_size == (5, 5)
    assert list(plain.state_dict()) == list(fast.state_dict())
    _randomize(plain)
    fast.load_state_dict(plain.state_dict())
    check_module(fast.eval(), plain, torch.randn(2, 64, 12, 20), name="turbo AAttn")

    blk = yf.nn.ABlock(64, 2, 1.5, 4, variant="turbo", backend=BACKEND)
    assert {n for n, _ in blk.attn.named_children()} == {"qk", "v", "proj", "pe"}
    layer = yf.nn.A2C2f(64, 64, 1, True, 4, True, 1.5, variant="turbo", backend=BACKEND)
    assert all(b.attn.variant == "turbo" for pair in layer.m for b in pair)


def test_pe_bias_honoured():
    """Early v1.0 checkpoints carry a bias on pe.conv (with a BN after it): it must be folded in."""
    from ultralytics.nn.modules.block import AAttn

    plain = AAttn(64, 2, 4)
    c = plain.pe.conv
    new = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, groups=c.groups, bias=True)
    new.weight = c.weight
    plain.pe.conv = new
    _randomize(plain, seed=5)
    with torch.no_grad():
        plain.pe.conv.bias.copy_(torch.randn(c.out_channels))
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND)
    check_module(fast, plain, torch.randn(2, 64, 8, 8), name="pe with bias")


def test_channels_last_and_noncontiguous_inputs():
    from ultralytics.nn.modules.block import A2C2f

    plain = _randomize(A2C2f(64, 64, 1, True, 4, True, 1.2))
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND)
    x = torch.randn(2, 64, 8, 12)
    check_module(fast, plain, x.to(memory_format=torch.channels_last), name="channels_last")
    wide = torch.randn(2, 64, 8, 24)[..., ::2]  # non-contiguous W
    check_module(fast, plain, wide, name="strided")


def test_hooks_on_inner_blocks_still_fire():
    """A2C2f's buffer path calls its blocks' pieces directly only when no hooks are registered on them."""
    from ultralytics.nn.modules.block import A2C2f

    plain = _randomize(A2C2f(64, 64, 1, True, 4, False, 2.0))
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND)
    x = torch.randn(1, 64, 8, 8)
    seen = {}
    h1 = fast.m[0][1].register_forward_hook(lambda m, i, o: seen.__setitem__("fast", o.clone()))
    h2 = plain.m[0][1].register_forward_hook(lambda m, i, o: seen.__setitem__("plain", o.clone()))
    check_module(fast, plain, x, name="hooked")
    h1.remove(), h2.remove()
    torch.testing.assert_close(seen["fast"], seen["plain"], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# gradients


def _grads(module: nn.Module, x: torch.Tensor):
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    y = module(x)
    w = torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).view_as(y)  # a fixed, non-uniform upstream gradient
    (y * w).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("variant", ["ultralytics", "turbo"])
def test_gradients_match(mode, variant, layout):
    """Gradients of a patched module (input and every parameter, pe BN included) against ultralytics', with the
    float64 gradients of the ultralytics module as the oracle. train: BatchNorm uses batch statistics (pe runs as
    its Conv module); eval: the folded pe weights are computed inside the graph. channels_last: the modules and the
    input moved there, as ultralytics' trainer does on CUDA (since 8.4)."""
    from ultralytics.nn.modules.block import A2C2f

    torch.manual_seed(11)
    plain = A2C2f(128, 128, 1, True, 4, True, 1.2)  # c_ = 64: 2 heads; mlp hidden 76; gamma
    if variant == "turbo":
        for pair in plain.m:
            for b in pair:
                b.attn = U.TurboAAttn(64, 2, 4)
    _randomize(plain, seed=2)
    for p in plain.parameters():
        p.requires_grad_(True)
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND)
    oracle_m = copy.deepcopy(plain).double()
    for m in (plain, fast, oracle_m):
        m.train(mode == "train")
    x = torch.randn(2, 128, 8, 8)  # 64 tokens, 16 per area
    if layout == "channels_last":
        plain, fast = (m.to(memory_format=torch.channels_last) for m in (plain, fast))
        x = x.contiguous(memory_format=torch.channels_last)
    y_n, gx_n, gp_n = _grads(plain, x)
    y_f, gx_f, gp_f = _grads(fast, x)
    y_o, gx_o, gp_o = _grads(oracle_m, x.double())
    assert set(gp_f) == set(gp_n) == set(gp_o) and any("pe.bn" in k for k in gp_f) and "gamma" in gp_f
    assert_close_to_oracle(y_f, y_n, y_o, "output")
    if layout == "channels_last":  # under autograd too the layout survives (ultralytics' module keeps it)
        assert _cl(y_n) and _cl(y_f), (y_n.stride(), y_f.stride())
    assert_close_to_oracle(gx_f, gx_n, gx_o, "grad x")
    for k in gp_n:
        assert_close_to_oracle(gp_f[k], gp_n[k], gp_o[k], f"grad {k}")
    if mode == "train":  # the BN running statistics moved identically
        for (k, a), (_, b) in zip(plain.state_dict().items(), fast.state_dict().items()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def _saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward during module(x)."""
    from torch.multiprocessing.reductions import StorageWeakRef

    seen = {}

    def pack(t):
        seen.setdefault(StorageWeakRef(t.untyped_storage()).cdata, t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(seen.values())


@pytest.mark.parametrize("variant", ["ultralytics", "turbo"])
def test_recompute_modes_are_exact_and_keep_less(variant):
    """recompute="mlp" / "block" (activation checkpointing of the ABlock MLP / the whole ABlock while training)
    give bit-identical outputs, input and parameter gradients and BatchNorm running statistics to "none" (the
    statistics updated once, in the same tensors), and keep less for backward: mlp < none, block < mlp."""
    from ultralytics.nn.modules.block import A2C2f

    torch.manual_seed(5)
    plain = A2C2f(128, 128, 1, True, 4, True, 1.2)
    if variant == "turbo":
        for pair in plain.m:
            for b in pair:
                b.attn = U.TurboAAttn(64, 2, 4)
    _randomize(plain, seed=3).train()
    x = torch.randn(3, 128, 8, 10)  # batch 3, 80 tokens, 20 per area
    results, saved = {}, {}
    for mode in yf.nn.RECOMPUTE:
        fast = yf.patch(copy.deepcopy(plain), backend=BACKEND, recompute=mode)
        assert all(m.recompute == mode for m in fast.modules() if isinstance(m, yf.nn.FastModule))
        buffers = {k: b for k, b in fast.named_buffers()}
        y, gx, gp = _grads(fast, x)
        assert all(b is buffers[k] for k, b in fast.named_buffers()), "running statistics replaced"
        counts = {k: int(b) for k, b in buffers.items() if k.endswith("num_batches_tracked")}
        assert set(counts.values()) == {1}, counts  # one update per forward, none from the recomputation
        results[mode] = (y, gx, gp, {k: b.clone() for k, b in buffers.items()})
        saved[mode] = _saved_bytes(fast, x.clone().requires_grad_(True))
    y0, gx0, gp0, b0 = results["none"]
    for mode in ("mlp", "block"):
        y, gx, gp, b = results[mode]
        assert torch.equal(y, y0) and torch.equal(gx, gx0), mode
        assert gp.keys() == gp0.keys() and all(torch.equal(gp[k], gp0[k]) for k in gp0), mode
        assert all(torch.equal(b[k], b0[k]) for k in b0), mode
    assert saved["block"] < saved["mlp"] < saved["none"] == saved["auto"], saved  # auto on CPU: none


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "amp-fp16"])
def test_recompute_modes_on_cuda(amp):
    """On CUDA, as ultralytics trains (train mode, optionally fp16 autocast): every recompute mode gives the outputs,
    gradients and running statistics of "none" (up to cuDNN's nondeterministic reductions), "auto" keeps what
    AUTO_RECOMPUTE["cuda"] keeps (same saved bytes), and block < mlp < none in what autograd keeps."""
    from ultralytics.nn.modules.block import A2C2f

    torch.manual_seed(5)
    plain = _randomize(A2C2f(128, 128, 1, True, 4, True, 1.2), seed=3).cuda().train()
    x = torch.randn(3, 128, 16, 20, device="cuda")  # 320 tokens, 80 per area
    results, saved = {}, {}
    for mode in yf.nn.RECOMPUTE:
        fast = yf.patch(copy.deepcopy(plain), backend=BACKEND, recompute=mode)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            y, gx, gp = _grads(fast, x)
            saved[mode] = _saved_bytes(fast, x.clone().requires_grad_(True))
        results[mode] = (y.float(), gx, gp, {k: b.clone() for k, b in fast.named_buffers()})
    tol = dict(rtol=2e-3, atol=2e-3) if amp else dict(rtol=1e-5, atol=1e-5)
    y0, gx0, gp0, b0 = results["none"]
    for mode in ("auto", "mlp", "block"):
        y, gx, gp, b = results[mode]
        torch.testing.assert_close(y, y0, **tol, msg=lambda m: f"{mode} output: {m}")
        torch.testing.assert_close(gx, gx0, **tol, msg=lambda m: f"{mode} grad x: {m}")
        for k in gp0:
            torch.testing.assert_close(gp[k].float(), gp0[k].float(), **tol, msg=lambda m: f"{mode} grad {k}: {m}")
        for k in b0:
            torch.testing.assert_close(b[k], b0[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{mode} buffer {k}: {m}")
    assert saved["block"] < saved["mlp"] < saved["none"], saved
    assert saved["auto"] == saved[yf.nn.modules.AUTO_RECOMPUTE["cuda"]], saved


def test_recompute_only_while_training_and_setting_checks():
    """No checkpointing in eval mode or without autograd (nothing would be saved anyway), nor with "auto" on CPU;
    "auto" follows AUTO_RECOMPUTE per device type ("none" on CUDA, as measured); bad values are refused with the list of valid ones; patched() restores the previous
    setting."""
    import types

    import torch.utils.checkpoint as cp
    from ultralytics.nn.modules.block import ABlock

    fast = yf.patch(ABlock(64, 2, 1.2, 1), backend=BACKEND)
    calls = []
    orig = cp.checkpoint

    def spy(*a, **k):
        calls.append(1)
        return orig(*a, **k)

    x = torch.randn(1, 64, 5, 5)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cp, "checkpoint", spy)
        fast.train()(x.clone().requires_grad_(True)).sum().backward()  # auto, CPU
        fast.recompute = "mlp"
        fast.eval()(x)
        with torch.no_grad():
            fast.train()(x)
        assert calls == []
        fast.train()(x.clone().requires_grad_(True)).sum().backward()
        assert calls == [1]
    fast.recompute = "auto"
    on = lambda dev: fast._recompute(types.SimpleNamespace(device=torch.device(dev)))
    assert on("cuda") == "none" and on("cpu") == "none"
    with pytest.MonkeyPatch.context() as mp:  # the table decides
        mp.setitem(yf.nn.modules.AUTO_RECOMPUTE, "cuda", "mlp")
        assert on("cuda") == "mlp" and on("cpu") == "none" and on("mps") == "none"
    for bad in ("all", None, "MLP"):
        with pytest.raises(ValueError, match="recompute"):
            fast.recompute = bad
        with pytest.raises(ValueError, match="recompute"):
            yf.patch(ABlock(64, 2, 1.2, 1), recompute=bad or "x")
        with pytest.raises(ValueError, match="recompute"):
            yf.nn.A2C2f(64, 64, 1, True, 1, recompute=bad)
    with pytest.raises(ValueError, match="recompute"):
        yf.YOLO("yolo12n.yaml", recompute="MLP")  # refused before anything is built
    assert fast.recompute == "auto"
    with yf.patched(fast, recompute="block"):
        assert fast.recompute == "block" and fast.attn.recompute == "block"
    assert fast.recompute == "auto"


def test_pe_fold_cache_follows_parameter_updates():
    """The cached folded pe weights are keyed on parameter versions: an in-place update (optimizer step,
    load_state_dict) and .to(dtype) invalidate them."""
    from ultralytics.nn.modules.block import AAttn

    plain = _randomize(AAttn(64, 2, 4))
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND)
    x = torch.randn(1, 64, 8, 8)
    check_module(fast, plain, x, name="before")
    with torch.no_grad():
        for m in (plain, fast):
            m.pe.bn.running_var.mul_(2.0)
            m.pe.conv.weight.add_(0.5)
    check_module(fast, plain, x, name="after in-place update")
    fast.load_state_dict(_randomize(copy.deepcopy(plain), seed=9).state_dict())
    plain.load_state_dict(fast.state_dict())
    check_module(fast, plain, x, name="after load_state_dict")
    fast.double()
    with torch.no_grad():
        out = fast(x.double())
    torch.testing.assert_close(out, _oracle(plain, x))


# --------------------------------------------------------------------------------------------------------------
# torch.compile


@pytest.mark.slow
def test_torch_compile_fullgraph_of_patched_a2c2f():
    """A patched A2C2f compiles without graph breaks (custom ops with fake kernels; no fold cache, no out= buffer
    while compiling) and computes what ultralytics does (about a minute of inductor compile on 2 cores)."""
    from ultralytics.nn.modules.block import A2C2f

    plain = _randomize(A2C2f(128, 128, 1, True, 4, True, 1.2))
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND)
    compiled = torch.compile(fast, fullgraph=True)
    for shape in ((1, 128, 8, 8), (2, 128, 8, 12)):
        check_module(compiled, plain, torch.randn(shape), name=f"compiled {shape}")


# --------------------------------------------------------------------------------------------------------------
# the fused MLP path (backend="triton": ABlock's mlp and residual in one yolov12_fast::mlp_residual kernel)


def _fuse_like_ultralytics(module):
    """What ultralytics' model.fuse() does to each Conv: BatchNorm folded into the conv, forward_fuse."""
    from ultralytics.utils.torch_utils import fuse_conv_and_bn

    for m in module.modules():
        if hasattr(m, "bn") and hasattr(m, "forward_fuse"):
            with torch.no_grad():  # older ultralytics fuses with autograd on (weights that are no leaves)
                m.conv = fuse_conv_and_bn(m.conv, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
    return module


@pytest.mark.usefixtures("triton_device")
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize("kind,args,shape", [("ablock", (64, 2, 1.2, 1), (1, 64, 7, 7)),
                                             ("a2c2f", (128, 128, 1, True, 4, True, 1.2), (2, 128, 6, 10)),
                                             ("a2c2f", (96, 128, 2, True, 4, False, 1.2), (1, 96, 5, 8))],
                         ids=["ablock", "a2c2f-residual", "a2c2f-n2-plain"])
def test_fused_mlp_path(kind, args, shape, fused, monkeypatch):
    """With backend='triton' every ABlock runs its MLP through the fused op (counted), in forward and in A2C2f's
    buffer path (out=), A2C2f's cv2 runs as the fused conv (with the L/X residual x + gamma * cv2 in its epilogue
    when the block has one), and the module still computes what ultralytics does (odd hidden 76)."""
    import yolov12_fast.nn.modules as fm

    calls, cv2_calls = [], []
    real, real_cv2 = fm.mlp_residual, fm.conv1x1_silu_residual
    monkeypatch.setattr(fm, "mlp_residual", lambda *a, **k: calls.append(k.get("out") is not None) or real(*a, **k))
    monkeypatch.setattr(fm, "conv1x1_silu_residual",
                        lambda *a, **k: cv2_calls.append(k.get("residual") is not None) or real_cv2(*a, **k))
    plain = _randomize(_ultralytics_ctor(kind)(*args))
    if fused:
        plain = _fuse_like_ultralytics(plain)
    fast = yf.patch(copy.deepcopy(plain), backend="triton")
    check_module(fast, plain, torch.randn(shape), name=f"{kind} fused mlp")
    n_blocks = sum(isinstance(m, yf.nn.ABlock) for m in fast.modules())
    assert len(calls) >= n_blocks, f"the fused MLP ran {len(calls)} times for {n_blocks} ABlocks"
    if kind == "a2c2f":
        assert any(calls), "A2C2f's buffer path did not write the last block's MLP into its slice"
        assert cv2_calls and all(c == (fast.gamma is not None) for c in cv2_calls), \
            f"A2C2f's cv2 did not run as the fused conv with{'' if fast.gamma is not None else 'out'} residual: {cv2_calls}"


@pytest.mark.usefixtures("triton_device")
def test_attention_in_place_over_the_pe_output(monkeypatch):
    """Inference with backend='triton': AAttn writes the attention output over its PE result (one map fewer at peak
    memory), with ultralytics' numerics: directly in eager inference (test_eager_inference_runs_the_kernels_...), and
    through the in-place op area_attention_add_ while a dispatch mode watches the ops (benchmarks/proxies.py counts
    the bytes that way), with the same bits; with autograd it keeps the out-of-place op."""
    import yolov12_fast.nn.modules as fm
    from ultralytics.nn.modules.block import AAttn

    calls = []
    real = fm.area_attention_add_
    monkeypatch.setattr(fm, "area_attention_add_", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain = _randomize(AAttn(64, 2, 4))
    fast = yf.patch(copy.deepcopy(plain), backend="triton")
    x = torch.randn(2, 64, 6, 10)
    check_module(fast, plain, x, name="in place")
    assert calls == []  # eager inference: the op body, not the op
    with torch.no_grad():
        direct = fast(x)
        with _OpRecorder() as ops:
            watched = fast(x)
    assert len(calls) == 1 and "yolov12_fast.area_attention_add_.default" in ops.seen, (calls, sorted(ops.seen))
    assert torch.equal(watched, direct)
    x = torch.randn(1, 64, 4, 4, requires_grad=True)
    fast(x).sum().backward()  # autograd: the differentiable out-of-place op
    assert len(calls) == 1 and x.grad is not None


@pytest.mark.usefixtures("triton_device")
def test_fused_cv2_keeps_ultralytics_promotion_under_mixed_dtypes(monkeypatch):
    """A bf16 cv2 under autocast with ultralytics' fp32 gamma: ultralytics' addcmul promotes to fp32;
    the fused conv (one output dtype) must not run there, and the output dtype stays ultralytics'."""
    import yolov12_fast.nn.modules as fm

    monkeypatch.setattr(fm, "conv1x1_silu_residual", lambda *a, **k: pytest.fail("fused cv2 ran on mixed dtypes"))
    plain = _randomize(_ultralytics_ctor("a2c2f")(128, 128, 1, True, 4, True, 1.2))
    fast = yf.patch(copy.deepcopy(plain), backend="triton").eval()
    x, y = torch.randn(1, 128, 4, 4).bfloat16(), torch.randn(1, 128, 4, 4).bfloat16()  # y: (1 + n) * c_ channels
    with torch.autocast(TRITON_DEV, dtype=torch.bfloat16):  # cv2 runs in bf16, gamma stays an fp32 parameter
        out = fast._out(x, y)
        ref = torch.addcmul(x, plain.gamma.view(1, -1, 1, 1), plain.eval().cv2(y))
    assert out.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


FUSED_GRAD_CASES = {  # kind: (constructor args, input shape, a folded conv's BN parameter prefix, its Conv)
    "ablock": ((64, 2, 1.2, 1), (2, 64, 5, 6), "mlp.0.bn", lambda m: m.mlp[1]),
    "a2c2f": ((128, 128, 1, True, 4, True, 1.2), (2, 128, 4, 6), "cv2.bn", lambda m: m.cv2),
}


@pytest.mark.usefixtures("triton_device")
@pytest.mark.parametrize("kind", FUSED_GRAD_CASES)
def test_fused_gradients_and_cache(kind):
    """Gradients through the fused MLP and cv2 (eval-mode BN folded inside the graph; A2C2f's gamma through the
    conv's epilogue) match ultralytics' against the float64 oracle; the folded-weight caches follow in-place
    parameter updates."""
    args, shape, bn_prefix, conv_of = FUSED_GRAD_CASES[kind]
    plain = _randomize(_ultralytics_ctor(kind)(*args))
    fast = yf.patch(copy.deepcopy(plain), backend="triton")
    oracle_m = copy.deepcopy(plain).double()
    x = torch.randn(shape)
    y_n, gx_n, gp_n = _grads(plain, x)
    y_f, gx_f, gp_f = _grads(fast, x)
    y_o, gx_o, gp_o = _grads(oracle_m, x.double())
    assert any(k.startswith(bn_prefix) for k in gp_f) and set(gp_f) == set(gp_n)
    assert_close_to_oracle(gx_f, gx_n, gx_o, "grad x")
    for k in gp_n:
        assert_close_to_oracle(gp_f[k], gp_n[k], gp_o[k], f"grad {k}")
    with torch.no_grad():
        for m in (plain, fast):
            conv_of(m).bn.running_var.mul_(3.0)
            conv_of(m).conv.weight.add_(0.1)
    check_module(fast.eval(), plain.eval(), x, name="after in-place update")


def test_channels_last_gemm_conv_rule_of_the_gpu_on_cpu_tensors(monkeypatch):
    """The GPU's GEMM rule (channels_last inputs of any batch: one addmm over every image's tokens) run here on CPU
    tensors through the module: a channels_last A2C2f at batch 3 takes the addmm for its 1x1 convs (cv1 into its
    buffer slice included; AAttn's proj, whose input the kernels write NCHW, a batched GEMM over the transposed
    images), stays channels_last and matches ultralytics (fp64 oracle)."""
    from torch.profiler import ProfilerActivity, profile
    from ultralytics.nn.modules.block import A2C2f

    from yolov12_fast.nn import modules as M

    real = M._gemm_layout_ok
    monkeypatch.setattr(M, "_gemm_layout_ok", lambda dev, t, to_cl=False: real("cuda", t, to_cl))
    # CPU tensors still meet the CPU's channels_last conv preference (cpu_channels_last_conv): the Intel rule's,
    # which leaves these 80-token maps to the GEMM (the AMD rule would send them all to oneDNN's convolution)
    monkeypatch.setattr(M._backends, "cpu_vendor", lambda: "intel")
    plain = _fuse_like_ultralytics(_randomize(A2C2f(128, 128, 1, True, 4, True, 1.2))).eval()
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND).to(memory_format=torch.channels_last)
    plain_cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    x = torch.randn(3, 128, 8, 10).contiguous(memory_format=torch.channels_last)  # 80 tokens: under the CPU's 400
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        got = fast(x)
    mm = [e.name for e in prof.events() if e.name in ("aten::addmm", "aten::baddbmm")]
    rows = [e.input_shapes[1][0] for e in prof.events() if e.name == "aten::addmm"]
    assert len(rows) == 2 + 2 * 3 and set(rows) == {3 * 80}, rows  # cv1, cv2; per ABlock qkv and the MLP's two
    assert mm.count("aten::baddbmm") == 2, mm  # proj of each ABlock: NCHW kernel output, per image transposed
    assert _cl(got), got.stride()
    with torch.inference_mode():
        assert_close_to_oracle(got, plain_cl(x), copy.deepcopy(plain).double()(x.double()), "batched gemm conv")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_bias_act_path_through_the_modules(layout, monkeypatch):
    """BIAS_ACT (off until measured; CUDA's compiled kernel, csrc/cuda/bias_act.cu, tested in the emulator): the
    patched blocks' fused 1x1 convs run without their bias and yolov12_fast::bias_act_cxx adds it and applies the
    SiLU, into A2C2f's buffer slices too. Run here through the op's CPU implementation: every 1x1 conv of an A2C2f
    at batch 2 takes it (cv1, cv2; per ABlock qkv, proj and the MLP's two), in both layouts, and the block matches
    ultralytics (fp64 oracle)."""
    from torch.profiler import ProfilerActivity, profile
    from ultralytics.nn.modules.block import A2C2f

    from yolov12_fast import _backends
    from yolov12_fast.nn import modules as M

    if not _backends.can_use_cpp()[0]:
        pytest.skip("the compiled extension is not built here")
    monkeypatch.setattr(M, "BIAS_ACT", {"cpu"})
    monkeypatch.setattr(M, "_BIAS_ACT_READY", {torch.device("cpu"): True})
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    plain = _fuse_like_ultralytics(_randomize(A2C2f(128, 128, 1, True, 4, True, 1.2))).eval()
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND).to(memory_format=fmt)
    x = torch.randn(2, 128, 8, 10).contiguous(memory_format=fmt)  # batch 2: the CPU's batch-1 GEMM stays out
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        got = fast(x)
    calls = sum(e.name == "yolov12_fast::bias_act_cxx" for e in prof.events())
    assert calls == 2 + 2 * 4, calls
    assert _cl(got) == (layout == "channels_last"), got.stride()
    with torch.no_grad():
        assert_close_to_oracle(got, plain(x), copy.deepcopy(plain).double()(x.double()), f"bias_act {layout}")
    monkeypatch.setattr(M, "BIAS_ACT", set())  # off: not one call
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fast(x)
    assert not any(e.name == "yolov12_fast::bias_act_cxx" for e in prof.events())


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_bias_act_on_cuda(layout, monkeypatch):
    """BIAS_ACT with "cuda" (off until measured; the model suite's patched-bias-act rows turn it on): an fp16 A2C2f at
    batch 3 on a GPU runs every fused 1x1 conv as cuDNN's bias-free conv plus the bias_act kernel (10 calls: cv1,
    cv2; per ABlock qkv, proj and the MLP's two), keeps its layout and matches ultralytics (fp64 oracle on the CPU)."""
    from torch.profiler import ProfilerActivity, profile
    from ultralytics.nn.modules.block import A2C2f

    from yolov12_fast.nn import modules as M

    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    plain = _fuse_like_ultralytics(_randomize(A2C2f(128, 128, 1, True, 4, True, 1.2))).eval()
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND).to("cuda", torch.float16).to(memory_format=fmt)
    plain_g = copy.deepcopy(plain).to("cuda", torch.float16).to(memory_format=fmt)
    x = torch.randn(3, 128, 16, 20).contiguous(memory_format=fmt)
    xg = x.to("cuda", torch.float16)
    monkeypatch.setattr(M, "BIAS_ACT", {"cuda"})
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        got = fast(xg)
    assert sum(e.name == "yolov12_fast::bias_act_cxx" for e in prof.events()) == 2 + 2 * 4
    assert _cl(got) == (layout == "channels_last"), got.stride()
    with torch.inference_mode():
        assert_close_to_oracle(got.cpu(), plain_g(xg).cpu(), copy.deepcopy(plain).double()(x.double()), "bias_act")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_channels_last_gemm_conv_on_cuda(dtype, monkeypatch):
    """GEMM_CONV with "cuda" (off until measured; the model suite's patched-cl-gemm rows turn it on): a channels_last
    A2C2f at batch 3 on a GPU runs its fused 1x1 convs as addmm over every image's tokens (bias in cuBLASLt's
    epilogue), stays channels_last and matches ultralytics (fp64 oracle on the CPU, ultralytics' same-dtype error
    as the yardstick); without "cuda" in the set no addmm runs."""
    from torch.profiler import ProfilerActivity, profile
    from ultralytics.nn.modules.block import A2C2f

    from yolov12_fast.nn import modules as M

    plain = _fuse_like_ultralytics(_randomize(A2C2f(128, 128, 1, True, 4, True, 1.2))).eval()
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND).to("cuda", dtype).to(memory_format=torch.channels_last)
    plain_g = copy.deepcopy(plain).to("cuda", dtype).to(memory_format=torch.channels_last)
    x = torch.randn(3, 128, 16, 20).contiguous(memory_format=torch.channels_last)
    xg = x.to("cuda", dtype)
    counts = {}
    for on in (False, True):
        monkeypatch.setattr(M, "GEMM_CONV", {"cpu", "cuda"} if on else {"cpu"})
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            got = fast(xg)
        counts[on] = sum(e.name == "aten::addmm" for e in prof.events())
        assert _cl(got), got.stride()
        with torch.inference_mode():
            assert_close_to_oracle(got.cpu(), plain_g(xg).cpu(), copy.deepcopy(plain).double()(x.double()),
                                   f"gemm conv {'on' if on else 'off'}")
    assert counts[False] == 0 and counts[True] >= 2 + 2 * 3, counts  # cv1, cv2; per ABlock qkv, mlp x 2 (proj:
    # a baddbmm)


@pytest.mark.parametrize("kind,backend,layout", [("ablock", "auto", "nchw"), ("a2c2f", "auto", "nchw"),
                                                 ("ablock", "triton", "nchw"),
                                                 pytest.param("a2c2f", "triton", "nchw", marks=pytest.mark.slow),
                                                 ("a2c2f", "auto", "channels_last")])
def test_compile_fullgraph_one_graph_across_batch_sizes(kind, backend, layout, use_triton_device):
    """torch.compile(fullgraph=True) of a patched ABlock / A2C2f traces into one graph (custom ops with fake
    kernels; the fold caches and out= buffer path stay out of the trace) and a dynamic batch compiles once for
    batches 2, 3 and 5 (recompile limit 1; dynamo specialises size-1 dims, so batch 1 is its own graph whatever the
    model); also with the module and inputs channels_last (ultralytics >= 8.4's training layout on CUDA). A
    counting backend keeps this cheap; inductor is the slow test above."""
    import torch._dynamo

    use_triton_device(backend == "triton")
    args = {"ablock": (64, 2, 1.2, 1), "a2c2f": (128, 128, 1, True, 4, True, 1.2)}[kind]
    plain = _randomize(_ultralytics_ctor(kind)(*args))
    fast = yf.patch(copy.deepcopy(plain), backend=backend)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    plain, fast = plain.to(memory_format=fmt), fast.to(memory_format=fmt)
    torch._dynamo.reset()
    graphs = []

    def count(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(fast, backend=count, fullgraph=True)
    names = torch._dynamo.config.get_config_copy()  # torch < 2.7 calls the recompile limit the cache size limit
    limit = (dict(recompile_limit=1, fail_on_recompile_limit_hit=True) if "recompile_limit" in names
             else dict(cache_size_limit=1, fail_on_cache_limit_hit=True))
    with torch._dynamo.config.patch(**limit):
        for b in (2, 3, 5):
            x = torch.randn(b, args[0], 6, 10).contiguous(memory_format=fmt)
            torch._dynamo.mark_dynamic(x, 0)
            check_module(compiled, plain, x, name=f"compiled {kind} {layout} batch {b}")
    assert len(graphs) == 1, f"{len(graphs)} graphs for 3 batch sizes"
    ops = {str(n.target) for n in graphs[0].graph.nodes if n.op == "call_function"}
    assert any("yolov12_fast" in o for o in ops), f"no yolov12_fast op in the graph: {sorted(ops)[:20]}"


class _OpRecorder(TorchDispatchMode):
    """The names of the ops dispatched while active (aten and yolov12_fast). A dispatch mode is something that
    watches the ops, so while it is active the modules take the custom ops (nn.modules._eager_inference)."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(str(func))
        return func(*args, **(kwargs or {}))


def _spy_calls(monkeypatch) -> collections.Counter:
    """Counts what the fast modules call: "op" (the public functional ops, i.e. the custom-op layer), "direct" (the
    attention op body called directly), "cxx" (the compiled C++ attention kernel), "addmm" and "conv" (nn.Conv2d's
    convolution). Without a dispatch mode, which would change the path taken."""
    import yolov12_fast.nn.modules as fm

    calls = collections.Counter()

    def wrap(owner, name, key):
        real = getattr(owner, name)
        monkeypatch.setattr(owner, name, lambda *a, **k: calls.update([key]) or real(*a, **k))

    for name in ("area_attention", "area_attention_add_", "pe_add", "mlp_residual", "conv1x1_silu_residual"):
        wrap(fm, name, "op")
    wrap(fm._attention_ops, "_fwd", "direct")
    if yf.can_use_cpp()[0]:
        wrap(torch.ops.yolov12_fast, "area_attention_fwd_cxx", "cxx")
    wrap(torch, "addmm", "addmm")
    wrap(nn.Conv2d, "_conv_forward", "conv")
    return calls


def test_backend_reference_runs_the_reference_math_in_inference_mode(monkeypatch):
    """backend="reference" is the numerics baseline (verify compares against it): the CPU inference fast path must
    not swap the C++ kernels in for it, through the ops or directly."""
    m = yf.nn.AAttn(64, 2, 4, backend="reference").eval()
    x = torch.randn(1, 64, 8, 8)
    with torch.inference_mode():
        ops = _OpRecorder()
        with ops:
            m(x)
    ours = sorted(o for o in ops.seen if "yolov12_fast" in o)
    assert ours and not any("_cxx" in o for o in ours), ours
    calls = _spy_calls(monkeypatch)
    with torch.inference_mode():
        m(x)
    assert calls["direct"] == 1 and calls["cxx"] == 0 and calls["op"] == 0, calls


def test_cpu_inference_mode_fast_path(monkeypatch):
    """Under torch.inference_mode (ultralytics' predictor) a batch-1 CPU forward of a fused model takes the direct
    path: the compiled kernels without the custom-op layer, and the 1x1 convs as addmm. Same numerics as
    ultralytics (layer outputs and final output)."""
    if not yf.can_use_cpp()[0] or BACKEND not in ("auto", "cpp"):
        pytest.skip("the direct path is the C++ CPU backend's")
    plain = U.build_model("n", "ultralytics", 640, True)
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND)
    imgs = U.images(640)[:1]
    names = _checked_modules(plain)
    with torch.inference_mode():
        expected, io = run_with_io(plain, imgs, names)
    calls = _spy_calls(monkeypatch)
    with torch.inference_mode():
        actual = fast(imgs)[0]
    n_attn = sum(type(m).__name__ == "AAttn" for m in plain.modules())
    assert calls["op"] == 0 and calls["direct"] == calls["cxx"] == n_attn and calls["addmm"] > 0, calls
    for n in names:
        inp, out = (t.clone() for t in io[n])  # out of inference mode
        with torch.inference_mode():
            got = fast.get_submodule(n)(inp)
        assert_close_to_oracle(got.clone(), out, _oracle(plain.get_submodule(n), inp), f"inference_mode {n}")
    check_outputs(actual.clone(), expected.clone(), plain, imgs, "inference_mode output")


@pytest.mark.parametrize("grad_off", ["inference_mode", "no_grad"])
@pytest.mark.parametrize("variant", ["ultralytics", "turbo"])
@pytest.mark.parametrize("backend", ["triton", "reference"] + (["cpp"] if yf.can_use_cpp()[0] else []))
def test_eager_inference_runs_the_kernels_without_the_op_layer(backend, variant, grad_off, monkeypatch,
                                                              use_triton_device):
    """In eager inference (inference_mode or no_grad) AAttn calls the op bodies directly on the backend the ops
    would resolve to (host time: a batch-1 GPU forward is host-bound): none of the public ops is called, the Triton
    kernel writes the attention over the PE result it was handed (no second map), and the output is ultralytics'
    against the float64 oracle (an area that cuts rows, batch 3) and bit for bit what the ops give while a
    TorchDispatchMode watches (which takes the ops: benchmarks/proxies.py counts them that way)."""
    use_triton_device(backend == "triton")
    import yolov12_fast.nn.modules as fm
    from ultralytics.nn.modules.block import AAttn

    real = fm._attention_ops.plus_residual
    direct = []

    def spy(q, k, v, area, scale, residual, b):
        out = real(q, k, v, area, scale, residual, b)
        direct.append((b, out is residual))
        return out

    monkeypatch.setattr(fm._attention_ops, "plus_residual", spy)
    calls = _spy_calls(monkeypatch)
    plain = _randomize(U.TurboAAttn(64, 2, 4) if variant == "turbo" else AAttn(64, 2, 4)).eval()
    fast = yf.patch(copy.deepcopy(plain), backend=backend)
    x = torch.randn(3, 64, 5, 4)  # 20 tokens, area 4: 5 per area, each area cuts a row
    with torch.no_grad():
        naive, oracle = plain(x), _oracle(plain, x)
    with torch.inference_mode() if grad_off == "inference_mode" else torch.no_grad():
        actual = fast(x)
        assert calls["op"] == 0 and direct == [(backend, backend == "triton")], (calls, direct)
        ops = _OpRecorder()
        with ops:
            watched = fast(x)
    assert calls["op"] == 2 and "yolov12_fast.pe_add.default" in ops.seen, (calls, sorted(ops.seen))
    assert_close_to_oracle(actual.clone(), naive, oracle, f"{grad_off} {backend} {variant}")
    assert torch.equal(actual.clone(), watched.clone())


def test_eager_inference_resolves_backends_once_per_setting(monkeypatch):
    """The direct path's backend picks are cached on the module (host time): repeated calls resolve once, a new
    backend setting resolves again (the key also holds device, dtype, head_dim and pe kernel size), and .to() and
    deepcopy drop the cache."""
    import yolov12_fast.nn.modules as fm

    resolved = []
    real_pe, real_att = fm._pe_ops.resolve_backend, fm.resolve_attention_backend
    monkeypatch.setattr(fm._pe_ops, "resolve_backend", lambda *a: resolved.append(("pe", a[0])) or real_pe(*a))
    monkeypatch.setattr(fm, "resolve_attention_backend", lambda *a: resolved.append(("att", a[0])) or real_att(*a))
    m = yf.nn.AAttn(64, 2, 4, backend="reference").eval()
    x = torch.randn(1, 64, 4, 4)
    with torch.inference_mode():
        first = m(x)
        for _ in range(3):
            assert torch.equal(m(x), first)
        assert resolved == [("pe", "reference"), ("att", "reference")], resolved
        m.backend = "auto"
        m(x)
        assert len(resolved) == 4 and resolved[-1] == ("att", "auto")
        m(x)
        assert len(resolved) == 4
    m2 = copy.deepcopy(m)
    assert "_yf_resolved" in m.__dict__ and "_yf_resolved" not in m2.__dict__
    m.to(torch.float32)
    assert "_yf_resolved" not in m.__dict__


def test_eager_inference_bad_input_still_gets_the_ops_errors():
    """The direct inference path takes only what the ops accept; anything else goes through the ops and their
    clear errors: tokens not divisible by the area, an explicit backend that cannot run here, a pe conv whose width
    is not the attention's (a kernel fed that weight could read past it)."""
    m = yf.nn.AAttn(64, 2, 4).eval()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="not divisible by area"):
        m(torch.randn(1, 64, 3, 3))
    m.backend = "cuda"
    with torch.no_grad(), pytest.raises(RuntimeError, match="cannot run"):
        m(torch.randn(1, 64, 4, 4))
    from ultralytics.nn.modules.conv import Conv

    for backend in ["triton", "reference"] + (["cpp"] if yf.can_use_cpp()[0] else []):
        dev = TRITON_DEV if backend == "triton" else "cpu"
        m.backend = backend
        m.pe = Conv(32, 32, 7, 1, 3, g=32, act=False).eval()  # a depthwise pe of the wrong width (32, not 64)
        m.to(dev)
        with torch.inference_mode(), pytest.raises(RuntimeError, match=r"pe_add: weight must be a depthwise \(64,"):
            m(torch.randn(1, 64, 4, 4, device=dev))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")  # deprecated; ultralytics exports with it
def test_cpu_batch1_inference_runs_the_1x1_convs_as_gemms(monkeypatch):
    """A fused A2C2f (the state ultralytics predicts in) at batch 1 on CPU in eager inference runs every 1x1 Conv
    (cv1, cv2, qkv, proj and the MLP's two, SiLU in place) as an addmm, with ultralytics' numerics; batch 2 and a Conv
    with a hook keep the convolution (the hook fires), and so does torch.jit.trace (a traced addmm would pin the
    batch to 1: the trace must run at batch 2)."""
    if not yf.can_use_cpp()[0] or BACKEND not in ("auto", "cpp"):
        pytest.skip("checks the C++ CPU inference path")
    plain = _fuse_like_ultralytics(_randomize(_ultralytics_ctor("a2c2f")(128, 128, 1, True, 4, True, 1.2))).eval()
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND)
    # the NCHW path itself: on AMD CPUs a batch-1 NCHW A2C2f runs channels_last inside (CPU_INSIDE_CHANNELS_LAST,
    # tested in test_batch1_nchw_a2c2f_runs_channels_last_inside_on_the_cpus_that_measured_it)
    monkeypatch.setattr(yf.nn.modules._backends, "cpu_vendor", lambda: "intel")
    calls = _spy_calls(monkeypatch)
    for batch in (1, 2):
        x = torch.randn(batch, 128, 5, 8)  # 40 tokens, area 4: areas of 10 cut rows
        with torch.no_grad():
            naive, oracle = plain(x), _oracle(plain, x)
            calls.clear()
            actual = fast(x)
        # 1x1 convs: cv1, cv2 and per ABlock qkv, proj, mlp.0, mlp.1 (2 ABlocks); the 7x7 pe is the C++ kernel
        want = {"addmm": 10, "conv": 0} if batch == 1 else {"addmm": 0, "conv": 10}
        assert {k: calls[k] for k in want} == want, (batch, calls)
        assert_close_to_oracle(actual, naive, oracle, f"A2C2f batch {batch}")
    seen = []
    handle = fast.m[0][1].mlp[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.inference_mode():
        actual = fast(x[:1])
    assert seen == [torch.Size([1, 76, 5, 8])], seen
    with torch.no_grad():
        assert_close_to_oracle(actual.clone(), plain(x[:1]), _oracle(plain, x[:1]), "A2C2f with a hooked MLP conv")
    handle.remove()
    with torch.no_grad():
        traced = torch.jit.trace(fast, x[:1], check_trace=False)
        assert_close_to_oracle(traced(x), plain(x), _oracle(plain, x), "A2C2f traced at batch 1, run at batch 2")


# --------------------------------------------------------------------------------------------------------------
# found by differential fuzzing of the patched modules against ultralytics (each test failed before its fix)


def test_folded_weights_follow_a_training_mode_batchnorm_forward():
    """A train-mode forward updates BatchNorm's running statistics in place without bumping their version counters
    (only num_batches_tracked changes version): the folded-weight cache must see it. Before, an eval forward after
    a train-mode one (BatchNorm recalibration, test-time adaptation) kept the old folded pe weights: 2e-2 off."""
    from ultralytics.nn.modules.block import AAttn

    plain = _randomize(AAttn(64, 2, 1))
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND)
    x = torch.randn(2, 64, 6, 6)
    with torch.no_grad():
        fast(x)  # fills the caches
        for m in (plain, fast):
            m.train()
            m(3 * x + 1)  # new running statistics
            m.eval()
        want, got = copy.deepcopy(plain).double()(x.double()), fast(x)
        naive = plain(x)
    assert_close_to_oracle(got, naive, want, "eval after a train-mode forward")


def test_a_head_dim_without_kernels_falls_back_in_the_pe_too():
    """AAttn(96, 2): head_dim 48 has no fused kernel. The attention runs the reference math (with a warning); the PE
    branch must too, instead of sending head_dim 48 to the Triton pe_add kernel, which refuses it."""
    import warnings

    from ultralytics.nn.modules.block import AAttn

    plain = _randomize(AAttn(96, 2, 1))
    x = torch.randn(1, 96, 4, 4)
    for backend in ("triton", BACKEND):
        fast = yf.patch(copy.deepcopy(plain), backend=backend)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the fallback's warning (once per process)
            got = fast(x)
        with torch.no_grad():
            assert_close_to_oracle(got, plain(x), copy.deepcopy(plain).double()(x.double()), f"head_dim 48, {backend}")


@pytest.mark.usefixtures("triton_device")
@pytest.mark.parametrize("kind", ["ablock", "a2c2f"])
def test_triton_blocks_accept_views_whose_tokens_do_not_flatten(kind):
    """A transposed H/W view is a valid input (ultralytics takes it). The fused Triton MLP / cv2 kernels read only
    tensors whose H, W flatten into one token dim: such a view takes the unfused path instead of an error."""
    from ultralytics.nn.modules.block import A2C2f, ABlock

    plain = _randomize(ABlock(64, 2, 1.2, 1) if kind == "ablock" else A2C2f(64, 64, 1, True, 1, True, 1.2))
    fast = yf.patch(copy.deepcopy(plain), backend="triton")
    x = torch.randn(1, 64, 4, 6).transpose(2, 3)
    with torch.no_grad():
        assert_close_to_oracle(fast(x), plain(x), copy.deepcopy(plain).double()(x.double()), f"{kind}, transposed view")


def test_an_empty_feature_map_gets_convs_error_on_every_path():
    """H = 0 at batch 1: ultralytics' conv2d refuses it. The batch-1 CPU GEMM path must not answer an empty tensor
    where the same module with grad enabled raises."""
    from ultralytics.nn.modules.block import AAttn

    plain = _randomize(AAttn(64, 2, 4))
    fast = yf.patch(copy.deepcopy(plain).float(), backend=BACKEND)
    for m in fast.modules():  # fused convs (model.fuse()): what _gemm_conv takes
        if hasattr(m, "bn") and hasattr(m, "forward_fuse"):
            from ultralytics.utils.torch_utils import fuse_conv_and_bn

            m.conv = fuse_conv_and_bn(m.conv, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
    x = torch.randn(1, 64, 0, 4)
    for ctx in (torch.no_grad, torch.inference_mode, torch.enable_grad):
        with ctx(), pytest.raises(RuntimeError):
            fast(x)


def test_a2c2f_keeps_a_channels_last_input_channels_last():
    """Without autograd A2C2f writes cv1 and the blocks into one buffer: for a channels_last input (a model moved
    with .to(memory_format=torch.channels_last)) the buffer, hence the output, is channels_last, as ultralytics'
    torch.cat makes it and as the grad-enabled path does; NCHW before."""
    from ultralytics.nn.modules.block import A2C2f

    plain = _randomize(A2C2f(64, 64, 1, True, 4, False, 2.0))
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND)
    x = torch.randn(1, 64, 8, 8).contiguous(memory_format=torch.channels_last)
    cl = lambda t: t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            got, ref = fast(x), plain(x)
        assert cl(ref) and cl(got), ctx
        with torch.no_grad():
            assert_close_to_oracle(got, ref, copy.deepcopy(plain).double()(x.double()), "channels_last A2C2f")


def _cl(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@pytest.mark.parametrize("cin,cout,hw", [(48, 76, (5, 7)), (38, 64, (5, 7)), (48, 64, (24, 24)), (38, 44, (24, 24))],
                         ids=["16s-few-tokens", "odd-in", "16s-many-tokens", "odd-many-tokens"])
@pytest.mark.parametrize("act", [True, False], ids=["silu", "no-act"])
@pytest.mark.parametrize("vendor", ["intel", "amd"])
def test_batch1_gemm_conv_in_every_layout(cin, cout, hw, act, vendor, monkeypatch):
    """The batch-1 CPU 1x1 conv (M._conv1x1: an addmm where M._gemm_conv allows, else the conv) for NCHW,
    channels_last and channel-slice inputs, into a new tensor of either layout or into channel slices of an NCHW or
    a channels_last buffer: the module's values (fp64 oracle), in the layout asked for. channels_last inputs take
    oneDNN's conv where it measured faster (M.cpu_channels_last_conv: on Intel CPUs channel counts in 16s over more
    than 400 tokens, on AMD CPUs every shape), the rest the addmm; both vendors' rules run on any CPU."""
    from ultralytics.nn.modules.conv import Conv

    from yolov12_fast.nn import modules as M

    monkeypatch.setattr(M._backends, "cpu_vendor", lambda: vendor)

    conv = _fuse_like_ultralytics(_randomize(Conv(cin, cout, 1, act=act)))
    H, W = hw
    base = torch.randn(1, cin + 16, H, W)
    inputs = {"nchw": base[:, :cin].contiguous(), "cl": base[:, :cin].contiguous(memory_format=torch.channels_last),
              "cl-slice": base.contiguous(memory_format=torch.channels_last)[:, 8:8 + cin],
              "nchw-slice": base[:, 8:8 + cin]}
    oracle = copy.deepcopy(conv).double()
    for name, x in inputs.items():
        with torch.inference_mode():
            naive, want = conv(x.contiguous()), oracle(x.double())
            g = M._gemm_conv(conv, x)
            layout_cl = M._channels_last(x)
            conv_rule = cin % 16 == 0 and cout % 16 == 0 and H * W > 400 if vendor == "intel" else True
            gemm_expected = not (layout_cl and conv_rule)
            assert (g is not None) == gemm_expected, (name, g)
            for cl_arg in (False, True):  # channels_last=True: a channels_last result even for an NCHW x
                got = M._conv1x1(conv, x, channels_last=cl_arg)
                assert _cl(got) == (layout_cl or cl_arg), (name, cl_arg, got.stride())
                assert_close_to_oracle(got, naive, want, f"{name} channels_last={cl_arg}")
            for buf_layout in (torch.contiguous_format, torch.channels_last):
                buf = torch.full((1, cout + 24, H, W), float("nan")).contiguous(memory_format=buf_layout)
                out = buf[:, 8:8 + cout]
                assert M._conv1x1(conv, x, out=out) is out
                assert_close_to_oracle(out, naive, want, f"{name} into a {buf_layout} slice")
                assert buf[:, :8].isnan().all() and buf[:, 8 + cout:].isnan().all(), "wrote outside its slice"


def test_patched_model_runs_channels_last_end_to_end(monkeypatch):
    """A model moved with .to(memory_format=torch.channels_last) (AAttn blocks with and without PE-friendly shapes,
    A2C2f with ABlocks and with C3k): every patched block returns channels_last, as ultralytics' do, and in eager
    inference no layout conversion runs (no copy outside an addmm's bias broadcast, no clone) where ultralytics'
    modules copy; values as the NCHW model's (fp64 oracle)."""
    from torch.profiler import ProfilerActivity, profile
    from ultralytics.nn.modules.block import A2C2f
    from ultralytics.nn.modules.conv import Conv

    # The Intel rule of cpu_channels_last_conv: these 400-token maps take the addmm, which reads A2C2f's buffer slices
    # in place. Where oneDNN's convolution takes them (AMD CPUs: every shape; Intel: 16s over more than 400 tokens)
    # aten's convolution copies a slice it reads (cheaper there than the addmm it replaces: see the rule).
    monkeypatch.setattr(yf.nn.modules._backends, "cpu_vendor", lambda: "intel")
    plain = _fuse_like_ultralytics(_randomize(nn.Sequential(Conv(3, 64, 3, 2), A2C2f(64, 64, 1, True, 4, True, 2.0),
                                                 Conv(64, 64, 3, 2), A2C2f(64, 64, 1, False, 1)).eval()))
    fast_cl = yf.patch(copy.deepcopy(plain), backend=BACKEND).to(memory_format=torch.channels_last)
    plain_cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 40, 40)  # NCHW, as a predictor feeds it: the stem's channels_last weight converts
    outs = {}
    hooks = [m.register_forward_hook(lambda m, inp, out, name=name: outs.__setitem__(name, out))
             for name, m in fast_cl.named_modules()  # every layer and every patched module inside
             if name.count(".") == 0 or isinstance(m, yf.nn.FastModule)]
    with torch.inference_mode():
        got, ref_cl, ref = fast_cl(x), plain_cl(x), plain(x)
        for h in hooks:  # hooks make the modules take their general paths (a hook must see each call)
            h.remove()
        assert torch.equal(fast_cl(x), got)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            fast_cl(x)
    assert all(_cl(o) for o in outs.values()), {i: o.stride() for i, o in outs.items()}
    assert _cl(ref_cl) and _cl(got)
    with torch.no_grad():
        assert_close_to_oracle(got, ref, copy.deepcopy(plain).double()(x.double()), "channels_last model")

    # layout conversions: clones (a contiguous() that copied) other than the stem's of the 3-channel input
    # (ultralytics' converts it the same way), and copies that are not a clone's, an addmm's or a conv's bias fill
    clones = [e.input_shapes for e in prof.events() if e.name == "aten::clone"]
    allowed = {"aten::clone", "aten::addmm", "aten::_slow_conv2d_forward"}
    stray = [(e.input_shapes, e.cpu_parent.name if e.cpu_parent is not None else None) for e in prof.events()
             if e.name == "aten::copy_" and (e.cpu_parent is None or e.cpu_parent.name not in allowed)]
    assert clones in ([], [[[1, 3, 40, 40], []]]), clones
    assert stray == [], stray


def test_fallback_warnings_point_at_the_callers_line(monkeypatch):
    """The head_dim fallback warning is raised deep inside the patched module's forward; it names the user's line
    (here, this file), not torch's nn.Module or custom-op machinery."""
    import warnings

    from ultralytics.nn.modules.block import AAttn

    from yolov12_fast.nn import modules as M

    monkeypatch.setattr(M, "_WARNED_HEAD_DIMS", set())
    fast = yf.patch(_randomize(AAttn(96, 2, 1)), backend=BACKEND)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        fast(torch.randn(1, 96, 4, 4))
    (w,) = [w for w in caught if "head_dim 48" in str(w.message)]
    assert w.filename == __file__, w.filename


@pytest.mark.parametrize("a2", [True, False], ids=["ablocks", "c3k"])
def test_batch1_nchw_a2c2f_runs_channels_last_inside_on_the_cpus_that_measured_it(a2, monkeypatch):
    """M.CPU_INSIDE_CHANNELS_LAST (AMD CPUs, measured): a batch-1 NCHW A2C2f in eager inference converts its input to
    channels_last once, runs its convolutions and kernels there, and returns NCHW as ultralytics' module does, with
    its values (fp64 oracle). Not on other vendors' CPUs, not over CPU_INSIDE_CHANNELS_LAST_TOKENS tokens, not at
    batch 2, not with autograd; the vendor is set here, so both sides run on any CPU."""
    from ultralytics.nn.modules.block import A2C2f

    from yolov12_fast.nn import modules as M

    plain = _fuse_like_ultralytics(_randomize(A2C2f(64, 64, 1, a2, 4, a2, 2.0))).eval()
    fast = yf.patch(copy.deepcopy(plain), backend=BACKEND)
    oracle = copy.deepcopy(plain).double()
    seen = []
    real = M.A2C2f._forward_buffer
    monkeypatch.setattr(M.A2C2f, "_forward_buffer", lambda self, x: (seen.append(_cl(x)), real(self, x))[1])
    for vendor, B, hw, grad, inside in [("amd", 1, (20, 20), False, True), ("amd", 1, (10, 30), False, True),
                                        ("amd", 1, (41, 40), False, False), ("amd", 2, (20, 20), False, False),
                                        ("intel", 1, (20, 20), False, False), ("other", 1, (20, 20), False, False),
                                        ("amd", 1, (20, 20), True, False)]:
        monkeypatch.setattr(M._backends, "cpu_vendor", lambda: vendor)
        x = torch.randn(B, 64, *hw)
        seen.clear()
        with torch.set_grad_enabled(grad), torch.inference_mode(not grad):
            got, naive = fast(x), plain(x)
        what = f"{vendor} batch {B} {hw} grad={grad}"
        assert seen == ([] if grad else [inside]), (what, seen)
        assert got.is_contiguous(), (what, got.stride())  # NCHW, as ultralytics' module returns it
        with torch.no_grad():
            assert_close_to_oracle(got.detach(), naive.detach(), oracle(x.double()), what)


def test_cpu_inside_channels_last_follows_its_environment_variable():
    """YOLOV12_FAST_CPU_INSIDE_CHANNELS_LAST replaces the vendor set (to measure the rule on another CPU, or to turn it
    off); unset, the measured default ({"amd"})."""
    import subprocess
    import sys

    code = "import yolov12_fast.nn.modules as M; print(sorted(M.CPU_INSIDE_CHANNELS_LAST))"
    got = {}
    for value in (None, "amd, Intel", "none", ""):
        env = {k: v for k, v in os.environ.items() if k != "YOLOV12_FAST_CPU_INSIDE_CHANNELS_LAST"}
        if value is not None:
            env["YOLOV12_FAST_CPU_INSIDE_CHANNELS_LAST"] = value
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        got[value] = p.stdout.strip().splitlines()[-1]
    assert got == {None: "['amd']", "amd, Intel": "['amd', 'intel']", "none": "[]", "": "[]"}, got
