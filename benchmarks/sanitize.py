"""Small launches of every kernel the ops can run, for compute-sanitizer (memcheck, racecheck, initcheck):

    compute-sanitizer --tool memcheck --error-exitcode 99 python -m benchmarks.sanitize

Shapes are tiny and awkward on purpose (token counts that are not multiples of any block, areas that cut rows, odd
channel counts, strided views of the conv layouts, batch 3), so that every masked edge of every kernel runs; each
result is also compared with the reference, so a run under the sanitizer proves both "no invalid access" and "right
answer". Runs on CPU too (C++ kernels; Triton under TRITON_INTERPRET=1), which keeps it from rotting: tests/
test_benchmarks.py runs it there. Prints one line per launch and exits non-zero on a wrong answer.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

import yolov12_fast
from yolov12_fast import reference
from yolov12_fast._tolerances import ATOL_FLOOR, FACTOR, ROUNDOFF_ULPS, floor
from yolov12_fast.ops.area_attention import CUDA_CXX_SUPPORTS, _usable

from .baselines import cv2_torch, mlp_torch


def _attention_cases(device, dtype):
    """(name, q, k, v, area, residual) with q, k, v views of one interleaved / channels_last qkv output."""
    g = torch.Generator().manual_seed(0)
    out = []
    for B, heads, D, H, W, area, layout in ((3, 2, 32, 5, 8, 4, "interleaved"),   # 10 tokens per area, rows cut
                                            (1, 3, 32, 7, 9, 1, "channels_last"),  # 63 tokens, token stride 3C
                                            (2, 1, 64, 4, 5, 2, "interleaved"),
                                            (1, 2, 16, 3, 3, 3, "interleaved")):
        qkv = torch.randn(B, 3 * heads * D, H, W, generator=g).to(device, dtype)
        if layout == "channels_last":
            qkv = qkv.contiguous(memory_format=torch.channels_last)
        q, k, v = qkv.view(B, heads, 3 * D, H * W).split(D, dim=2)
        res = torch.randn(B, heads, D, H * W, generator=g).to(device, dtype)
        out.append((f"B{B} h{heads} d{D} {H}x{W} area {area} {layout}", q, k, v, area, res))
    return out


CHECKS: list = []  # one entry per comparison made: a run that compared nothing proved nothing


def _close(name: str, got: torch.Tensor, naive: torch.Tensor, want: torch.Tensor) -> bool:
    """The tolerance table's rule (yolov12_fast/_tolerances.py): |got - want| <= FACTOR x |naive - want| + floor,
    element by element, with `naive` the same math in got's dtype and `want` in float32 (float64 on CPU)."""
    dt = got.dtype
    if not got.numel():
        CHECKS.append(True)
        print(f"ok   {name}: empty")
        return True
    naive_err = (naive.double() - want.double()).abs().max().item()
    over = (got.double() - want.double()).abs() - (FACTOR[dt] * naive_err + floor(dt, want))  # > 0: out of bounds
    err, ok = (got.double() - want.double()).abs().max().item(), bool((over <= 0).all())
    bound = FACTOR[dt] * naive_err + ATOL_FLOOR[dt]
    CHECKS.append(ok)
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max |err| {err:.3g} (bound {bound:.3g} + {ROUNDOFF_ULPS} eps x |value|)")
    return ok


