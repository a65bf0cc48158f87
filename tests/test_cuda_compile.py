"""Compile-time proof of the CUDA C++ kernels (csrc/cuda/*.cu), runnable without a GPU.

Every .cu is compiled with nvcc for sm_75, sm_80 and sm_90a with the flags setup.py uses plus `-Xptxas -v`;
the per-kernel ptxas report (registers, stack, spill stores/loads, static shared memory) is printed as a table
and checked: clean compile (no warnings), no spills, no local-memory traffic, static shared memory within the
48 KB static limit, and the tensor-core instructions in the SASS (HMMA for mma.sync, LDSM for ldmatrix) where
they belong. Dynamic shared memory is decided at launch time by `area_attention_fwd_plan` (pure host code):
a small driver program calls it for every arch's limits and the test checks the plans fit.

What this cannot prove: that the kernels compute the right numbers. tests/test_cuda_kernels.py does that on a
GPU machine.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_SRC = os.path.join(ROOT, "csrc", "cuda")
ARCHS = ("sm_75", "sm_80", "sm_90a")
# setup.py's nvcc flags; torch adds -std=c++20 (>= 2.13) or -std=c++17 (the GPU machines' 2.11): the kernels are
# compiled with c++17 for every arch here and with c++20 once (test_compiles_as_cxx20).
NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo", "-std=c++17"]

# Shared memory per arch (CUDA programming guide, compute capabilities table): max dynamic shared memory per
# block after opting in, and per SM. sm_86/sm_89 are checked too (they run the sm_80 cubin).
SMEM_OPTIN = {"sm_75": 65536, "sm_80": 166912, "sm_86": 101376, "sm_89": 101376, "sm_90a": 232448}
SMEM_PER_SM = {"sm_75": 65536, "sm_80": 167936, "sm_86": 102400, "sm_89": 102400, "sm_90a": 233472}
CC = {"sm_75": (7, 5), "sm_80": (8, 0), "sm_86": (8, 6), "sm_89": (8, 9), "sm_90a": (9, 0)}
STATIC_SMEM_LIMIT = 48 * 1024


def _find_nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def _find_cuobjdump(nvcc: str) -> str | None:
    cand = os.path.join(os.path.dirname(nvcc), "cuobjdump")
    if os.path.exists(cand):
        return cand
    if shutil.which("cuobjdump"):
        return shutil.which("cuobjdump")
    try:  # the triton wheel bundles one
        import triton

        cand = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        return cand if os.path.exists(cand) else None
    except Exception:
        return None


NVCC = _find_nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set CUDA_HOME or install the CUDA toolkit): "
                                                     "the compile-time checks of csrc/cuda need it")
SOURCES = sorted(glob.glob(os.path.join(CUDA_SRC, "*.cu")))


@dataclass
class KernelStats:
    source: str
    arch: str
    mangled: str
    name: str
    regs: int = -1
    stack: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    smem: int = 0


@dataclass
class Compiled:
    source: str
    arch: str
    returncode: int
    log: str
    cubin: str
    kernels: list


def _demangle(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    if len(out) != len(names):
        return {n: n for n in names}
    short = {}
    for n, d in zip(names, out):
        d = re.sub(r"\(.*\)$", "", d)  # drop the parameter list
        d = d.replace("yolov12_fast::cuda::detail::", "").replace("(anonymous namespace)::", "")
        short[n] = d
    return short


def parse_ptxas(log: str, source: str, arch: str) -> list[KernelStats]:
    """Per-entry stats from `ptxas -v`: the 'Compiling entry function' line opens an entry, its 'Function
    properties' block gives stack/spills, its 'Used N registers' line registers and static smem."""
    kernels: dict[str, KernelStats] = {}
    current = None
    props_for = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            current = kernels.setdefault(m.group(1), KernelStats(source, arch, m.group(1), m.group(1)))
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            props_for = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and props_for is not None:
            target = kernels.get(props_for)
            if target is not None:
                target.stack, target.spill_stores, target.spill_loads = map(int, m.groups())
            elif current is not None:  # a noinline device function: its spills count against its caller
                current.spill_stores = max(current.spill_stores, 0) + int(m.group(2))
                current.spill_loads = max(current.spill_loads, 0) + int(m.group(3))
            props_for = None
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and current is not None:
            current.regs = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current.smem = int(s.group(1)) if s else 0
    names = _demangle(list(kernels))
    for k in kernels.values():
        k.name = names[k.mangled]
    return list(kernels.values())


