"""The package as users get it: imports without a GPU, Triton or the extension; `kernels` never shadows a
top-level module; the wheel holds yolov12_fast.kernels and works installed; the CLI runs."""

import os
import subprocess
import sys
import textwrap
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_py(code, cwd=None, env=None, check=True):
    e = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    e.update(env or {})
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd, env=e,
                       timeout=600)
    if check:
        assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr[-3000:]}"
    return p


def test_import_without_triton_extension_or_ultralytics(tmp_path):
    # Stand-ins that fail to import, first on the path: as if triton and ultralytics were broken or absent.
    for pkg in ("triton", "ultralytics"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(f"raise ImportError('{pkg} is unavailable in this test')\n")
    p = run_py("""
import sys
sys.modules["yolov12_fast._C"] = None  # the compiled extension is missing
import torch, yolov12_fast
q, k, v = torch.randn(3, 1, 2, 32, 16).unbind(0)
out = yolov12_fast.area_attention(q, k, v, 4, backend="reference")
assert out.shape == (1, 2, 32, 16)
ok, why = yolov12_fast.can_use_triton("cpu"); print("triton:", ok, why)
ok, why = yolov12_fast.can_use_cpp(); print("cpp:", ok, why)
from yolov12_fast.cli import info_lines; print("\\n".join(info_lines()))
try:
    yolov12_fast.area_attention(q, k, v, 4, backend="cpp")
except RuntimeError as e:
    print("cpp error:", e)
try:
    yolov12_fast.YOLO
except ImportError as e:
    print("YOLO error:", e)
""", cwd="/", env={"PYTHONPATH": str(tmp_path)})
    assert "triton: False" in p.stdout and "cpp: False" in p.stdout
    assert "cpp error: yolov12_fast: backend 'cpp' cannot run on cpu: the compiled extension" in p.stdout
    assert "pip install --no-build-isolation" in p.stdout
    assert "extension    not built: " in p.stdout
    assert "YOLO error: yolov12_fast.YOLO is ultralytics' YOLO with the fast modules: install ultralytics" in p.stdout
    # the commands that run ultralytics say what to install, with exit 2, not a traceback
    for cmd in ("verify", "demo"):
        e = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        r = subprocess.run([sys.executable, "-m", "yolov12_fast", cmd], capture_output=True, text=True, timeout=300,
                           cwd="/", env=dict(e, PYTHONPATH=str(tmp_path)))
        assert r.returncode == 2 and "needs ultralytics" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_bare_source_tree_is_refused_by_tests_and_benchmarks(tmp_path, monkeypatch):
    """A clone's root first on sys.path without an editable install (a plain `pip install .`, then running from the
    clone) imports the source tree, which has no yolov12_fast.kernels and no compiled extension: tests and
    benchmarks would quietly exercise the reference math. source_tree_problem() says so, and they refuse."""
    import shutil

    shutil.copytree(os.path.join(ROOT, "yolov12_fast"), tmp_path / "yolov12_fast",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    p = run_py("""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in str(getattr(f, "__module__", ""))]  # no install
sys.path.insert(0, %r)
import yolov12_fast
from yolov12_fast import _backends
assert yolov12_fast.__file__.startswith(%r), yolov12_fast.__file__
print("problem:", _backends.source_tree_problem())
""" % (str(tmp_path), str(tmp_path)), cwd=str(tmp_path))
    assert "without its install" in p.stdout and "pip install --no-build-isolation -e ." in p.stdout, p.stdout
    from yolov12_fast import _backends

    assert _backends.source_tree_problem() is None  # this test session's install is a real one
    import benchmarks.__main__ as bench_main

    monkeypatch.setattr(_backends, "source_tree_problem", lambda: "a bare source tree (test)")
    assert bench_main.run(["ops", "--quick"]) == 2


def test_sdist_ships_every_csrc_file_and_the_license(tmp_path):
    """setuptools ships only an extension's listed sources (no headers), and none at all when torch is not
    importable at sdist time; MANIFEST.in grafts csrc/ whatever the environment. (Found: the sdist lacked
    common.h and kernels.h, so a wheel built from it failed to compile.)"""
    import tarfile

    env = dict(os.environ, YOLOV12_FAST_NO_EXT="1")  # as an sdist built without torch would be
    p = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (sdist,) = tmp_path.glob("yolov12_fast-*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    csrc = {os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(os.path.join(ROOT, "csrc")) for f in fs
            if f.endswith((".h", ".cuh", ".cpp", ".cu"))}
    assert csrc and csrc <= names, f"missing from the sdist: {sorted(csrc - names)}"
    assert {"LICENSE", "README.md", "setup.py", "pyproject.toml", "kernels/area_attention.py"} <= names
    assert not any(n.endswith((".so", ".o")) or n.startswith(("tests/", "benchmarks/", "build/")) for n in names)


def test_isolated_pip_install_stops_with_a_clear_message(tmp_path):
    """A plain `pip wheel .` / `pip install .` builds in isolation, where torch is not importable: it must stop
    and say to use --no-build-isolation (or YOLOV12_FAST_NO_EXT=1), not install pure Python without a word."""
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "-q", "-w", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and not list(tmp_path.glob("*.whl")), out[-3000:]
    assert "pip install --no-build-isolation" in out and "YOLOV12_FAST_NO_EXT=1" in out, out[-3000:]


def test_top_level_kernels_is_refused_from_the_repo_root():
    p = run_py("import kernels", cwd=ROOT, check=False)
    assert p.returncode != 0 and "ship as `yolov12_fast.kernels`" in p.stderr


def test_cli_info():
    p = subprocess.run([sys.executable, "-m", "yolov12_fast", "info"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    for word in ("yolov12_fast", "torch", "backends:", "reference", "triton", "cpp (C++ CPU)", "cuda (CUDA C++)", "auto on cpu"):
        assert word in p.stdout


def test_a_built_extension_loads():
    """A compiled yolov12_fast._C in the install must load and register its kernels: otherwise every C++ test
    skips as "unavailable" and the suite stays green over a broken build. CI requires it (.ci/run sets
    YOLOV12_FAST_REQUIRE_EXT=1); elsewhere it is required wherever a _C binary sits in the package."""
    import glob

    from yolov12_fast import _backends

    import yolov12_fast

    pkg = os.path.dirname(yolov12_fast.__file__)
    built = glob.glob(os.path.join(pkg, "_C*.so")) + glob.glob(os.path.join(pkg, "_C*.pyd"))
    if not built and os.environ.get("YOLOV12_FAST_REQUIRE_EXT") != "1":
        pytest.skip("no compiled extension in this install (YOLOV12_FAST_NO_EXT=1, a pure-Python install)")
    mod, why = _backends._extension()
    assert mod is not None, why
    ok, why = _backends.can_use_cpp()
    assert ok, why


def _libstdcxx_exported_by(so: str, libstdcxx: str) -> list:
    """The symbols that `so` exports as its own strong definitions (nm types T, D, B, R) and that libstdc++ itself
    exports: a second copy of the C++ runtime, which mixes with the process's (torch's) copy."""
    def defined(path, strong):
        out = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True, check=True).stdout
        return {f[2].split("@")[0] for f in (line.split() for line in out.splitlines())
                if len(f) == 3 and (not strong or f[1] in "TDBR")}
    return sorted(defined(so, True) & defined(libstdcxx, False))


def _loaded_libstdcxx() -> str:
    import torch  # noqa: F401  (torch loads the process's libstdc++)

    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "libstdc++.so" in line}
    if not paths:
        pytest.skip("no libstdc++ shared library in this process (not a GNU/Linux toolchain)")
    return sorted(paths)[0]


def test_the_extension_does_not_export_a_second_cxx_runtime(tmp_path):
    """A toolchain that links libstdc++ statically into _C (seen on the GPU image: gcc 13 found libstdc++.a first)
    exported a second copy of the C++ runtime from _C; its locale facet ids then differed from the copy torch
    loaded, and the first error message that formatted an integer segfaulted (the CUDA glue's TORCH_CHECKs).
    setup.py links with --exclude-libs,ALL. Here: the built _C exports none of libstdc++'s symbols, and the
    check itself tells a shared library with a static, exported libstdc++ (which it must catch) from one built
    with setup.py's flag."""
    import glob
    import shutil

    import yolov12_fast

    if not shutil.which("nm") or not shutil.which("g++"):
        pytest.skip("needs binutils' nm and g++ (the toolchain that builds the extension)")
    lib = _loaded_libstdcxx()
    built = glob.glob(os.path.join(os.path.dirname(yolov12_fast.__file__), "_C*.so"))
    if not built and os.environ.get("YOLOV12_FAST_REQUIRE_EXT") != "1":
        pytest.skip("no compiled extension in this install")
    assert built, "YOLOV12_FAST_REQUIRE_EXT=1 but no yolov12_fast/_C*.so"
    for so in built:
        assert _libstdcxx_exported_by(so, lib) == [], f"{so} exports libstdc++'s symbols: link with -Wl,--exclude-libs,ALL"
    src = tmp_path / "m.cpp"
    src.write_text('#include <sstream>\n#include <string>\nstd::string f(long n) { std::ostringstream s; s << n; return s.str(); }\n')
    for name, extra, leaks in (("static", [], True), ("excluded", ["-Wl,--exclude-libs,ALL"], False)):
        so = str(tmp_path / f"{name}.so")
        subprocess.run(["g++", "-shared", "-fPIC", "-static-libstdc++", str(src), "-o", so] + extra, check=True,
                       capture_output=True)
        assert bool(_libstdcxx_exported_by(so, lib)) == leaks, name


@pytest.mark.parametrize("cc,sass,ptx,runs", [
    # the default build, "7.5;8.0+PTX;9.0a", on T4, A100, A10 / RTX 3090, L4, H100, B200, RTX 5090, V100
    ((7, 5), ("sm_75", "sm_80", "sm_90a"), ("sm_80",), ("sm", 75)),
    ((8, 0), ("sm_75", "sm_80", "sm_90a"), ("sm_80",), ("sm", 80)),
    ((8, 6), ("sm_75", "sm_80", "sm_90a"), ("sm_80",), ("sm", 80)),
    ((8, 9), ("sm_75", "sm_80", "sm_90a"), ("sm_80",), ("sm", 80)),
    ((9, 0), ("sm_75", "sm_80", "sm_90a"), ("sm_80",), ("sm", 90)),
    ((10, 0), ("sm_75", "sm_80", "sm_90a"), ("sm_80",), ("ptx", 80)),
    ((12, 0), ("sm_75", "sm_80", "sm_90a"), ("sm_80",), ("ptx", 80)),
    ((7, 0), ("sm_75", "sm_80", "sm_90a"), ("sm_80",), None),
    # "7.5+PTX" on an A100: the compute_75 PTX, JIT-compiled (no bf16 tensor-core code: the glue refuses bf16)
    ((8, 0), ("sm_75",), ("sm_75",), ("ptx", 75)),
    # arch-specific code runs on its own arch only
    ((10, 0), ("sm_90a",), (), None),
    ((12, 0), ("sm_100a", "sm_120"), (), ("sm", 120)),
])
def test_code_for_gpu_follows_the_cuda_runtime_rules(cc, sass, ptx, runs):
    from yolov12_fast._backends import code_for_gpu

    assert code_for_gpu(cc, sass, ptx) == runs


def test_cuda_code_of_this_build_is_its_arch_list():
    """The extension holds machine code for each arch of the TORCH_CUDA_ARCH_LIST it was built with (recorded in
    _C.CUDA_ARCHS; run_gpu.sh builds for the GPU's arch only, CI for setup.py's default) and PTX for those marked
    +PTX; `info` prints them."""
    from yolov12_fast import _backends

    mod = _backends.extension()
    if mod is None or not getattr(mod, "WITH_CUDA", 0):
        pytest.skip("yolov12_fast._C was built without CUDA (or not at all): no CUDA code to list")
    if _backends._cuobjdump() is None:
        pytest.skip("no cuobjdump (CUDA toolkit or triton's bundled copy) to read the extension with")
    arch_list = _backends.built_cuda_arch_list()  # what this build was compiled with (setup.py records it)
    assert arch_list, "a CUDA build of _C records its TORCH_CUDA_ARCH_LIST (CUDA_ARCHS); rebuild the extension"
    sass = {"sm_" + a.replace("+PTX", "").replace(".", "") for a in arch_list.replace(" ", ";").split(";") if a}
    ptx = {"sm_" + a.replace("+PTX", "").replace(".", "") for a in arch_list.replace(" ", ";").split(";")
           if a.endswith("+PTX")}
    code = _backends.cuda_code()
    assert code is not None and (set(code[0]), set(code[1])) == (sass, ptx), code
    from yolov12_fast.cli import info_lines

    line = next(line for line in info_lines() if line.startswith("CUDA code"))
    assert all(a in line for a in sass) and all(a.replace("sm_", "compute_") in line for a in ptx), line
    assert line.endswith(f"built with TORCH_CUDA_ARCH_LIST={arch_list}"), line
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):  # setup.py's default (CI's build)
        assert arch_list == "7.5;8.0+PTX;9.0a"


@pytest.mark.parametrize("archs,token", [("7.5;8.0+PTX;9.0a", "A7d5_8d0PTX_9d0a"), ("9.0a", "A9d0a"),
                                         ("8.6 12.0+PTX", "A8d6_12d0PTX"), ("10.0f", "A10d0f")])
def test_built_arch_list_round_trips(monkeypatch, archs, token):
    """setup.py's shell-safe encoding of TORCH_CUDA_ARCH_LIST (one identifier, passed as a -D macro) decodes back."""
    import types

    from yolov12_fast import _archs, _backends

    assert _archs.encode(archs) == token and token.isidentifier()
    monkeypatch.setattr(_backends, "_extension", lambda: (types.SimpleNamespace(CUDA_ARCHS=token), ""))
    assert _backends.built_cuda_arch_list() == archs.replace(" ", ";")


@pytest.mark.parametrize("torch_cuda,home,nvcc,opt_out,expect", [
    ("13.0", "/usr/local/cuda", "13.0", False, (True, None)),
    ("12.8", "/usr/local/cuda", "12.4", False, (True, None)),  # minor versions may differ (torch only warns)
    ("12.4", "/usr/local/cuda", "13.0", False, (False, "mismatch_K13d0_T12d4")),
    ("13.0", "/opt/cuda-11.8", "11.8", False, (False, "mismatch_K11d8_T13d0")),
    ("12.6", None, None, False, (False, "nokit_T12d6")),
    (None, "/usr/local/cuda", "13.0", False, (False, "cputorch")),
    ("rocm", None, None, False, (False, "rocm")),
    ("13.0", "/usr/local/cuda", "13.0", True, (False, "optout")),
])
def test_cuda_build_plan(torch_cuda, home, nvcc, opt_out, expect):
    """setup.py's decision: the CUDA kernels where torch is a CUDA build and the toolkit has its major version (torch
    refuses any other: the install used to fail there with torch's message alone); otherwise the C++ kernels with the
    reason recorded as an identifier, which `info` turns into what was found and what to do. With
    YOLOV12_FAST_REQUIRE_CUDA=1 the same reason stops the build instead."""
    from yolov12_fast._archs import cuda_plan, no_cuda_reason

    hip = "6.2" if torch_cuda == "rocm" else None  # a ROCm torch: torch.version.cuda None, torch.version.hip set
    torch_cuda = None if hip else torch_cuda
    assert cuda_plan(torch_cuda, home, nvcc, opt_out, False, hip) == expect
    why = expect[1]
    if why is None:
        assert cuda_plan(torch_cuda, home, nvcc, opt_out, True) == expect
        return
    assert why.isidentifier()
    words = no_cuda_reason(why, home)
    if why.startswith("mismatch"):
        assert f"is {nvcc} but torch was built with CUDA {torch_cuda}" in words and home in words
        assert f"install a CUDA {torch_cuda.split('.')[0]}.x toolkit" in words and "CUDA_HOME" in words
    elif why.startswith("nokit"):
        assert f"CUDA {torch_cuda}" in words and "no CUDA toolkit (nvcc)" in words
    elif why == "cputorch":
        assert "CPU build" in words
    elif why == "rocm":
        assert "ROCm build" in words and "NVIDIA" in words
    else:
        assert "YOLOV12_FAST_NO_CUDA=1" in words
    if why != "optout":  # asked for the CUDA kernels: the reason, as an error
        import re

        with pytest.raises(SystemExit, match=re.escape("REQUIRE_CUDA=1 but the CUDA kernels cannot be built: " + words)):
            cuda_plan(torch_cuda, home, nvcc, opt_out, True, hip)


def test_setup_reports_a_toolkit_of_another_major_version(tmp_path):
    """setup.py end to end, up to the build: a CUDA_HOME whose nvcc is another major version than torch's CUDA gives
    the C++-only plan and says why on stderr; with YOLOV12_FAST_REQUIRE_CUDA=1 it exits with the reason."""
    import torch

    if torch.version.cuda is None:
        pytest.skip("a CPU build of torch: setup.py takes the C++ path whatever the toolkit (test_cuda_build_plan)")
    major = int(torch.version.cuda.split(".")[0])
    nvcc = tmp_path / "cuda" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {major - 1}.8, V{major - 1}.8.89'\n")
    nvcc.chmod(0o755)
    env = dict(os.environ, CUDA_HOME=str(tmp_path / "cuda"))
    env.pop("YOLOV12_FAST_NO_CUDA", None)
    p = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (f"building the C++ CPU kernels only: the CUDA toolkit at {tmp_path / 'cuda'} is {major - 1}.8 but torch "
            f"was built with CUDA {torch.version.cuda}") in p.stderr, p.stderr[-3000:]
    p = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True, text=True,
                       env=dict(env, YOLOV12_FAST_REQUIRE_CUDA="1"), timeout=300)
    assert p.returncode != 0 and "YOLOV12_FAST_REQUIRE_CUDA=1 but the CUDA kernels cannot be built" in p.stderr


