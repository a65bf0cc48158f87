"""Builds yolov12_fast._C from csrc/: CUDAExtension when a CUDA build of torch and a CUDA toolkit of the same major
version are present, CppExtension otherwise (the reason recorded: `yolov12-fast info` says it), nothing with
YOLOV12_FAST_NO_EXT=1. Metadata lives in pyproject.toml.

Environment:
  YOLOV12_FAST_NO_EXT=1        pure-Python install (Triton and reference backends only)
  YOLOV12_FAST_NO_CUDA=1       build the C++ CPU kernels only, even where CUDA is available
  YOLOV12_FAST_REQUIRE_CUDA=1  fail (saying why) instead of building without the CUDA kernels
  TORCH_CUDA_ARCH_LIST         CUDA archs (default "7.5;8.0+PTX;9.0a": the PTX JIT-compiles on newer GPUs)
  YOLOV12_FAST_PTXAS_VERBOSE=1 pass -Xptxas -v to nvcc (register/spill report per kernel)
"""

import glob
import importlib.util
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# setuptools commands that compile (pip and `python -m build` call bdist_wheel / editable_wheel)
BUILD_COMMANDS = ("bdist_wheel", "build_ext", "build", "install", "develop", "editable_wheel")


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _nvcc_release(cuda_home):
    """The CUDA toolkit's release ("13.0") from `nvcc --version`; None without a toolkit or a readable nvcc."""
    import re
    import subprocess

    if not cuda_home:
        return None
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def _ext_modules():
    if _flag("YOLOV12_FAST_NO_EXT"):
        return [], {}
    if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"  # else torch guesses CUDA_HOME from `which nvcc`, which may be a shim
    try:
        import torch
        from torch.utils import cpp_extension as ce
    except ImportError:
        if not any(cmd in sys.argv for cmd in BUILD_COMMANDS):
            return [], {}  # sdist, egg_info, dist_info: no compiler run (MANIFEST.in ships the sources)
        # A plain `pip install .` builds in an isolated environment without torch: say so, instead of installing
        # pure Python without a word (pip shows this only with -v) and leaving the user with the reference math.
        sys.exit("yolov12_fast: torch is not importable at build time: pip's build isolation hides the torch you "
                 "installed. Install torch first, then `pip install --no-build-isolation .` (or `-e .`) to build "
                 "the C++/CUDA kernels against it, or set YOLOV12_FAST_NO_EXT=1 for a pure-Python install (Triton "
                 "and reference backends only).")

    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cxx = ["-O3", "-fopenmp"]  # torch adds the C++ standard its headers need
    define_macros = []
    # A toolchain that links libstdc++ statically (seen: the GPU image's gcc 13, whose search path finds libstdc++.a
    # first) would export a second copy of it from _C; torch's copy and ours then mix (locale facet ids differ) and
    # formatting an integer into an error message segfaults. --exclude-libs keeps a static copy private to _C;
    # it changes nothing when libstdc++ is linked as the shared library.
    ldflags = ["-fopenmp"] + (["-Wl,--exclude-libs,ALL"] if sys.platform.startswith("linux") else [])
    spec = importlib.util.spec_from_file_location("_archs", os.path.join(ROOT, "yolov12_fast", "_archs.py"))
    archs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(archs)
    use_cuda, no_cuda_why = archs.cuda_plan(torch.version.cuda, ce.CUDA_HOME, _nvcc_release(ce.CUDA_HOME),
                                            _flag("YOLOV12_FAST_NO_CUDA"), _flag("YOLOV12_FAST_REQUIRE_CUDA"),
                                            getattr(torch.version, "hip", None))
    if no_cuda_why is not None:
        define_macros.append(("YOLOV12_FAST_NO_CUDA_WHY", no_cuda_why))
        if no_cuda_why.startswith("mismatch"):  # pip shows this with -v; `yolov12-fast info` says it at any time
            print(f"yolov12_fast: building the C++ CPU kernels only: {archs.no_cuda_reason(no_cuda_why, ce.CUDA_HOME)}"
                  f" (YOLOV12_FAST_REQUIRE_CUDA=1 makes this an error)", file=sys.stderr)
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "7.5;8.0+PTX;9.0a")
        sources += rel("csrc/cuda/*.cpp") + rel("csrc/cuda/*.cu")
        nvcc = ["-O3", "--use_fast_math", "-lineinfo"]
        if _flag("YOLOV12_FAST_PTXAS_VERBOSE"):
            nvcc.append("-Xptxas=-v")
        define_macros.append(("YOLOV12_FAST_WITH_CUDA", None))
        # the arch list this build compiled for, as one shell-safe identifier (yolov12_fast._C.CUDA_ARCHS, decoded by
        # _backends.built_cuda_arch_list): "7.5;8.0+PTX;9.0a" -> A7d5_8d0PTX_9d0a
        define_macros.append(("YOLOV12_FAST_CUDA_ARCHS", archs.encode(os.environ["TORCH_CUDA_ARCH_LIST"])))
        # pip's CUDA wheels keep headers (cusparse.h, ...) that torch's CUDA headers include under nvidia/cu*/include
        include_dirs = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "cu*", "include")))
        ext = ce.CUDAExtension("yolov12_fast._C", sources, define_macros=define_macros, include_dirs=include_dirs,
                               extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=ldflags)
    else:
        ext = ce.CppExtension("yolov12_fast._C", sources, define_macros=define_macros,
                              extra_compile_args={"cxx": cxx}, extra_link_args=ldflags)
    return [ext], {"build_ext": ce.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _ext_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
