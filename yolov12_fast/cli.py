"""The `yolov12-fast` command (also `python -m yolov12_fast`): info, demo, verify, bench."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def info_lines() -> list[str]:
    import torch

    from . import __version__, _backends

    lines = [f"yolov12_fast {__version__}", f"python       {platform.python_version()} ({sys.executable})",
             f"torch        {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
             f"triton       {_version('triton')}", f"ultralytics  {_version('ultralytics')}",
             f"flash-attn   {_version('flash-attn')} (optional baseline)"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"GPU {i}        {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    else:
        lines.append("GPU          none visible (CPU only)")
    mod, why = _backends._extension()
    if mod is not None:
        lines.append(f"extension    yolov12_fast._C built {'with' if getattr(mod, 'WITH_CUDA', 0) else 'without'} CUDA")
        code = _backends.cuda_code()
        if code:
            sass, ptx = code
            built = _backends.built_cuda_arch_list()
            lines.append(f"CUDA code    machine code for {', '.join(sass) or 'no arch'}; PTX for "
                         f"{', '.join(a.replace('sm_', 'compute_') for a in ptx) or 'no arch'} (JIT-compiled on "
                         "newer GPUs)" + (f"; built with TORCH_CUDA_ARCH_LIST={built}" if built else ""))
            for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
                cc = torch.cuda.get_device_capability(i)
                runs = _backends.code_for_gpu(cc, sass, ptx)
                what = (f"runs {'machine code for sm_' if runs[0] == 'sm' else 'PTX JIT-compiled from compute_'}"
                        f"{runs[1]}" if runs else "has no code here: rebuild with its arch in TORCH_CUDA_ARCH_LIST")
                if runs and runs[1] < 80:
                    what += " (no bfloat16 attention: that needs code for compute_80 or newer)"
                lines.append(f"  GPU {i} (sm_{cc[0]}{cc[1]}) {what}")
    else:
        lines.append(f"extension    {'not loadable' if 'does not load' in why else 'not built'}: {why}")
    problem = _backends.source_tree_problem()
    if problem:
        lines.append(f"install      {problem}")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    checks = [("reference", (True, "")), ("triton", _backends.can_use_triton(dev)), ("cpp (C++ CPU)", _backends.can_use_cpp()),
              ("cuda (CUDA C++)", _backends.can_use_cuda_ext(dev if dev == "cuda" else None)),
              ("flash-attn", _backends.can_use_flash_attn())]
    lines.append("backends:")
    isa = getattr(_backends._extension()[0], "CPU_ATTENTION_ISA", None)
    for name, (ok, why) in checks:
        extra = f" ({isa} build of the attention cores)" if ok and name.startswith("cpp") and isa else ""
        lines.append(f"  {name:<16} {'yes' + extra if ok else 'no: ' + why}")
    from .ops import resolved_backends

    for d in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        # for the pe / mlp / cv2 convs "reference" is torch's own conv (cuDNN / oneDNN), not a slow fallback
        label = lambda name, b: "torch conv" if b == "reference" and name in ("pe", "mlp", "cv2") else b
        picks = resolved_backends("auto", d)
        if d == "cuda":  # the attention's pick depends on dtype and head_dim there
            fast = resolved_backends("auto", d, torch.float16, 32)["attention"]
            if fast != picks["attention"]:
                picks["attention"] = f"{fast} (fp16/bf16, head_dim 32/64; else {picks['attention']})"
        lines.append(f"  auto on {d:<8} -> " + ", ".join(f"{name} {label(name, b)}" for name, b in picks.items()))
    return lines


def cmd_info(args) -> int:
    print("\n".join(info_lines()))
    return 0


def cmd_bench(args) -> int:
    """Run the repository's benchmarks package (`python -m benchmarks ...`); it lives in a clone, not in the wheel."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isfile(os.path.join(root, "benchmarks", "__main__.py")):
        print("yolov12-fast bench: the benchmarks live in the yolov12_fast repository, not in the installed package. "
              "Clone the repository, install it with `pip install --no-build-isolation -e .`, and run "
              "`yolov12-fast bench` (or `python -m benchmarks`) from the clone.", file=sys.stderr)
        return 2
    if root not in sys.path:
        sys.path.insert(0, root)
    from benchmarks.__main__ import main as bench_main

    return bench_main(args.bench_args, prog="yolov12-fast bench")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="yolov12-fast", description="Fast YOLOv12 area attention: info, demo, verify, bench")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="versions, GPU, and which backends can run here (and why not)").set_defaults(fn=cmd_info)
    from . import demo, verify

    demo.add_parser(sub)
    verify.add_parser(sub)
    b = sub.add_parser("bench", help="run the benchmarks (from a clone): same arguments as `python -m benchmarks`",
                       add_help=False, prefix_chars="\0")
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    b.set_defaults(fn=cmd_bench)
    args = parser.parse_args(argv)
    if args.cmd in ("demo", "verify"):
        try:
            import ultralytics  # noqa: F401
        except ImportError as e:
            print(f"yolov12-fast {args.cmd}: needs ultralytics (it runs ultralytics' YOLO12 as the reference): "
                  "`pip install 'ultralytics>=8.3.78'` (or, in the clone, `pip install --no-build-isolation -e '.[ultralytics]'`); "
                  f"importing it failed: {e}", file=sys.stderr)
            return 2
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
