"""The CUDA C++ kernels run on the CPU through the emulator in tests/cuda_emu, checked against the float64 oracles without
a GPU: the PE kernel (csrc/cuda/pe_add.cu: tiling plan, halo staging, masks, arithmetic) and the tensor-core
area-attention forward (csrc/cuda/area_attention_fwd.cu: its resident and streamed plans, staging modes, query
split, online softmax, epilogue; mma.sync / ldmatrix / shfl emulated with the PTX ISA's fragment layouts).

The kernel source, its host launcher and its launch are the ones nvcc builds into yolov12_fast._C; only the CUDA
runtime is replaced (cuda_emu.h: each CTA's threads are std::threads sharing its shared memory and a barrier). On top
of the numerics, every call checks what compute-sanitizer's memcheck would on a GPU, as far as a CPU can see it:
the output is written inside a guard buffer whose sentinels must survive (no write outside it, every element
written), v and x are views into NaN-filled storage (a read outside the view's elements, or of a shared-memory cell
never staged, which the emulator fills with NaN, turns the result NaN). Beyond that, the kernels run under
AddressSanitizer (memcheck: test_kernels_under_address_sanitizer) and ThreadSanitizer (racecheck, with a launch's CTAs
running at once: test_kernels_under_thread_sanitizer). Compiled with the host C++ compiler against
the CUDA headers (a CUDA toolkit or the nvidia wheels torch ships with); skipped where neither is present. The GPU
tests (test_cuda_kernels.py) still run the compiled kernel where a GPU is."""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tolerances import FACTOR, assert_close_to_oracle, flash_style_backward
from yolov12_fast import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU = os.path.join(ROOT, "tests", "cuda_emu")
CUDA_SRC = os.path.join(ROOT, "csrc", "cuda")
DTYPE_CODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}  # csrc/cuda/kernels.h DType


def _cuda_include() -> str | None:
    """A directory holding cuda_fp16.h / cuda_runtime_api.h: the toolkit's, else the one torch's CUDA wheels ship."""
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    cands = [os.path.join(h, "include") for h in homes if h]
    site = os.path.dirname(os.path.dirname(torch.__file__))
    cands += sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))
    cands += sorted(glob.glob(os.path.join(site, "nvidia", "cuda_runtime", "include")))
    for d in cands:
        if all(os.path.exists(os.path.join(d, f)) for f in ("cuda_fp16.h", "cuda_bf16.h", "cuda_runtime_api.h")):
            return d
    return None


CXX = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
CUDA_INCLUDE = _cuda_include()
pytestmark = pytest.mark.skipif(CXX is None or CUDA_INCLUDE is None,
                                reason="needs a host C++20 compiler and the CUDA headers (a CUDA toolkit or torch's "
                                       "nvidia wheels) to build the kernels for the CPU emulator")


def _compile(lib: str, name: str, defines=(), flags=()) -> str:
    """tests/cuda_emu/<name>.cpp (which includes a csrc/cuda kernel file) built for the emulator into `lib`."""
    cmd = [CXX, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wall", "-Wno-unknown-pragmas", *flags,
           "-DYOLOV12_FAST_CUDA_EMU", *(f"-D{d}" for d in defines), "-I", EMU, "-I", CUDA_SRC, "-I", CUDA_INCLUDE,
           os.path.join(EMU, f"{name}.cpp"), "-o", lib]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"building the emulated kernel failed:\n{' '.join(cmd)}\n{r.stderr}"
    assert "warning" not in r.stderr, r.stderr
    return lib


def _build(tmp_path_factory, name: str, defines=()) -> ctypes.CDLL:
    return ctypes.CDLL(_compile(str(tmp_path_factory.mktemp("cuda_emu") / f"{name}.so"), name, defines))


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    return _pe_lib(_build(tmp_path_factory, "pe_emu"))


def _pe_lib(so: ctypes.CDLL) -> ctypes.CDLL:
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    so.yf_emu_pe_add.restype = ctypes.c_int
    so.yf_emu_pe_add.argtypes = [vp, vp, vp, vp, vp, ctypes.POINTER(i64), ctypes.POINTER(i64), i64, i64, i64, i64,
                                 i64, i64, i64, i64, i64, ctypes.c_int, ctypes.c_int]
    so.yf_emu_pe_wgrad.restype = ctypes.c_int
    so.yf_emu_pe_wgrad.argtypes = [vp, vp, vp, ctypes.POINTER(i64), ctypes.POINTER(i64), i64, i64, i64, i64, i64,
                                   ctypes.c_int, ctypes.c_int]
    so.yf_emu_pe_wgrad_tiles.restype = i64
    so.yf_emu_pe_wgrad_tiles.argtypes = [i64, i64, ctypes.c_int]
    so.yf_emu_pe_plan.restype = None
    so.yf_emu_pe_plan.argtypes = [i64, i64, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    return so


def _strides(t):
    return (ctypes.c_int64 * 4)(*t.stride()) if t is not None else None


SENTINEL = 12345.0  # exactly representable in every dtype here


def run_pe(emu, v, w, b, x, H, W, *, expect_error: bool = False):
    """The emulated kernel on CPU tensors: out = x + dwconv(v, w, b). out is a contiguous view in the middle of a
    sentinel-filled buffer; the sentinels around it must survive and none may remain inside it."""
    B, nh, D, N = v.shape
    n = v.numel()
    guard = torch.full((n + 2 * 64,), SENTINEL, dtype=v.dtype)
    out = guard[64:64 + n].view(v.shape)
    ptr = lambda t: None if t is None else t.data_ptr()
    rc = emu.yf_emu_pe_add(ptr(v), ptr(w), ptr(b), ptr(x), out.data_ptr(), _strides(v), _strides(x), *w.stride()[:1],
                           *w.stride()[2:], b.stride(0) if b is not None else 0, B, nh, D, H, W, w.shape[-1],
                           DTYPE_CODE[v.dtype])
    if expect_error:
        return rc
    assert rc == 0, f"the launcher returned cudaError {rc}"
    assert (guard[:64] == SENTINEL).all() and (guard[64 + n:] == SENTINEL).all(), "a write outside the output"
    if n:
        assert not (out == SENTINEL).any(), "output elements the kernel never wrote"
    return out


def _in_nan_storage(t: torch.Tensor, pad: int = 37) -> torch.Tensor:
    """t's values in a view of the same strides into a NaN-filled storage with `pad` extra elements either side: any
    element the kernel reads outside the view is NaN."""
    span = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride())) if t.numel() else 0
    buf = torch.full((span + 2 * pad,), float("nan"), dtype=t.dtype)
    view = buf.as_strided(t.shape, t.stride(), pad)
    view.copy_(t)
    return view


