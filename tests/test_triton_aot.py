"""Every Triton kernel variant the ops can launch compiles ahead of time for sm_75, sm_80 and sm_90 (no GPU
needed): no spills for head_dim <= 64 on sm_80/sm_90, tensor-core MMA in the SASS on sm_80/sm_90 where the dot
runs on 16-bit (or TF32) operands, shared memory within each arch's limit. The table is printed (run pytest
with -s, or see the captured output of a failure)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def aot_rows():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # FMA contraction off by default, as triton 3.10 announces: the kernels pin it on (COMPILE_OPTIONS), and
    # test_hot_loops_as_committed_with_triton_fp_fusion_default_off checks that the pin reaches these compiles.
    env["TRITON_DEFAULT_FP_FUSION"] = "0"
    # The default run covers head_dim 32 (every released config) and 64; the slow run adds 16 and 128.
    dims = [] if os.environ.get("YOLOV12_FAST_SLOW") == "1" else ["--head-dim", "32", "--head-dim", "64"]
    p = subprocess.run([sys.executable, "-m", "yolov12_fast._aot", "--json", *dims], capture_output=True, text=True,
                       env=env, timeout=1800)
    assert p.stdout.strip(), f"AOT compile printed nothing:\n{p.stderr[-4000:]}"
    rows = json.loads(p.stdout.strip().splitlines()[-1])
    from yolov12_fast._aot import format_table

    print("\n" + format_table(rows))
    return rows


def _d(row):
    return int(row["kernel"].split(",d")[1].split(",")[0])


def _must_not_spill(row):
    """Attention/PE kernels: head_dim <= 64 (128 may spill by design); others (MLP) say so in their variants."""
    return row["must_not_spill"] if "must_not_spill" in row else _d(row) <= 64


def test_every_variant_compiles_for_every_arch(aot_rows):
    failed = [(r["kernel"], r["arch"], r.get("error")) for r in aot_rows if not r.get("ok")]
    assert not failed, f"{len(failed)} variants failed to compile, first: {failed[:3]}"
    assert {r["arch"] for r in aot_rows} == {"sm_75", "sm_80", "sm_90"}


# Spills that a Triton release's toolchain brings into variants that compile spill-free with the release CI pins
# (torch 2.14.1's triton 3.8): {triton "major.minor": {(kernel, arch): (most spill bytes, most spill instructions
# inside a loop)}}. Triton 3.9 compiles sm_90 with its ptxas 13.4 and --regAllocOptLevel=2 (its workaround for a
# ptxas 13 bug), which holds these variants to 128 registers (3.8: 164 for the dK/dV tile, 128 for the PE) and spills
# 4-12 bytes: stored and reloaded outside the dK/dV hot loop, one 4-byte reload per row of taps in the PE (whose
# loop runs 5 times a program). Seen in their SASS on 2026-11-27 (torch 2.13.0+cpu with triton 3.9.0). A spill
# that grows, moves into a loop or appears elsewhere still fails the test.
TOOLCHAIN_SPILLS = {
    # triton 3.2 (torch 2.6, the oldest accepted): the channels-last 64x32 dK/dV tile spills 8 bytes on sm_90, outside
    # its loop (seen 2026-11-27; that release also cannot compile the Turing variants: README, torch / Triton)
    "3.2": {
        ("area_attention_bwd_dkdv_kernel[fp16,d32,n16,cl,BLOCK_M=64/BLOCK_N=32,w4s2]", "sm_90"): (8, 0),
    },
    "3.9": {
        ("area_attention_bwd_dkdv_kernel[fp16,d32,n16,BLOCK_M=32/BLOCK_N=32,w4s2]", "sm_90"): (8, 0),
        ("area_attention_bwd_dkdv_kernel[bf16,d32,n16,BLOCK_M=32/BLOCK_N=32,w4s2]", "sm_90"): (8, 0),
        ("pe_add_kernel[fp16,d32,k5,BLOCK_T=64,w4s1]", "sm_90"): (8, 1),
        ("pe_add_kernel[fp16,d64,k5,BLOCK_T=32,w4s1]", "sm_90"): (8, 1),
    },
}


def test_no_spills_for_head_dim_up_to_64_on_sm80_sm90(aot_rows):
    import triton

    known = TOOLCHAIN_SPILLS.get(".".join(triton.__version__.split(".")[:2]), {})
    spilling = [(r["kernel"], r["arch"], r["spills"], r["loop_spill_instr"]) for r in aot_rows
                if r["arch"] in ("sm_80", "sm_90") and _must_not_spill(r) and r["spills"] > 0]
    unexplained = [s for s in spilling if not (s[:2] in known and s[2] <= known[s[:2]][0]
                                               and s[3] <= known[s[:2]][1])]
    assert not unexplained, (f"spills (kernel, arch, bytes, spill instructions in loops) with triton "
                             f"{triton.__version__}: {unexplained[:5]}")
    if spilling:
        print(f"\ntriton {triton.__version__}'s toolchain spills, as TOOLCHAIN_SPILLS records: {spilling}")


def test_loop_spill_count_on_known_sass():
    """loop_spills counts local-memory instructions between a backward branch and its target, not elsewhere."""
    from yolov12_fast._aot import loop_spills

    sass = """
        /*0100*/                   STL [R1], R6 ;
        /*0110*/                   FFMA R24, R25, R26, R27 ;
        /*0120*/                   LDL R70, [R1] ;
        /*0130*/              @P1 BRA 0x110 ;
        /*0140*/                   LDL.LU R4, [R1+0x4] ;
        /*0150*/                   BRA 0x150;