def _compile(source: str, arch: str, outdir: str) -> Compiled:
    cubin = os.path.join(outdir, f"{os.path.basename(source)}.{arch}.cubin")
    cmd = [NVCC, *NVCC_FLAGS, "-Xptxas", "-v", f"-arch={arch}", "-cubin", "-I", CUDA_SRC, "-o", cubin, source]
    r = subprocess.run(cmd, capture_output=True, text=True)
    log = r.stdout + r.stderr
    return Compiled(source, arch, r.returncode, log, cubin, parse_ptxas(log, source, arch))


@pytest.fixture(scope="module")
def workdir():
    d = tempfile.mkdtemp(prefix="yolov12_fast_nvcc_")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def compiled(workdir) -> dict:
    """{(source basename, arch): Compiled}, compiled once for the module (two at a time)."""
    jobs = [(s, a) for s in SOURCES for a in ARCHS]
    with ThreadPoolExecutor(max_workers=2) as ex:
        results = list(ex.map(lambda sa: _compile(sa[0], sa[1], workdir), jobs))
    return {(os.path.basename(c.source), c.arch): c for c in results}


@functools.lru_cache(maxsize=None)
def _sass(cuobjdump: str, cubin: str) -> dict[str, str]:
    """{mangled function name: its SASS}."""
    text = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
    out, name, buf = {}, None, []
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            if name:
                out[name] = "\n".join(buf)
            name, buf = m.group(1), []
        elif name:
            buf.append(line)
    if name:
        out[name] = "\n".join(buf)
    return out


def test_sources_present_and_torch_free():
    assert SOURCES, f"no .cu files in {CUDA_SRC}"
    for src in SOURCES + glob.glob(os.path.join(CUDA_SRC, "*.h")):
        text = open(src).read()
        includes = re.findall(r'#\s*include\s*[<"]([^>"]+)[>"]', text)
        bad = [i for i in includes if i.split("/")[0] in ("torch", "ATen", "c10", "pybind11") or i == "Python.h"]
        assert not bad, f"{os.path.basename(src)} includes {bad}: keep torch headers in the .cpp glue (STYLE/NO-GPU)"


def test_ptxas_table(compiled, capsys):
    """Print (kernel, arch, regs, stack, spills, static smem) for every kernel; fails on any compile error."""
    rows = []
    for (src, arch), c in sorted(compiled.items()):
        assert c.returncode == 0, f"nvcc failed for {src} on {arch}:\n{c.log}"
        for k in sorted(c.kernels, key=lambda k: k.name):
            rows.append((src, k.name, arch, k.regs, k.stack, k.spill_stores, k.spill_loads, k.smem))
    header = ("source", "kernel", "arch", "regs", "stack", "spill st", "spill ld", "static smem")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
    with capsys.disabled():
        print("\n\nptxas -v per kernel (csrc/cuda/*.cu):\n" + "\n".join(lines) + "\n")
    assert rows


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", [os.path.basename(s) for s in SOURCES])
def test_compiles_clean_without_spills(compiled, source, arch):
    c = compiled[(source, arch)]
    assert c.returncode == 0, f"nvcc failed:\n{c.log}"
    warnings = [l for l in c.log.splitlines() if re.search(r"\bwarning\b", l, re.I)]
    assert not warnings, "nvcc/ptxas warnings:\n" + "\n".join(warnings)
    assert c.kernels, f"no kernels found in the ptxas report of {source} ({arch}):\n{c.log}"
    for k in c.kernels:
        assert k.regs > 0, f"{k.name}: no register count parsed"
        assert k.spill_stores == 0 and k.spill_loads == 0, (
            f"{k.name} ({arch}) spills: {k.spill_stores} B stores, {k.spill_loads} B loads, {k.regs} registers")
        assert k.stack == 0, f"{k.name} ({arch}) uses a {k.stack}-byte stack frame (local memory)"
        assert k.smem <= STATIC_SMEM_LIMIT, f"{k.name} ({arch}) static smem {k.smem} > {STATIC_SMEM_LIMIT}"


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_key_block_variants_fit_their_occupancy(compiled, arch):
    """The head_dim-32 forward's register budgets, which set how many warps share an SM: the default (64-key steps)
    <= 128 registers (2 CTAs of 8 warps on sm_80+, 16 warps), the 32-key variant <= 85 on sm_90 (65536 / (3 x 256):
    3 CTAs of 8 warps, 24 warps; the point of the variant; sm_80's shared memory holds 2 such CTAs anyway), both
    without spills (checked above for every kernel)."""
    c = compiled[("area_attention_fwd.cu", arch)]
    assert c.returncode == 0, c.log
    fwd32 = [k for k in c.kernels if "area_attention_fwd_kernel" in k.mangled and "Li32E" in k.mangled]
    small = [k for k in fwd32 if "Li32ELi32E" in k.mangled]
    assert len(fwd32) == 4 and len(small) == 2, [k.name for k in fwd32]
    for k in fwd32:
        if "bfloat16" in k.mangled and arch == "sm_75":
            continue  # the trap stub
        bound = 85 if "Li32ELi32E" in k.mangled and arch == "sm_90a" else 128
        assert 0 < k.regs <= bound, f"{k.name} ({arch}): {k.regs} registers, more than {bound}"


