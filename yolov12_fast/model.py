"""`yolov12_fast.YOLO`: ultralytics' YOLO with the fast attention modules swapped in.

A subclass of `ultralytics.YOLO` with the same constructor (plus keyword-only `backend=`, `recompute=`,
`cuda_graphs=` and `channels_last=`) and methods. The swap (`yolov12_fast.patch`) happens

- after a model is built from a YAML or loaded from a .pt (`_new` / `_load`),
- inside training, once the trainer has built its own model and EMA (callback `on_pretrain_routine_end`), and
- after `train()` reloads the best checkpoint.

predict / val / export run the model object this class holds (ultralytics fuses it in place or deep-copies it;
both keep the fast classes). Export traces the modules, which then run standard torch ops only.

Checkpoints stay plain ultralytics: `save()` and the trainer's checkpointing run with the original classes
(`yolov12_fast.patch.unpatched`), so the files are exactly what plain ultralytics would write and load without
yolov12_fast (also under ULTRALYTICS_SAFE_LOAD). A patched model pickled any other way still loads with plain
ultralytics (the fast modules pickle as their original class).

DDP training: ultralytics re-launches the trainer in worker processes and ships them the trainer's callbacks
(pickled); ours is a `functools.partial` of a module-level function, so it pickles by reference and each worker
imports yolov12_fast and patches its own model and EMA. Not covered: exported formats (.onnx, .engine, ...), which
hold no PyTorch modules to patch.
"""

from __future__ import annotations

import functools

import torch

try:
    from ultralytics import YOLO as _UltralyticsYOLO
except ImportError as e:
    raise ImportError("yolov12_fast.YOLO is ultralytics' YOLO with the fast modules: install ultralytics, "
                      "`pip install 'ultralytics>=8.3.78'` (or, in the clone, `pip install --no-build-isolation -e '.[ultralytics]'`), "
                      f"then try again ({e})") from e

from .nn.modules import _check_backend, _check_recompute
from .patch import _torch_root, patch, unpatched

__all__ = ["YOLO"]


def _patch_setting(key: str, default: str, check) -> property:
    """A setting of the patched modules, kept in the YOLO object's __dict__; assigning it re-patches the model."""

    def get(self) -> str:
        return self.__dict__.get(key, default)

    def set(self, value: str) -> None:
        self.__dict__[key] = check(value)
        self._yf_patch()

    return property(get, set)


