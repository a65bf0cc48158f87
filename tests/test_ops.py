"""Every registered yolov12_fast:: op: opcheck (schema, fake kernel, autograd registration, AOT dispatch) on
each backend that runs here, clear errors on bad input, the auto-backend table, and torch.compile."""

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch

import yolov12_fast
from yolov12_fast import _backends
from yolov12_fast.ops import area_attention as aa
from op_samples import samples

HAS_CUDA = torch.cuda.is_available()


def registered_ops():
    yolov12_fast._backends.extension()  # loads yolov12_fast._C (its *_cxx ops) when built
    ns = torch.ops.yolov12_fast
    return sorted(name for name in dir(ns) if not name.startswith("_") and isinstance(getattr(ns, name), torch._ops.OpOverloadPacket))


def test_every_registered_op_has_samples():
    missing = [name for name in registered_ops() if not samples(name, "reference")]
    assert not missing, f"ops registered without opcheck samples in tests/op_samples.py: {missing}"
    assert {"area_attention_fwd", "area_attention_bwd", "pe_add"} <= set(registered_ops())


CPP_OPS = ("area_attention_fwd", "area_attention_add_", "area_attention_bwd", "pe_add")  # the ops with a C++ CPU kernel


def _backends_here(name):
    if name.endswith("_cxx"):
        return ["-"] if _backends.can_use_cpp()[0] else []
    out = ["reference", "triton"]  # triton runs in the interpreter here (conftest), compiled on a GPU
    if _backends.can_use_cpp()[0] and name in CPP_OPS:  # no C++ MLP / cv2 kernel (auto = torch convs)
        out.append("cpp")
    return out


@pytest.mark.parametrize("name", registered_ops())
def test_opcheck(name):
    backends = _backends_here(name)
    if not backends:
        pytest.skip("the compiled extension is not built here")
    op = getattr(torch.ops.yolov12_fast, name).default
    device = "cpu"
    n = 0
    for backend in backends:
        if backend == "triton" and not _backends.can_use_triton(device)[0]:
            continue
        if name == "pe_add" and backend == "triton":
            continue
        for args in samples(name, backend, device=device):
            torch.library.opcheck(op, args)
            n += 1
    assert n > 0


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["area_attention_fwd", "area_attention_add_", "area_attention_bwd", "pe_add", "mlp_residual",
                                  "mlp_residual_out", "conv1x1_silu_residual"])
def test_opcheck_cuda(name):
    op = getattr(torch.ops.yolov12_fast, name).default
    cxx = ("cuda",) if name.startswith(("area_attention", "pe_add")) and _backends.can_use_cuda_ext("cuda")[0] else ()
    for backend in ("triton", "reference") + cxx:  # cuda: the CUDA C++ forward, backward and PE kernels
        for args in samples(name, backend, device="cuda", dtype=torch.float16):
            torch.library.opcheck(op, args)