"""
    assert loop_spills(sass) == 1
    assert loop_spills(sass.replace("BRA 0x110", "BRA 0x100")) == 2
    assert loop_spills(sass.replace("@P1 BRA 0x110", "@P1 BRA 0x140")) == 0  # a forward branch is no loop


def test_tensor_cores_on_sm80_sm90(aot_rows):
    missing = [(r["kernel"], r["arch"]) for r in aot_rows
               if r["arch"] in ("sm_80", "sm_90") and r["tensor_cores_expected"] and "preprocess" not in r["kernel"]
               and r["mma"] == 0]
    assert not missing, f"no HMMA/HGMMA in the SASS of {missing[:5]}"


def test_shared_memory_within_limits(aot_rows):
    over = [(r["kernel"], r["arch"], r["smem"], r["smem_limit"]) for r in aot_rows if r["smem"] > r["smem_limit"]]
    assert not over, f"shared memory over the arch limit: {over[:5]}"


SASS_LOOP = """
        /*0100*/                   MOV R1, c[0x0][0x28] ;
        /*0110*/                   HMMA.16816.F32 R4, R8, R12, R4 ;
        /*0120*/                   HMMA.16816.F32 R16, R8, R14, R16 ;
        /*0130*/                   MUFU.EX2 R20, R21 ;
        /*0140*/                   MUFU.EX2 R22, R23 ;
        /*0150*/                   FFMA R24, R25, R26, R27 ;
        /*0160*/                   FSEL R28, R29, -INF , P0 ;
        /*0170*/                   LDG.E.U16 R30, desc[UR4][R2.64] ;
        /*0180*/              @!P0 BRA 0x110 ;
        /*0190*/                   EXIT ;
"""


def test_hot_loops_as_committed_with_triton_fp_fusion_default_off(aot_rows):
    """The rows were compiled with triton's FMA-contraction default turned off (the fixture); proxies.json was
    written with it on (triton <= 3.9's default). With the pin every hot loop is the same; without it the sm_80
    fp16 attention forward's loop grows from 275 to 306 instructions (FMUL + FADD where one FFMA was)."""
    import triton

    committed = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "proxies.json").read_text())
    if committed["meta"].get("triton") != triton.__version__:
        pytest.skip(f"proxies.json was written with triton {committed['meta'].get('triton')}, this is "
                    f"{triton.__version__}: other SASS (python -m benchmarks proxies rewrites it)")
    old = {(r["kernel"], r["arch"]): r["loop_instr"] for r in committed["triton_aot"] if "loop_instr" in r}
    new = {(r["kernel"], r["arch"]): r["loop"]["instr"] for r in aot_rows if r.get("ok") and r.get("loop")}
    both = old.keys() & new.keys()
    assert len(both) >= 20, f"only {len(both)} hot loops in common with proxies.json"
    changed = {k: (old[k], new[k]) for k in both if old[k] != new[k]}
    assert not changed, f"hot loops (committed, now) differ with TRITON_DEFAULT_FP_FUSION=0: {changed}"


