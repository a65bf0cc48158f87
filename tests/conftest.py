"""Test infrastructure shared by every test file (collectable without a GPU, Triton or the extension).

- Without a CUDA GPU, Triton kernels run in the interpreter on CPU tensors (TRITON_INTERPRET=1 is set here,
  before anything imports triton). With a GPU they compile for it.
- Ultralytics runs offline: settings, font and config dir are private to the test session.
- Markers: `gpu` (skipped with the reason where no CUDA device is visible), `slow` (run with --runslow or
  YOLOV12_FAST_SLOW=1).
"""

import os
import shutil
import sys
import tempfile
import zlib

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Ultralytics offline: no network, no auto-install, a private config dir holding a font (training/validation
# would otherwise try to download Arial.ttf).
_cfg = os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolov12_fast_ultra_"))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("YOLO_VERBOSE", "False")
if not os.path.exists(os.path.join(_cfg, "Arial.ttf")):
    try:
        import matplotlib

        shutil.copy(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf"),
                    os.path.join(_cfg, "Arial.ttf"))
    except Exception:
        pass

sys.path.insert(0, os.path.dirname(__file__))  # tests/ helpers (tolerances, op_samples, ...) import by name

import pytest  # noqa: E402


def pytest_configure(config):
    # A clone's root on sys.path with no editable install: the tests would import the bare source tree and skip or
    # fall back past every kernel. Refuse, saying how to install.
    from yolov12_fast import _backends

    problem = _backends.source_tree_problem()
    if problem:
        raise pytest.UsageError(problem)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow") or os.environ.get("YOLOV12_FAST_SLOW") == "1"
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none visible); runs on the GPU machine")
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow or YOLOV12_FAST_SLOW=1")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)


DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed(request):
    """Fresh random inputs per test, reproducible from the test id (printed on failure by pytest)."""
    seed = zlib.crc32(request.node.nodeid.encode())  # stable across processes (str hash() is salted)
    torch.manual_seed(seed)
    yield seed
    _check_cuda_rng_usable()


def _check_cuda_rng_usable():
    """A test must not leave the CUDA random generator broken for the tests after it. A CUDA graph capture that fails
    in capture_end leaves torch's default generator in capture mode (torch <= 2.11 at least); every later random op
    on the device then raises "Offset increment outside graph capture encountered unexpectedly". On the H100
    (2026-11-27) one such test failed some 60 tests after it, which hid the culprit: this check fails the test that
    did it, at its teardown."""
    if not (HAS_CUDA and torch.cuda.is_initialized()):
        return
    state = torch.cuda.get_rng_state()
    try:
        torch.empty(1, device="cuda").uniform_()
    except RuntimeError as e:
        pytest.fail(f"this test left the CUDA random generator unusable for the tests after it: {e}")
    torch.cuda.set_rng_state(state)  # the check draws nothing the tests see