BAD = [  # (description, builder of (q, k, v, area, kwargs), expected message)
    ("wrong rank", lambda: (torch.randn(2, 32, 16),) * 3 + (1, {}), "must be 4-D"),
    ("head_dim 48", lambda: tuple(torch.randn(1, 2, 48, 16) for _ in range(3)) + (1, {}), "head_dim 48 is not supported"),
    ("N % area", lambda: tuple(torch.randn(1, 2, 32, 18) for _ in range(3)) + (4, {}), "not divisible by area"),
    ("area 0", lambda: tuple(torch.randn(1, 2, 32, 16) for _ in range(3)) + (0, {}), "area must be >= 1"),
    ("float64", lambda: tuple(torch.randn(1, 2, 32, 16, dtype=torch.float64) for _ in range(3)) + (1, {}), "use yolov12_fast.reference for float64"),
    ("int", lambda: tuple(torch.ones(1, 2, 32, 16, dtype=torch.int32) for _ in range(3)) + (1, {}), "dtype torch.int32"),
    ("mixed dtypes", lambda: (torch.randn(1, 2, 32, 16), torch.randn(1, 2, 32, 16).half(), torch.randn(1, 2, 32, 16), 1, {}), "share a dtype"),
    ("shape mismatch", lambda: (torch.randn(1, 2, 32, 16), torch.randn(1, 2, 32, 8), torch.randn(1, 2, 32, 16), 1, {}), "same shape"),
    ("residual shape", lambda: tuple(torch.randn(1, 2, 32, 16) for _ in range(3)) + (1, {"residual": torch.randn(1, 2, 32, 8)}), "residual must have the shape"),
    ("unknown backend", lambda: tuple(torch.randn(1, 2, 32, 16) for _ in range(3)) + (1, {"backend": "fast"}), "unknown backend"),
    # a second device without a GPU: "meta"
    ("k on another device", lambda: (torch.randn(1, 2, 32, 16), torch.randn(1, 2, 32, 16, device="meta"),
                                     torch.randn(1, 2, 32, 16), 1, {}), "must be on one device"),
    ("v on another device", lambda: (torch.randn(1, 2, 32, 16), torch.randn(1, 2, 32, 16),
                                     torch.randn(1, 2, 32, 16, device="meta"), 1, {}), "must be on one device"),
]


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("desc,build,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_a_clear_error(desc, build, msg, backend):
    q, k, v, area, kw = build()
    kw.setdefault("backend", backend)
    with pytest.raises((RuntimeError, ValueError), match=msg):
        yolov12_fast.area_attention(q, k, v, area, **kw)


@pytest.mark.parametrize("backend", ["reference", "triton", "cpp"])
@pytest.mark.parametrize("residual,msg", [(torch.randn(1, 2, 32, 8), "residual must have the shape"),
                                          (torch.randn(1, 1, 1, 16), "residual must have the shape"),
                                          (torch.randn(1, 2, 32, 16, dtype=torch.float64), "residual dtype")],
                         ids=["short", "broadcastable", "float64"])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_bad_residual_is_refused_with_and_without_autograd(backend, residual, msg, grad):
    """With autograd the residual is added outside the kernel: it gets the kernel's checks all the same, instead of
    being broadcast or promoted (found by fuzzing: a float32 residual turned a float16 output into float32)."""
    if backend == "cpp" and not _backends.can_use_cpp()[0]:
        pytest.skip("the C++ extension is not built here")
    q, k, v = (torch.randn(1, 2, 32, 16, requires_grad=grad) for _ in range(3))
    with pytest.raises(RuntimeError, match=msg):
        yolov12_fast.area_attention(q, k, v, 1, residual=residual, backend=backend)


def test_explicit_backend_that_cannot_run_says_why():
    q, k, v = (torch.randn(1, 2, 32, 16) for _ in range(3))
    with pytest.raises(RuntimeError, match="cannot run on cpu: the CUDA C.. kernels take CUDA tensors"):
        yolov12_fast.area_attention(q, k, v, 1, backend="cuda")


def test_zero_size_batch():
    for backend in ("reference", "triton"):
        dev = "cuda" if backend == "triton" and HAS_CUDA else "cpu"  # Triton takes CPU tensors only in the interpreter
        q, k, v = (torch.randn(0, 2, 32, 16, device=dev) for _ in range(3))
        out = yolov12_fast.area_attention(q, k, v, 4, backend=backend)
        assert out.shape == (0, 2, 32, 16) and out.device == q.device


def test_auto_table(monkeypatch):
    dev = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert aa._auto_order(dev, torch.float16, 32)[0] == "cuda"      # Turing: CUDA C++ (Triton has no MMA there)
    assert aa._auto_order(dev, torch.float32, 32) == ("triton",)    # CUDA C++ takes fp16/bf16 only
    assert "cuda" not in aa._auto_order(dev, torch.float16, 128)    # nor head_dim 128
    # Hopper, fp16: the CUDA C++ forward (measured faster on the H100 in every forward case); bf16 and fp32 unmeasured
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert aa._auto_order(dev, torch.float16, 32) == ("cuda", "triton")
    assert aa._auto_order(dev, torch.bfloat16, 32)[0] == "triton" and aa._auto_order(dev, torch.float16, 128) == ("triton",)
    for cap in ((8, 0), (8, 9), (10, 0), (12, 0)):  # no GPU run has measured these: Triton first where it has MMA
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, cap=cap: cap)
        assert aa._auto_order(dev, torch.float16, 32)[0] == "triton", cap
    assert aa._auto_order(torch.device("cpu"), torch.float32, 32)[0] == "cpp"