class YOLO(_UltralyticsYOLO):
    """Drop-in `ultralytics.YOLO` running YOLOv12's attention blocks with yolov12_fast's fused kernels.

    Args:
        model, task, verbose: as for `ultralytics.YOLO`.
        backend: area-attention backend of the patched modules ("auto", "triton", "cuda", "cpp", "reference").
        recompute: what the ABlocks recompute in backward while training instead of keeping it in memory ("auto":
            nothing, as measured fastest; "mlp", "block", "none"; see yolov12_fast.nn.FastModule.recompute).
        cuda_graphs: predict() on a GPU replays the model from CUDA graphs (yolov12_fast.cuda_graphs; one capture
            per input shape, at most 4 kept): batch-1 latency without the host in the way. Off by default.
        channels_last: predict() runs the model with channels_last weights and activations
            (`model.to(memory_format=torch.channels_last)`; the patched blocks keep that layout end to end): True,
            False, or "auto": predict()'s own `channels_last=` where given (ultralytics >= 8.4 has it), else where
            measured faster, AUTO_CHANNELS_LAST: x86 CPUs, as ultralytics >= 8.4 decides too (yolo12n at 640, batch
            1, 2 threads on a Xeon, 2026-11-27: 61.5 -> 54.6 ms patched). The model object itself changes layout;
            the weights' values do not.
    """

    def __init__(self, model="yolo12n.pt", task=None, verbose: bool = False, *, backend: str = "auto",
                 recompute: str = "auto", cuda_graphs: bool = False, channels_last="auto"):
        # before Model.__init__, which loads and builds
        self.__dict__["_yf_backend"] = _check_backend(backend)
        self.__dict__["_yf_recompute"] = _check_recompute(recompute)
        self.__dict__["_yf_cuda_graphs"] = bool(cuda_graphs)
        self.__dict__["_yf_channels_last"] = _check_channels_last(channels_last)
        super().__init__(model, task=task, verbose=verbose)
        if not isinstance(self, YOLO):  # ultralytics turned this object into another class (YOLOWorld for "-world")
            if YOLO._yf_has_torch_model(self):
                patch(self, backend=backend, recompute=recompute)
            if cuda_graphs:
                import warnings

                warnings.warn(f"yolov12_fast.YOLO: ultralytics made this a {type(self).__name__}; its attention "
                              "modules (if any) are patched, but cuda_graphs=True is not applied (wrap the model "
                              "with yolov12_fast.cuda_graphs yourself)", RuntimeWarning, stacklevel=2)
            return
        if "_yf_backend" not in self.__dict__:  # Model.__init__ adopted another Model's __dict__
            self.__dict__["_yf_backend"] = backend
            self.__dict__["_yf_recompute"] = recompute
            self.__dict__["_yf_cuda_graphs"] = bool(cuda_graphs)
            self.__dict__["_yf_channels_last"] = _check_channels_last(channels_last)
            self._yf_patch()
        self._yf_add_callbacks()
        self.__dict__["_yf_predict_graphs"] = _PredictGraphs(self.__dict__["_yf_cuda_graphs"],
                                                             self.__dict__["_yf_channels_last"])
        self.add_callback("on_predict_start", self.__dict__["_yf_predict_graphs"])

    # -- where models appear -------------------------------------------------------------------------------------

    def _new(self, cfg, task=None, verbose=False):
        super()._new(cfg, task=task, verbose=verbose)
        self._yf_patch()

    def _load(self, weights, task=None):
        out = super()._load(weights, task=task)
        self._yf_patch()
        return out

    def train(self, trainer=None, **kwargs):
        self._yf_add_callbacks()
        metrics = super().train(trainer=trainer, **kwargs)
        self._yf_patch()  # train() reloaded the best checkpoint: a fresh, plain module
        return metrics

    def save(self, filename="saved_model.pt") -> None:
        if self._yf_has_torch_model():
            with unpatched(self.model):
                return super().save(filename)
        return super().save(filename)

    # -- helpers --------------------------------------------------------------------------------------------------

    @property
    def cuda_graphs(self) -> bool:
        return self.__dict__.get("_yf_cuda_graphs", False)

    @cuda_graphs.setter
    def cuda_graphs(self, value: bool) -> None:
        self.__dict__["_yf_cuda_graphs"] = bool(value)
        cb = self.__dict__.get("_yf_predict_graphs")
        if cb is not None:
            cb.enabled = bool(value)  # applied at the next predict() (on_predict_start)

    @property
    def channels_last(self):
        return self.__dict__.get("_yf_channels_last", "auto")

    @channels_last.setter
    def channels_last(self, value) -> None:
        self.__dict__["_yf_channels_last"] = value = _check_channels_last(value)
        cb = self.__dict__.get("_yf_predict_graphs")
        if cb is not None:
            cb.channels_last = value  # applied at the next predict() (on_predict_start)

    backend = _patch_setting("_yf_backend", "auto", _check_backend)
    recompute = _patch_setting("_yf_recompute", "auto", _check_recompute)

    def _yf_has_torch_model(self) -> bool:
        try:
            _torch_root(self)
        except TypeError:
            return False
        return True

    def _yf_patch(self) -> None:
        if self._yf_has_torch_model():
            patch(self, backend=self.backend, recompute=self.recompute)

    def _yf_add_callbacks(self) -> None:
        """(Re)install the trainer callback with the current settings: a picklable partial (DDP workers get it)."""
        cbs = self.callbacks["on_pretrain_routine_end"]
        old = self.__dict__.get("_yf_trainer_callback")
        if old is not None and old in cbs:
            cbs.remove(old)
        cb = functools.partial(_patch_trainer, backend=self.backend, recompute=self.recompute)
        self.__dict__["_yf_trainer_callback"] = cb
        cbs.append(cb)


