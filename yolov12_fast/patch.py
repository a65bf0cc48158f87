"""Swap the fast modules into one model instance, reversibly: `patch`, `unpatch`, `patched`.

How the swap works: each matching module *instance* gets a new class, a subclass of both the fast implementation
(yolov12_fast.nn.AAttn / ABlock / A2C2f) and the module's own class (`type(m)`), created once per original class
and cached here. Nothing else changes: the instance keeps its `__dict__`, so its children, Parameters (the same
objects), buffers, hooks and state_dict keys are untouched, `isinstance(m, OriginalClass)` stays true, and only
`forward` (and a few helpers) resolve to the fast code. Classes themselves are never modified, so other models,
including other instances of the same class, are unaffected. `unpatch` sets the original class back and removes
the `_yf_*` entries the patch added to the instance `__dict__`.

What matches (module_kind): instances of ultralytics' AAttn / ABlock / A2C2f (when ultralytics is imported) and
structurally matching objects of other classes named AAttn, ABlock, A2C2f (e.g. the authors' repositories) or
TurboAAttn, TurboABlock, TurboA2C2f: an AAttn with `qkv, proj, pe` (ultralytics/v1.0) or `qk, v, proj, pe`
(turbo) children and int `area, num_heads, head_dim`; an ABlock with `attn` and `mlp`; an A2C2f with
`cv1, cv2, m` and a `gamma` attribute. That includes the turbo
objects that ultralytics' own AAttn class ends up holding when an authors' turbo checkpoint is loaded (its forward
fails with "'AAttn' object has no attribute 'qkv'"; the fast forward reads the layout from the children).
A module that only looks right by name and structure but computes something else must be excluded with `filter`.

Checkpoints stay plain: a fast instance pickles as its original class without the `_yf_*` entries (see
yolov12_fast/nn/modules.py), so `torch.save` of a patched model, and ultralytics' own saving, produce files that
load with plain ultralytics; `copy.deepcopy` keeps the fast class.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Callable, Iterator, Optional

import torch.nn as nn

from .nn.modules import A2C2f, AAttn, ABlock, FastModule, _check_backend, _check_recompute

__all__ = ["patch", "unpatch", "patched", "unpatched", "is_patched", "module_kind", "fast_class"]

Filter = Callable[[str, nn.Module], bool]

_IMPLS = {"aattn": AAttn, "ablock": ABlock, "a2c2f": A2C2f}
_FAST_CLASSES: dict[type, type] = {}  # original class -> fast subclass
_LOCK = threading.Lock()


def _ultralytics_classes() -> tuple[Optional[type], Optional[type], Optional[type]]:
    """ultralytics' AAttn, ABlock, A2C2f, if ultralytics is imported (an object of them can exist only then)."""
    mod = sys.modules.get("ultralytics.nn.modules.block")
    if mod is None:
        return None, None, None
    return getattr(mod, "AAttn", None), getattr(mod, "ABlock", None), getattr(mod, "A2C2f", None)


def _is_aattn_layout(m: nn.Module) -> bool:
    mods = m._modules
    layout = "qkv" in mods or ("qk" in mods and "v" in mods)
    return (layout and "proj" in mods and "pe" in mods
            and all(isinstance(getattr(m, a, None), int) for a in ("area", "num_heads", "head_dim")))


def module_kind(m: nn.Module) -> Optional[str]:
    """"aattn", "ablock" or "a2c2f" if `patch` would swap `m` (or already has), else None."""
    if isinstance(m, FastModule):
        for kind, impl in _IMPLS.items():
            if isinstance(m, impl):
                return kind
        return None
    ua, ub, uc = _ultralytics_classes()
    name, mods = type(m).__name__, m._modules
    if (ua is not None and isinstance(m, ua)) or name in ("AAttn", "TurboAAttn"):
        return "aattn" if _is_aattn_layout(m) else None
    if (ub is not None and isinstance(m, ub)) or name in ("ABlock", "TurboABlock"):
        return "ablock" if "attn" in mods and "mlp" in mods else None
    if (uc is not None and isinstance(m, uc)) or name in ("A2C2f", "TurboA2C2f"):
        return "a2c2f" if all(k in mods for k in ("cv1", "cv2", "m")) and hasattr(m, "gamma") else None
    return None