def run(device: str, backends: list, dtype) -> bool:
    ok = True
    hi = torch.float64 if device == "cpu" else torch.float32
    for name, q, k, v, area, res in _attention_cases(device, dtype):
        def attention(dt, backend=None, grad=False):  # backend None: the reference math in dt
            leaves = [t.detach().to(dt).requires_grad_(grad) for t in (q, k, v)]
            r = None if grad else res.to(dt)
            if backend is None:
                return leaves, reference.area_attention(*leaves, area, residual=r)
            return leaves, yolov12_fast.area_attention(*leaves, area, residual=r, backend=backend)

        _, want = attention(hi)
        _, naive = attention(dtype)
        lw, ow = attention(hi, grad=True)
        ln, on = attention(dtype, grad=True)
        dout = torch.randn(ow.shape, generator=torch.Generator().manual_seed(2)).to(device, dtype)
        gw = torch.autograd.grad(ow, lw, dout.to(hi))
        gn = torch.autograd.grad(on, ln, dout)
        for b in backends:
            if not usable(b, device):
                continue
            if b == "cuda" and (q.shape[2] not in CUDA_CXX_SUPPORTS["head_dims"]
                                or dtype not in CUDA_CXX_SUPPORTS["dtypes"]):
                print(f"skip attention {b} {name}: the CUDA C++ kernels take head_dim "
                      f"{CUDA_CXX_SUPPORTS['head_dims']} in {CUDA_CXX_SUPPORTS['dtypes']} (they raise otherwise)")
                continue
            _, out = attention(dtype, b)
            ok &= _close(f"attention fwd {b} {name}", out, naive, want)
            if b == "triton":  # the in-place form: the kernel writes over the residual it reads
                r = res.clone()
                yolov12_fast.area_attention_add_(r, q, k, v, area, backend=b)
                ok &= _close(f"attention in place {b} {name}", r, naive, want)
            if b in ("triton", "cpp", "cuda"):  # the backward kernels (backend="cuda": the CUDA C++ backward)
                lk, ok_out = attention(dtype, b, grad=True)
                for n, g, g_n, g_w in zip("qkv", torch.autograd.grad(ok_out, lk, dout), gn, gw):
                    ok &= _close(f"attention d{n} {b} {name}", g, g_n, g_w)
        C = v.shape[1] * v.shape[2]
        H, W = _hw(name)
        w = (torch.randn(C, 1, 7, 7) * 0.1).to(device, dtype)
        bias = torch.randn(C).to(device, dtype)
        pe = lambda dt: (F.conv2d(v.to(dt).reshape(-1, C, H, W), w.to(dt), bias.to(dt), padding=3, groups=C)
                         .reshape(v.shape) + res.to(dt))
        for b in backends:
            if not usable(b, device):
                continue
            got = yolov12_fast.pe_add(v, w, bias, H, W, x=res, backend=b)
            ok &= _close(f"pe_add {b} {name}", got, pe(dtype), pe(hi))
            if b in ("cpp", "cuda"):  # the compiled PE backward: the forward kernel flipped, the weight-gradient kernel
                dout = torch.randn(v.shape, generator=torch.Generator().manual_seed(3)).to(device, dtype)

                def pe_grads(dt, backend=None):
                    lv, lw, lb = (t.detach().to(dt).requires_grad_(True) for t in (v, w, bias))
                    out = (yolov12_fast.pe_add(lv, lw, lb, H, W, backend=backend) if backend else
                           F.conv2d(lv.reshape(-1, C, H, W), lw, lb, padding=3, groups=C).reshape(v.shape))
                    return torch.autograd.grad(out, (lv, lw, lb), dout.to(dt))

                for n, g, g_n, g_w in zip(("dv", "dw", "db"), pe_grads(dtype, b), pe_grads(dtype), pe_grads(hi)):
                    ok &= _close(f"pe_add {n} {b} {name}", g, g_n, g_w)
    ok &= _pointwise(device, backends, dtype, hi)
    return ok


def usable(backend: str, device: str) -> bool:
    return _usable(backend, torch.device(device))[0]


def _hw(name: str) -> tuple:
    h, w = name.split()[3].split("x")
    return int(h), int(w)


def _pointwise(device, backends, dtype, hi) -> bool:
    if "triton" not in backends or not usable("triton", device):
        return True
    ok = True
    g = torch.Generator().manual_seed(1)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(device, dtype)
    for B, C, HID, H, W in ((3, 64, 307, 5, 7), (1, 96, 70, 3, 3)):
        x = r(B, C, H, W)
        ws = [r(HID, C, 1, 1, scale=C ** -0.5), r(HID), r(C, HID, 1, 1, scale=HID ** -0.5), r(C)]
        ok &= _close(f"mlp_residual triton C{C} h{HID} {H}x{W}", yolov12_fast.mlp_residual(x, *ws, backend="triton"),
                     mlp_torch(x, *ws), mlp_torch(x.to(hi), *(t.to(hi) for t in ws)))
    for B, K, C, H, W, residual in ((3, 307, 100, 5, 7, True), (1, 192, 128, 4, 4, False)):
        x = r(B, K, H, W).contiguous(memory_format=torch.channels_last)
        ws = [r(C, K, 1, 1, scale=K ** -0.5), r(C)] + ([r(B, C, H, W), r(C)] if residual else [])
        ok &= _close(f"conv1x1_silu_residual triton K{K} C{C} {H}x{W}{' +res' if residual else ''}",
                     yolov12_fast.conv1x1_silu_residual(x, *ws, backend="triton"), cv2_torch(x, *ws),
                     cv2_torch(x.to(hi), *(t.to(hi) for t in ws)))
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float16 (GPU default) or float32 (CPU default)")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if args.device == "cuda" else torch.float32)
    backends = ["triton", "cuda"] if args.device == "cuda" else ["cpp", "triton"]
    for b in backends:
        usable_b, why = _usable(b, torch.device(args.device))
        print(f"backend {b}: {'usable' if usable_b else 'NOT usable: ' + str(why)}", flush=True)
    ok = run(args.device, backends, dtype)
    if args.device == "cuda":
        torch.cuda.synchronize()
    if not CHECKS:
        print(f"NOTHING RAN: none of {backends} is usable on {args.device}")
        return 2
    print(f"all {len(CHECKS)} launches correct" if ok else f"WRONG ANSWERS ({CHECKS.count(False)} of {len(CHECKS)}; "
          "see FAIL lines)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