def test_triton_releases_that_cannot_compile_for_turing(monkeypatch):
    """_backends.TRITON_TURING_GAPS (found by compiling every kernel variant with triton 3.2, 3.3, 3.4 and 3.8): on
    sm_75, auto passes over Triton in the dtypes that triton release cannot compile (float32 on triton 3.2 falls to
    the reference, float16 on 3.3 takes the CUDA C++ kernel or the reference), an explicit backend='triton' says why
    and what to install, instead of a compiler crash at the first launch; sm_80+ and other releases are untouched."""
    from yolov12_fast import _backends
    from yolov12_fast.ops import mlp as mlp_op
    from yolov12_fast.ops import pe

    dev = torch.device("cuda", 0)
    monkeypatch.setattr(aa, "_warned", {"cuda"})  # auto's one-time "no fused kernel" warning: not this test's subject
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_backends, "can_use_triton", lambda device=None: (True, ""))
    monkeypatch.setattr(_backends, "can_use_cuda_ext", lambda device=None: (False, "not built"))
    for ver, cap, dtype, gap in (((3, 2), (7, 5), torch.float32, True), ((3, 2), (7, 5), torch.float16, False),
                                 ((3, 3), (7, 5), torch.float16, True), ((3, 3), (7, 5), torch.bfloat16, True),
                                 ((3, 3), (7, 5), torch.float32, False), ((3, 2), (8, 0), torch.float32, False),
                                 ((3, 4), (7, 5), torch.float16, False), ((3, 8), (7, 5), torch.float32, False)):
        monkeypatch.setattr(_backends, "triton_version", lambda ver=ver: ver)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, cap=cap: cap)
        what = f"triton {ver} sm_{cap} {dtype}"
        assert aa.resolve_backend("auto", dev, dtype, 32) == ("reference" if gap else "triton"), what
        if not gap:
            assert aa.resolve_backend("triton", dev, dtype, 32) == "triton", what
            continue
        assert "cannot compile" in _backends.triton_gap(dev, dtype), what
        for resolve in (lambda: aa.resolve_backend("triton", dev, dtype, 32),
                        lambda: pe.resolve_backend("triton", dev, dtype, 7),
                        lambda: mlp_op.resolve_backend("triton", dev, dtype=dtype)):
            with pytest.raises(RuntimeError, match=r"cannot compile .* install triton >= 3\.4"):
                resolve()
    monkeypatch.setattr(_backends, "can_use_cuda_ext", lambda device=None: (True, ""))  # fp16 on 3.3: CUDA C++
    monkeypatch.setattr(_backends, "triton_version", lambda: (3, 3))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert aa.resolve_backend("auto", dev, torch.float16, 32) == "cuda"


def test_auto_backward_table(monkeypatch):
    """Having picked the CUDA C++ forward, auto trains through the CUDA C++ backward on Turing (AUTO_CUDA_BACKWARD:
    Triton's dots run on FMA units there) and on Hopper (measured faster there), and keeps the Triton backward on the
    sm_80+ classes no GPU run has timed (Ampere, Ada, Blackwell); never on CPU."""
    dev = torch.device("cuda", 0)
    for cap, want in (((7, 5), True), ((8, 0), False), ((8, 6), False), ((9, 0), True), ((12, 0), False)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, cap=cap: cap)
        assert aa.cuda_backward_by_default(dev) is want, cap
    assert aa.cuda_backward_by_default(torch.device("cpu")) is False


def test_pe_auto_table(monkeypatch):
    """pe_add's auto on CUDA: the CUDA C++ kernel where a GPU run measured it faster than cuDNN (AUTO_CUDA_PE: Hopper,
    fp16) for the kernel sizes it has, cuDNN everywhere else; the C++ kernel on CPU."""
    from yolov12_fast.ops import pe

    dev = torch.device("cuda", 0)
    real = pe._usable
    monkeypatch.setattr(pe, "_usable", lambda b, d, dt=None: (True, "") if b == "cuda" else real(b, d, dt))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert pe.resolve_backend("auto", dev, torch.float16, 7) == "cuda"
    assert pe.resolve_backend("auto", dev, torch.float16, 5) == "cuda"
    assert pe.resolve_backend("auto", dev, torch.float16, 9) == "reference"   # no CUDA kernel for 9x9
    assert pe.resolve_backend("auto", dev, torch.bfloat16, 7) == "reference"  # not measured
    assert pe.resolve_backend("auto", dev) == "reference"                      # dtype unknown
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert pe.resolve_backend("auto", dev, torch.float16, 7) == "reference"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(pe, "_usable", lambda b, d, dt=None: (False, "no extension") if b == "cuda" else real(b, d, dt))
    assert pe.resolve_backend("auto", dev, torch.float16, 7) == "reference"  # extension missing: cuDNN