def test_every_launch_pins_fma_contraction(monkeypatch):
    """Every kernel the ops launch gets COMPILE_OPTIONS (enable_fp_fusion=True), so a triton whose default is off
    compiles the same code: each launch's keyword arguments are recorded while the ops run (interpreter on CPU,
    compiled on a GPU), and every launchable kernel (the AOT variants) must have been launched."""
    import triton

    import yolov12_fast
    from yolov12_fast._aot import KERNEL_MODULES, _variants
    import importlib

    launchable = {id(v["fn"]): v["fn"] for m in KERNEL_MODULES for v in _variants(m, 90, (32,))}
    seen = {}
    for fn in launchable.values():
        def run(*args, _fn=fn, _run=fn.run, **kwargs):
            seen.setdefault(_fn.__name__, []).append(kwargs.get("enable_fp_fusion"))
            return _run(*args, **kwargs)
        monkeypatch.setattr(fn, "run", run)
    for m in KERNEL_MODULES:
        importlib.import_module(m)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    B, heads, D, H, W = 1, 2, 32, 3, 5
    qkv = torch.randn(B, 3 * heads * D, H * W, device=dev).view(B, heads, 3 * D, H * W).requires_grad_()
    q, k, v = qkv.split(D, dim=2)
    pe_w, pe_b = torch.randn(heads * D, 1, 5, 5, device=dev), torch.randn(heads * D, device=dev)
    p = yolov12_fast.pe_add(v.detach(), pe_w, pe_b, H, W, backend="triton")
    yolov12_fast.area_attention(q, k, v, 1, residual=p, backend="triton").sum().backward()
    x = torch.randn(B, 16, H, W, device=dev)
    w1, b1 = torch.randn(32, 16, 1, 1, device=dev), torch.randn(32, device=dev)
    w2, b2 = torch.randn(16, 32, 1, 1, device=dev), torch.randn(16, device=dev)
    yolov12_fast.mlp_residual(x, w1, b1, w2, b2, backend="triton")
    yolov12_fast.conv1x1_silu_residual(x, w2.transpose(0, 1).contiguous(), b1, backend="triton")
    names = {fn.__name__ for fn in launchable.values()}
    assert set(seen) == names, f"not launched: {names - set(seen)}"
    unpinned = {name: flags for name, flags in seen.items() if not all(f is True for f in flags)}
    assert not unpinned, f"launches without enable_fp_fusion=True: {unpinned}"


def test_hot_loop_model_on_known_sass():
    """The static model's parsing and arithmetic on a hand-written loop: 8 instructions, 2 HMMA.16816 (2 x 4096
    FLOPs), 2 MUFU, one FMA, one select, one scalar load. On sm_80 the MUFU pipe (0.5 / clock: 4 cycles) beats
    issue (8 / 4 = 2), FMA (0.5), ALU (0.5) and the tensor cores (8192 / 2048 = 4 cycles, a tie broken by order)."""
    from yolov12_fast._aot import hot_loop, loop_model

    mix = hot_loop(SASS_LOOP)
    assert mix["instr"] == 8 and mix["mma"] == 2 and mix["mufu"] == 2 and mix["fma"] == 1 and mix["fsel"] == 1
    assert mix["tensor_sync_flops"] == 2 * 4096 and mix["scalar_ldg"] == 1
    m = loop_model(80, mix)
    assert m["cycles"]["mufu"] == 4 and m["cycles"]["tensor"] == 4 and m["cycles"]["issue"] == 2
    assert m["tensor_pct"] == 100.0
    m90 = loop_model(90, mix)  # mma.sync on sm_90 at 2/3 of 4096 FLOPs / clock: 3 cycles; MUFU bounds at 4
    assert m90["bound"] == "mufu" and abs(m90["tensor_pct"] - 75.0) < 1e-6
    assert hot_loop(SASS_LOOP.replace("HMMA", "HADD2")) is None  # no tensor-core loop: no model