def test_the_build_records_why_it_has_no_cuda(monkeypatch):
    """The installed extension says why it has no CUDA kernels, and the backend check passes that on (`info`'s
    "cuda (CUDA C++) no: ..." line): a CPU build of torch records cputorch (CI's second venv), a CUDA build records
    nothing. A recorded mismatch reads as what to install."""
    import types

    import torch

    from yolov12_fast import _backends

    mod, why = _backends._extension()
    if mod is None:
        pytest.skip(f"no compiled extension: {why}")
    if torch.version.cuda is None:
        assert mod.WITH_CUDA == 0 and mod.NO_CUDA_WHY == "cputorch"
        assert "torch is a CPU build" in _backends.can_use_cuda_ext()[1]
    elif mod.WITH_CUDA:
        assert not hasattr(mod, "NO_CUDA_WHY")
    monkeypatch.setattr(_backends, "_extension", lambda: (types.SimpleNamespace(WITH_CUDA=0,
                                                                                NO_CUDA_WHY="mismatch_K13d0_T12d4"), ""))
    ok, why = _backends.can_use_cuda_ext()
    assert not ok and "toolkit is 13.0 but torch was built with CUDA 12.4" in why and "CUDA 12.x toolkit" in why


def test_wheel_layout_and_installed_smoke(tmp_path):
    """Build the wheel (pure Python, to keep it quick), install it into a directory and use it from elsewhere."""
    env = dict(os.environ, YOLOV12_FAST_NO_EXT="1")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path / "dist")], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("yolov12_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "yolov12_fast/kernels/area_attention.py" in names and "yolov12_fast/kernels/__init__.py" in names
    assert not any(n.startswith("kernels/") for n in names), "kernels/ must not ship as a top-level package"
    assert any(n.startswith("yolov12_fast/ops/") for n in names) and any(n.startswith("yolov12_fast/nn/") for n in names)
    import yolov12_fast

    (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    meta = zipfile.ZipFile(wheel).read(meta).decode()
    assert f"\nVersion: {yolov12_fast.__version__}\n" in meta  # one version, written in yolov12_fast/__init__.py
    assert "License-Expression: AGPL-3.0-only" in meta and any(n.endswith("licenses/LICENSE") for n in names)
    target = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    p = run_py("""
import torch, yolov12_fast, yolov12_fast.kernels.area_attention as k
assert yolov12_fast.__file__.startswith(%r), yolov12_fast.__file__
q, k_, v = torch.randn(3, 2, 2, 32, 20).unbind(0)
ref = yolov12_fast.reference.area_attention(q, k_, v, 4)
out = yolov12_fast.area_attention(q, k_, v, 4, backend="triton")
assert (out - ref).abs().max() < 1e-5
print("ok")
""" % str(target), cwd=str(tmp_path), env={"PYTHONPATH": str(target), "TRITON_INTERPRET": "1"})
    assert "ok" in p.stdout


@pytest.mark.slow
def test_demo_runs(tmp_path):
    p = subprocess.run([sys.executable, "-m", "yolov12_fast", "demo", "--imgsz", "320", "--repeat", "1", "--out",
                        str(tmp_path / "demo.jpg")], capture_output=True, text=True, timeout=900, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ultralytics (reference)" in p.stdout and (tmp_path / "demo.jpg").stat().st_size > 10_000


@pytest.mark.parametrize("args, says", [(["--imgsz", "500"], "multiple of 32"), (["--model", "nonexistent.pt"], "no such checkpoint"),
                                        (["--image", "nonexistent.jpg"], "no such file"),
                                        (["--repeat", "0"], "--repeat must be at least 1"),
                                        (["--model", "yolo12q.yaml"], "--model yolo12q.yaml: ultralytics cannot build")])
def test_demo_refuses_bad_arguments(tmp_path, args, says):
    """A clear message and exit 2, before any model is built (not a traceback from deep inside ultralytics)."""
    p = subprocess.run([sys.executable, "-m", "yolov12_fast", "demo", *args], capture_output=True, text=True,
                       timeout=300, cwd=str(tmp_path))
    assert p.returncode == 2 and says in p.stdout, (p.stdout[-2000:], p.stderr[-2000:])


def test_readme_op_examples_run_as_written():
    """README's 'The op itself' / 'The other R-ELAN ops' lines, executed as they stand (CPU), each result checked
    against the reference math."""
    import pathlib

    import torch

    import yolov12_fast
    from yolov12_fast import reference

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("# The op itself")
    ns = {"yolov12_fast": yolov12_fast}
    exec(text[start:text.index("```", start)], ns)
    q, k, v = ns["q"], ns["k"], ns["v"]
    torch.testing.assert_close(ns["out"], reference.area_attention(q, k, v, 4), rtol=1e-4, atol=1e-4)
    B, C, H, W = ns["x1"].shape
    want_y = ns["x1"] + torch.nn.functional.conv2d(torch.nn.functional.silu(
        torch.nn.functional.conv2d(ns["x1"], ns["w1"], ns["b1"])), ns["w2"], ns["b2"])
    torch.testing.assert_close(ns["y"], want_y, rtol=1e-4, atol=1e-4)


def test_every_public_name_exists():
    """Every name in each module's __all__ is defined there (`from module import *` works). (Found: ops.area_attention
    listed `math`, which it never defined.)"""
    import importlib
    import pkgutil

    import yolov12_fast

    mods = [yolov12_fast] + [importlib.import_module(m.name) for m in pkgutil.walk_packages(yolov12_fast.__path__, "yolov12_fast.")
                             if not m.name.endswith(("__main__", "._C")) and ".kernels" not in m.name]
    missing = [(m.__name__, n) for m in mods for n in getattr(m, "__all__", ()) if not hasattr(m, n)]
    assert len(mods) > 10 and not missing, missing


def test_info_prints_once_or_returns_the_text(capsys):
    """yolov12_fast.info() prints the report and returns None (a REPL would otherwise show it twice, the second time
    as an escaped string); info(as_text=True) returns it without printing."""
    import yolov12_fast

    assert yolov12_fast.info() is None
    printed = capsys.readouterr().out
    text = yolov12_fast.info(as_text=True)
    assert capsys.readouterr().out == "" and printed == text + "\n" and "backends:" in text


def test_cpu_vendor_reads_this_machine():
    """_backends.cpu_vendor() names the vendor /proc/cpuinfo (or platform.processor()) reports: the CPU paths that
    differ by vendor (nn.modules.cpu_channels_last_conv) pick by it."""
    import platform

    from yolov12_fast import _backends

    vendor = _backends.cpu_vendor()
    assert vendor in ("intel", "amd", "other")
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        text = platform.processor()
    expected = "intel" if "GenuineIntel" in text else "amd" if ("AuthenticAMD" in text or "HygonGenuine" in text) \
        else "other"
    assert vendor == expected
