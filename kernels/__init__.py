"""Triton kernels of yolov12_fast. They ship as `yolov12_fast.kernels`; every module here imports triton."""

if __name__ != "yolov12_fast.kernels":  # never importable as a top-level `kernels` (a PyPI package owns that name)
    raise ImportError(
        "the Triton kernels in kernels/ ship as `yolov12_fast.kernels`; import them through the installed "
        "package (`import yolov12_fast.kernels`), not as a top-level `kernels` module"
    )
