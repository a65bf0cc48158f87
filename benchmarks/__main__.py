"""python -m benchmarks [suites...] [--device cpu|cuda] [--quick] [--out DIR]  |  report [FILES]  |  proxies [--check]"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import SUITES


def _parse(argv, prog="python -m benchmarks"):
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run benchmark suites (default: all) and append one JSON row per (case, provider) to "
                    "<out>/<device>-<date>.jsonl. Subcommands: `report [FILES]` renders tables and plots, "
                    "`proxies [--check]` computes / checks the GPU-free proxies.")
    p.add_argument("suites", nargs="*", metavar="SUITE", help=f"any of {', '.join(SUITES)} (default: all)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if visible, else cpu")
    p.add_argument("--quick", action="store_true", help="tiny shapes, few repetitions: a smoke test, not figures")
    p.add_argument("--out", type=Path, default=None, help="results directory (default benchmarks/results)")
    p.add_argument("--threads", default="1,2", help="CPU thread counts to pin, comma-separated (default 1,2)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="per-suite time budget; cases left when it runs out are recorded as skipped")
    p.add_argument("--cases", default=None, metavar="REGEX",
                   help="only cases whose name matches REGEX (re.search), e.g. 'fwd P4 640x640' or 'yolo12n'")
    p.add_argument("--dtype", choices=("float16", "bfloat16"), default=None,
                   help="the ops suite's dtype on CUDA (default float16; CPU rows are float32); rows of another dtype "
                        "than the default say it in their case name")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    a = p.parse_args(argv)
    try:
        a.threads = tuple(int(t) for t in str(a.threads).split(",") if t.strip())
    except ValueError:
        a.threads = ()
    if not a.threads or min(a.threads) < 1:
        p.error(f"--threads {a.threads}: give positive thread counts, comma-separated (e.g. 1,2)")
    unknown = [s for s in a.suites if s not in SUITES]
    if unknown:
        p.error(f"unknown suite(s) {', '.join(unknown)}: choose from {', '.join(SUITES)} (or `report`, `proxies`)")
    return a


def run(argv=None, prog="python -m benchmarks") -> int:
    a = _parse(argv, prog)
    from yolov12_fast import _backends

    problem = _backends.source_tree_problem()
    if problem:  # a bare source tree would benchmark the reference math under the kernels' names
        print(f"{prog}: {problem}", file=sys.stderr)
        return 2
    import torch

    from . import yolo
    from .harness import RESULTS_DIR, Context

    yolo.offline()
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible", file=sys.stderr)
        return 2
    suites = list(a.suites) or list(SUITES)
    if "ops" in suites and "ceilings" not in suites:
        suites.insert(0, "ceilings")  # the roofline needs them; cheap
    threads = a.threads
    ctx = Context(torch.device(device), quick=a.quick, out_dir=a.out or RESULTS_DIR, threads=threads,
                  budget_s=a.budget_s, progress=not a.no_progress, cases=a.cases, dtype=a.dtype)
    print(f"# {ctx.meta['device']} | torch {ctx.meta['torch']} | triton {ctx.meta['triton']} | CUDA {ctx.meta['cuda']} "
          f"| commit {ctx.meta['commit']} | suites {' '.join(suites)}{' (quick)' if a.quick else ''} -> {ctx.path}",
          flush=True)
    import importlib

    failed = []
    asked = 0  # rows of the suites the user named (ceilings come along with ops)
    for s in [x for x in SUITES if x in suites]:
        t0 = time.perf_counter()
        n0 = len(ctx.written)
        try:
            importlib.import_module(f".{s}", __package__).run(ctx)
        except Exception as e:  # one suite failing must not lose the others' rows
            import traceback

            traceback.print_exc()
            failed.append(f"{s}: {type(e).__name__}: {e}")
        rows = ctx.written[n0:]
        counts = {k: sum(1 for r in rows if r.get("status") == k) for k in ("ok", "skipped", "error")}
        bad = sum(1 for r in rows if str(r.get("check", "pass")) != "pass")
        asked += len(rows) if (s in a.suites or not a.suites) else 0
        if counts["skipped"]:
            budget = sum(1 for r in rows if r.get("status") == "skipped" and "budget" in str(r.get("reason")))
            if budget:
                print(f"# {s}: {budget} cases skipped: suite time budget used up (raise --budget-s to run them)")
        print(f"# {s}: {counts['ok']} measured, {counts['skipped']} skipped, {counts['error']} errors, "
              f"{bad} failed checks, {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"# rows appended to {ctx.path}")
    if a.cases and not asked and not failed:
        print(f"--cases {a.cases!r} matched no case of {' '.join(a.suites) or 'any suite'}: nothing was measured "
              "(the case names are in the row lines of a --quick run)", file=sys.stderr)
        return 1
    if failed:
        print("# suites that crashed:\n#   " + "\n#   ".join(failed), file=sys.stderr)
        return 1
    return 0


def main(argv=None, prog="python -m benchmarks") -> int:
    """`prog` names the command in usage and error lines (`yolov12-fast bench` when called through the CLI)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        from . import report

        return report.main(argv[1:], prog=f"{prog} report")
    if argv and argv[0] == "proxies":
        from . import proxies

        return proxies.main(argv[1:], prog=f"{prog} proxies")
    return run(argv, prog)


if __name__ == "__main__":
    sys.exit(main())
