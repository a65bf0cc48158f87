"""Fused YOLOv12 area attention in Triton: forward and backward (FlashAttention-2 style, recomputation).

Layout: q, k, v, dout, residual are (B, heads, HEAD_DIM, N) with arbitrary strides, read in place: the
ultralytics interleaved `qkv` conv output, the turbo `qk` / `v` outputs, channels_last maps and batch slices
all arrive as strided views, never as copies. Area j of an image owns tokens [j*n, (j+1)*n), n = N // area
(an area may cut rows). Outputs (out, dq, dk, dv) are contiguous (B, heads, HEAD_DIM, N); lse is (B, heads, N)
float32, the natural-log normaliser of each query row.

Grid: axis 0 = B*heads (up to 2**31 - 1 programs), axis 1 = (tile within the area, area). Every program owns one
tile of BLOCK_M queries (forward, dq) or BLOCK_N keys (dk/dv) of one area of one (image, head) and sweeps the
other operand over the area only: the n x n matrix never exists in memory.

Numerics: fp32 accumulation always; scores are scaled in fp32 after the dot by scale * log2(e) and
exponentiated with exp2 (no fp16 overflow where fp32 would not overflow); fp32 inputs use IEEE fp32 dots unless
the user opted into TF32 (torch.set_float32_matmul_precision("high")).
"""

from __future__ import annotations

import contextlib
import threading

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # 1 / ln(2)
LN2 = 0.6931471805599453

HEAD_DIMS = (16, 32, 64, 128)

# Compile options of every launch in kernels/ (and of the AOT compiles in yolov12_fast/_aot.py). FMA contraction is
# pinned on: the hot loops rely on it (the scaled score minus the running max before exp2 is one FFMA a score; the
# epilogues' multiply-adds), and triton 3.9 warns that its default turns to off in 3.10, which would add an
# instruction a score and change rounding. The interpreter ignores it.
COMPILE_OPTIONS = {"enable_fp_fusion": True}


def _interpret() -> bool:
    from yolov12_fast._backends import triton_interpret

    return triton_interpret()


# --------------------------------------------------------------------------------------------------------------
# Configurations. Under the interpreter one fixed, small config (multi-block loops on small test shapes); on GPU
# a small autotuned set keyed on (HEAD_DIM, tokens per area, dtype). AOT_CONFIGS is what CI compiles per arch.

