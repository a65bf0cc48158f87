# Where does the patched model's output diverge from ultralytics' on the GPU? Per top-level layer rel err, against
# the size of an innocent perturbation (the same eager model with TF32 on / a cuDNN algorithm change).
import copy, sys, torch
sys.path.insert(0, ".")
from benchmarks import yolo
import yolov12_fast

def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()

def first(t):
    while isinstance(t, (list, tuple)):
        t = t[0]
    return t

def layer_outs(model, x):
    outs = {}
    hooks = [m.register_forward_hook(lambda m, i, o, j=j: outs.__setitem__(j, first(o).detach().clone()))
             for j, m in enumerate(model.model)]
    with torch.inference_mode():
        y = model(x)
    for h in hooks:
        h.remove()
    return outs, first(y)

for dtype in (torch.float32, torch.float16):
    eager = yolo.build("yolo12n", calibrate_imgsz=640, device="cuda", dtype=dtype)
    x = torch.rand(2, 3, 640, 640, device="cuda", dtype=dtype)
    torch.backends.cuda.matmul.allow_tf32 = False; torch.backends.cudnn.allow_tf32 = False
    ref, yref = layer_outs(eager, x)
    again, yagain = layer_outs(eager, x)
    torch.backends.cuda.matmul.allow_tf32 = True; torch.backends.cudnn.allow_tf32 = True
    tf, ytf = layer_outs(eager, x)
    torch.backends.cuda.matmul.allow_tf32 = False; torch.backends.cudnn.allow_tf32 = False
    rows = {"eager again": (again, yagain), "eager tf32": (tf, ytf)}
    for b in ("triton", "reference", "auto"):
        p = yolov12_fast.patch(copy.deepcopy(eager), backend=b)
        rows[f"patched {b}"] = layer_outs(p, x)
    print(f"== {dtype}: rel err per layer (max |diff| / max |ref|)")
    print("layer type            " + " ".join(f"{k:>16}" for k in rows))
    for j, m in enumerate(eager.model):
        print(f"{j:>3} {type(m).__name__:<18}" + " ".join(f"{rel(v[0][j], ref[j]):>16.3g}" for v in rows.values()))
    print("out                   " + " ".join(f"{rel(v[1], yref):>16.3g}" for v in rows.values()))
    d = yref.float()
    print("output shape", tuple(yref.shape), "max |ref|", d.abs().max().item(), "argmax", divmod(d.abs().argmax().item(), d.shape[-1]))
    dd = (rows["patched triton"][1].float() - d).abs()
    print("largest diff at (flat)", divmod(dd.argmax().item(), d.shape[-1]), "value", dd.max().item(),
          "rows (box 0-3 / classes) with diff > 1% of max:", sorted(set(((dd > 0.01 * d.abs().max()).nonzero()[:, 1]).tolist()))[:20])