@pytest.mark.parametrize("source", [os.path.basename(s) for s in SOURCES])
def test_compiles_as_cxx20(workdir, source):
    src = os.path.join(CUDA_SRC, source)
    out = os.path.join(workdir, source + ".cxx20.cubin")
    cmd = [NVCC, *[f for f in NVCC_FLAGS if not f.startswith("-std=")], "-std=c++20", "-arch=sm_80", "-cubin",
           "-I", CUDA_SRC, "-o", out, src]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0 and "warning" not in (r.stdout + r.stderr).lower(), r.stdout + r.stderr


@pytest.mark.parametrize("arch", ARCHS)
def test_tensor_core_instructions_in_sass(compiled, arch):
    """HMMA (mma.sync) and LDSM (ldmatrix) in every attention kernel that the arch can run; no local memory.
    bf16 mma.sync needs sm_80: on sm_75 the bf16 kernels are a trap stub (the glue refuses bf16 there)."""
    cuobjdump = _find_cuobjdump(NVCC)
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (neither next to nvcc nor bundled with triton)")
    c = compiled[("area_attention_fwd.cu", arch)]
    assert c.returncode == 0, c.log
    sass = _sass(cuobjdump, c.cubin)
    kernels = {name: text for name, text in sass.items() if "area_attention_fwd_kernel" in name}
    assert len(kernels) == 6, (f"expected (fp16, bf16) x (head_dim 32 with 64- and 32-key steps, head_dim 64) "
                               f"kernels, got {list(kernels)}")
    for name, text in kernels.items():
        bf16 = "nv_bfloat16" in name
        if bf16 and arch == "sm_75":
            assert "HMMA" not in text and "TRAP" in text, f"{name}: expected the sm_75 bf16 trap stub"
            continue
        assert "HMMA" in text, f"{name} ({arch}): no HMMA in the SASS: the tensor cores are not used"
        assert "LDSM" in text, f"{name} ({arch}): no LDSM (ldmatrix) in the SASS"
        local = [l for l in text.splitlines() if re.search(r"\b(LDL|STL)\b", l)]
        assert not local, f"{name} ({arch}): local-memory instructions:\n" + "\n".join(local[:5])
        # head_dim 32: per 64-key block 16 + 16 m16n8k16 products, per 16-key block 4 + 4; three block codes (64 keys,
        # 16 keys, the masked last 16) for each scale sign: 2 x (32 + 8 + 8) (sm_75 splits each product in two);
        # with 32-key steps (template arguments <T, 32, 32>) 2 x (16 + 8 + 8); head_dim 64 twice the 64-key count
        hmma = text.count("HMMA")
        expect = (64 if "Li32ELi32E" in name else 96 if "Li32E" in name else 192) * (2 if arch == "sm_75" else 1)
        assert hmma == expect, f"{name} ({arch}): {hmma} HMMA instructions, expected {expect}"


@pytest.mark.parametrize("arch", ARCHS)
def test_async_staging_in_sass(compiled, arch):
    """sm_80+ code stages K / V (forward) and the swept tensors (backward) with cp.async: LDGSTS in all three vector
    widths (16, 8 and 4 bytes, zero-filling past the area) and the wait (LDGDEPBAR + DEPBAR) before the CTA's barrier.
    sm_75 has no cp.async: its code keeps the register staging (no LDGSTS)."""
    cuobjdump = _find_cuobjdump(NVCC)
    if cuobjdump is None:
        pytest.skip("cuobjdump not found (neither next to nvcc nor bundled with triton)")
    for source, kernel in (("area_attention_fwd.cu", "area_attention_fwd_kernel"),
                           ("area_attention_bwd.cu", "area_attention_bwd_kernel")):
        c = compiled[(source, arch)]
        assert c.returncode == 0, c.log
        kernels = {name: text for name, text in _sass(cuobjdump, c.cubin).items() if kernel in name}
        assert kernels, f"no {kernel} in the SASS of {source} ({arch})"
        for name, text in kernels.items():
            if "HMMA" not in text:  # the sm_75 bf16 trap stub
                continue
            ldgsts = re.findall(r"\bLDGSTS(\S*)", text)  # the opcode's modifiers (the operands say .64 too)
            if arch == "sm_75":
                assert not ldgsts, f"{name} ({arch}): LDGSTS in Turing code"
                continue
            widths = {"128" if ".128" in m else "64" if ".64" in m else "32" for m in ldgsts}
            assert widths == {"128", "64", "32"}, f"{name} ({arch}): LDGSTS widths {sorted(widths)}, expected 32/64/128"
            assert "LDGDEPBAR" in text and "DEPBAR.LE" in text, f"{name} ({arch}): cp.async without its wait"