def _cfg(bm, bn, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


FWD_CONFIGS = [_cfg(64, 64, 4, 2), _cfg(64, 32, 4, 3), _cfg(128, 64, 8, 2)]
BWD_CONFIGS = [_cfg(64, 32, 4, 2), _cfg(32, 32, 4, 2)]
# Dots that do not run on tensor cores (every dot on Turing sm_75, where Triton has no MMA path, and IEEE fp32
# dots everywhere) are FMA loops whose tiles live in registers: they get small tiles that do not spill. The
# CUDA C++ backend is the fast one on T4.
FMA_CONFIGS = [_cfg(32, 16, 4, 1)]
INTERPRET_CONFIG = _cfg(32, 16, 4, 1)


def uses_fma(arch: int, dot_precision: str | None, dtype_is_fp32: bool) -> bool:
    return arch < 80 or (dtype_is_fp32 and dot_precision == "ieee")


def configs_for(configs, arch: int, fma: bool, tf32: bool = False):
    """The configs a kernel may launch with on `arch`. TF32 backward tiles hold fp32 operands: the 64x32 one
    spills on sm_80/sm_90 (AOT report), so TF32 backward keeps the 32x32 tiles."""
    if fma or arch < 80:
        return FMA_CONFIGS
    if tf32 and configs is BWD_CONFIGS:
        return [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 32 * 32]
    return configs


def _configs(configs):
    """Every config the autotuner may use on this machine; _prune narrows them per launch."""
    if _interpret():
        return [INTERPRET_CONFIG]
    return configs + FMA_CONFIGS


def _device_arch() -> int:
    if not torch.cuda.is_available():
        return 90
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def _capturing(t) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def capture_hint(e: Exception, op: str, t) -> None:
    """Called by every launcher when a launch raises: inside CUDA graph capture, raise the failure again with what
    to do. Triton compiles and loads a kernel variant on its first launch, and CUDA forbids loading a module while
    a stream is capturing ("operation not permitted when stream is capturing"; the capture is then invalid)."""
    if _capturing(t):
        raise RuntimeError(
            f"{op} (triton): a kernel launch failed inside CUDA graph capture ({type(e).__name__}: {e}). Triton "
            "compiles and loads each kernel variant on its first launch, which CUDA does not allow while a stream is "
            "capturing: run the model (or op) once with the same shapes and dtypes before capturing, the warm-up "
            "torch.cuda.graphs asks for (torch.compile(mode='reduce-overhead') warms up by itself)") from e


def _prune(configs, named_args, **kwargs):
    """FMA tiles for FMA dots, tensor-core tiles otherwise; drop tiles far larger than the area (49 or 1 tokens
    per area): they only add masked work. Under torch.use_deterministic_algorithms(True) (DETERMINISTIC) one fixed
    config per (arch, dtype, tokens per area), not the fastest measured: tiles change the rounding, so a timed
    choice could give another process other bits (like cudnn.benchmark).
    The autotuner prunes only for a key it has not timed yet. When that first launch comes inside CUDA graph
    capture, timing would synchronize the capturing stream (an error that invalidates the capture): take the same
    fixed config instead, untimed (the autotuner then keeps it for this key; warm up before capturing, as
    torch.cuda.graphs asks, to get the timed choice)."""
    if len(configs) == 1:
        _UNTIMED.one = True
        return configs
    prec = kwargs.get("DOT_PRECISION", named_args.get("DOT_PRECISION"))
    fp32 = named_args["Q"].dtype == torch.float32
    arch = _device_arch()
    fma = uses_fma(arch, prec, fp32)
    kind = BWD_CONFIGS if "Delta" in named_args else FWD_CONFIGS
    allowed = configs_for(kind, arch, fma, tf32=fp32 and prec == "tf32")
    pool = [c for c in configs if c in allowed] or configs
    n = named_args["n"]
    keep = [c for c in pool if c.kwargs["BLOCK_M"] <= max(32, triton.next_power_of_2(n))] or pool[:1]
    if kwargs.get("DETERMINISTIC", named_args.get("DETERMINISTIC")) or _capturing(named_args["Q"]):
        keep = keep[:1]  # the tile sizes set the summation order: a timed choice could differ between runs
    _UNTIMED.one = len(keep) == 1
    return keep


_PRUNE = {"early_config_prune": _prune}
_UNTIMED = threading.local()  # _prune left one config for the key being tuned (this thread): nothing to time
# Held around every autotuned launch. Triton's Autotuner keeps the call's arguments on the shared tuner object
# (self.nargs) while it prunes and times a new key, and clears them when any launch ends: two threads' first calls
# (an inference server) would prune or restore with none or the other's. The interpreter (TRITON_INTERPRET=1)
# patches module globals while it runs a kernel and is not thread-safe either. Launches are Python under the GIL
# anyway: the lock costs well under a microsecond and serialises nothing that ran in parallel.
LAUNCH_LOCK = threading.RLock()


def _do_bench(kernel_call, quantiles):
    """The autotuner's timer: triton's own, except where nothing is to be chosen. Triton < 3.7 times the configs
    _prune leaves even when only one is left (later versions skip that), which under CUDA graph capture
    synchronizes the capturing stream and invalidates the capture, and elsewhere costs a timed run per kernel and
    key (DETERMINISTIC, the FMA-only pools). With one config left, or while the stream captures, report a dummy
    time without running it; the autotuner then launches that config once, as usual."""
    if getattr(_UNTIMED, "one", False) or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
        return [0.0] * len(quantiles)
    return _benchmarker()(kernel_call, quantiles=quantiles)


def _benchmarker():
    """Triton's default autotune timer (what Autotuner uses without do_bench=)."""
    return triton.runtime.driver.active.get_benchmarker()


def split_tiles(arch: int, dot_precision: str | None, dtype_is_fp32: bool, head_dim: int) -> bool:
    """SPLIT: sweep the full tiles without masks (the scale folded into the exponent's FMA) and the partial last
    tile with them: about 20% fewer instructions in the forward's hot loop and 12% in the backward's (sm_80/sm_90
    SASS, `python -m yolov12_fast._aot`). Only for 16-bit tensor-core dots at head_dim <= 32: with FMA dots (sm_75,
    IEEE fp32), TF32 (fp32 tiles) and at head_dim 64+ the loop body's second copy costs registers, and spills (AOT
    table: 8 to 1336 bytes)."""
    return not dtype_is_fp32 and not uses_fma(arch, dot_precision, dtype_is_fp32) and head_dim <= 32


# --------------------------------------------------------------------------------------------------------------
# Shared device helpers


@triton.jit
def _program_tile(heads, n, BLOCK: tl.constexpr):
    """This program's (image b, head h) as 64-bit scalars, its area's first token (64-bit) and its tile of BLOCK
    positions inside the area with their mask. Grid: axis 0 = B*heads, axis 1 = area * tiles per area."""
    pid_bh = tl.program_id(0)
    n_tiles = tl.cdiv(n, BLOCK)
    area_start = (tl.program_id(1) // n_tiles).to(tl.int64) * n
    offs = (tl.program_id(1) % n_tiles) * BLOCK + tl.arange(0, BLOCK)
    return (pid_bh // heads).to(tl.int64), (pid_bh % heads).to(tl.int64), area_start, offs, offs < n


@triton.jit
def _load_tokens_by_d(base, offs_tok, offs_d, s_tok, s_d, mask_tok):
    """[tokens, HEAD_DIM] tile at base (an area's first token of one image and head); 32-bit offsets."""
    return tl.load(base + (offs_tok[:, None] * s_tok + offs_d[None, :] * s_d), mask=mask_tok[:, None], other=0.0)


@triton.jit
def _load_d_by_tokens(base, offs_tok, offs_d, s_tok, s_d, mask_tok):
    """[HEAD_DIM, tokens] (transposed) tile at base."""
    return tl.load(base + (offs_d[:, None] * s_d + offs_tok[None, :] * s_tok), mask=mask_tok[None, :], other=0.0)


# --------------------------------------------------------------------------------------------------------------
# Forward


@triton.jit
def _fwd_key_tile(q, k_base, v_base, start_n, n, s_kn, s_kd, s_vn, s_vd, qk_scale, m_i, l_i, acc, offs_d,
                  DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, NEG_SCALE: tl.constexpr):
    """One key tile of the online softmax. Full tiles (MASKED False: every key inside the area) take no masks and
    fold the scale into the exponent's FMA, s * qk_scale - m; the area's last, partial tile (MASKED) pays the
    masks. m_i is in base-2 scaled units: max(s) * qk_scale, or min(s) * qk_scale for a negative scale."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if MASKED:
        mask_n = offs_n < n
        kt = _load_d_by_tokens(k_base, offs_n, offs_d, s_kn, s_kd, mask_n)  # [HEAD_DIM, BLOCK_N]
        v = _load_tokens_by_d(v_base, offs_n, offs_d, s_vn, s_vd, mask_n)  # [BLOCK_N, HEAD_DIM]
        s = tl.where(mask_n[None, :], tl.dot(q, kt, input_precision=DOT_PRECISION) * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
    else:
        kt = tl.load(k_base + (offs_d[:, None] * s_kd + offs_n[None, :] * s_kn))
        v = tl.load(v_base + (offs_n[:, None] * s_vn + offs_d[None, :] * s_vd))
        s = tl.dot(q, kt, input_precision=DOT_PRECISION)  # raw scores, fp32
        if NEG_SCALE:
            m_new = tl.maximum(m_i, tl.min(s, 1) * qk_scale)
        else:
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    # A row whose scores so far are all -inf (fp32 overflow of finite inputs, -inf inputs) keeps m = -inf; it
    # subtracts the lowest finite float instead, or exp2(-inf - -inf) would make NaN of keys that have probability
    # 0 (-inf - m_use is still -inf). One max a row: 3 instructions an iteration on sm_80, a select costs 6.
    m_use = tl.maximum(m_new, -3.4028234663852886e38)
    if MASKED:
        p = tl.math.exp2(s - m_use[:, None])
    else:
        p = tl.math.exp2(s * qk_scale - m_use[:, None])  # one FMA and one exp2 per score
    alpha = tl.math.exp2(m_i - m_use)  # 0 while m_i = -inf
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


# seqs (seq_bucket): how many (image, head, area) sequences a launch covers, as a power of two. The kernels do not
# read it; it is in the key because the fastest tile depends on how many programs fill the GPU (a batch-1 launch has
# about 100 programs on an H100's 132 SMs, batch 32 thousands), so each batch size class is tuned on its own
# instead of reusing the first shape's choice. Not specialised on (do_not_specialize): one compiled kernel for all.
# restore_value: the in-place form writes Out over the residual it reads; every timed run of the autotuner would
# add the attention again (tests/test_area_attention.py runs the tuner with several configs under the interpreter)
# arch (the device's compute capability x10, unused in the kernels' bodies) keys the tuned config per GPU kind: a
# process with an A100 and a T4 would otherwise launch on the T4 a tile tuned (and pruned for shared memory) on the
# A100, which may not fit it.
FWD_AUTOTUNE = dict(key=["HEAD_DIM", "n", "seqs", "HAS_RESIDUAL", "DOT_PRECISION", "NEG_SCALE", "SPLIT",
                         "DETERMINISTIC", "arch"],
                    prune_configs_by=_PRUNE, restore_value=["Out"], do_bench=_do_bench)
BWD_AUTOTUNE = dict(key=["HEAD_DIM", "n", "seqs", "DOT_PRECISION", "SPLIT", "DETERMINISTIC", "arch"],
                    prune_configs_by=_PRUNE,
                    do_bench=_do_bench)



def _autotune(configs, **kw):
    """triton.autotune with our timer (`do_bench`) on every Triton version. Triton 3.2 (torch 2.6's) accepts
    do_bench in autotune() but does not hand it to its Autotuner, which then takes the driver's timer: it times a
    lone config and configs under CUDA graph capture (what _do_bench avoids), and asks the GPU driver for the timer
    when this module is imported, which raises where there is no GPU (the CPU interpreter). The Autotuner itself
    takes do_bench on every version."""
    def decorator(fn):
        try:
            tuner = triton.autotune(configs, **kw)(fn)
        except RuntimeError:  # triton 3.2 without a GPU driver: build the Autotuner with the timer directly
            from triton.runtime.autotuner import Autotuner

            tuner = Autotuner(fn, fn.arg_names, configs, kw["key"], kw.get("reset_to_zero"), kw.get("restore_value"),
                              prune_configs_by=kw.get("prune_configs_by"), do_bench=kw["do_bench"])
        tuner.do_bench = kw["do_bench"]  # triton 3.2 dropped it
        return tuner
    return decorator


@_autotune(configs=_configs(FWD_CONFIGS), **FWD_AUTOTUNE)
@triton.jit(do_not_specialize=["seqs", "arch"])
def area_attention_fwd_kernel(
    Q, K, V, R, Out, Lse,
    s_qb, s_qh, s_qd, s_qn,
    s_kb, s_kh, s_kd, s_kn,
    s_vb, s_vh, s_vd, s_vn,
    s_rb, s_rh, s_rd, s_rn,
    heads, N, n, qk_scale, seqs, arch,
    HEAD_DIM: tl.constexpr, HAS_RESIDUAL: tl.constexpr, DOT_PRECISION: tl.constexpr, NEG_SCALE: tl.constexpr,
    SPLIT: tl.constexpr, DETERMINISTIC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # -- which (image, head), area and query tile this program owns
    b, h, area_start, offs_m, mask_m = _program_tile(heads, n, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)

    # -- stage 1: load the query tile [BLOCK_M, HEAD_DIM]. Scalar bases are 64-bit; offsets inside one image
    # and head stay 32-bit (the launcher checks they fit), which keeps pointer tiles out of spare registers.
    q = _load_tokens_by_d(Q + b * s_qb + h * s_qh + area_start * s_qn, offs_m, offs_d, s_qn, s_qd, mask_m)

    k_base = K + b * s_kb + h * s_kh + area_start * s_kn
    v_base = V + b * s_vb + h * s_vh + area_start * s_vn

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running max of the base-2 scaled scores
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running sum of exp2(s - m_i)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # -- stage 2: sweep the keys of this area with an online softmax: with SPLIT full tiles without masks, then
    # the partial last tile (tokens per area not a multiple of BLOCK_N) with them; else every tile masked
    if SPLIT:
        n_full = (n // BLOCK_N) * BLOCK_N
        for start_n in range(0, n_full, BLOCK_N):
            m_i, l_i, acc = _fwd_key_tile(q, k_base, v_base, start_n, n, s_kn, s_kd, s_vn, s_vd, qk_scale, m_i, l_i,
                                          acc, offs_d, DOT_PRECISION, BLOCK_N, False, NEG_SCALE)
        if n_full < n:
            m_i, l_i, acc = _fwd_key_tile(q, k_base, v_base, n_full, n, s_kn, s_kd, s_vn, s_vd, qk_scale, m_i, l_i,
                                          acc, offs_d, DOT_PRECISION, BLOCK_N, True, NEG_SCALE)
    else:
        for start_n in range(0, n, BLOCK_N):
            m_i, l_i, acc = _fwd_key_tile(q, k_base, v_base, start_n, n, s_kn, s_kd, s_vn, s_vd, qk_scale, m_i, l_i,
                                          acc, offs_d, DOT_PRECISION, BLOCK_N, True, NEG_SCALE)

    # -- stage 3: normalise, add the residual, write out (contiguous) and lse (natural log)
    acc = acc / l_i[:, None]
    if HAS_RESIDUAL:
        r = _load_tokens_by_d(R + b * s_rb + h * s_rh + area_start * s_rn, offs_m, offs_d, s_rn, s_rd, mask_m)
        acc += r.to(tl.float32)
    o_base = Out + (b * heads + h) * HEAD_DIM * N + area_start
    tl.store(o_base + (offs_d[None, :] * N + offs_m[:, None]), acc.to(Out.dtype.element_ty), mask=mask_m[:, None])
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # ln(2): base-2 -> natural log
    tl.store(Lse + (b * heads + h) * N + area_start + offs_m, lse, mask=mask_m)


# --------------------------------------------------------------------------------------------------------------
# Backward: delta = rowsum(dO * O_attn); dk, dv per key tile; dq per query tile. No atomics: deterministic.


@triton.jit
def area_attention_bwd_preprocess_kernel(
    DO, O, R, Delta,
    s_dob, s_doh, s_dod, s_don,
    s_rb, s_rh, s_rd, s_rn,
    heads, N,
    HEAD_DIM: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    b = (pid_bh // heads).to(tl.int64)
    h = (pid_bh % heads).to(tl.int64)
    start = tl.program_id(1).to(tl.int64) * BLOCK
    offs = tl.arange(0, BLOCK)
    mask = start + offs < N
    offs_d = tl.arange(0, HEAD_DIM)
    do = tl.load(DO + b * s_dob + h * s_doh + start * s_don + (offs_d[None, :] * s_dod + offs[:, None] * s_don),
                 mask=mask[:, None], other=0.0).to(tl.float32)
    o = tl.load(O + (b * heads + h) * HEAD_DIM * N + start + (offs_d[None, :] * N + offs[:, None]),
                mask=mask[:, None], other=0.0).to(tl.float32)
    if HAS_RESIDUAL:  # out = attention + residual: the softmax gradient needs the attention part alone
        o -= tl.load(R + b * s_rb + h * s_rh + start * s_rn + (offs_d[None, :] * s_rd + offs[:, None] * s_rn),
                     mask=mask[:, None], other=0.0).to(tl.float32)
    tl.store(Delta + (b * heads + h) * N + start + offs, tl.sum(do * o, 1), mask=mask)


@triton.jit
def _dkdv_query_tile(k, v, q_base, do_base, Lse, Delta, row_base, start_m, n, s_qn, s_qd, s_don, s_dod, qk_scale,
                     dk, dv, offs_d, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr):
    """One query tile of the dk/dv sweep. Padding queries of the last tile (MASKED) get P = 2^-inf = 0 and zero dO:
    no overflow of 2^(0 - lse), nothing added to real keys."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    if MASKED:
        mask_m = offs_m < n
        qt = _load_d_by_tokens(q_base, offs_m, offs_d, s_qn, s_qd, mask_m)  # [HEAD_DIM, BLOCK_M]
        lse2 = tl.load(Lse + row_base + offs_m, mask=mask_m, other=0.0) * 1.4426950408889634  # log2(e)
        st = tl.dot(k, qt, input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
        pt = tl.math.exp2(tl.where(mask_m[None, :], st * qk_scale - lse2[None, :], float("-inf")))
        do = _load_tokens_by_d(do_base, offs_m, offs_d, s_don, s_dod, mask_m)  # [BLOCK_M, HEAD_DIM]
        delta = tl.load(Delta + row_base + offs_m, mask=mask_m, other=0.0)
    else:
        qt = tl.load(q_base + (offs_d[:, None] * s_qd + offs_m[None, :] * s_qn))
        lse2 = tl.load(Lse + row_base + offs_m) * 1.4426950408889634
        st = tl.dot(k, qt, input_precision=DOT_PRECISION)
        pt = tl.math.exp2(st * qk_scale - lse2[None, :])  # one FMA and one exp2 per score
        do = tl.load(do_base + (offs_m[:, None] * s_don + offs_d[None, :] * s_dod))
        delta = tl.load(Delta + row_base + offs_m)
    dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
    dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
    dst = pt * (dpt - delta[None, :])
    dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _dq_key_tile(q, do, lse2, delta, k_base, v_base, start_n, n, s_kn, s_kd, s_vn, s_vd, qk_scale, dq, offs_d,
                 DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr):
    """One key tile of the dq sweep; padding keys of the last tile (MASKED) get P = 0 (their columns are summed)."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if MASKED:
        mask_n = offs_n < n
        kt = _load_d_by_tokens(k_base, offs_n, offs_d, s_kn, s_kd, mask_n)
        vt = _load_d_by_tokens(v_base, offs_n, offs_d, s_vn, s_vd, mask_n)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION)
        p = tl.math.exp2(tl.where(mask_n[None, :], s * qk_scale - lse2[:, None], float("-inf")))
    else:
        kt = tl.load(k_base + (offs_d[:, None] * s_kd + offs_n[None, :] * s_kn))
        vt = tl.load(v_base + (offs_d[:, None] * s_vd + offs_n[None, :] * s_vn))
        s = tl.dot(q, kt, input_precision=DOT_PRECISION)
        p = tl.math.exp2(s * qk_scale - lse2[:, None])
    dp = tl.dot(do, vt, input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=DOT_PRECISION)


@_autotune(configs=_configs(BWD_CONFIGS), **BWD_AUTOTUNE)
@triton.jit(do_not_specialize=["seqs", "arch"])
def area_attention_bwd_dkdv_kernel(
    Q, K, V, DO, Lse, Delta, DK, DV,
    s_qb, s_qh, s_qd, s_qn,
    s_kb, s_kh, s_kd, s_kn,
    s_vb, s_vh, s_vd, s_vn,
    s_dob, s_doh, s_dod, s_don,
    heads, N, n, qk_scale, sm_scale, seqs, arch,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, SPLIT: tl.constexpr, DETERMINISTIC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b, h, area_start, offs_n, mask_n = _program_tile(heads, n, BLOCK_N)  # this program's key tile
    offs_d = tl.arange(0, HEAD_DIM)

    # -- stage 1: this program's key and value tiles [BLOCK_N, HEAD_DIM]
    k = _load_tokens_by_d(K + b * s_kb + h * s_kh + area_start * s_kn, offs_n, offs_d, s_kn, s_kd, mask_n)
    v = _load_tokens_by_d(V + b * s_vb + h * s_vh + area_start * s_vn, offs_n, offs_d, s_vn, s_vd, mask_n)

    q_base = Q + b * s_qb + h * s_qh + area_start * s_qn
    do_base = DO + b * s_dob + h * s_doh + area_start * s_don
    row_base = (b * heads + h) * N + area_start  # into lse / delta

    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    # -- stage 2: sweep the queries of the area, recomputing P^T from lse. With SPLIT full query tiles without
    # masks (rows of padding keys past the area's end hold garbage there, never stored), then the partial last tile
    # with them; else every tile masked
    if SPLIT:
        m_full = (n // BLOCK_M) * BLOCK_M
        for start_m in range(0, m_full, BLOCK_M):
            dk, dv = _dkdv_query_tile(k, v, q_base, do_base, Lse, Delta, row_base, start_m, n, s_qn, s_qd, s_don,
                                      s_dod, qk_scale, dk, dv, offs_d, DOT_PRECISION, BLOCK_M, False)
        if m_full < n:
            dk, dv = _dkdv_query_tile(k, v, q_base, do_base, Lse, Delta, row_base, m_full, n, s_qn, s_qd, s_don,
                                      s_dod, qk_scale, dk, dv, offs_d, DOT_PRECISION, BLOCK_M, True)
    else:
        for start_m in range(0, n, BLOCK_M):
            dk, dv = _dkdv_query_tile(k, v, q_base, do_base, Lse, Delta, row_base, start_m, n, s_qn, s_qd, s_don,
                                      s_dod, qk_scale, dk, dv, offs_d, DOT_PRECISION, BLOCK_M, True)

    # -- stage 3: write dk (times the softmax scale) and dv, contiguous
    out_base = (b * heads + h) * HEAD_DIM * N + area_start
    out_off = offs_d[None, :] * N + offs_n[:, None]
    tl.store(DK + out_base + out_off, (dk * sm_scale).to(DK.dtype.element_ty), mask=mask_n[:, None])
    tl.store(DV + out_base + out_off, dv.to(DV.dtype.element_ty), mask=mask_n[:, None])


@_autotune(configs=_configs(BWD_CONFIGS), **BWD_AUTOTUNE)
@triton.jit(do_not_specialize=["seqs", "arch"])
def area_attention_bwd_dq_kernel(
    Q, K, V, DO, Lse, Delta, DQ,
    s_qb, s_qh, s_qd, s_qn,
    s_kb, s_kh, s_kd, s_kn,
    s_vb, s_vh, s_vd, s_vn,
    s_dob, s_doh, s_dod, s_don,
    heads, N, n, qk_scale, sm_scale, seqs, arch,
    HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr, SPLIT: tl.constexpr, DETERMINISTIC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b, h, area_start, offs_m, mask_m = _program_tile(heads, n, BLOCK_M)  # this program's query tile
    offs_d = tl.arange(0, HEAD_DIM)
    row = (b * heads + h) * N + area_start + offs_m

    # -- stage 1: query tile, its upstream gradient and softmax statistics
    q = _load_tokens_by_d(Q + b * s_qb + h * s_qh + area_start * s_qn, offs_m, offs_d, s_qn, s_qd, mask_m)
    do = _load_tokens_by_d(DO + b * s_dob + h * s_doh + area_start * s_don, offs_m, offs_d, s_don, s_dod, mask_m)
    lse2 = tl.load(Lse + row, mask=mask_m, other=0.0) * 1.4426950408889634  # log2(e)
    delta = tl.load(Delta + row, mask=mask_m, other=0.0)

    k_base = K + b * s_kb + h * s_kh + area_start * s_kn
    v_base = V + b * s_vb + h * s_vh + area_start * s_vn
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # -- stage 2: sweep the keys of the area: with SPLIT full tiles without masks, then the partial last one with
    # them; else every tile masked
    if SPLIT:
        n_full = (n // BLOCK_N) * BLOCK_N
        for start_n in range(0, n_full, BLOCK_N):
            dq = _dq_key_tile(q, do, lse2, delta, k_base, v_base, start_n, n, s_kn, s_kd, s_vn, s_vd, qk_scale, dq,
                              offs_d, DOT_PRECISION, BLOCK_N, False)
        if n_full < n:
            dq = _dq_key_tile(q, do, lse2, delta, k_base, v_base, n_full, n, s_kn, s_kd, s_vn, s_vd, qk_scale, dq,
                              offs_d, DOT_PRECISION, BLOCK_N, True)
    else:
        for start_n in range(0, n, BLOCK_N):
            dq = _dq_key_tile(q, do, lse2, delta, k_base, v_base, start_n, n, s_kn, s_kd, s_vn, s_vd, qk_scale, dq,
                              offs_d, DOT_PRECISION, BLOCK_N, True)

    tl.store(DQ + (b * heads + h) * HEAD_DIM * N + area_start + (offs_d[None, :] * N + offs_m[:, None]),
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=mask_m[:, None])


# --------------------------------------------------------------------------------------------------------------
# Launchers (called by the yolov12_fast::area_attention_* ops after validation)


def user_allows_tf32() -> bool:
    """Whether the user opted into TF32 for fp32 matmuls: torch.set_float32_matmul_precision("high"/"medium"), the
    legacy torch.backends.cuda.matmul.allow_tf32, or the newer torch.backends.cuda.matmul.fp32_precision = "tf32"
    (after which torch.get_float32_matmul_precision() raises)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        return matmul.fp32_precision == "tf32"
    return torch.get_float32_matmul_precision() != "highest"


def dot_precision(dtype: torch.dtype) -> str:
    """IEEE fp32 dots for fp32 inputs unless the user opted into TF32; irrelevant (tf32) for 16-bit inputs."""
    if dtype == torch.float32 and (_interpret() or not user_allows_tf32()):
        return "ieee"
    return "tf32"


def tensor_arch(q: torch.Tensor) -> int:
    """The compute capability x10 of q's GPU; 90 under the interpreter (as on an sm_90)."""
    if q.is_cuda:
        major, minor = torch.cuda.get_device_capability(q.device)
        return 10 * major + minor
    return 90


def _launch_flags(q: torch.Tensor, prec: str) -> dict:
    """The constexprs every attention launch shares: SPLIT (split_tiles) and DETERMINISTIC."""
    return {"SPLIT": split_tiles(tensor_arch(q), prec, q.dtype == torch.float32, q.shape[2]),
            "DETERMINISTIC": torch.are_deterministic_algorithms_enabled()}


def seq_bucket(B: int, heads: int, area: int) -> int:
    """The autotuner's `seqs` key: B * heads * area (the sequences a launch covers) rounded up to a power of two,
    capped at 4096 (beyond that every tile fills an H100 many times over)."""
    return min(triton.next_power_of_2(max(1, B * heads * area)), 4096)


def _grid(B, heads, area, n):
    return lambda meta: (B * heads, area * triton.cdiv(n, meta["BLOCK_M"]))


def _check_launch(area, n, *tensors):
    """Limits of one launch: grid axis 1 (CUDA caps it at 65535) and 32-bit offsets inside one (image, head)."""
    tiles = area * triton.cdiv(n, 16)  # grid axis 1 at the smallest tile
    torch._check(tiles <= 65535, lambda: f"area_attention: {area * n} tokens per image is more than one launch "
                 f"covers ({tiles} tiles > 65535); split the feature map")
    from yolov12_fast._backends import check_image_extent

    check_image_extent("area_attention", tensors, "split the batch or the feature map")


def area_attention_fwd(q, k, v, area: int, scale: float, residual=None, out=None):
    """Launcher. `out`: a contiguous (B, heads, D, N) tensor to write into, which may be `residual` itself (out =
    residual + attention, in place: each program reads its residual tile before writing the same elements)."""
    B, heads, D, N = q.shape
    n = N // area
    if out is None:
        out = torch.empty((B, heads, D, N), device=q.device, dtype=q.dtype)
    torch._check(out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous(),
                 lambda: "area_attention (triton): out must be a contiguous tensor of q's shape and dtype")
    lse = torch.empty((B, heads, N), device=q.device, dtype=torch.float32)
    _check_launch(area, n, q, k, v, residual)
    prec = dot_precision(q.dtype)
    r = residual if residual is not None else q  # dummy pointer, never read
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext(), LAUNCH_LOCK:
        try:
            area_attention_fwd_kernel[_grid(B, heads, area, n)](
                q, k, v, r, out, lse,
                *q.stride(), *k.stride(), *v.stride(), *r.stride(),
                heads, N, n, scale * LOG2E, seq_bucket(B, heads, area), tensor_arch(q),
                HEAD_DIM=D, HAS_RESIDUAL=residual is not None, DOT_PRECISION=prec, NEG_SCALE=scale < 0,
                **_launch_flags(q, prec), **COMPILE_OPTIONS,
            )
        except Exception as e:
            capture_hint(e, "area_attention", q)
            raise
    return out, lse


def area_attention_bwd(dout, q, k, v, out, residual, lse, area: int, scale: float):
    B, heads, D, N = q.shape
    n = N // area
    out = out.contiguous()  # the forward wrote it contiguous; a no-op then
    lse = lse.contiguous()
    delta = torch.empty_like(lse)
    dq = torch.empty((B, heads, D, N), device=q.device, dtype=q.dtype)
    dk = torch.empty_like(dq)
    dv = torch.empty_like(dq)
    r = residual if residual is not None else dout
    prec = dot_precision(q.dtype)
    flags = _launch_flags(q, prec)
    _check_launch(area, n, q, k, v, dout, residual)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext(), LAUNCH_LOCK:
        try:
            block = 64
            area_attention_bwd_preprocess_kernel[(B * heads, triton.cdiv(N, block))](
                dout, out, r, delta, *dout.stride(), *r.stride(), heads, N,
                HEAD_DIM=D, HAS_RESIDUAL=residual is not None, BLOCK=block, **COMPILE_OPTIONS)
            common = (*q.stride(), *k.stride(), *v.stride(), *dout.stride(), heads, N, n, scale * LOG2E, scale,
                      seq_bucket(B, heads, area), tensor_arch(q))
            area_attention_bwd_dkdv_kernel[lambda meta: (B * heads, area * triton.cdiv(n, meta["BLOCK_N"]))](
                q, k, v, dout, lse, delta, dk, dv, *common, HEAD_DIM=D, DOT_PRECISION=prec, **flags,
                **COMPILE_OPTIONS)
            area_attention_bwd_dq_kernel[_grid(B, heads, area, n)](
                q, k, v, dout, lse, delta, dq, *common, HEAD_DIM=D, DOT_PRECISION=prec, **flags, **COMPILE_OPTIONS)
        except Exception as e:
            capture_hint(e, "area_attention backward", q)
            raise
    return dq, dk, dv



# --------------------------------------------------------------------------------------------------------------
# Ahead-of-time variants: every (kernel, dtype, head_dim, config) the op can launch, as triton.compile inputs.
# The specialisation mirrors the common launch: 16-byte aligned pointers, token stride 1 (NCHW conv outputs),
# other strides divisible by 16.

TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def aot_signature(fn, const: dict, dtype: torch.dtype, ints=("N",), fp32_ptrs=(), fp32_scalars=(), divisible=()):
    """(signature, attrs) for triton.compile of `fn` as the launchers specialise it: names in `const` are constexprs;
    other capitalised names are pointers to `dtype` (fp32 for `fp32_ptrs`) except the integer `ints`; lower-case
    names are i32 (fp32 for `fp32_scalars`). Pointers, strides (s_*), N and the names in `divisible` get Triton's
    divisible-by-16 hint, which the NCHW YOLO shapes (channels and token counts multiples of 16) give every launch
    there."""
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in const:
            sig[name] = "constexpr"
            continue
        if name in fp32_ptrs:
            sig[name] = "*fp32"
        elif name[0].isupper() and name not in ints:
            sig[name] = "*" + TRITON_DTYPE[dtype]
        else:
            sig[name] = "fp32" if name in fp32_scalars else "i32"
        if sig[name].startswith("*") or name.startswith("s_") or name == "N" or name in divisible:
            attrs[(i,)] = [["tt.divisibility", 16]]
    return sig, attrs


def aot_variants(arch: int, dtypes=(torch.float16, torch.bfloat16, torch.float32), head_dims=HEAD_DIMS,
                 odd_n: bool | None = None):
    """Yields, for one arch (compute capability x10), dicts with fn, signature, constexprs, attrs, num_warps,
    num_stages and a readable name: one per variant the op launches there.

    Triton specialises the tokens per area `n` on divisibility by 16. The YOLO shapes that matter (400, 1600, 240
    tokens) are multiples of 16: their kernels load K/V tiles with 16-byte cp.async; the others (300 at 480x640, 49)
    get scalar loads, more address registers. Both are compiled: every variant with `n % 16 == 0` (name tag `n16`),
    and with odd n (`n1`) the 16-bit head_dim-32 variants on sm_80/sm_90 (those must not spill either). Inputs are
    NCHW conv outputs (token stride 1) or, from channels_last models, token stride 3C and channel stride 1 (`cl`):
    compiled for fp16 head_dim 32 on sm_80/sm_90. odd_n=True compiles every variant every way (the slow AOT run),
    odd_n=False only the n16 NCHW ones."""
    kernels = [  # HAS_RESIDUAL=False: training's forward (the residual is added outside) and its backward
        (area_attention_fwd_kernel, FWD_CONFIGS, {"HAS_RESIDUAL": True, "NEG_SCALE": False}),
        (area_attention_fwd_kernel, FWD_CONFIGS, {"HAS_RESIDUAL": False, "NEG_SCALE": False}),
        (area_attention_bwd_dkdv_kernel, BWD_CONFIGS, {}),
        (area_attention_bwd_dq_kernel, BWD_CONFIGS, {}),
        (area_attention_bwd_preprocess_kernel, None, {"HAS_RESIDUAL": True}),
        (area_attention_bwd_preprocess_kernel, None, {"HAS_RESIDUAL": False}),
    ]
    pre_cfg = triton.Config({"BLOCK": 64}, num_warps=4, num_stages=1)
    for kernel, configs, extra in kernels:
        fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
        for dtype in dtypes:
            precisions = ["ieee", "tf32"] if dtype == torch.float32 else ["tf32"]
            if "DOT_PRECISION" not in fn.arg_names:
                precisions = [None]
            for prec in precisions:
                for d in head_dims:
                    hot = odd_n is None and dtype != torch.float32 and arch >= 80 and d == 32
                    specs = [(True, "nchw")]  # (n divisible by 16, layout)
                    more = "n" in fn.arg_names and (odd_n or extra.get("HAS_RESIDUAL") is not False)
                    if more and (odd_n or hot):  # without the residual only NCHW n16 (the slow run: every way)
                        specs.append((False, "nchw"))
                    if more and (odd_n or (hot and dtype == torch.float16)):
                        specs.append((True, "cl"))
                    fma = uses_fma(arch, prec, dtype == torch.float32)
                    tf32 = dtype == torch.float32 and prec == "tf32"
                    for cfg in configs_for(configs, arch, fma, tf32) if configs is not None else [pre_cfg]:
                        for n16, layout in specs:
                            const = {"HEAD_DIM": d, **extra, **cfg.kwargs}
                            if prec is not None:
                                const["DOT_PRECISION"] = prec
                            if "SPLIT" in fn.arg_names:
                                const["SPLIT"] = split_tiles(arch, prec, dtype == torch.float32, d)
                                const["DETERMINISTIC"] = False
                            # the unit stride specialised like a launch: tokens (NCHW) or channels (channels_last)
                            unit = "n" if layout == "nchw" else "d"
                            const.update({a: 1 for a in fn.arg_names if a.startswith("s_") and a.endswith(unit)})
                            sig, attrs = aot_signature(fn, const, dtype, ints=("N",), fp32_ptrs=("Lse", "Delta"),
                                                       fp32_scalars=("qk_scale", "sm_scale"),
                                                       divisible=("n",) if n16 else ())
                            tag = "/".join(f"{k}={v}" for k, v in cfg.kwargs.items())
                            ntag = "" if "n" not in fn.arg_names else (",n16" if n16 else ",n1")
                            ntag += ",cl" if layout == "cl" else ""
                            ntag += ",nores" if extra.get("HAS_RESIDUAL") is False else ""
                            yield dict(fn=fn, signature=sig, constexprs=const, attrs=attrs, num_warps=cfg.num_warps,
                                       num_stages=cfg.num_stages, dtype=str(dtype).replace("torch.", ""),
                                       name=f"{fn.__name__}[{TRITON_DTYPE[dtype]}{'' if prec in (None, 'tf32') or dtype != torch.float32 else '-ieee'}"
                                            f"{'-tf32' if prec == 'tf32' and dtype == torch.float32 else ''},d{d}{ntag},{tag},"
                                            f"w{cfg.num_warps}s{cfg.num_stages}]",
                                       tensor_cores_expected=not fma)
