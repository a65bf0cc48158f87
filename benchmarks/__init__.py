"""yolov12_fast benchmarks: how fast the fused kernels are, against the baselines users actually run.

One entry point (run from the repository root; ../shared/docs/BENCHMARKS.md is the method):

    python -m benchmarks [ceilings ops blocks model] [--device cpu|cuda] [--quick] [--out DIR]
    python -m benchmarks report [FILES...]          # markdown table + PNG plots from result rows
    python -m benchmarks proxies [--check]          # GPU-free proxies: launches, modeled bytes, registers/spills

Suites (one module each):

- `ceilings` (ceilings.py): this device's matmul peak and copy bandwidth, measured in the run.
- `ops` (ops.py): area attention forward and forward+backward at the real shapes, from the qkv conv output to the
  tensor `proj` consumes, every provider of baselines.py; and the PE branch (pe_add vs depthwise conv + add).
- `blocks` (blocks.py): AAttn, ABlock, A2C2f of every YOLO12 scale, ultralytics vs patched.
- `model` (model.py): whole YOLO12 n..x and YOLO11 n/s, eager / patched / CUDA graphs / torch.compile, latency,
  throughput, one AMP training step.

Every measurement is one JSON row (harness.make_row) appended to `<out>/<device>-<date>.jsonl`; `report` renders
them. The providers (baselines and ours) are defined once in baselines.py and imported by tests.
"""

SUITES = ("ceilings", "ops", "blocks", "model")