def fast_class(orig: type, kind: str) -> type:
    """The fast subclass of `orig` (created once, cached): MRO = (fast implementation, orig, ...)."""
    if issubclass(orig, FastModule):
        return orig
    cls = _FAST_CLASSES.get(orig)
    if cls is not None:
        return cls
    with _LOCK:
        cls = _FAST_CLASSES.get(orig)
        if cls is None:
            impl = _IMPLS[kind]
            try:
                cls = type(f"Fast{orig.__name__}", (impl, orig), {
                    "_yf_plain_class": orig,
                    "__module__": __name__,
                    "__qualname__": f"Fast{orig.__name__}",
                    "__doc__": f"{orig.__module__}.{orig.__qualname__} running yolov12_fast.nn.{impl.__name__}'s "
                               "forward (created by yolov12_fast.patch; pickles as the original class).",
                })
            except TypeError as e:
                raise TypeError(f"yolov12_fast.patch: cannot derive a fast class from {orig.__module__}."
                                f"{orig.__qualname__} ({e}); exclude it with filter=") from e
            _FAST_CLASSES[orig] = cls
    return cls


def _torch_root(model) -> nn.Module:
    """The nn.Module to walk: `model` itself, or the torch model inside an ultralytics Model (YOLO) wrapper."""
    if _is_ultralytics_model(model):
        inner = model.__dict__.get("_modules", {}).get("model", getattr(model, "model", None))
        if not isinstance(inner, nn.Module):
            raise TypeError(f"yolov12_fast.patch: this YOLO object holds no PyTorch model ({type(inner).__name__}: "
                            "an exported format?); patch works on .pt / .yaml models")
        return inner
    if not isinstance(model, nn.Module):
        raise TypeError(f"yolov12_fast.patch: expected an nn.Module or an ultralytics YOLO, got {type(model).__name__}")
    return model


def _is_ultralytics_model(obj) -> bool:
    mod = sys.modules.get("ultralytics.engine.model")
    return mod is not None and isinstance(obj, mod.Model)


def _refresh_predictor(model) -> None:
    """An ultralytics predictor built before (un)patching may hold a copy of the model: drop it (ultralytics does
    the same when it replaces the model); the next predict() builds one over the current module."""
    if not _is_ultralytics_model(model) or getattr(model, "predictor", None) is None:
        return
    root = _torch_root(model)
    held = getattr(model.predictor, "model", None)
    if isinstance(held, nn.Module) and any(sub is root for sub in held.modules()):
        return  # it runs this very module, which was changed in place
    model.predictor = None


def _options(backend: Optional[str], recompute: Optional[str]) -> dict:
    """The per-instance settings patch writes into a module's __dict__ (None: leave as it is; a module swapped in
    now then has the defaults, backend and recompute "auto")."""
    opts = {}
    if backend is not None:
        opts["_yf_backend"] = _check_backend(backend)
    if recompute is not None:
        opts["_yf_recompute"] = _check_recompute(recompute)
    return opts


def _is_dropin(model) -> bool:
    """yolov12_fast.YOLO manages its own trainer callback (model.py)."""
    return hasattr(type(model), "_yf_add_callbacks")


def _follow_training(model, backend: Optional[str], recompute: Optional[str]) -> None:
    """An ultralytics YOLO object patched in place: its train() builds a new model in the trainer (and DDP workers
    build theirs); a trainer callback patches that one and its EMA with the same settings (model.py's
    _patch_trainer, as yolov12_fast.YOLO does)."""
    if not _is_ultralytics_model(model) or _is_dropin(model) or not hasattr(model, "callbacks"):
        return
    import functools

    from .model import _patch_trainer

    old = model.__dict__.get("_yf_trainer_callback")
    prev = old.keywords if old is not None else {}
    cb = functools.partial(_patch_trainer, backend=backend or prev.get("backend", "auto"),
                           recompute=recompute or prev.get("recompute", "auto"))
    _stop_following(model)
    model.__dict__["_yf_trainer_callback"] = cb
    model.callbacks["on_pretrain_routine_end"].append(cb)


def _stop_following(model) -> None:
    if not _is_ultralytics_model(model) or _is_dropin(model):
        return
    cb = model.__dict__.pop("_yf_trainer_callback", None)
    cbs = getattr(model, "callbacks", {}).get("on_pretrain_routine_end", [])
    if cb is not None and cb in cbs:
        cbs.remove(cb)


def _swap(m: nn.Module, kind: str, opts: dict) -> None:
    m.__class__ = fast_class(type(m), kind)
    m.__dict__.update(opts)  # settings not given stay unset: the class defaults ("auto")


def _restore(m: nn.Module) -> bool:
    plain = type(m).__dict__.get("_yf_plain_class")
    if plain is None:
        return False  # a module built as yolov12_fast.nn.* has no other class to go back to
    for k in [k for k in m.__dict__ if k.startswith("_yf_")]:
        del m.__dict__[k]
    m.__class__ = plain
    return True


def _patch_tree(root: nn.Module, opts: dict, filter: Optional[Filter]):
    swapped, reset = [], []
    for name, m in root.named_modules():
        kind = module_kind(m)
        if kind is None or (filter is not None and not filter(name, m)):
            continue
        if isinstance(m, FastModule):
            reset.append((m, {k: m.__dict__.get(k) for k in opts}))
            m.__dict__.update(opts)
        else:
            _swap(m, kind, opts)
            swapped.append(m)
    return swapped, reset