def _unwrap(m):
    """The model inside torch.compile (`_orig_mod`) and DataParallel / DistributedDataParallel (`.module`) wrappers.
    Ours, not ultralytics' `unwrap_model`: that arrived after 8.3.78, the oldest ultralytics this library supports."""
    while True:
        if isinstance(getattr(m, "_orig_mod", None), torch.nn.Module):
            m = m._orig_mod
        elif isinstance(m, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            m = m.module
        else:
            return m


def _patch_trainer(trainer, backend: str, recompute: str = "auto") -> None:
    """Trainer callback: patch the model the trainer built and its EMA; checkpoint with the original classes."""
    patch(_unwrap(trainer.model), backend=backend, recompute=recompute)
    ema = getattr(trainer, "ema", None)
    if ema is not None and getattr(ema, "ema", None) is not None:
        patch(ema.ema, backend=backend, recompute=recompute)
    if "save_model" not in trainer.__dict__:  # wrap this trainer's save_model once (instance attribute only)
        plain_save = trainer.save_model

        def save_model():
            ema_model = getattr(getattr(trainer, "ema", None), "ema", None)
            if ema_model is None:
                return plain_save()
            with unpatched(ema_model):
                return plain_save()

        trainer.save_model = save_model


def _head_settings(model) -> tuple:
    """The plain settings (numbers, flags, strings) of an ultralytics model's head, model.model[-1]: the predictor
    changes some per predict() call (max_det, agnostic NMS of end-to-end heads), which a graph would not see."""
    seq = getattr(model, "model", None)
    try:
        head = seq[-1]
    except (TypeError, IndexError, KeyError):
        return ()
    return tuple(sorted((k, v) for k, v in vars(head).items()
                        if not k.startswith("_") and isinstance(v, (bool, int, float, str, type(None)))))


def _predictor_module_slot(predictor):
    """(holder, attribute) of the nn.Module the predictor calls: ultralytics >= 8.4 keeps it at
    predictor.model.backend.model (AutoBackend -> PyTorchBackend), earlier versions at predictor.model.model.
    Only for PyTorch models (not TorchScript or exported formats)."""
    import torch.nn as nn

    autobackend = getattr(predictor, "model", None)
    if getattr(autobackend, "format", "pt") != "pt" or getattr(autobackend, "pt", True) is False:
        return None, None
    for holder in (getattr(autobackend, "backend", None), autobackend):
        if holder is not None and isinstance(getattr(holder, "model", None), nn.Module):
            return holder, "model"
    return None, None


# Where channels_last="auto" runs the predictor's model channels_last, per device type, when predict() was not told
# (ultralytics' own `channels_last` argument, since 8.4, also defaults to it on x86 CPUs only): measured faster there.
# CPU (yolo12n at 640, batch 1, 2 threads, a 2-core Xeon, benchmarks/results/cpu-intel-r-xeon-r-processor-2026-11-27c,
# denormals flushed): ultralytics 68.5 -> 57.4 ms, patched 61.5 -> 54.6 ms; 1 thread: 97.2 -> 94.1, 93.4 -> 91.3.
# x86 only (other CPUs unmeasured). CUDA: not until a GPU run measures it (the model suite's `-cl` rows).
AUTO_CHANNELS_LAST = {"cpu": True}


def _check_channels_last(value):
    if value not in (True, False, "auto"):
        raise ValueError(f"yolov12_fast.YOLO: channels_last must be True, False or 'auto', got {value!r}")
    return value


def _want_channels_last(setting, device_type: str, predict_arg=None) -> bool:
    """The layout to run: `setting` when True / False; for "auto" predict()'s own channels_last argument when given
    (ultralytics >= 8.4), else AUTO_CHANNELS_LAST for the device type (CPUs: x86 only, as ultralytics decides)."""
    if setting != "auto":
        return bool(setting)
    if predict_arg in (True, False):
        return predict_arg
    import platform

    return bool(AUTO_CHANNELS_LAST.get(device_type, False)) and (
        device_type != "cpu" or platform.machine() in ("x86_64", "AMD64"))


def _is_channels_last(module) -> bool:
    """Whether the module's first k x k (k > 1) convolution weight is channels_last (1x1 weights are both layouts)."""
    for m in module.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, torch.nn.Conv2d) and isinstance(w, torch.Tensor) and w.dim() == 4 and w.shape[2] * w.shape[3] > 1:
            return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    return False


def _set_layout(module, want: bool) -> bool:
    """Move `module` to channels_last (want) or back to NCHW; True when it changed."""
    if next(module.parameters(), None) is None or want == _is_channels_last(module):
        return False
    module.to(memory_format=torch.channels_last if want else torch.contiguous_format)
    return True


class _PredictGraphs:
    """on_predict_start callback of a yolov12_fast.YOLO: move the module the predictor calls to the memory format
    `channels_last` asks for, and wrap (enabled) or unwrap it in yolov12_fast.cuda_graphs. A small picklable object
    (ultralytics ships callbacks to DDP workers); the YOLO object's cuda_graphs and channels_last setters change
    `enabled` and `channels_last`."""

    def __init__(self, enabled: bool, channels_last="auto"):
        self.enabled = enabled
        self.channels_last = channels_last

    def __call__(self, predictor) -> None:
        from .graphs import CUDAGraphed, cuda_graphs

        holder, attr = _predictor_module_slot(predictor)
        if holder is None:
            return
        module = getattr(holder, attr)
        inner = module.module if isinstance(module, CUDAGraphed) else module
        p = next(inner.parameters(), None)
        # "auto" follows a predict(channels_last=...) the user gave (ultralytics >= 8.4 applies it at setup; not
        # undone here), else AUTO_CHANNELS_LAST
        want = _want_channels_last(getattr(self, "channels_last", False), p.device.type if p is not None else "cpu",
                                   getattr(getattr(predictor, "args", None), "channels_last", None))
        if _set_layout(inner, want) and isinstance(module, CUDAGraphed):
            module.reset()  # its graphs read the old parameter tensors
        if self.enabled and not isinstance(module, CUDAGraphed):
            module = cuda_graphs(module)
            setattr(holder, attr, module)
        elif not self.enabled and isinstance(module, CUDAGraphed):
            setattr(holder, attr, module.module)
            return
        if isinstance(module, CUDAGraphed):  # the predictor sets the head's max_det, agnostic NMS... per predict()
            settings = _head_settings(module.module)
            if settings != module.__dict__.get("_yf_head_settings"):
                module.reset()
                module.__dict__["_yf_head_settings"] = settings
