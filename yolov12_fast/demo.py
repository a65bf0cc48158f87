"""`yolov12-fast demo`: YOLO12 through the ultralytics reference and through every fast path that can run here.

Builds the model from its config (random weights, BatchNorm calibrated on the image so the comparison means
something) or loads a checkpoint, runs the bundled bus.jpg through ultralytics' own modules and through each
usable backend of the patched model, prints the error relative to the output's scale and the time per path (under
torch.inference_mode, as ultralytics' predictor runs), and saves an annotated image.
"""

from __future__ import annotations

import copy
import time


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run YOLO12 through the reference and every fast path; print error and time")
    p.add_argument("--model", default="yolo12n.yaml", help="config name or checkpoint path (default yolo12n.yaml)")
    p.add_argument("--image", default=None, help="image path (default: ultralytics' bundled bus.jpg)")
    p.add_argument("--imgsz", type=int, default=640, help="square input size, a multiple of 32 (default 640)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per path (median reported)")
    p.add_argument("--out", default="yolov12_fast_demo.jpg", help="where to save the annotated image")
    p.set_defaults(fn=run)


def _time(fn, repeat: int, sync) -> float:
    fn()  # warm-up (Triton autotune / compile happens here)
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def run(args) -> int:
    import torch

    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with the `bench` extra, not with the package: no progress bar then
        def tqdm(it, **_):
            return it

    import yolov12_fast
    from yolov12_fast import _backends
    from yolov12_fast.utils import asset_paths, calibrate_bn, load_images, ultralytics_offline

    ultralytics_offline()
    from ultralytics import YOLO

    import os

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    image = args.image or str(asset_paths()[0])
    if args.imgsz < 32 or args.imgsz % 32:
        print(f"yolov12-fast demo: error: --imgsz must be a positive multiple of 32 (the model's stride), got {args.imgsz}")
        return 2
    if args.repeat < 1:
        print(f"yolov12-fast demo: error: --repeat must be at least 1, got {args.repeat}")
        return 2
    if not os.path.exists(image):
        print(f"yolov12-fast demo: error: --image {image}: no such file")
        return 2
    if not str(args.model).endswith((".yaml", ".yml")) and not os.path.exists(args.model):
        print(f"yolov12-fast demo: error: --model {args.model}: no such checkpoint (or pass a config such as yolo12n.yaml)")
        return 2
    try:
        yolo = YOLO(args.model)
    except Exception as e:  # an unknown config name (yolo12q.yaml), a file that is no checkpoint
        print(f"yolov12-fast demo: error: --model {args.model}: ultralytics cannot build or load it "
              f"({type(e).__name__}: {e})")
        return 2
    model = yolo.model.float()
    x = load_images([image], args.imgsz)
    if str(args.model).endswith((".yaml", ".yml")):
        calibrate_bn(model, x)
    with torch.no_grad():  # ultralytics < 8.3.9x fuses with autograd on: weights that are no leaves, which predict() rejects
        model = model.fuse(verbose=False).eval().to(device)
    x = x.to(device)

    paths = [("ultralytics (reference)", None)]
    for backend in ("triton", "cuda", "cpp"):
        ok, why = {"triton": lambda: _backends.can_use_triton(device), "cpp": _backends.can_use_cpp,
                   "cuda": lambda: _backends.can_use_cuda_ext(device)}[backend]()
        if backend == "cpp" and device.type != "cpu":
            continue
        if backend in ("cuda", "triton") and device.type != "cuda":
            continue
        paths.append((f"yolov12_fast {backend}", backend) if ok else (f"yolov12_fast {backend} (unavailable: {why})", "skip"))
    if len([p for p in paths if p[1] not in (None, "skip")]) == 0:
        paths.append(("yolov12_fast reference backend", "reference"))

    rows = []
    with torch.inference_mode():
        ref = model(x)[0]
        for name, backend in tqdm(paths, desc="demo", unit="path"):
            if backend == "skip":
                rows.append((name, None, None))
                continue
            m = model if backend is None else yolov12_fast.patch(copy.deepcopy(model), backend=backend)
            out = m(x)[0]
            err = ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
            rows.append((name, err, _time(lambda: m(x), args.repeat, sync)))

    print(f"\nYOLO {args.model} on {image} at {args.imgsz}, {device.type}"
          f"{' (' + torch.cuda.get_device_name() + ')' if device.type == 'cuda' else f', {torch.get_num_threads()} threads'}")
    print(f"{'path':<48} {'max |err| / max |out|':>24} {'ms / image':>11}")
    base = rows[0][2]
    for name, err, t in rows:
        if t is None:
            print(f"{name:<48}")
            continue
        print(f"{name:<48} {err:>24.3g} {t * 1e3:>11.2f}" + (f"  ({base / t:.2f}x)" if t and base else ""))
    yolov12_fast.patch(yolo, backend="auto")
    res = yolo.predict(image, imgsz=args.imgsz, device=device, verbose=False)
    res[0].save(args.out)
    print(f"annotated image (patched model, backend auto): {args.out}")
    return 0