def patch(model, backend: Optional[str] = None, filter: Optional[Filter] = None, recompute: Optional[str] = None):
    """Swap the fast modules into this model instance (in place) and return it.

    Args:
        model: an nn.Module (e.g. an ultralytics DetectionModel) or an ultralytics YOLO object. A YOLO object
            also gets a trainer callback, so that its train() trains fast modules with these settings (after
            training ultralytics reloads a plain model into it: patch again, or use yolov12_fast.YOLO, which does).
        backend: area-attention backend for the patched modules ("auto", "triton", "cuda", "cpp", "reference").
            None: "auto" for modules swapped now, already-fast modules keep theirs.
        filter: optional `filter(name, module) -> bool`; only modules for which it returns True are patched. Names
            are those of `named_modules()` of the torch model (for a YOLO object: of `yolo.model`).
        recompute: what ABlocks recompute in backward while training instead of keeping it in memory
            ("auto", the modules' default: nothing, as measured fastest; "mlp"; "block"; "none"; see
            yolov12_fast.nn.FastModule.recompute).
            None leaves each module's setting as it is.

    Idempotent: patching again only updates the settings of the modules the filter selects. Warns when the model
    holds no module to patch (e.g. a YOLO11 model).
    """
    swapped, reset = _patch_tree(_torch_root(model), _options(backend, recompute), filter)
    if not swapped and not reset:
        import warnings

        warnings.warn("yolov12_fast.patch: no YOLOv12 attention module (AAttn / ABlock / A2C2f)"
                      f"{' selected by the filter' if filter is not None else ''} in this model: nothing patched",
                      stacklevel=2)
    _follow_training(model, backend, recompute)
    _refresh_predictor(model)
    return model


def clear_caches(model):
    """Drop the folded (BatchNorm-into-conv) weights the fast modules cache for inference; return the model. Needed
    only after editing parameters in place through `.data` (`p.data.mul_(...)`), which torch's version counters do
    not see; optimizer steps, load_state_dict, ultralytics' EMA and `.to()` are detected on their own."""
    from .nn.modules import _CACHE_KEYS

    for m in _torch_root(model).modules():
        if isinstance(m, FastModule):
            for k in _CACHE_KEYS:
                m.__dict__.pop(k, None)
    return model


def unpatch(model):
    """Restore the original class of every module `patch` swapped in this model (in place); return the model."""
    for m in _torch_root(model).modules():
        if isinstance(m, FastModule):
            _restore(m)
    _stop_following(model)
    _refresh_predictor(model)
    return model


@contextlib.contextmanager
def patched(model, backend: Optional[str] = None, filter: Optional[Filter] = None,
            recompute: Optional[str] = None) -> Iterator:
    """`with yolov12_fast.patched(model): ...` patches on entry and, on exit, restores exactly what it changed
    (modules patched before the block stay patched, with their previous settings)."""
    swapped, reset = _patch_tree(_torch_root(model), _options(backend, recompute), filter)
    following = model.__dict__.get("_yf_trainer_callback") if isinstance(getattr(model, "__dict__", None), dict) else None
    _follow_training(model, backend, recompute)
    _refresh_predictor(model)
    try:
        yield model
    finally:
        _stop_following(model)
        if following is not None:  # the callback of an earlier patch() comes back
            model.__dict__["_yf_trainer_callback"] = following
            model.callbacks["on_pretrain_routine_end"].append(following)
        for m in swapped:
            _restore(m)
        for m, old in reset:
            for k, v in old.items():
                if v is None:
                    m.__dict__.pop(k, None)
                else:
                    m.__dict__[k] = v
        _refresh_predictor(model)


@contextlib.contextmanager
def unpatched(model) -> Iterator:
    """`with unpatched(model): ...` runs the block with the original classes, then patches the same modules back
    with their settings (used around ultralytics' checkpoint saving so the file is byte-for-byte plain)."""
    root = _torch_root(model)
    restored = []
    for m in root.modules():
        if isinstance(m, FastModule) and type(m).__dict__.get("_yf_plain_class") is not None:
            opts = {k: v for k, v in m.__dict__.items() if k in ("_yf_backend", "_yf_recompute")}
            restored.append((m, module_kind(m), opts))
    for m, _, _ in restored:
        _restore(m)
    try:
        yield model
    finally:
        for m, kind, opts in restored:
            _swap(m, kind, opts)


def is_patched(model) -> bool:
    """True if any module of the model runs a yolov12_fast implementation."""
    return any(isinstance(m, FastModule) for m in _torch_root(model).modules())