SASS_NESTED = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDS R2, [R3] ;
        /*0020*/                   HMMA.16816.F32 R4, R8, R12, R4 ;
        /*0030*/                   HMMA.16816.F32 R4, R8, R12, R4 ;
        /*0040*/                   MUFU.EX2 R5, R5 ;
        /*0050*/               @P0 BRA 0x20 ;
        /*0060*/                   HMMA.16816.F32 R4, R8, R12, R4 ;
        /*0070*/                   FSEL R5, R5, -INF , P1 ;
        /*0080*/               @P1 BRA 0x60 ;
        /*0090*/                   IADD3 R1, R1, 0x1, RZ ;
        /*00a0*/               @P2 BRA 0x10 ;
        /*00b0*/                   EXIT ;
"""


def test_inner_mma_loop_picks_the_innermost_loop_with_the_most_mma():
    """The CUDA attention kernels unroll a 64-key, a 16-key and a masked 16-key block loop (per scale sign) inside
    the sweep over key chunks: proxies record the key-block loop (inner_mma_loop), not the outer sweep hot_loop
    picks (it holds the most tensor-core instructions)."""
    from yolov12_fast._aot import hot_loop, inner_mma_loop

    assert hot_loop(SASS_NESTED)["instr"] == 10 and hot_loop(SASS_NESTED)["mma"] == 3  # 0x10-0xa0
    inner = inner_mma_loop(SASS_NESTED)
    assert inner["instr"] == 4 and inner["mma"] == 2 and inner["mufu"] == 1  # 0x20-0x50, not 0x60-0x80
    assert inner_mma_loop(SASS_NESTED.replace("HMMA", "HADD2")) is None


def test_attention_hot_loops_take_no_masks_and_vector_loads(aot_rows):
    """The YOLO shape class (fp16/bf16, head_dim 32, tokens per area a multiple of 16: 400, 1600, 240) on sm_80 and
    sm_90: the hot loop applies no per-score masks (SPLIT: full tiles unmasked, the partial tile after the loop)
    and loads its K/V (Q/dO) tiles without 2-byte scalar loads or shared stores (16-byte cp.async). The static
    model of each hot loop is printed (bounding pipe and the tensor-core share it allows)."""
    rows = [r for r in aot_rows if r.get("ok") and r["arch"] in ("sm_80", "sm_90") and ",d32,n16," in r["kernel"]
            and r["dtype"] in ("float16", "bfloat16") and "preprocess" not in r["kernel"]]
    assert len(rows) >= 2 * 2 * 7, f"expected every fp16/bf16 d32 attention variant on sm_80/sm_90, got {len(rows)}"
    for r in rows:
        print(f"{r['kernel']:<72} {r['arch']}: loop {r['loop']['instr']} instr, {r['loop_bound']}-bound, "
              f"tensor cores at most {r['loop_tensor_pct']:.0f}%")
    bad = [(r["kernel"], r["arch"], {k: r["loop"][k] for k in ("fsel", "scalar_ldg", "scalar_sts")}) for r in rows
           if r["loop"]["fsel"] or r["loop"]["scalar_ldg"] or r["loop"]["scalar_sts"]]
    assert not bad, f"masked or scalar hot loops: {bad[:4]}"


EXP2_SASS_SCRIPT = r"""
import os, re, subprocess, sys, tempfile
os.environ.pop("TRITON_INTERPRET", None)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
sys.path.insert(0, sys.argv[1])
from benchmarks import ceilings
from yolov12_fast._aot import _bin, hot_loop
fn = ceilings._exp2_kernel()
k = triton.compile(ASTSource(fn=fn, signature={"x_ptr": "*fp32", "out_ptr": "*fp32", "ITERS": "constexpr",
                                               "BLOCK": "constexpr"}, constexprs={"ITERS": 64, "BLOCK": 1024}),
                   target=GPUTarget("cuda", int(sys.argv[2]), 32), options={"num_warps": 4, "num_stages": 1})