# ---------------------------------------------------------------------------------------------------------
# dynamic shared memory: the launch plan for every arch

PLAN_DRIVER = r"""
#include <cstdio>
#include <cstdlib>
#include "kernels.h"
// usage: plan cc_major cc_minor smem_optin smem_per_sm n1 d1 n2 d2 ...
int main(int argc, char** argv) {
  using namespace yolov12_fast::cuda;
  DeviceInfo dev{};
  dev.sm_count = 100;
  dev.cc_major = atoi(argv[1]);
  dev.cc_minor = atoi(argv[2]);
  dev.smem_per_block_optin = atoi(argv[3]);
  dev.smem_per_sm = atoi(argv[4]);
  for (int i = 5; i + 1 < argc; i += 2) {
    const long n = atol(argv[i]), d = atol(argv[i + 1]);
    const AreaAttnFwdPlan p = area_attention_fwd_plan(n, d, dev);
    printf("%ld %ld %d %d %d %d %d %d\n", n, d, p.supported, p.resident, p.warps, p.chunk_keys, p.smem_row,
           p.smem_bytes);
  }
  return 0;
}
"""

PLAN_CASES = [(n, d) for d in (32, 64) for n in (1, 15, 16, 17, 49, 100, 240, 300, 400, 401, 416, 800, 1600, 4096, 16384)]


@pytest.fixture(scope="module")
def plan_driver(workdir):
    """Host program calling area_attention_fwd_plan (host code only: runs without a GPU or driver)."""
    src = os.path.join(workdir, "plan_main.cpp")
    with open(src, "w") as f:
        f.write(PLAN_DRIVER)
    exe = os.path.join(workdir, "plan")
    cmd = [NVCC, "-O1", "-std=c++17", "-arch=sm_80", "-I", CUDA_SRC, "-o", exe, src,
           os.path.join(CUDA_SRC, "area_attention_fwd.cu")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"building the plan driver failed:\n{r.stdout}{r.stderr}"
    return exe


@pytest.mark.parametrize("arch", list(SMEM_OPTIN))
def test_launch_plan_fits_shared_memory(plan_driver, arch, capsys):
    major, minor = CC[arch]
    args = [str(x) for case in PLAN_CASES for x in case]
    out = subprocess.run([plan_driver, str(major), str(minor), str(SMEM_OPTIN[arch]), str(SMEM_PER_SM[arch]), *args],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    plans = {}
    shown = []
    for line in filter(None, out):
        n, d, supported, resident, warps, chunk, row, smem = map(int, line.split())
        plans[(n, d)] = (resident, chunk, smem)
        if n in (49, 400, 1600, 4096):
            shown.append(f"  {arch:<7} n={n:<5} head_dim={d}: {'resident' if resident else 'streamed'} "
                         f"chunk={chunk:<5} smem={smem} B (limit {SMEM_OPTIN[arch]})")
        assert supported, f"{arch}: no plan for n={n}, head_dim={d}"
        assert smem <= SMEM_OPTIN[arch], f"{arch}: n={n} head_dim={d} wants {smem} B > {SMEM_OPTIN[arch]} B"
        assert row == chunk + 8 and (row // 8) % 2 == 1, f"smem row {row}: must be an odd number of 16-byte units"
        assert warps == (8 if d == 32 else 4)
        epi = warps * d * 24 * 2
        assert smem == 2 * d * 2 * row + epi
        if resident:
            assert chunk == (n + 15) // 16 * 16, f"{arch}: resident plan must hold the whole area (n={n})"
        else:
            assert chunk % 64 == 0 and chunk < n, f"{arch}: streaming chunk {chunk} for n={n}"
            # resident was impossible
            assert 2 * d * 2 * ((n + 15) // 16 * 16 + 8) + epi > SMEM_OPTIN[arch]
    with capsys.disabled():
        print("\nlaunch plans:\n" + "\n".join(shown))
    # the shapes that matter (REFERENCE.md): 640x640 (n = 400) is resident everywhere, T4 included
    assert plans[(400, 32)][0] == 1, f"{arch}: n=400 head_dim=32 should be resident"
    assert plans[(1600, 32)][0] == (1 if arch == "sm_90a" else 0)
    assert plans[(16384, 32)][0] == 0