def test_compile_fullgraph_no_recompile_across_batch_sizes():
    """The op traces into one graph (fake kernel) and a dynamic batch does not recompile."""
    import torch._dynamo

    torch._dynamo.reset()
    counts = {"n": 0}

    def backend(gm, example_inputs):
        counts["n"] += 1
        return gm.forward

    @torch.compile(backend=backend, fullgraph=True)
    def f(qkv, area: int):
        B, C3, H, W = qkv.shape
        q, k, v = qkv.view(B, C3 // 96, 96, H * W).split(32, dim=2)
        return yolov12_fast.area_attention(q, k, v, area, backend="reference").view(B, C3 // 3, H, W)

    for B in (2, 3, 5):
        x = torch.randn(B, 192, 4, 6)
        torch._dynamo.mark_dynamic(x, 0)
        out = f(x, 4)
        q, k, v = x.view(B, 2, 96, 24).split(32, dim=2)
        torch.testing.assert_close(out, yolov12_fast.reference.area_attention(q, k, v, 4).view(B, 64, 4, 6))
    assert counts["n"] == 1, f"compiled {counts['n']} times for 3 batch sizes"


def _slow_check_raises(mod, args, monkeypatch) -> bool:
    """Whether mod.check_inputs(*args) raises with its fast path switched off (the torch._check sequence alone)."""
    with monkeypatch.context() as m:
        m.setattr(mod, "_inputs_ok", lambda *a: False)
        try:
            mod.check_inputs(*args)
        except (RuntimeError, ValueError):
            return True
    return False


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fast_input_checks_are_never_looser_than_the_full_ones(monkeypatch, data):
    """check_inputs first evaluates everything as one plain expression (2-4 us instead of 25 for a dozen
    torch._check calls); where that says yes, the full checks must pass too, on random inputs that break zero or
    two rules at once (rank, shape, dtype, head_dim, area, residual, weight, bias, H/W, backend). Some "bad"
    picks are valid after all (heads 3, N 25 with area 1): the fast path may then accept them."""
    from yolov12_fast.ops import pe

    fields = ["heads", "D", "N", "dtype", "k", "v", "area", "residual", "backend", "HW", "k_pe", "weight", "bias", "x"]
    broken = data.draw(st.sets(st.sampled_from(fields), max_size=2), label="broken")  # 0-2 rules broken at a time
    pick = lambda name, good, *bad: data.draw(st.sampled_from(bad), label=name) if name in broken else good
    B, heads, D, N = 2, pick("heads", 2, 3), pick("D", 32, 16, 48), pick("N", 24, 25)
    dt = pick("dtype", torch.float32, torch.float16, torch.float64, torch.int32)
    mk = lambda *shape, dtype=dt: (torch.ones(shape, dtype=dtype) if not dtype.is_floating_point else torch.randn(shape, dtype=dtype))
    q = mk(B, heads, D, N)
    k = pick("k", mk(B, heads, D, N), mk(B, heads, D, N + 1), mk(B, heads, D, N, dtype=torch.float16), mk(heads, D, N))
    v = pick("v", mk(B, heads, D, N), mk(B, heads, D, N - 1), mk(B, heads, D, N, dtype=torch.bfloat16))
    area = pick("area", 4, 1, 0, 5, -2)
    res = pick("residual", None, mk(B, heads, D, N), mk(B, heads, D, 1), mk(B, heads, D, N, dtype=torch.float64))
    backend = pick("backend", "auto", "cpp", "fast")
    args = (q, k, v, area, res, backend)
    if aa._inputs_ok(*args):
        assert not _slow_check_raises(aa, args, monkeypatch), f"fast path accepted what the checks refuse: {args[3:]}"
    H, W = pick("HW", (4, 6), (5, 5), (24, 1))
    kk = pick("k_pe", 7, 5, 4)
    w = pick("weight", mk(heads * D, 1, kk, kk), mk(heads * D + 1, 1, kk, kk), mk(heads * D, 2, kk, kk),
             mk(heads * D, 1, kk, kk, dtype=torch.float64))
    bias = pick("bias", None, mk(heads * D), mk(heads * D + 1), mk(heads * D, dtype=torch.float16))
    x = pick("x", None, mk(B, heads, D, N), mk(B, heads, D, N + 2))
    args = (v, w, bias, x, H, W, backend)
    if pe._inputs_ok(*args):
        assert not _slow_check_raises(pe, args, monkeypatch), f"fast path accepted what the checks refuse: {args[4:]}"


def test_the_auto_fallback_warning_points_at_the_callers_line(monkeypatch):
    """When no fused kernel can run, 'auto' falls back to the reference with a RuntimeWarning, raised inside the
    custom op: it names the caller's line (this file), not torch/_library/custom_ops.py."""
    import warnings

    monkeypatch.setattr(aa, "_warned", set())
    monkeypatch.setattr(aa, "_usable", lambda b, d, dt=None: (b == "reference", "disabled by the test"))
    q, k, v = (torch.randn(1, 2, 32, 16) for _ in range(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yolov12_fast.area_attention(q, k, v, 1)
    (w,) = [w for w in caught if "falling back to the plain-PyTorch reference" in str(w.message)]
    assert w.filename == __file__, w.filename


def test_fast_check_raises_like_torch_check_and_skips_only_true():
    """_backends.check: the ops' input checks. A plain True returns without building the message; False raises
    torch._check's RuntimeError with the message; anything else (a SymBool under fake tensors) goes to torch._check."""
    from yolov12_fast._backends import check

    built = []
    check(True, lambda: built.append(1) or "unused")
    assert built == []
    with pytest.raises(RuntimeError, match="what to do"):
        check(False, lambda: "what to do")
    with pytest.raises(TypeError, match="cond must be a bool"):
        check(1, lambda: "truthy int")  # not the True singleton: torch._check decides (and refuses a non-bool)


# ----------------------------------------------------------------------------------------------------------------
# eager training without the custom-op layer (ops.area_attention.EagerAreaAttention, ops.pe.EagerPeAdd)


class _PassThrough(torch.utils._python_dispatch.TorchDispatchMode):
    """Watches nothing, changes nothing; while it is active the functional API must take the custom ops."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _grad_backends():
    return [b for b in ("reference", "cpp", "triton") if aa._usable(b, torch.device("cpu"), torch.float32)[0]]


def _counting(monkeypatch, cls):
    calls = []
    real = cls.apply
    monkeypatch.setattr(cls, "apply", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("backend", _grad_backends())
def test_eager_training_skips_the_attention_op_layer_with_the_same_results(backend, with_residual, monkeypatch):
    """In eager training functional.area_attention runs the op's bodies as an autograd.Function (half the host time
    of the custom-op layer per forward + backward); anything that watches the ops (here a pass-through
    TorchDispatchMode) gets the op itself. Both give the same output and gradients, bit for bit, on every backend
    that runs here (q, k, v as views of one interleaved qkv tensor, areas that cut rows)."""
    calls = _counting(monkeypatch, aa.EagerAreaAttention)
    qkv0 = torch.randn(3, 2 * 96, 5, 6)
    res0 = torch.randn(3, 2, 32, 30)
    dout = torch.randn(3, 2, 32, 30)
    results = []
    for watched in (False, True):
        qkv = qkv0.clone().requires_grad_(True)
        res = res0.clone().requires_grad_(True) if with_residual else None
        q, k, v = qkv.view(3, 2, 96, 30).split(32, dim=2)
        with _PassThrough() if watched else contextlib.nullcontext():
            out = yolov12_fast.area_attention(q, k, v, 3, residual=res, backend=backend)
            out.backward(dout)
        results.append([out.detach(), qkv.grad] + ([res.grad] if with_residual else []))
        assert len(calls) == 1, (watched, calls)  # the eager run took the Function, the watched one the op
    for a, b in zip(*results):
        assert torch.equal(a, b)
    if with_residual:  # the Function itself with the residual inside the kernel (as the op can be called)
        grads = []
        for f in (aa.EagerAreaAttention.apply, torch.ops.yolov12_fast.area_attention_fwd):
            qkv, res = qkv0.clone().requires_grad_(True), res0.clone().requires_grad_(True)
            q, k, v = qkv.view(3, 2, 96, 30).split(32, dim=2)
            out = f(q, k, v, 3, 0.2, res, backend)[0]
            out.backward(dout)
            grads.append((out.detach(), qkv.grad, res.grad))
        assert all(torch.equal(a, b) for a, b in zip(*grads))


@pytest.mark.parametrize("backend", _grad_backends())
def test_eager_training_skips_the_pe_op_layer_with_the_same_results(backend, monkeypatch):
    from yolov12_fast.ops import pe

    """The same for functional.pe_add (depthwise 7x7 + bias + x): the eager Function and the op agree bit for bit,
    gradients of v, x, the weight and the bias included."""
    calls = _counting(monkeypatch, pe.EagerPeAdd)
    v0, x0 = torch.randn(2, 3, 32, 6 * 7), torch.randn(2, 3, 32, 6 * 7)
    w0, b0 = torch.randn(96, 1, 7, 7) * 0.1, torch.randn(96)
    dout = torch.randn(2, 3, 32, 42)
    results = []
    for watched in (False, True):
        v, x, w, b = (t.clone().requires_grad_(True) for t in (v0, x0, w0, b0))
        with _PassThrough() if watched else contextlib.nullcontext():
            out = yolov12_fast.pe_add(v, w, b, 6, 7, x=x, backend=backend)
            out.backward(dout)
        results.append([out.detach(), v.grad, x.grad, w.grad, b.grad])
        assert len(calls) == 1, (watched, calls)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def _inference_backends():
    return [b for b in ("reference", "cpp", "triton", "auto") if b == "auto" or aa._usable(b, torch.device("cpu"),
                                                                                       torch.float32)[0]]


@pytest.mark.parametrize("backend", _inference_backends())
def test_eager_inference_skips_the_op_layer_with_the_same_results(backend):
    """In eager inference the functional API (area_attention, area_attention_add_, pe_add) runs the ops' bodies
    without the custom-op layer (its host time: 28 -> 15 us per PE + attention call on this CPU in one run of benchmarks.host):
    the profiler sees no yolov12_fast:: op then, while a watched call (a pass-through TorchDispatchMode) goes
    through the ops; the results agree bit for bit, in place too. Bad input still gets the op's clear error."""
    qkv = torch.randn(3, 2 * 96, 5, 6)
    q, k, v = qkv.view(3, 2, 96, 30).split(32, dim=2)
    w, b = torch.randn(64, 1, 7, 7) * 0.1, torch.randn(64)
    res0 = torch.randn(3, 2, 32, 30)

    def calls():
        out = [p := yolov12_fast.pe_add(v, w, b, 5, 6, x=res0, backend=backend),
               yolov12_fast.area_attention(q, k, v, 3, residual=p, backend=backend)]
        r = res0.clone()
        out.append(yolov12_fast.area_attention_add_(r, q, k, v, 3, backend=backend))
        return out

    results = []
    for watched in (False, True):
        with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof, \
                (_PassThrough() if watched else contextlib.nullcontext()):
            results.append(calls())
        ops = {e.name for e in prof.events() if e.name.startswith("yolov12_fast::") and "_cxx" not in e.name}
        if watched:
            assert {"yolov12_fast::pe_add", "yolov12_fast::area_attention_fwd",
                    "yolov12_fast::area_attention_add_"} <= ops, ops
        else:
            assert not ops, ops
    for a, c in zip(*results):
        assert torch.equal(a, c)
    with torch.no_grad(), pytest.raises(RuntimeError, match="divisible|area"):
        yolov12_fast.area_attention(q, k, v, 4, backend=backend)  # 30 tokens in 4 areas: the op says why


def test_double_backward_through_attention_says_it_is_not_supported():
    """Neither the op nor the eager Function has a double backward (the backward kernels have no autograd): a second
    differentiation through the gradients raises, from the Function with a message that says what to use."""
    q, k, v = (torch.randn(1, 2, 32, 8, requires_grad=True) for _ in range(3))
    g, = torch.autograd.grad(yolov12_fast.area_attention(q, k, v, 1).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward .* is not supported.*yolov12_fast.reference"):
        torch.autograd.grad((g * g).sum(), q)
    with _PassThrough():
        g, = torch.autograd.grad(yolov12_fast.area_attention(q, k, v, 1).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        torch.autograd.grad((g * g).sum(), q)