with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
    f.write(k.asm["cubin"]); f.flush()
    sass = subprocess.run([_bin("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True).stdout
loops = [m for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?BRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)", sass)
         if int(m.group(2), 16) < int(m.group(1), 16)]
body = sass[sass.index("/*%04x*/" % int(loops[0].group(2), 16)):loops[0].end()] if loops else ""
print(len(loops), body.count("MUFU.EX2"), sass.count("MUFU.EX2"))
"""


@pytest.mark.parametrize("arch", [90])  # the arch of the GPU machines (one compile: CI time)
def test_exp2_ceiling_kernel_measures_the_special_function_unit(arch):
    """benchmarks/ceilings.py's exp2-rate kernel, compiled for the GPU: a loop whose body holds MUFU.EX2 (the
    exponentials are not folded away or moved out of the loop), so its timing is the exp2 rate of the unit the
    attention softmax runs on."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", EXP2_SASS_SCRIPT, root, str(arch)], capture_output=True, text=True,
                       env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    loops, in_loop, total = map(int, p.stdout.split())
    assert loops >= 1 and in_loop >= 4, f"sm_{arch}: {loops} loops, {in_loop} MUFU.EX2 in the loop ({total} in all)"


PE_LAYOUT_SCRIPT = r"""
import os, re, sys
os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, sys.argv[1])
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from yolov12_fast import _aot
from yolov12_fast.kernels import pe
from yolov12_fast.kernels.area_attention import COMPILE_OPTIONS
v = next(v for v in pe.aot_variants(90, dtypes=(torch.float16,), head_dims=(32,)) if ",k7," in v["name"])
k = triton.compile(_aot._ast_source(ASTSource, v), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": v["num_warps"], "num_stages": v["num_stages"], **COMPILE_OPTIONS})
ir = k.asm["ttgir"]
layouts = dict(re.findall(r"^(#\w+) = (#ttg\.blocked<.*>)$", ir, re.M))
loads = re.findall(r"tt\.load .*-> tensor<32x64xf16, (#\w+)>|tt\.load .*: tensor<32x64x!tt\.ptr<f16>, (#\w+)>", ir)
print(triton.__version__)
for a, b in loads:
    print(layouts.get(a or b, a or b))
"""


def _triton_builds():
    """The installed Triton, and the one under $YOLOV12_FAST_EXTRA_TRITON (CI unpacks there the Triton that the GPU
    machines' torch 2.11 pins, 3.6, whose code generation differs)."""
    extra = os.environ.get("YOLOV12_FAST_EXTRA_TRITON")
    return ["installed"] + ([extra] if extra else [])


@pytest.mark.parametrize("triton_path", _triton_builds())
def test_pe_kernel_lays_each_warp_along_the_tokens(triton_path):
    """The PE kernel's V loads (a 32-channel x 64-token tile per tap, tokens contiguous in memory) must put a warp's
    32 lanes on 32 consecutive tokens: one 64-byte row per load. Written with the tap's token as yy * W + xx, Triton
    3.6 could not see the tokens contiguous and put each warp across 32 channels (32 sectors per load, through a
    shared-memory layout conversion): the H100 measured that kernel at 2.3-2.4 ms at P4 h8 batch 32, 17x the CUDA
    kernel (benchmarks/results/nvidia-h100-80gb-hbm3-2026-11-27b). Checked in the compiled TTGIR (sm_90)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if triton_path != "installed":
        env["PYTHONPATH"] = triton_path + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", PE_LAYOUT_SCRIPT, root], capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    version, *layouts = p.stdout.strip().splitlines()
    assert layouts, f"triton {version}: no 32x64 fp16 load found in the PE kernel's TTGIR"
    for layout in layouts:
        assert "threadsPerWarp = [1, 32]" in layout and "order = [1, 0]" in layout, \
            f"triton {version}: a V load of the PE kernel is not laid along the tokens: {layout}"