def oracle(v, w, b, x, H, W):
    B, nh, D, N = v.shape
    f = lambda t: None if t is None else t.double()
    out = F.conv2d(f(v).reshape(B, nh * D, H, W), f(w), f(b), padding=w.shape[-1] // 2, groups=nh * D)
    return out.reshape(v.shape) + (f(x) if x is not None else 0)


def naive(v, w, b, x, H, W):
    """The same-dtype PyTorch computation (the tolerance yardstick); CPU conv2d has no half kernels for every op, so
    half inputs go through float32 and are rounded back, as a half conv with fp32 accumulation would."""
    B, nh, D, N = v.shape
    up = (lambda t: None if t is None else t.float()) if v.dtype != torch.float32 else (lambda t: t)
    out = F.conv2d(up(v).reshape(B, nh * D, H, W), up(w), up(b), padding=w.shape[-1] // 2, groups=nh * D)
    out = out.reshape(v.shape).to(v.dtype)
    return out + x if x is not None else out


def _inputs(B, nh, D, H, W, k, dtype, *, layout="qkv", bias=True, with_x=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)
    if layout == "qkv":  # the interleaved ultralytics qkv output, NCHW: v is a strided channel slice
        v = rnd(B, 3 * nh * D, H, W).to(dtype).view(B, nh, 3 * D, H * W)[:, :, 2 * D:]
    elif layout == "channels_last":  # qkv conv output in channels_last: token stride 3 * C
        qkv = rnd(B, 3 * nh * D, H, W).to(dtype).contiguous(memory_format=torch.channels_last)
        sb, sc, _, st = qkv.stride()  # channel stride 1; token t = y * W + x at t * st (st = qkv.stride(2) / W)
        v = qkv.as_strided((B, nh, D, H * W), (sb, 3 * D * sc, sc, st), 2 * D * sc)
    else:  # contiguous
        v = rnd(B, nh, D, H * W).to(dtype)
    w = (0.2 * rnd(nh * D, 1, k, k)).to(dtype)
    b = rnd(nh * D).to(dtype) if bias else None
    x = rnd(B, nh, D, H * W).to(dtype) if with_x else None
    return v, w, b, x


# The maps YOLO12 has (40x40 / 20x20 at 640, 30x40 / 15x20 at 480x640, 80x80 at 1280), odd ones, one-row and
# one-column planes, planes wider than one tile (W > 128) and taller than one tile at that width.
MAPS = [(40, 40), (20, 20), (15, 20), (30, 40), (7, 9), (1, 1), (1, 5), (33, 3), (5, 1), (6, 300), (37, 130)]


@pytest.mark.parametrize("H,W", MAPS)
@pytest.mark.parametrize("k", [7, 5, 3])
def test_pe_kernel_matches_the_oracle(emu, H, W, k):
    dtype = (torch.float32, torch.float16, torch.bfloat16)[(H + W + k) % 3]  # every dtype, spread over the maps
    v, w, b, x = _inputs(2, 2, 3, H, W, k, dtype, seed=H * 1000 + W * 10 + k)
    out = run_pe(emu, _in_nan_storage(v), w, b, _in_nan_storage(x), H, W)
    assert_close_to_oracle(out, naive(v, w, b, x, H, W), oracle(v, w, b, x, H, W), f"pe emu {H}x{W} k{k} {dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["qkv", "channels_last", "contiguous"])
@pytest.mark.parametrize("bias,with_x", [(True, True), (False, True), (True, False), (False, False)])
def test_pe_kernel_layouts_dtypes_and_optional_operands(emu, dtype, layout, bias, with_x):
    """Batch 3, the strided v views of both conv-output layouts, bias and x each optional, a 40x40 map (yolo12's P4
    at 640: one tile per plane)."""
    H, W, k = 40, 40, 7
    v, w, b, x = _inputs(3, 2, 2, H, W, k, dtype, layout=layout, bias=bias, with_x=with_x)
    if with_x:
        x = x.transpose(2, 1).contiguous().transpose(2, 1)  # a strided x too
    out = run_pe(emu, v, w, b, x, H, W)
    assert_close_to_oracle(out, naive(v, w, b, x, H, W), oracle(v, w, b, x, H, W), f"pe emu {layout} {dtype}")


def test_pe_kernel_propagates_nan_and_inf_like_the_conv(emu):
    H, W, k = 20, 20, 7
    v, w, b, x = _inputs(1, 1, 2, H, W, k, torch.float32)
    v = v.clone()
    v[0, 0, 0, 5 * W + 5] = float("nan")
    v[0, 0, 1, 12 * W + 3] = float("inf")
    out = run_pe(emu, v, w, b, x, H, W)
    ref = oracle(v, w, b, x, H, W)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.equal(torch.isinf(out), torch.isinf(ref))
    fin = torch.isfinite(ref)
    torch.testing.assert_close(out[fin].double(), ref[fin], rtol=1e-5, atol=1e-5)


def test_pe_kernel_rejects_kernel_sizes_it_has_no_code_for(emu):
    v, w, b, x = _inputs(1, 1, 2, 8, 8, 9, torch.float32)
    assert run_pe(emu, v, w, b, x, 8, 8, expect_error=True) == 1  # cudaErrorInvalidValue: the glue says why first


def test_pe_kernel_empty_batch_launches_nothing(emu):
    v, w, b, x = _inputs(1, 1, 2, 4, 4, 7, torch.float32)
    assert run_pe(emu, v[:0], w, b, x[:0], 4, 4).numel() == 0


def run_pe_wgrad(emu, dout, v, k, H, W):
    """The emulated weight-gradient kernel, then what the glue (pe_add_wgrad_cuda) does with its per (image, tile)
    sums: summed over images and tiles in float32 and rounded to v's dtype. The sums sit in a sentinel-guarded buffer
    (no write outside it, every element written). Returns (dw (C, 1, k, k), db (C,))."""
    B, nh, D, N = v.shape
    C = nh * D
    rows = B * emu.yf_emu_pe_wgrad_tiles(H, W, k)
    n = rows * C * (k * k + 1)
    guard = torch.full((n + 128,), SENTINEL, dtype=torch.float32)
    partial = guard[64:64 + n].view(rows, C, k * k + 1)
    rc = emu.yf_emu_pe_wgrad(dout.data_ptr(), v.data_ptr(), partial.data_ptr(), _strides(dout), _strides(v), B, nh,
                             D, H, W, k, DTYPE_CODE[v.dtype])
    assert rc == 0, f"the launcher returned cudaError {rc}"
    assert (guard[:64] == SENTINEL).all() and (guard[64 + n:] == SENTINEL).all(), "a write outside the sums"
    assert not (partial == SENTINEL).any(), "sums the kernel never wrote"
    sums = partial.sum(0)
    return sums[:, :k * k].reshape(C, 1, k, k).to(v.dtype), sums[:, k * k].to(v.dtype)


def wgrad_oracle(dout, v, k, H, W, dtype):
    """(dw, db) of the depthwise conv by autograd in `dtype` (float64: the oracle; float32: the yardstick, which for
    16-bit inputs is what a conv with fp32 accumulation gives, rounded to the inputs' dtype)."""
    B, nh, D, N = v.shape
    C = nh * D
    w = torch.zeros(C, 1, k, k, dtype=dtype, requires_grad=True)
    b = torch.zeros(C, dtype=dtype, requires_grad=True)
    y = F.conv2d(v.to(dtype).reshape(B, C, H, W), w, b, padding=k // 2, groups=C)
    dw, db = torch.autograd.grad(y, (w, b), dout.to(dtype).reshape(B, C, H, W))
    return (dw, db) if dtype == torch.float64 else (dw.to(v.dtype), db.to(v.dtype))


@pytest.mark.parametrize("H,W", MAPS)
@pytest.mark.parametrize("k", [7, 5, 3])
def test_pe_wgrad_kernel_matches_the_oracle(emu, H, W, k):
    """The PE backward's weight and bias gradients (csrc/cuda/pe_add.cu pe_wgrad_kernel) over the forward's maps
    (one tile per plane, planes wider and taller than a tile, one-row / one-column planes), every dtype, batch 2,
    against float64 autograd of the conv; v read through the interleaved qkv view, dout channels_last-strided."""
    dtype = (torch.float32, torch.float16, torch.bfloat16)[(H + W + k) % 3]
    v, _, _, _ = _inputs(2, 2, 3, H, W, k, dtype, bias=False, with_x=False, seed=H * 7 + W * 3 + k)
    g = torch.Generator().manual_seed(H + W + k)
    dout = torch.randn(2, 6, H, W, generator=g).to(dtype).contiguous(memory_format=torch.channels_last).view(v.shape)
    dw, db = run_pe_wgrad(emu, _in_nan_storage(dout), _in_nan_storage(v), k, H, W)
    odw, odb = wgrad_oracle(dout, v, k, H, W, torch.float64)
    ndw, ndb = wgrad_oracle(dout, v, k, H, W, torch.float32)
    assert_close_to_oracle(dw, ndw, odw, f"pe wgrad dw {H}x{W} k{k} {dtype}")
    assert_close_to_oracle(db, ndb, odb, f"pe wgrad db {H}x{W} k{k} {dtype}")


@pytest.mark.parametrize("layout", ["qkv", "channels_last", "contiguous"])
def test_pe_wgrad_kernel_layouts_batch_and_nan(emu, layout):
    """Batch 3 over a 40x40 map (P4 at 640) in each layout v comes in; a NaN in one channel's dout makes that
    channel's gradients NaN (as ATen's) and leaves every other channel's exact to the tolerance."""
    H, W, k = 40, 40, 7
    v, _, _, _ = _inputs(3, 2, 4, H, W, k, torch.float32, layout=layout, bias=False, with_x=False, seed=5)
    dout = torch.randn(v.shape)
    dout[1, 1, 2, 17 * W + 3] = float("nan")  # channel 1 * 4 + 2 = 6
    dw, db = run_pe_wgrad(emu, dout, v, k, H, W)
    odw, odb = wgrad_oracle(dout, v, k, H, W, torch.float64)
    ndw, ndb = wgrad_oracle(dout, v, k, H, W, torch.float32)
    assert torch.isnan(dw[6]).all() and torch.isnan(db[6])
    keep = torch.arange(8) != 6
    assert_close_to_oracle(dw[keep], ndw[keep], odw[keep], f"pe wgrad dw {layout}")
    assert_close_to_oracle(db[keep], ndb[keep], odb[keep], f"pe wgrad db {layout}")


def _plan(emu, H, W, k):
    out = (ctypes.c_int * 8)()
    emu.yf_emu_pe_plan(H, W, k, out)
    return dict(zip(("pairs", "groups", "tiles_w", "tiles_h", "threads", "halo_w", "halo_h", "smem"), out))


@pytest.mark.parametrize("k", [3, 5, 7])
def test_pe_plan_covers_every_plane_within_the_launch_limits(emu, k):
    """For every plane size up to 160 x 160 and some huge ones: the tiles cover the plane, each tile's rows and
    columns are needed (no all-idle tile), at most 256 threads (whole warps) with every (pair, group) owned by one,
    static-size shared memory (< 48 KB: no opt-in), an even halo row (float2 reads)."""
    sizes = [(h, w) for h in range(1, 161, 3) for w in range(1, 161, 3)] + [(1, 100000), (100000, 1), (2000, 3000)]
    for H, W in sizes:
        p = _plan(emu, H, W, k)
        tile_w, tile_h = 2 * p["pairs"], 4 * p["groups"]
        assert tile_w * p["tiles_w"] >= W and tile_h * p["tiles_h"] >= H, (H, W, p)
        assert tile_w * (p["tiles_w"] - 1) < W and tile_h * (p["tiles_h"] - 1) < H, (H, W, p)
        assert p["pairs"] * p["groups"] <= p["threads"] <= 256 and p["threads"] % 32 == 0, (H, W, p)
        assert p["halo_w"] % 2 == 0 and p["halo_w"] == tile_w + k - 1 and p["halo_h"] == tile_h + k - 1, (H, W, p)
        assert p["smem"] == 4 * (p["halo_w"] * p["halo_h"] + k * k) and p["smem"] < 48 * 1024, (H, W, p)


def test_pe_plan_fits_yolo12s_maps(emu):
    """The maps the model has get tiles that waste little: 40x40 and 20x20 (640) and 30x40 / 15x20 (480x640) in one
    tile per plane with no padding row or column; 80x80 (1280) with at most 20% padding."""
    for H, W in ((40, 40), (20, 20), (30, 40), (15, 20)):
        p = _plan(emu, H, W, 7)
        assert p["tiles_w"] == p["tiles_h"] == 1, (H, W, p)
        assert 2 * p["pairs"] == W and 4 * p["groups"] in range(H, H + 4), (H, W, p)
    p = _plan(emu, 80, 80, 7)
    computed = 2 * p["pairs"] * p["tiles_w"] * 4 * p["groups"] * p["tiles_h"]
    assert computed <= 1.2 * 80 * 80, p


# ----------------------------------------------------------------------------------------------------------------
# the tensor-core area-attention forward (csrc/cuda/area_attention_fwd.cu)

# The devices the launcher may be told it runs on (DeviceInfo: SMs, compute capability, shared memory per block
# after opt-in, per SM): the plan follows from them (n = 1600 at head_dim 32: resident on sm_90, streamed in chunks
# elsewhere).
SM90 = (132, 9, 0, 232448, 233472)
SM80 = (108, 8, 0, 166912, 167936)
SM75 = (40, 7, 5, 65536, 65536)
NOT_SUPPORTED, INVALID_VALUE = 801, 1  # cudaErrorNotSupported, cudaErrorInvalidValue


@pytest.fixture(scope="module")
def emu_attn(tmp_path_factory):
    return _attention_lib(tmp_path_factory)


@pytest.fixture(scope="module")
def emu_attn_sm75(tmp_path_factory):
    """The kernel's Turing branch: each m16n8k16 product as the two m16n8k8 products sm_75 runs (YF_EMU_SM75)."""
    return _attention_lib(tmp_path_factory, ("YF_EMU_SM75",))


def _attention_lib(tmp_path_factory, defines=()):
    return _attention_so(_build(tmp_path_factory, "attention_emu", defines))


def _attention_so(so: ctypes.CDLL) -> ctypes.CDLL:
    i64, vp, p64 = ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)
    so.yf_emu_attention_fwd.restype = ctypes.c_int
    so.yf_emu_attention_fwd.argtypes = [vp] * 6 + [p64] * 4 + [i64] * 5 + [ctypes.c_float, ctypes.c_int,
                                                                          ctypes.POINTER(ctypes.c_int)]
    so.yf_emu_set_fwd_warps.restype = None
    so.yf_emu_set_fwd_warps.argtypes = [ctypes.c_int]
    so.yf_emu_set_register_staging.restype = None
    so.yf_emu_set_register_staging.argtypes = [ctypes.c_int]
    so.yf_emu_set_fwd_key_block.restype = None
    so.yf_emu_set_fwd_key_block.argtypes = [ctypes.c_int]
    so.yf_emu_attention_plan.restype = None
    so.yf_emu_attention_plan.argtypes = [i64, i64, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int)]
    so.yf_emu_attention_bwd.restype = ctypes.c_int
    so.yf_emu_attention_bwd.argtypes = [vp] * 11 + [p64] * 6 + [i64] * 5 + [ctypes.c_float, ctypes.c_int,
                                                                           ctypes.POINTER(ctypes.c_int)]
    so.yf_emu_attention_bwd_plan.restype = None
    so.yf_emu_attention_bwd_plan.argtypes = so.yf_emu_attention_plan.argtypes
    so.yf_emu_ldmatrix_stats.restype = None
    so.yf_emu_ldmatrix_stats.argtypes = [ctypes.POINTER(ctypes.c_longlong), ctypes.c_int]
    so.yf_emu_cp_async_stats.restype = None
    so.yf_emu_cp_async_stats.argtypes = [ctypes.POINTER(ctypes.c_longlong), ctypes.c_int]
    so.yf_emu_ldmatrix_probe.restype = ctypes.c_int
    so.yf_emu_ldmatrix_probe.argtypes = [ctypes.c_uint, ctypes.c_int]
    return so


def run_attention(emu_attn, q, k, v, area, residual=None, device=SM90, *, expect_error: bool = False,
                  scale: float | None = None):
    """The emulated CUDA forward: (out, lse). out and lse sit inside sentinel-filled guard buffers (no write may land
    outside them, every element must be written)."""
    B, heads, D, N = q.shape
    n_out, n_lse = q.numel(), B * heads * N
    guard = torch.full((n_out + 128,), SENTINEL, dtype=q.dtype)
    out = guard[64:64 + n_out].view(B, heads, D, N)
    lguard = torch.full((n_lse + 128,), SENTINEL, dtype=torch.float32)
    lse = lguard[64:64 + n_lse].view(B, heads, N)
    dev = (ctypes.c_int * 5)(*device)
    rc = emu_attn.yf_emu_attention_fwd(
        q.data_ptr(), k.data_ptr(), v.data_ptr(), None if residual is None else residual.data_ptr(), out.data_ptr(),
        ctypes.cast(lse.data_ptr(), ctypes.POINTER(ctypes.c_float)), _strides(q), _strides(k), _strides(v),
        _strides(residual), B, heads, D, N, area, D ** -0.5 if scale is None else scale,
        {torch.float16: 0, torch.bfloat16: 1}.get(q.dtype, 2), dev)
    if expect_error:
        return rc
    assert rc == 0, f"the launcher returned cudaError {rc}"
    for g, n in ((guard, n_out), (lguard, n_lse)):
        assert (g[:64] == SENTINEL).all() and (g[64 + n:] == SENTINEL).all(), "a write outside the output"
        assert not (g[64:64 + n] == SENTINEL).any(), "output elements the kernel never wrote"
    return out, lse


def _attention_plan(emu_attn, n, head_dim, device, bwd=False):
    out = (ctypes.c_int * 6)()
    (emu_attn.yf_emu_attention_bwd_plan if bwd else emu_attn.yf_emu_attention_plan)(n, head_dim,
                                                                                   (ctypes.c_int * 5)(*device), out)
    return dict(zip(("supported", "resident", "warps", "chunk_keys", "smem_row", "smem_bytes"), out))


def _qkv(layout, B, heads, D, H, W, dtype, seed):
    """q, k, v as (B, heads, D, N) views of the conv outputs AAttn reads them from."""
    g = torch.Generator().manual_seed(seed)
    N = H * W
    if layout == "interleaved":  # ultralytics qkv, NCHW: head h owns channels [3*D*h, 3*D*(h+1))
        return torch.randn(B, heads, 3 * D, N, generator=g).to(dtype).split(D, dim=2)
    if layout == "turbo":  # qk (all q, then all k) and a separate v conv output
        q, k = torch.randn(B, 2, heads, D, N, generator=g).to(dtype).unbind(1)
        return q, k, torch.randn(B, heads, D, N, generator=g).to(dtype)
    if layout == "channels_last":  # the qkv output in channels_last: d stride 1, token stride 3 * C
        C = heads * D
        qkv = torch.randn(B, 3 * C, H, W, generator=g).to(dtype).contiguous(memory_format=torch.channels_last)
        sb, sc, _, st = qkv.stride()
        return tuple(qkv.as_strided((B, heads, D, N), (sb, 3 * D * sc, sc, st), i * D * sc) for i in range(3))
    if layout == "misaligned":  # token stride 1, but the base one element off 16 bytes: scalar staging
        buf = torch.randn(3 * B * heads * D * N + 1, generator=g).to(dtype)[1:]
        return buf.view(3, B, heads, D, N).unbind(0)
    raise ValueError(layout)


def _check_attention(out, lse, q, k, v, area, residual, what, scale: float | None = None):
    scale = q.shape[2] ** -0.5 if scale is None else scale
    o64, l64 = reference.area_attention_lse(q.double(), k.double(), v.double(), area, scale)
    r64 = residual.double() if residual is not None else 0
    naive_out, naive_lse = reference.area_attention_lse(q, k, v, area, scale)  # the same-dtype math
    if residual is not None:
        naive_out = naive_out + residual
    assert_close_to_oracle(out, naive_out, o64 + r64, f"{what}: out")
    assert_close_to_oracle(lse, naive_lse.float(), l64, f"{what}: lse", factor=FACTOR[q.dtype])


def _ldmatrix_stats(emu_attn, reset=False):
    """(matrices loaded, extra shared-memory wavefronts from bank conflicts) of the emulated ldmatrix calls since the
    last reset (cuda_emu.h's count_ldmatrix_conflicts)."""
    out = (ctypes.c_longlong * 2)()
    emu_attn.yf_emu_ldmatrix_stats(out, int(reset))
    return out[0], out[1]


def _cp_async_stats(emu_attn, reset=False):
    """(cp.async copies issued, copies a thread left unwaited at its exit) since the last reset (cuda_emu.h's
    cp_async: the emulator carries a copy out only at the issuing thread's cp_async_wait_all)."""
    out = (ctypes.c_longlong * 2)()
    emu_attn.yf_emu_cp_async_stats(out, int(reset))
    return out[0], out[1]


def _assert_staged_async(emu_attn, layout, n, N, what):
    """sm_80+ code stages token-contiguous views (interleaved, turbo) with an even number of tokens per area and per
    image through cp.async (vectors of 2-8 tokens: staging_mode), every copy waited for; the others (channels_last, a
    misaligned base, odd areas such as 15 tokens) through registers."""
    copies, unwaited = _cp_async_stats(emu_attn)
    assert unwaited == 0, f"{what}: {unwaited} cp.async copies never waited for"
    if layout in ("interleaved", "turbo") and n % 2 == 0 and N % 2 == 0:
        assert copies > 0, f"{what}: the vector staging did not go through cp.async"
    else:
        assert copies == 0, f"{what}: {copies} cp.async copies for a layout that has no aligned token vectors"


def _assert_conflict_free(emu_attn, what):
    """Every ldmatrix of the launches since the last reset read its 8 rows in one wavefront: the staged K / V rows are
    an odd number of 16-byte units long (smem_row = chunk + 8 elements), so 8 consecutive rows fall in 8 different
    bank quads. A plan with an even row length would serialise each K / V read 2-8x (test_ldmatrix_conflict_counter)."""
    matrices, extra = _ldmatrix_stats(emu_attn)
    assert matrices > 0 and extra == 0, f"{what}: {extra} extra shared-memory wavefronts over {matrices} ldmatrix " \
                                        f"matrices (bank conflicts)"


def test_ldmatrix_conflict_counter(emu_attn):
    """The counter itself: 32 rows 144 bytes apart (9 units of 16 bytes) load conflict-free, 128 bytes apart all 8
    rows of each matrix share a bank quad (7 extra wavefronts per matrix), 256 bytes apart too, 64 bytes apart 2 quads
    alternate (3 extra); both ldmatrix forms."""
    for trans in (0, 1):
        for stride, extra in ((144, 0), (16, 0), (128, 7 * 4), (256, 7 * 4), (64, 3 * 4), (80, 0)):
            _ldmatrix_stats(emu_attn, reset=True)
            assert emu_attn.yf_emu_ldmatrix_probe(stride, trans) == 0
            assert _ldmatrix_stats(emu_attn) == (4, extra), (stride, trans)


# (layout, dtype, head_dim, B, heads, H, W, area, residual, device): the shapes of 640 (P5: 20x20 area 1 = 400; P4:
# 40x40 area 4 = 400 in areas of 10 rows), areas that cut rows (6x10 area 4: 15 tokens), tokens per area that are not
# a multiple of 16 (49, 15), one token per area, batch 3, both dtypes and head_dims, every staging layout, a
# residual, and the three plans / devices; 1280's 1600 tokens per area resident (sm_90) and streamed in chunks
# (sm_80, sm_75).
ATTENTION_CASES = [
    ("interleaved", torch.float16, 32, 1, 2, 20, 20, 1, False, SM90),
    ("interleaved", torch.float16, 32, 1, 1, 40, 40, 4, True, SM90),
    ("turbo", torch.bfloat16, 32, 3, 2, 6, 10, 4, False, SM80),
    ("channels_last", torch.float16, 64, 1, 2, 7, 7, 1, True, SM75),
    ("misaligned", torch.bfloat16, 64, 2, 1, 6, 10, 4, False, SM90),
    ("interleaved", torch.float16, 64, 1, 1, 4, 5, 20, False, SM80),
    ("interleaved", torch.float16, 32, 1, 1, 40, 40, 1, False, SM75),
    ("turbo", torch.bfloat16, 32, 1, 1, 40, 40, 1, True, SM80),
    ("channels_last", torch.float16, 32, 1, 1, 40, 40, 1, False, SM90),
]


@pytest.mark.parametrize("layout,dtype,D,B,heads,H,W,area,with_res,device", ATTENTION_CASES,
                         ids=lambda x: str(x).replace("torch.", "") if not isinstance(x, tuple) else f"sm{x[1]}{x[2]}")
def test_attention_kernel_matches_the_oracle(emu_attn, layout, dtype, D, B, heads, H, W, area, with_res, device):
    q, k, v = _qkv(layout, B, heads, D, H, W, dtype, seed=H * W * D + area)
    res = torch.randn(B, heads, D, H * W).to(dtype).transpose(2, 3).contiguous().transpose(2, 3) if with_res else None
    plan = _attention_plan(emu_attn, H * W // area, D, device)
    assert plan["supported"]
    _ldmatrix_stats(emu_attn, reset=True)
    _cp_async_stats(emu_attn, reset=True)
    out, lse = run_attention(emu_attn, q, k, v, area, res, device)
    what = (f"{layout} {dtype} D{D} {H}x{W}/{area} {'resident' if plan['resident'] else 'streamed'} on cc "
            f"{device[1]}.{device[2]}")
    _check_attention(out, lse, q, k, v, area, res, what)
    _assert_conflict_free(emu_attn, what)
    _assert_staged_async(emu_attn, layout, H * W // area, H * W, what)


@pytest.mark.parametrize("case", [c for c in ATTENTION_CASES if c[1] == torch.float16],
                         ids=lambda c: f"{c[0]}-D{c[2]}-{c[5]}x{c[6]}-area{c[7]}")
def test_attention_kernel_turing_branch_matches_the_oracle(emu_attn_sm75, case):
    """T4 (sm_75) has no m16n8k16: the kernel's sm_75 branch splits each product into two m16n8k8 (fragments a[0], a[1]
    with b0, then a[2], a[3] with b1). The float16 cases, through that branch."""
    layout, dtype, D, B, heads, H, W, area, with_res, _ = case
    q, k, v = _qkv(layout, B, heads, D, H, W, dtype, seed=H * W * D + area + 1)
    res = torch.randn(B, heads, D, H * W).to(dtype) if with_res else None
    out, lse = run_attention(emu_attn_sm75, q, k, v, area, res, SM75)
    _check_attention(out, lse, q, k, v, area, res, f"sm_75 branch {layout} D{D} {H}x{W}/{area}")


def test_attention_kernel_query_split_and_nan_rows(emu_attn):
    """Few sequences on many SMs: the launcher splits each area's query tiles over grid.y CTAs (each stages the
    area itself). A NaN query makes its own row NaN (out and lse) and leaves every other row exact."""
    q, k, v = _qkv("interleaved", 1, 1, 32, 20, 20, torch.float16, seed=7)
    q = q.clone()
    q[0, 0, 3, 123] = float("nan")
    out, lse = run_attention(emu_attn, q, k, v, 1, None, (64, 9, 0, 232448, 233472))  # 64 SMs, 1 sequence: 4 CTAs
    assert torch.isnan(out[0, 0, :, 123]).all() and torch.isnan(lse[0, 0, 123])
    rows = torch.ones(400, dtype=torch.bool)
    rows[123] = False
    assert torch.isfinite(out[..., rows]).all() and torch.isfinite(lse[..., rows]).all()
    qf = q.clone()
    qf[0, 0, 3, 123] = 0.0
    ref_out, ref_lse = run_attention(emu_attn, qf, k, v, 1, None, SM90)  # no split, no NaN
    assert torch.equal(out[..., rows], ref_out[..., rows]) and torch.equal(lse[..., rows], ref_lse[..., rows])


@pytest.mark.parametrize("scale", [0.3, -0.4, 0.0], ids=["positive", "negative", "zero"])
@pytest.mark.parametrize("n", [128, 144, 140, 77], ids=["full-64-key-blocks", "an-unmasked-16-key-tail",
                                                         "a-masked-tail", "a-masked-tail-after-one-block"])
def test_attention_kernel_scale_sign_and_key_blocks(emu_attn, scale, n):
    """The kernel folds the scale into the exponent (p = exp2(s * c - m), m = c * max(raw) for c >= 0, c * min(raw)
    for c < 0) and masks only the block holding the last valid key: any scale sign (0 too), tokens per area filling
    whole 64-key blocks, leaving an unmasked 16-key tail, or a partial last 16 keys. Scores spread over about
    +-100 in base 2, where a max taken on the wrong side overflows exp2 (2^128) and a mask skipped reads zero-filled
    keys as score 0 (every real score is pushed below 0 here, so such a key would dominate)."""
    q, k, v = _qkv("interleaved", 1, 2, 32, 1, n, torch.float16, seed=n)
    q, k = q * 4, k * 4
    q[:, :, 0], k[:, :, 0] = 20.0, -20.0  # every raw score about -400 plus the spread (about +-90)
    out, lse = run_attention(emu_attn, q, k, v, 1, None, SM90, scale=scale)
    _check_attention(out, lse, q, k, v, 1, None, f"scale {scale} n {n}", scale=scale)


@pytest.mark.parametrize("warps,case", [
    (5, ("interleaved", torch.float16, 32, 1, 1, 40, 40, 4, True, SM90)),  # 25 tiles per area: 5 full rounds
    (13, ("channels_last", torch.float16, 32, 1, 2, 20, 20, 1, False, SM75)),  # 2 rounds, the last of 12 tiles
    (16, ("interleaved", torch.float16, 32, 1, 1, 40, 40, 1, False, SM80)),  # 1600 tokens streamed, 16 warps
    (1, ("turbo", torch.bfloat16, 32, 3, 2, 6, 10, 4, False, SM80)),  # one warp does every tile, areas cut rows
    (3, ("misaligned", torch.bfloat16, 64, 2, 1, 6, 10, 4, True, SM90)),  # head_dim 64 (at most 4 warps)
], ids=lambda x: str(x) if isinstance(x, int) else f"{x[0]}-D{x[2]}-{x[5]}x{x[6]}-area{x[7]}")
def test_attention_kernel_any_warps_per_cta(emu_attn, warps, case):
    """The forward's warps per CTA are a launch parameter (AreaAttnFwdArgs::warps, $YOLOV12_FAST_CUDA_FWD_WARPS on
    the GPU: benchmarks/fwd_warps.py times each count): the staging loops stride by the CTA's size, each warp's
    epilogue buffer and the query tiles follow the count. Counts that divide the tiles and ones that leave a partial
    last round, resident and streamed, match the oracle; the plan's shared memory follows the count."""
    layout, dtype, D, B, heads, H, W, area, with_res, device = case
    q, k, v = _qkv(layout, B, heads, D, H, W, dtype, seed=warps)
    res = torch.randn(B, heads, D, H * W).to(dtype) if with_res else None
    emu_attn.yf_emu_set_fwd_warps(warps)
    try:
        plan = _attention_plan(emu_attn, H * W // area, D, device)
        assert plan["supported"] and plan["warps"] == warps
        assert plan["smem_bytes"] == 2 * D * 2 * plan["smem_row"] + warps * D * 24 * 2
        out, lse = run_attention(emu_attn, q, k, v, area, res, device)
    finally:
        emu_attn.yf_emu_set_fwd_warps(0)
    _check_attention(out, lse, q, k, v, area, res, f"{warps} warps, {layout} D{D} {H}x{W}/{area}")


@pytest.mark.parametrize("warps,case", [
    (0, ("interleaved", torch.float16, 32, 1, 1, 40, 40, 4, True, SM90)),  # P4 at 640: 12 full 32-key steps + 16
    (0, ("interleaved", torch.float16, 32, 1, 2, 20, 20, 1, False, SM90)),  # P5 at 640
    (5, ("turbo", torch.bfloat16, 32, 3, 2, 6, 10, 4, False, SM80)),  # 15 tokens per area: only the masked tail
    (8, ("channels_last", torch.float16, 32, 1, 1, 1, 77, 1, True, SM90)),  # 2 steps, then a masked tail
    (3, ("interleaved", torch.float16, 32, 1, 1, 40, 40, 1, False, SM80)),  # 1600 tokens streamed in chunks
    (0, ("misaligned", torch.bfloat16, 32, 2, 1, 8, 18, 1, False, SM90)),  # 144: an unmasked 16-key tail
], ids=lambda x: str(x) if isinstance(x, int) else f"{x[0]}-{x[5]}x{x[6]}-area{x[7]}-sm{x[9][1]}{x[9][2]}")
def test_attention_kernel_32_key_steps(emu_attn, emu_attn_sm75, warps, case):
    """The head_dim-32 kernel's 32-key variant (AreaAttnFwdArgs::key_block = 32, $YOLOV12_FAST_CUDA_FWD_KEYS=32 on
    the GPU, an A/B variant benchmarks/fwd_warps.py times): every step kind (full 32-key steps, the unmasked 16-key
    tail, the masked last keys), resident and streamed, warp counts up to 8, both dtypes and the staging layouts
    match the oracle, through the sm_80+ code and (float16) the Turing branch; the plan is the default's."""
    layout, dtype, D, B, heads, H, W, area, with_res, device = case
    q, k, v = _qkv(layout, B, heads, D, H, W, dtype, seed=H * W + warps)
    res = torch.randn(B, heads, D, H * W).to(dtype) if with_res else None
    libs = [emu_attn] + ([emu_attn_sm75] if dtype == torch.float16 and warps in (0, 8) else [])
    for lib in libs:
        lib.yf_emu_set_fwd_warps(warps)
        try:
            if lib is emu_attn:
                default_plan = _attention_plan(lib, H * W // area, D, device)
            lib.yf_emu_set_fwd_key_block(32)
            if lib is emu_attn:
                assert _attention_plan(lib, H * W // area, D, device) == default_plan
            out, lse = run_attention(lib, q, k, v, area, res, SM75 if lib is emu_attn_sm75 else device)
        finally:
            lib.yf_emu_set_fwd_key_block(0)
            lib.yf_emu_set_fwd_warps(0)
        branch = "sm_75 branch" if lib is emu_attn_sm75 else f"cc {device[1]}.{device[2]}"
        _check_attention(out, lse, q, k, v, area, res, f"32-key steps, {warps} warps, {layout} {H}x{W}/{area}, {branch}")


def test_attention_kernel_refuses_key_blocks_it_has_no_code_for(emu_attn):
    """32-key steps exist for head_dim 32 only, with at most 8 warps (its launch bounds: 3 CTAs of 256 threads per
    SM); other key-block sizes do not exist: each is refused (cudaErrorInvalidValue, no plan), never launched."""
    q, k, v = _qkv("interleaved", 1, 1, 32, 4, 4, torch.float16, seed=3)
    q64, k64, v64 = _qkv("interleaved", 1, 1, 64, 4, 4, torch.float16, seed=3)
    for keys, warps, args in ((32, 0, (q64, k64, v64)), (32, 9, (q, k, v)), (48, 0, (q, k, v)), (16, 0, (q, k, v))):
        emu_attn.yf_emu_set_fwd_key_block(keys)
        emu_attn.yf_emu_set_fwd_warps(warps)
        try:
            assert run_attention(emu_attn, *args, 1, None, SM90, expect_error=True) == INVALID_VALUE, (keys, warps)
            assert not _attention_plan(emu_attn, 16, args[0].shape[2], SM90)["supported"], (keys, warps)
        finally:
            emu_attn.yf_emu_set_fwd_key_block(0)
            emu_attn.yf_emu_set_fwd_warps(0)
    for keys in (0, 64):  # the default, by either name
        emu_attn.yf_emu_set_fwd_key_block(keys)
        try:
            out, lse = run_attention(emu_attn, q64, k64, v64, 1, None, SM90)
        finally:
            emu_attn.yf_emu_set_fwd_key_block(0)
        _check_attention(out, lse, q64, k64, v64, 1, None, f"head_dim 64, key_block {keys}")


@pytest.mark.parametrize("case", [
    ("interleaved", torch.float16, 32, 2, 2, 16, 16, 2, True, SM90),  # 16-byte vectors, resident, batch 2
    ("turbo", torch.bfloat16, 64, 1, 1, 16, 16, 1, False, (40, 8, 0, 40960, 40960)),  # head_dim 64 streamed
    ("interleaved", torch.float16, 32, 1, 1, 6, 10, 3, False, SM90),  # 20 tokens per area: 8-byte vectors
    ("interleaved", torch.float16, 32, 1, 1, 3, 6, 3, False, SM80),  # 6 tokens per area: 4-byte vectors
], ids=lambda c: f"{c[0]}-D{c[2]}-{c[5]}x{c[6]}-area{c[7]}")
def test_async_and_register_staging_agree_bit_for_bit(emu_attn, case):
    """sm_80+ code stages the token-contiguous views through cp.async; AreaAttnFwdArgs / AreaAttnBwdArgs::
    register_staging ($YOLOV12_FAST_CUDA_STAGING=registers on the GPU, the A/B knob benchmarks/fwd_warps.py times)
    keeps the register path. Only how the bytes reach shared memory differs: forward and backward outputs are
    identical bit for bit, every vector width (16, 8, 4 bytes) and plan, and the register path issues no cp.async."""
    layout, dtype, D, B, heads, H, W, area, with_res, device = case
    assert _attention_plan(emu_attn, H * W // area, D, device)["resident"] == (D == 32)  # the D64 case streams
    q, k, v = _qkv(layout, B, heads, D, H, W, dtype, seed=H * W + D)
    res = torch.randn(q.shape).to(dtype) if with_res else None
    dout = torch.randn(q.shape).to(dtype)
    results = {}
    for regs in (0, 1):
        emu_attn.yf_emu_set_register_staging(regs)
        try:
            _cp_async_stats(emu_attn, reset=True)
            out, lse = run_attention(emu_attn, q, k, v, area, res, device)
            grads = run_attention_bwd(emu_attn, q, k, v, dout, area, res, device)
            copies, unwaited = _cp_async_stats(emu_attn)
        finally:
            emu_attn.yf_emu_set_register_staging(0)
        assert unwaited == 0
        assert (copies == 0) if regs else (copies > 0), f"register_staging={regs}: {copies} cp.async copies"
        results[regs] = (out, lse, *grads)
    for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), results[0], results[1]):
        assert torch.equal(a, b), f"{name}: async and register staging differ"


def test_attention_kernel_refuses_warp_counts_it_cannot_launch(emu_attn, emu_attn_sm75):
    """More warps than the kernel's launch bounds allow (16 for head_dim 32, 4 for 64), a negative count, or any
    count but the default for Turing code (its warps are a compile-time 8: a launch of 5 warps would leave 3 warps'
    query tiles unwritten): the launcher refuses (cudaErrorInvalidValue) instead of launching what would fail, spill
    or compute a wrong answer."""
    q, k, v = _qkv("interleaved", 1, 1, 32, 20, 20, torch.float16, seed=2)
    emu_attn_sm75.yf_emu_set_fwd_warps(5)
    try:
        assert run_attention(emu_attn_sm75, q, k, v, 1, None, SM75, expect_error=True) == INVALID_VALUE
    finally:
        emu_attn_sm75.yf_emu_set_fwd_warps(0)
    out, lse = run_attention(emu_attn_sm75, q, k, v, 1, None, SM75)  # the default still runs there
    _check_attention(out, lse, q, k, v, 1, None, "sm_75 branch after a refused warp count")
    q, k, v = _qkv("interleaved", 1, 1, 32, 4, 4, torch.float16, seed=1)
    q64, k64, v64 = _qkv("interleaved", 1, 1, 64, 4, 4, torch.float16, seed=1)
    for warps, args in ((17, (q, k, v)), (-1, (q, k, v)), (5, (q64, k64, v64))):
        emu_attn.yf_emu_set_fwd_warps(warps)
        try:
            assert run_attention(emu_attn, *args, 1, None, SM90, expect_error=True) == INVALID_VALUE, warps
            assert not _attention_plan(emu_attn, 16, args[0].shape[2], SM90)["supported"]
        finally:
            emu_attn.yf_emu_set_fwd_warps(0)


def test_attention_kernel_refuses_what_it_has_no_code_for(emu_attn):
    q, k, v = _qkv("interleaved", 1, 1, 32, 4, 4, torch.float16, seed=1)
    b16 = [t.to(torch.bfloat16) for t in (q, k, v)]
    assert run_attention(emu_attn, *b16, 1, None, SM75, expect_error=True) == NOT_SUPPORTED  # bf16 needs sm_80
    assert run_attention(emu_attn, q, k, v, 3, None, SM90, expect_error=True) == INVALID_VALUE  # 16 % 3 != 0
    q16, k16, v16 = _qkv("interleaved", 1, 1, 16, 4, 4, torch.float16, seed=1)
    assert run_attention(emu_attn, q16, k16, v16, 1, None, SM90, expect_error=True) == NOT_SUPPORTED  # head_dim 16


@pytest.mark.parametrize("device", [SM75, SM80, SM90], ids=["sm75", "sm80", "sm90"])
def test_attention_plan_fits_each_device(emu_attn, device):
    """Every tokens-per-area count up to 8192 gets a plan within the device's shared memory: resident (the whole area
    staged once, rows of n rounded up to 16, + 8) where it fits, else streamed in chunks of a multiple of 64 keys."""
    for D in (32, 64):
        for n in list(range(1, 300, 7)) + [400, 1600, 4096, 8192]:
            p = _attention_plan(emu_attn, n, D, device)
            assert p["supported"] and p["smem_bytes"] <= device[3], (D, n, p)
            assert p["smem_row"] == p["chunk_keys"] + 8 and p["warps"] == (8 if D == 32 else 4)
            if p["resident"]:
                assert p["chunk_keys"] == (n + 15) // 16 * 16, (D, n, p)
            else:
                assert p["chunk_keys"] % 64 == 0 and p["chunk_keys"] < n, (D, n, p)
    assert _attention_plan(emu_attn, 1600, 32, SM90)["resident"] and not _attention_plan(emu_attn, 1600, 32, SM80)["resident"]


# ----------------------------------------------------------------------------------------------------------------
# property tests: random shapes, layouts, dtypes and devices against the oracles (forward; no CUDA C++ backward)

FUZZ = int(os.environ.get("YOLOV12_FAST_FUZZ_EXAMPLES", "30"))
FUZZ_PROFILES = [pytest.param(n, id=name, marks=[pytest.mark.slow] if name == "long" else [])
                 for name, n in (("quick", FUZZ), ("long", 10 * FUZZ))]


def _fuzz_settings(n):
    from hypothesis import HealthCheck, settings

    # derandomized (CI fuzzes the same cases every run) unless YOLOV12_FAST_FUZZ_RANDOM is set, as in test_hardening
    return settings(max_examples=max(1, n), deadline=None, derandomize=not os.environ.get("YOLOV12_FAST_FUZZ_RANDOM"),
                    database=None, print_blob=True,
                    suppress_health_check=list(HealthCheck))


def _attention_cases(max_batch: int, max_heads: int):
    """A hypothesis strategy of small attention cases: 1-70 tokens per area, 1-4 areas that may cut rows (W from 1
    to 11), both head_dims and dtypes, every view layout, an optional residual, each device kind (sm_75 only in
    float16) with 1 or 64 SMs (64: the tile split runs), and the forward's key steps (`keys`: 0 = the default 64,
    32 = the head_dim-32 variant; used by the forward tests for head_dim 32)."""
    from hypothesis import strategies as st

    @st.composite
    def cases(draw):
        dtype = draw(st.sampled_from((torch.float16, torch.bfloat16)))
        device = draw(st.sampled_from((SM90, SM80) if dtype == torch.bfloat16 else (SM90, SM80, SM75)))
        area = draw(st.integers(1, 4))
        n = draw(st.integers(1, 70))
        W = draw(st.sampled_from([w for w in range(1, 12) if (area * n) % w == 0]))
        return dict(layout=draw(st.sampled_from(("interleaved", "turbo", "channels_last", "misaligned"))),
                    dtype=dtype, D=draw(st.sampled_from((32, 64))), B=draw(st.integers(1, max_batch)),
                    heads=draw(st.integers(1, max_heads)), H=area * n // W, W=W, area=area,
                    residual=draw(st.booleans()), device=(draw(st.sampled_from((1, 64))),) + device[1:],
                    seed=draw(st.integers(0, 2**31 - 1)), keys=draw(st.sampled_from((0, 32))))

    return cases()


@pytest.mark.parametrize("examples", FUZZ_PROFILES)
def test_attention_kernel_property(emu_attn, examples):
    """Up to 70 tokens per area (1 to 5 key steps of 16, partial tiles), 1-4 areas that may cut rows, batch 1-3,
    1-3 heads, both head_dims and dtypes, every view layout, with or without a residual, on each device kind (sm_75
    only in float16), with and without a query split, with 64- or (head_dim 32) 32-key steps."""
    from hypothesis import given

    @_fuzz_settings(examples)
    @given(c=_attention_cases(max_batch=3, max_heads=3))
    def run(c):
        q, k, v = _qkv(c["layout"], c["B"], c["heads"], c["D"], c["H"], c["W"], c["dtype"], c["seed"])
        g = torch.Generator().manual_seed(c["seed"] + 1)
        res = torch.randn(q.shape, generator=g).to(c["dtype"]) if c["residual"] else None
        emu_attn.yf_emu_set_fwd_key_block(c["keys"] if c["D"] == 32 else 0)
        try:
            out, lse = run_attention(emu_attn, q, k, v, c["area"], res, c["device"])
        finally:
            emu_attn.yf_emu_set_fwd_key_block(0)
        _check_attention(out, lse, q, k, v, c["area"], res, f"fuzz {c}")

    run()


def _pe_cases(**extra):
    """The PE kernels' fuzz space (hypothesis): planes 1x1 to 70x140 (one or several tiles either way), k 3 / 5 / 7,
    batch 1-3, 1-2 heads of 1-4 channels, every dtype and v layout, a seed, and `extra` fields drawn from the given
    strategies."""
    from hypothesis import strategies as st

    @st.composite
    def cases(draw):
        return dict(H=draw(st.integers(1, 70)), W=draw(st.integers(1, 140)), k=draw(st.sampled_from((3, 5, 7))),
                    B=draw(st.integers(1, 3)), heads=draw(st.integers(1, 2)), D=draw(st.integers(1, 4)),
                    dtype=draw(st.sampled_from((torch.float32, torch.float16, torch.bfloat16))),
                    layout=draw(st.sampled_from(("qkv", "channels_last", "contiguous"))),
                    seed=draw(st.integers(0, 2**31 - 1)), **{k: draw(v) for k, v in extra.items()})

    return cases()


@pytest.mark.parametrize("examples", FUZZ_PROFILES)
def test_pe_kernel_property(emu, examples):
    """Planes from 1x1 to 70x140 (one or several tiles either way), k 3 / 5 / 7, batch 1-3, 1-2 heads of 1-4
    channels, every dtype and v layout, bias and x each optional, inputs in NaN-filled storage."""
    from hypothesis import given
    from hypothesis import strategies as st

    @_fuzz_settings(examples)
    @given(c=_pe_cases(bias=st.booleans(), with_x=st.booleans()))
    def run(c):
        H, W, k = c["H"], c["W"], c["k"]
        v, w, b, x = _inputs(c["B"], c["heads"], c["D"], H, W, k, c["dtype"], layout=c["layout"], bias=c["bias"],
                             with_x=c["with_x"], seed=c["seed"])
        out = run_pe(emu, _in_nan_storage(v), w, b, None if x is None else _in_nan_storage(x), H, W)
        assert_close_to_oracle(out, naive(v, w, b, x, H, W), oracle(v, w, b, x, H, W), f"pe fuzz {c}")

    run()


@pytest.mark.parametrize("examples", FUZZ_PROFILES)
def test_pe_wgrad_kernel_property(emu, examples):
    """The PE weight-gradient kernel over the forward's fuzz space: planes 1x1 to 70x140, k 3 / 5 / 7, batch 1-3,
    1-2 heads of 1-4 channels, every dtype and v layout, dout of any stride order, inputs in NaN-filled storage."""
    from hypothesis import given
    from hypothesis import strategies as st

    @_fuzz_settings(examples)
    @given(c=_pe_cases(dout_cl=st.booleans()))
    def run(c):
        H, W, k = c["H"], c["W"], c["k"]
        v, _, _, _ = _inputs(c["B"], c["heads"], c["D"], H, W, k, c["dtype"], layout=c["layout"], bias=False,
                             with_x=False, seed=c["seed"])
        g = torch.Generator().manual_seed(c["seed"] + 1)
        dout = torch.randn(c["B"], c["heads"] * c["D"], H, W, generator=g).to(c["dtype"])
        if c["dout_cl"]:
            dout = dout.contiguous(memory_format=torch.channels_last)
        dout = dout.view(v.shape) if dout.is_contiguous() else dout.permute(0, 2, 3, 1).reshape(
            c["B"], H * W, c["heads"], c["D"]).permute(0, 2, 3, 1)
        dw, db = run_pe_wgrad(emu, _in_nan_storage(dout), _in_nan_storage(v), k, H, W)
        odw, odb = wgrad_oracle(dout, v, k, H, W, torch.float64)
        ndw, ndb = wgrad_oracle(dout, v, k, H, W, torch.float32)
        assert_close_to_oracle(dw, ndw, odw, f"pe wgrad fuzz dw {c}")
        assert_close_to_oracle(db, ndb, odb, f"pe wgrad fuzz db {c}")

    run()


# ----------------------------------------------------------------------------------------------------------------
# the tensor-core area-attention backward (csrc/cuda/area_attention_bwd.cu)


def run_attention_bwd(emu_attn, q, k, v, dout, area, residual=None, device=SM90):
    """The emulated CUDA backward as the glue runs it: the (emulated) forward for out (residual included) and lse, then
    the launcher's three kernels (delta = rowsum(dout * (out - residual)), dK/dV, dQ). dq, dk, dv sit inside
    sentinel-guarded buffers; the delta scratch is checked against the same sum in float64."""
    out, lse = run_attention(emu_attn, q, k, v, area, residual, device)
    out = out.clone()  # out of its guard buffer: a view with its own strides
    lse = lse.contiguous()
    B, heads, D, N = q.shape
    n = q.numel()
    delta = torch.full((B, heads, N), float("nan"))
    guards = [torch.full((n + 128,), SENTINEL, dtype=q.dtype) for _ in range(3)]
    grads = [g[64:64 + n].view(q.shape) for g in guards]
    f32p = lambda t: ctypes.cast(t.data_ptr(), ctypes.POINTER(ctypes.c_float))
    rc = emu_attn.yf_emu_attention_bwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), dout.data_ptr(), out.data_ptr(),
                                       None if residual is None else residual.data_ptr(), f32p(lse), f32p(delta),
                                       *(g.data_ptr() for g in grads), _strides(q), _strides(k), _strides(v),
                                       _strides(dout), _strides(out), _strides(residual), B, heads, D, N, area,
                                       D ** -0.5, {torch.float16: 0, torch.bfloat16: 1}[q.dtype],
                                       (ctypes.c_int * 5)(*device))
    assert rc == 0, f"the backward launcher returned cudaError {rc}"
    want = (dout.double() * (out.double() - (residual.double() if residual is not None else 0))).sum(2)
    torch.testing.assert_close(delta.double(), want, rtol=1e-5, atol=1e-5 * D, msg="delta")
    for g in guards:
        assert (g[:64] == SENTINEL).all() and (g[64 + n:] == SENTINEL).all(), "a write outside a gradient"
        assert not (g[64:64 + n] == SENTINEL).any(), "gradient elements the kernels never wrote"
    return grads


def _check_backward(grads, q, k, v, dout, area, what):
    D = q.shape[2]
    leaves = lambda dt: [t.detach().to(dt).requires_grad_(True) for t in (q, k, v)]
    n_in, o_in = leaves(q.dtype), leaves(torch.float64)
    naive = torch.autograd.grad(reference.area_attention(*n_in, area, D ** -0.5), n_in, dout)
    oracle = torch.autograd.grad(reference.area_attention(*o_in, area, D ** -0.5), o_in, dout.double())
    for name, g, nv, o in zip(("dq", "dk", "dv"), grads, naive, oracle):
        assert_close_to_oracle(g, nv, o, f"{what}: {name}")


@pytest.mark.parametrize("layout,dtype,D,B,heads,H,W,area,with_res,device", ATTENTION_CASES,
                         ids=lambda x: str(x).replace("torch.", "") if not isinstance(x, tuple) else f"sm{x[1]}{x[2]}")
def test_attention_backward_matches_the_oracle(emu_attn, layout, dtype, D, B, heads, H, W, area, with_res, device):
    """dq, dk, dv of the CUDA backward against the float64 autograd oracle, over the forward's cases (layouts, dtypes,
    head_dims, areas cutting rows, 1 / 15 / 49 / 400 / 1600 tokens per area, resident and streamed plans)."""
    q, k, v = _qkv(layout, B, heads, D, H, W, dtype, seed=H * W * D + area + 2)
    g = torch.Generator().manual_seed(H * W)
    dout = torch.randn(q.shape, generator=g).to(dtype)
    if layout == "channels_last":  # a strided dout too
        dout = dout.transpose(2, 3).contiguous().transpose(2, 3)
    res = torch.randn(q.shape, generator=g).to(dtype) if with_res else None
    plan = _attention_plan(emu_attn, H * W // area, D, device, bwd=True)
    _ldmatrix_stats(emu_attn, reset=True)
    _cp_async_stats(emu_attn, reset=True)
    grads = run_attention_bwd(emu_attn, q, k, v, dout, area, res, device)
    what = (f"backward {layout} {dtype} D{D} {H}x{W}/{area} {'resident' if plan['resident'] else 'streamed'} on cc "
            f"{device[1]}.{device[2]}")
    _check_backward(grads, q, k, v, dout, area, what)
    _assert_conflict_free(emu_attn, what)
    _assert_staged_async(emu_attn, layout, H * W // area, H * W, what)


@pytest.mark.parametrize("turing", [False, True], ids=["sm80+", "sm75-branch"])
@pytest.mark.parametrize("n", [20, 40, 48], ids=["16-and-a-masked-tail", "32-and-a-masked-tail", "no-tail"])
def test_attention_backward_with_every_score_far_below_zero(emu_attn, emu_attn_sm75, n, turing):
    """Every score about -280 (lse about -280, base e): a zero-filled padding token of a partial last block would
    get P = 2^(0 - lse2) = 2^400 = inf and make inf * 0 = NaN of its zero operand unless that block is masked (on
    sm_80+ only the block holding the last valid token is; the full blocks before it run unmasked). The gradients
    stay finite and match the oracle; dq's first component cancels exactly, which the fused formulation
    (tolerances.flash_style_backward) does not reproduce, so its error joins the yardstick there."""
    emu = emu_attn_sm75 if turing else emu_attn
    g = torch.Generator().manual_seed(n)
    q, k = (torch.randn(1, 2, 32, n, generator=g) * 0.1 for _ in range(2))
    q[:, :, 0], k[:, :, 0] = 40.0, -40.0
    v, dout = (torch.randn(1, 2, 32, n, generator=g) for _ in range(2))
    q, k, v, dout = (t.half() for t in (q, k, v, dout))
    grads = run_attention_bwd(emu, q, k, v, dout, 1, None, SM75 if turing else SM90)
    assert all(torch.isfinite(t).all() for t in grads)
    leaves = lambda dt: [t.detach().to(dt).requires_grad_(True) for t in (q, k, v)]
    n_in, o_in = leaves(torch.float16), leaves(torch.float64)
    naive = torch.autograd.grad(reference.area_attention(*n_in, 1), n_in, dout)
    oracle = torch.autograd.grad(reference.area_attention(*o_in, 1), o_in, dout.double())
    fused = flash_style_backward(dout, q, k, v)
    for name, got, nv, fs, o in zip(("dq", "dk", "dv"), grads, naive, fused, oracle):
        assert_close_to_oracle(got, (nv, fs), o, f"far below zero n {n}: {name}")


@pytest.mark.parametrize("case", [c for c in ATTENTION_CASES if c[1] == torch.float16 and c[5] * c[6] < 1600],
                         ids=lambda c: f"{c[0]}-D{c[2]}-{c[5]}x{c[6]}-area{c[7]}")
def test_attention_backward_turing_branch(emu_attn_sm75, case):
    layout, dtype, D, B, heads, H, W, area, with_res, _ = case
    q, k, v = _qkv(layout, B, heads, D, H, W, dtype, seed=H * W * D + area + 3)
    dout = torch.randn(q.shape).to(dtype)
    grads = run_attention_bwd(emu_attn_sm75, q, k, v, dout, area, None, SM75)
    _check_backward(grads, q, k, v, dout, area, f"sm_75 branch backward {layout} D{D} {H}x{W}/{area}")


def test_attention_backward_is_deterministic_and_split_invariant(emu_attn):
    """No atomics: the gradients are bit-identical run to run and whether or not the tiles are split over grid.y."""
    q, k, v = _qkv("interleaved", 1, 1, 32, 20, 20, torch.float16, seed=11)
    dout = torch.randn(q.shape).to(torch.float16)
    a = run_attention_bwd(emu_attn, q, k, v, dout, 1, None, SM90)
    b = run_attention_bwd(emu_attn, q, k, v, dout, 1, None, (64,) + SM90[1:])  # 64 SMs, 1 sequence: split
    c = run_attention_bwd(emu_attn, q, k, v, dout, 1, None, SM90)
    assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(a, b, c))


@pytest.mark.parametrize("device", [SM75, SM80, SM90], ids=["sm75", "sm80", "sm90"])
def test_attention_backward_plan_fits_each_device(emu_attn, device):
    for D in (32, 64):
        for n in list(range(1, 300, 7)) + [400, 1600, 4096, 8192]:
            p = _attention_plan(emu_attn, n, D, device, bwd=True)
            assert p["supported"] and p["smem_bytes"] <= device[3], (D, n, p)
            assert p["smem_bytes"] == 2 * D * 2 * p["smem_row"] + 8 * p["chunk_keys"] + p["warps"] * D * 24 * 2
            if p["resident"]:
                assert p["chunk_keys"] == (n + 15) // 16 * 16, (D, n, p)
            else:
                assert p["chunk_keys"] % 64 == 0 and p["chunk_keys"] < n, (D, n, p)


@pytest.mark.parametrize("examples", [pytest.param(n, id=name, marks=[pytest.mark.slow] if name == "long" else [])
                                      for name, n in (("quick", max(1, FUZZ // 2)), ("long", 5 * FUZZ))])
def test_attention_backward_property(emu_attn, examples):
    """The backward over random small cases: 1-70 tokens per area, 1-4 areas, batch 1-2, 1-2 heads, both head_dims and
    dtypes, every view layout, each device kind, with and without the tile split."""
    from hypothesis import given

    @_fuzz_settings(examples)
    @given(c=_attention_cases(max_batch=2, max_heads=2))
    def run(c):
        q, k, v = _qkv(c["layout"], c["B"], c["heads"], c["D"], c["H"], c["W"], c["dtype"], c["seed"])
        dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(c["seed"] + 1)).to(c["dtype"])
        grads = run_attention_bwd(emu_attn, q, k, v, dout, c["area"], None, c["device"])
        _check_backward(grads, q, k, v, dout, c["area"], f"backward fuzz {c}")

    run()


@pytest.mark.parametrize("examples", FUZZ_PROFILES)
def test_turing_branch_property(emu_attn_sm75, examples):
    """The sm_75 build (each m16n8k16 product as two m16n8k8) over random small cases, forward and backward, float16:
    1-70 tokens per area, 1-4 areas that may cut rows, batch and heads 1-2, both head_dims, every view layout, with
    and without the query split, the forward with 64- or (head_dim 32) 32-key steps."""
    from hypothesis import given
    from hypothesis import strategies as st

    @_fuzz_settings(examples)
    @given(c=_attention_cases(max_batch=2, max_heads=2), backward=st.booleans())
    def run(c, backward):
        c = dict(c, dtype=torch.float16, device=c["device"][:1] + SM75[1:])
        q, k, v = _qkv(c["layout"], c["B"], c["heads"], c["D"], c["H"], c["W"], c["dtype"], c["seed"])
        g = torch.Generator().manual_seed(c["seed"] + 1)
        if backward:
            dout = torch.randn(q.shape, generator=g).to(c["dtype"])
            grads = run_attention_bwd(emu_attn_sm75, q, k, v, dout, c["area"], None, c["device"])
            _check_backward(grads, q, k, v, dout, c["area"], f"Turing backward fuzz {c}")
        else:
            res = torch.randn(q.shape, generator=g).to(c["dtype"]) if c["residual"] else None
            emu_attn_sm75.yf_emu_set_fwd_key_block(c["keys"] if c["D"] == 32 else 0)
            try:
                out, lse = run_attention(emu_attn_sm75, q, k, v, c["area"], res, c["device"])
            finally:
                emu_attn_sm75.yf_emu_set_fwd_key_block(0)
            _check_attention(out, lse, q, k, v, c["area"], res, f"Turing fuzz {c}")

    run()


# ----------------------------------------------------------------------------------------------------------------
# memcheck on the CPU: the emulated kernels built with AddressSanitizer, every tensor its own exact-size allocation


def _libasan() -> str | None:
    path = subprocess.run([CXX, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


def asan_child(pe_path: str, attention_path: str, overrun: int = 0, smem_short: int = 0, misalign: int = 0) -> None:
    """Run in a child process with libasan preloaded (test_kernels_under_address_sanitizer): PE, attention forward
    and backward over layouts, dtypes, head_dims and plans, on inputs that are views of exact-size allocations (the
    interleaved / turbo / channels_last conv outputs themselves), so a read or write past any tensor is a
    heap-buffer-overflow report. `overrun` > 0 tells the forward kernel there are that many more tokens than the
    tensors hold: the planted bug the check must catch; `smem_short` > 0 gives each CTA that many bytes less shared
    memory than its launch asks for (a plan that under-sizes shared memory); `misalign` > 0 hands the forward a q that
    many bytes off its elements' alignment (loads a GPU would fault on as misaligned)."""
    pe, att = _pe_lib(ctypes.CDLL(pe_path)), _attention_so(ctypes.CDLL(attention_path))
    if misalign:
        q, k, v = _qkv("interleaved", 1, 1, 32, 6, 10, torch.float16, seed=0)
        out, lse = torch.empty(q.shape, dtype=q.dtype), torch.empty(1, 1, 60)
        att.yf_emu_attention_fwd(q.data_ptr() + misalign, k.data_ptr(), v.data_ptr(), None, out.data_ptr(),
                                 ctypes.cast(lse.data_ptr(), ctypes.POINTER(ctypes.c_float)), _strides(q), _strides(k),
                                 _strides(v), None, 1, 1, 32, 60, 1, 32 ** -0.5, 0, (ctypes.c_int * 5)(*SM90))
        return
    if smem_short:  # P5 at 640: 25 query tiles, so every warp of the CTA writes its transposing buffer, the last one
        att.yf_emu_set_smem_shortfall(ctypes.c_int64(smem_short))
        q, k, v = _qkv("interleaved", 1, 1, 32, 20, 20, torch.float16, seed=0)
        run_attention(att, q, k, v, 1, None, SM90)
        return
    if overrun:
        q, k, v = _qkv("interleaved", 1, 1, 32, 6, 10, torch.float16, seed=0)
        out, lse = torch.empty(q.shape, dtype=q.dtype), torch.empty(1, 1, 60)
        att.yf_emu_attention_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), None, out.data_ptr(),
                                 ctypes.cast(lse.data_ptr(), ctypes.POINTER(ctypes.c_float)), _strides(q), _strides(k),
                                 _strides(v), None, 1, 1, 32, 60 + overrun, 1, 32 ** -0.5, 0, (ctypes.c_int * 5)(*SM90))
        return
    for H, W, k_ in ((20, 20, 7), (15, 20, 5), (7, 9, 3), (6, 300, 7)):
        for layout in ("qkv", "channels_last"):
            v, w, b, x = _inputs(2, 2, 3, H, W, k_, torch.float16, layout=layout, seed=H + W)
            run_pe(pe, v, w, b, x, H, W)
    for layout, dtype, D, B, heads, H, W, area, device in (
            ("interleaved", torch.float16, 32, 1, 2, 20, 20, 1, SM90),
            ("turbo", torch.bfloat16, 32, 2, 1, 6, 10, 4, SM80),
            ("channels_last", torch.float16, 64, 1, 1, 20, 20, 1, SM75),  # streamed chunks
            ("misaligned", torch.bfloat16, 64, 1, 2, 8, 8, 1, SM90)):  # 64 tokens: only the base rules out vectors
        q, k, v = _qkv(layout, B, heads, D, H, W, dtype, seed=1)
        dout = torch.randn(q.shape).to(dtype)
        res = torch.randn(q.shape).to(dtype)
        run_attention(att, q, k, v, area, res, device)
        run_attention_bwd(att, q, k, v, dout, area, res, device)


def test_kernels_under_address_sanitizer(tmp_path):
    """The CUDA C++ kernels' global-memory accesses checked the way compute-sanitizer's memcheck would on a GPU: the
    emulated builds with -fsanitize=address in a child process (libasan preloaded), every input a view of its own
    exact-size allocation, and each CTA's shared memory too; UndefinedBehaviorSanitizer in the same build checks the
    alignment of every typed load and store (the vector loads of the staging paths: a GPU faults on a misaligned one)
    and integer overflow in the index arithmetic. A clean run reports nothing; a forward told of 2 tokens more than
    the tensors hold is reported (heap-buffer-overflow), so the check can fail, and so are a CTA given 64 bytes less
    shared memory than its plan asks for and a q one byte off its elements' alignment."""
    asan = _libasan()
    if asan is None:
        pytest.skip(f"{CXX} has no libasan.so")
    flags = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")
    pe_lib = _compile(str(tmp_path / "pe_asan.so"), "pe_emu", flags=flags)
    att_lib = _compile(str(tmp_path / "attention_asan.so"), "attention_emu", flags=flags)
    env = dict(os.environ, LD_PRELOAD=asan, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=23",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    tests_dir = os.path.dirname(os.path.abspath(__file__))

    def child(overrun, smem_short=0, misalign=0):
        code = (f"import sys; sys.path[:0] = [{tests_dir!r}]; import test_cuda_emu as t; "
                f"t.asan_child({pe_lib!r}, {att_lib!r}, {overrun}, {smem_short}, {misalign})")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)

    clean = child(0)
    assert clean.returncode == 0 and "AddressSanitizer" not in clean.stderr, clean.stderr[-4000:]
    assert "runtime error" not in clean.stderr, clean.stderr[-4000:]  # UndefinedBehaviorSanitizer
    bad = child(2)
    assert bad.returncode == 23 and "heap-buffer-overflow" in bad.stderr, (bad.returncode, bad.stderr[-3000:])
    # shared memory too: each CTA's is its own exact-size allocation, so 64 bytes short is reported in the kernel
    short = child(0, 64)
    assert short.returncode == 23 and "heap-buffer-overflow" in short.stderr, (short.returncode, short.stderr[-3000:])
    assert "area_attention_fwd_kernel" in short.stderr, short.stderr[-3000:]
    # and misaligned loads (UndefinedBehaviorSanitizer's alignment check): q one byte off its 2-byte elements
    odd = child(0, 0, 1)
    assert odd.returncode != 0 and "runtime error: load of misaligned address" in odd.stderr, odd.stderr[-3000:]


# ----------------------------------------------------------------------------------------------------------------
# racecheck on the CPU: the emulated kernels in a program built with ThreadSanitizer (tests/cuda_emu/race_check.cpp)

TSAN_REPORT = "WARNING: ThreadSanitizer: data race"


@pytest.fixture(scope="module")
def race_check(tmp_path_factory):
    lib = subprocess.run([CXX, "-print-file-name=libtsan.so"], capture_output=True, text=True).stdout.strip()
    if not (os.path.isabs(lib) and os.path.exists(lib)):
        pytest.skip(f"{CXX} has no ThreadSanitizer runtime (libtsan.so)")
    exe = str(tmp_path_factory.mktemp("race_check") / "race_check")
    cmd = [CXX, "-std=c++20", "-O1", "-g", "-pthread", "-fsanitize=thread", "-Wall", "-Wno-unknown-pragmas",
           "-DYOLOV12_FAST_CUDA_EMU", "-DYF_EMU_RACE_CHECK", "-I", EMU, "-I", CUDA_SRC, "-I", CUDA_INCLUDE,
           os.path.join(EMU, "race_check.cpp"),
           "-o", exe]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and "warning" not in r.stderr, f"building the race check failed:\n{' '.join(cmd)}\n{r.stderr}"

    # ThreadSanitizer of older compilers cannot map its shadow memory under the address-space randomisation of newer
    # kernels (vm.mmap_rnd_bits = 32: "FATAL: ThreadSanitizer: unexpected memory mapping"); `setarch -R` (no
    # randomisation for this process) is the usual way round; where neither runs, there is nothing to check with.
    prefixes = [[]] + ([[shutil.which("setarch"), "-R"]] if shutil.which("setarch") else [])
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=0")
    for prefix in prefixes:
        probe = subprocess.run([*prefix, exe, "pe", "--ctas", "1"], capture_output=True, text=True, env=env, timeout=300)
        if "FATAL: ThreadSanitizer" not in probe.stderr:
            break
    else:
        pytest.skip(f"ThreadSanitizer cannot run on this machine: {probe.stderr.strip()[-300:]}")

    def run(*args, halt=False):
        env = dict(os.environ, TSAN_OPTIONS=f"halt_on_error={int(halt)} second_deadlock_stack=1")
        return subprocess.run([*prefix, exe, *args], capture_output=True, text=True, env=env, timeout=900)

    return run


def _race_check_clean(race_check, *args):
    r = race_check(*args)
    out = r.stdout
    assert r.returncode == 0 and "ThreadSanitizer" not in r.stderr, r.stderr[-6000:]
    assert "FAILED" not in out and "UNSUPPORTED" not in out, out
    # every suite ran, each plan kind, the query split and a CTA that runs several query groups
    for what in ("pe ", "fwd ", "bwd "):
        assert sum(line.startswith(what) for line in out.splitlines()) >= 4, out
    assert " resident" in out and " streamed" in out and "grid 1 x 2 CTAs" in out and "grid 1 x 1 CTAs" in out, out
    return out


def test_kernels_under_thread_sanitizer(race_check):
    """The CUDA C++ kernels checked the way compute-sanitizer's racecheck would on a GPU: PE, attention forward and
    backward (resident and streamed plans, the query split over CTAs and a CTA looping over query groups, areas that
    cut rows, partial tiles, each layout, dtype and head_dim) run in the emulator under ThreadSanitizer, the CTAs of a
    launch at the same time: no two threads touch one shared-memory or global location, one of them writing, without
    a barrier between them. Planted bugs are reported, so the check can fail: a barrier missing after staging (read
    after write: PE, forward, backward), before the PE weight gradient reuses its staged tile for the warps' sums
    (write after read) and before it reads them (read after write), between chunks (write after read on the streamed plan), before the warp's
    transposed store, and CTAs that all do the same query tiles (write after write between CTAs)."""
    _race_check_clean(race_check, "all")
    planted = [("pe", "--skip-syncthreads", "1", "pe_add_kernel"),
               ("pe", "--skip-syncthreads", "2", "pe_wgrad_kernel"),  # the sums overwrite a tile still read
               ("pe", "--skip-syncthreads", "3", "pe_wgrad_kernel"),  # the sums read before every warp wrote its
               ("fwd", "--skip-syncthreads", "2", "area_attention_fwd_kernel"),
               ("fwd", "--skip-syncthreads", "3", "area_attention_fwd_kernel"),
               ("fwd", "--skip-syncwarp", "1", "area_attention_fwd_kernel"),
               ("fwd", "--alias-block-y", None, "area_attention_fwd_kernel"),
               ("bwd", "--skip-syncthreads", "2", "area_attention_bwd"),
               ("bwd", "--skip-syncwarp", "1", "area_attention_bwd"),
               ("bwd", "--alias-block-y", None, "area_attention_bwd")]
    for what, opt, val, kernel in planted:
        r = race_check(what, opt, *([val] if val else []), halt=True)
        report = r.stderr[r.stderr.find(TSAN_REPORT):][:6000]
        assert r.returncode == 66 and TSAN_REPORT in r.stderr, (what, opt, val, r.returncode, r.stderr[-3000:])
        assert f"yolov12_fast::cuda::detail::{kernel}" in report, (what, opt, val, report)


def test_forward_32_key_steps_under_thread_sanitizer(race_check):
    """The forward's 32-key-step variant (head_dim 32 cases; head_dim 64 keeps 64) under ThreadSanitizer, as above:
    no race, and a planted missing barrier after staging is still reported."""
    r = race_check("fwd", "--fwd-keys", "32")
    assert r.returncode == 0 and "ThreadSanitizer" not in r.stderr, r.stderr[-6000:]
    assert "FAILED" not in r.stdout and sum(line.startswith("fwd ") for line in r.stdout.splitlines()) >= 4, r.stdout
    r = race_check("fwd", "--fwd-keys", "32", "--skip-syncthreads", "2", halt=True)
    assert r.returncode == 66 and TSAN_REPORT in r.stderr, r.stderr[-3000:]
    assert "area_attention_fwd_kernel" in r.stderr[r.stderr.find(TSAN_REPORT):][:6000]


@pytest.mark.slow
def test_kernels_under_thread_sanitizer_at_640(race_check):
    """The race check with the shapes of 640 added (400 tokens per area, resident on sm_90 and streamed on sm_75, 462
    tokens in four chunks): a few minutes more."""
    out = _race_check_clean(race_check, "all", "full")
    assert "20x20 area1 residual sm75 streamed" in out and "21x22 area1 sm75 streamed" in out, out


# ----------------------------------------------------------------------------------------------------------------
# the conv epilogue: out = act(y + bias[c]) (csrc/cuda/bias_act.cu)


@pytest.fixture(scope="module")
def bias_act_emu(tmp_path_factory):
    so = _build(tmp_path_factory, "bias_act_emu")
    i64, vp = ctypes.c_int64, ctypes.c_void_p
    so.yf_emu_bias_act.restype = ctypes.c_int
    so.yf_emu_bias_act.argtypes = [vp, vp, vp, i64, i64, i64, ctypes.POINTER(i64), ctypes.POINTER(i64), i64,
                                   ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return so


def _bias_act_strides(t: torch.Tensor, layout: int):
    """(b, c, t) element strides of a (B, C, H, W) tensor in BiasActLayout `layout` (0 planes, 1 tokens)."""
    B, C, H, W = t.shape
    if layout == 0:
        return (ctypes.c_int64 * 3)(t.stride(0), t.stride(1), 1)
    step = t.stride(3) if W > 1 else t.stride(2)
    return (ctypes.c_int64 * 3)(t.stride(0), t.stride(1), step)


def run_bias_act(so, y, bias, out, layout, silu):
    B, C, H, W = y.shape
    return so.yf_emu_bias_act(y.data_ptr(), out.data_ptr(), bias.data_ptr(), B, C, H * W, _bias_act_strides(y, layout),
                              _bias_act_strides(out, layout), bias.stride(0), layout, int(silu), DTYPE_CODE[y.dtype])


BIAS_ACT_CASES = [  # (name, shape, layout 0 planes / 1 tokens, how y and out are laid out)
    ("nchw", (2, 24, 5, 8), 0, "contiguous"),                # HW 40: 16-byte vectors for every dtype
    ("nchw-odd", (3, 7, 5, 3), 0, "contiguous"),             # HW 15: one element at a time
    ("nchw-slice", (2, 16, 4, 8), 0, "channel-slice"),       # a channel slice of an NCHW buffer (A2C2f's)
    ("nchw-offset", (2, 16, 4, 8), 0, "offset"),             # aligned strides, a base 1 element off 16 bytes
    ("cl", (2, 24, 5, 8), 1, "channels_last"),
    ("cl-odd", (3, 7, 5, 3), 1, "channels_last"),            # C 7: one element at a time
    ("cl-slice", (2, 16, 4, 8), 1, "cl-channel-slice"),      # a channel slice of a channels_last buffer
    ("cl-every-other-image", (2, 16, 4, 8), 1, "cl-batch-step"),
]


def _bias_act_tensor(shape, how, dtype, fill=None):
    B, C, H, W = shape
    make = (lambda *s: torch.full(s, fill, dtype=dtype)) if fill is not None else (lambda *s: torch.randn(*s).to(dtype))
    if how == "contiguous":
        return make(B, C, H, W)
    if how == "channel-slice":
        return make(B, C + 16, H, W)[:, 8:8 + C]
    if how == "offset":
        return make(B * C * H * W + 1)[1:].view(B, C, H, W)
    if how == "channels_last":
        return make(B, C, H, W).contiguous(memory_format=torch.channels_last)
    if how == "cl-channel-slice":
        return make(B, C + 16, H, W).contiguous(memory_format=torch.channels_last)[:, 8:8 + C]
    if how == "cl-batch-step":
        return make(2 * B, C, H, W).contiguous(memory_format=torch.channels_last)[::2]
    raise ValueError(how)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("silu", [True, False], ids=["silu", "bias-only"])
@pytest.mark.parametrize("name,shape,layout,how", BIAS_ACT_CASES, ids=[c[0] for c in BIAS_ACT_CASES])
def test_emulated_bias_act(bias_act_emu, name, shape, layout, how, silu, dtype):
    """The conv epilogue kernel out = act(y + bias[c]) against the float64 oracle (the same-dtype PyTorch math, which
    rounds y + bias before the SiLU, as the yardstick), in both layouts, vectorised and element-wise, into a separate
    tensor (whose storage around it must stay untouched) and in place (out = y)."""
    y = _bias_act_tensor(shape, how, dtype)
    bias = torch.randn(shape[1]).to(dtype)
    want = y.double() + bias.double().view(1, -1, 1, 1)
    want = F.silu(want) if silu else want
    naive = y + bias.view(1, -1, 1, 1)
    naive = F.silu(naive.float()).to(dtype) if silu else naive
    out = _bias_act_tensor(shape, how, dtype, fill=SENTINEL)
    storage = torch.empty(0, dtype=dtype).set_(out.untyped_storage())  # every element of out's storage, flat
    before = storage.clone()
    assert run_bias_act(bias_act_emu, y, bias, out, layout, silu) == 0
    assert_close_to_oracle(out, naive, want, f"bias_act {name}")
    inside = torch.zeros(storage.shape, dtype=torch.bool)
    inside.as_strided(out.shape, out.stride(), out.storage_offset()).fill_(True)
    assert torch.equal(storage[~inside], before[~inside]), "a write outside out"
    y_in_place = y.clone() if how in ("contiguous", "offset") else _bias_act_tensor(shape, how, dtype)
    y_in_place.copy_(y)
    assert run_bias_act(bias_act_emu, y_in_place, bias, y_in_place, layout, silu) == 0
    torch.testing.assert_close(y_in_place, out, rtol=0, atol=0)


def test_emulated_bias_act_refuses_bad_arguments(bias_act_emu):
    """Negative sizes or an unknown layout: cudaErrorInvalidValue (1), nothing launched; empty tensors: success."""
    y = torch.randn(1, 4, 2, 2)
    bias = torch.randn(4)
    s = _bias_act_strides(y, 0)
    assert bias_act_emu.yf_emu_bias_act(y.data_ptr(), y.data_ptr(), bias.data_ptr(), 1, -4, 4, s, s, 1, 0, 1, 2) == 1
    assert bias_act_emu.yf_emu_bias_act(y.data_ptr(), y.data_ptr(), bias.data_ptr(), 1, 4, 4, s, s, 1, 7, 1, 2) == 1
    assert bias_act_emu.yf_emu_bias_act(y.data_ptr(), y.data_ptr(), bias.data_ptr(), 0, 4, 4, s, s, 1, 0, 1, 2) == 0
