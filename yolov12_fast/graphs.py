"""`yolov12_fast.cuda_graphs(model)`: batch-1 GPU inference without the host in the way.

A small YOLO forward on a GPU is host-bound: Python and the launch of a few hundred kernels take longer than the
kernels (benchmarks/results/nvidia-h100-80gb-hbm3-2026-11-26: yolo12n at 640, batch 1, fp16 on an H100: 6.9 ms
eager, 1.6 ms replayed from a CUDA graph; patched and replayed 1.39 ms, 4.95x ultralytics eager). `cuda_graphs`
wraps a module so that each eager-inference call replays a CUDA graph captured for that input signature:

    model = yolov12_fast.patch(yolo.model).cuda().half().eval()   # or any nn.Module
    graphed = yolov12_fast.cuda_graphs(model)
    with torch.inference_mode():
        y = graphed(x)    # first call per (shape, dtype, device, mode): warm-up + capture; then replays

What it guarantees, and when it steps aside:
- A call replays only in eager inference: torch.inference_mode() or torch.no_grad(), every submodule in eval mode,
  no module hooks, no autocast (its weight cache is freed when the context exits; run a .half() model), a CUDA
  tensor as the only argument, no torch.compile / tracing / export / dispatch mode watching. The signature of a
  graph: input shape, dtype and device, grad mode, keyword arguments (None / False only). A signature's first call
  runs eagerly, its second captures (three warm-up runs, then the capture), later ones replay: a shape seen once
  (a last, short batch) costs no capture. Anything else
  (training, autograd, CPU inputs, extra arguments such as ultralytics' augment=True) runs the module itself.
- Outputs are copies (clone) of the graph's static outputs: a later call never overwrites what an earlier one
  returned. Cost: one copy of the outputs per call.
- The input is copied into the graph's static input: any strides are accepted.
- Parameters and buffers changed in place (optimizer steps, load_state_dict, EMA: their version counters),
  moved or re-allocated (`.half()`, `.to()`, `load_state_dict(assign=True)`), modules whose class changed
  (yolov12_fast.patch / unpatch after wrapping) or that were replaced are detected at every call (about 0.1 ms of
  host time for a yolo12n) and the graphs are captured again: the patched modules fold BatchNorm into cached
  weights in Python, which a replay would not redo.
- Tensors the modules keep as plain attributes (ultralytics' Detect anchors for the last input shape, the patched
  modules' folded weights) are kept alive with each graph, so a forward of another shape or mode that replaces
  them cannot free what a graph reads.
- At most `max_graphs` signatures are kept (least recently used dropped: each graph holds its own memory pool).
  After 4 x max_graphs captures (more shapes in rotation than kept graphs), new signatures run eagerly, with a
  warning, instead of capturing at every call; reset() starts counting again.
- A capture that fails (an op that cannot be captured), or a forward that changes the module's parameters or
  buffers in place, warns once and leaves that module eager from then on. Errors of the warm-up runs (a bad input)
  are raised as the eager call would raise them.
- Calls from several threads are serialised (the static buffers are shared); captures use CUDA's thread-local
  capture mode.
- Not seen: plain Python attributes that change what a module computes (an ultralytics head's max_det): call
  `reset()` after changing them (yolov12_fast.YOLO does at each predict() whose head settings changed).
"""

from __future__ import annotations

import collections
import operator
import threading
import warnings
from typing import Any

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

__all__ = ["cuda_graphs", "CUDAGraphed"]

_TRAINING, _FWD_HOOKS, _PRE_HOOKS, _VERSION = (operator.attrgetter(a) for a in
                                                ("training", "_forward_hooks", "_forward_pre_hooks", "_version"))
_DATA_PTR = torch.Tensor.data_ptr


def _clone(tree):
    """Copies of the graph's static outputs, each tensor once (a tensor that appears twice in the output is copied
    once and appears twice)."""
    done = {}

    def copy(t):
        if not isinstance(t, torch.Tensor):
            return t
        if id(t) not in done:
            done[id(t)] = t.clone()
        return done[id(t)]

    return pytree.tree_map(copy, tree)


def _global_hooks() -> bool:
    """Global module hooks (nn.modules.module.register_module_forward_hook ...): a replay would not run them."""
    from torch.nn.modules import module as _mm

    return bool(_mm._global_forward_hooks or _mm._global_forward_pre_hooks or _mm._global_backward_hooks
                or _mm._global_backward_pre_hooks)




def _module_flags(mods, fast) -> tuple:
    """Per module: class, training flag, forward-hook and pre-hook counts; and the settings (backend, recompute) of
    the fast modules among them (`fast`). Built with map(): a generator of per-module tuples costs three times as
    much."""
    return (tuple(map(type, mods)), tuple(map(_TRAINING, mods)), tuple(map(len, map(_FWD_HOOKS, mods))),
            tuple(map(len, map(_PRE_HOOKS, mods))),
            tuple((m.__dict__.get("_yf_backend"), m.__dict__.get("_yf_recompute")) for m in fast))


def _probe_eligible(probe) -> bool:
    """No module in training mode and no forward hook anywhere: both need the modules' Python at every call."""
    _, training, hooks, pre_hooks, _ = probe[1]
    return not (any(training) or any(hooks) or any(pre_hooks))


def _watched() -> bool:
    """Something intercepts the ops (compile, tracing, export, a dispatch mode, functorch): run the module."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()
            or torch.onnx.is_in_onnx_export() or torch._C._len_torch_dispatch_stack() != 0
            or torch._C._are_functorch_transforms_active())


def _addresses_and_versions(tensors) -> tuple:
    """Storage address and version counter of each tensor. The versions matter: the patched modules fold
    BatchNorm into cached conv weights, re-folded in Python when a parameter changes in place (optimizer step,
    EMA, load_state_dict); a replay runs no Python and would keep the old folded weights."""
    try:
        return tuple(map(_DATA_PTR, tensors)) + tuple(map(_VERSION, tensors))
    except RuntimeError:  # an inference tensor (no version counter: it cannot change in place outside inference)
        return tuple(map(_DATA_PTR, tensors)) + tuple(-1 if t.is_inference() else t._version for t in tensors)


def _state_tensors(module: nn.Module) -> list:
    """Tensors that modules keep as plain attributes (not parameters or buffers): ultralytics' Detect keeps its
    anchors and strides for the last input shape, the patched modules their folded weights per dtype and mode. A
    graph reads them at the addresses they had at capture; a later forward of another shape or mode replaces them,
    and freed they would be reused by other tensors. Each graph keeps the ones it was captured with alive."""
    out = []
    for m in module.modules():
        for k, v in vars(m).items():
            if k in ("_parameters", "_buffers", "_modules") or k.endswith("hooks"):
                continue
            if isinstance(v, torch.Tensor):
                out.append(v)
            elif isinstance(v, (tuple, list, dict)):
                out += [t for t in pytree.tree_leaves(v) if isinstance(t, torch.Tensor)]
    return out


class _Graph:
    __slots__ = ("graph", "static_in", "static_out", "keepalive")

    def __init__(self, graph, static_in, static_out, keepalive):
        self.graph, self.static_in, self.static_out, self.keepalive = graph, static_in, static_out, keepalive


class CUDAGraphed(nn.Module):
    """`module` replayed from CUDA graphs in eager inference; see the module docstring (yolov12_fast.graphs).

    Attributes of the wrapped module are reachable through the wrapper (`graphed.stride`, `graphed.names`), and
    `graphed.module` is the module itself. The state_dict is the module's, under the prefix `module.`.
    """

    def __init__(self, module: nn.Module, max_graphs: int = 4, warmup: int = 3, check_state: bool = True):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"yolov12_fast.cuda_graphs: expected an nn.Module, got {type(module).__name__}")
        if int(max_graphs) < 1 or int(warmup) < 1:
            raise ValueError(f"yolov12_fast.cuda_graphs: max_graphs and warmup must be >= 1, got {max_graphs} "
                             f"and {warmup} (warm-up runs let cuDNN and Triton choose and load their kernels "
                             "before capture, which cannot load them)")
        self.module = module
        self.max_graphs, self.warmup, self.check_state = int(max_graphs), int(warmup), bool(check_state)
        self.__dict__["_graphs"] = collections.OrderedDict()
        self.__dict__["_fingerprint"] = None
        self.__dict__["_disabled"] = None  # why capture is off for this wrapper, once it failed
        self.__dict__["_seen"] = {}  # signatures seen once (captured at their second call)
        self.__dict__["_captures"] = 0  # since the last reset(): a cap stops capture thrash
        self.__dict__["_thrash_warned"] = False
        self.__dict__["_train_warned"] = False
        self.__dict__["_lock"] = threading.RLock()

    # -- attributes of the wrapped module (ultralytics reads stride, names, yaml, ...) --------------------------
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)

    # -- copies never carry the graphs (they hold device memory and addresses of this instance) ----------------
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_graphs"] = collections.OrderedDict()
        state["_fingerprint"] = None
        state["_seen"] = {}
        del state["_lock"]
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__["_lock"] = threading.RLock()

    def __deepcopy__(self, memo):
        import copy

        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__getstate__().items():
            new.__dict__[k] = copy.deepcopy(v, memo)
        new.__dict__["_lock"] = threading.RLock()
        return new

    def _apply(self, fn, recurse=True):  # .to(), .half(), .cuda(): the captured addresses are stale
        self.reset()
        return super()._apply(fn, recurse)

    def reset(self) -> None:
        """Drop every captured graph (the next calls per signature capture again). Call it after changing a plain
        Python attribute that changes what the module computes (see _probe for what is detected)."""
        with self.__dict__["_lock"]:
            self._drop_graphs()
            self.__dict__["_fingerprint"] = None
            self.__dict__["_seen"].clear()
            self.__dict__["_captures"] = 0
            self.__dict__["_thrash_warned"] = False

    @property
    def num_graphs(self) -> int:
        return len(self.__dict__["_graphs"])

    # -- the call ---------------------------------------------------------------------------------------------
    def _eligible(self, args, kwargs) -> bool:
        # one tensor argument; keyword arguments only if None / False (ultralytics passes augment=False,
        # visualize=False, embed=None), which are part of the graph's signature
        if len(args) != 1 or not all(v is None or v is False for v in kwargs.values()):
            return False
        x = args[0]
        # autocast: its cache of cast weights is freed when the context exits, and a replay would read it (torch's
        # own graph tools refuse it too); inference runs a .half() model instead
        return (isinstance(x, torch.Tensor) and x.is_cuda and not torch.is_grad_enabled() and not self.module.training
                and self.__dict__["_disabled"] is None and not torch.is_autocast_enabled(x.device.type)
                and not _global_hooks() and not _watched())

    def _probe(self):
        """What the captured graphs depend on besides the input, as a snapshot to compare cheaply at every call:
        each module's class (yolov12_fast.patch / unpatch swap classes in place), training flag and hooks (neither
        a train-mode submodule nor a hook runs in a replay), each child module and each parameter / buffer object
        in its parent (module surgery, load_state_dict(assign=True)), each tensor's storage address (.half(), .to()
        re-allocate in place) and version counter (in-place updates), and the settings of the fast modules
        (backend, recompute: patch() on a patched model changes them in place). Not seen: other plain Python
        attributes of the modules (an ultralytics head's max_det, say): call reset() after changing those
        (yolov12_fast.YOLO's predict does it for the head's)."""
        mods = list(self.module.modules())
        slots = [(m._modules, name, c) for m in mods for name, c in m._modules.items()]
        slots += [(m._parameters, name, t) for m in mods for name, t in m._parameters.items()]
        slots += [(m._buffers, name, t) for m in mods for name, t in m._buffers.items()]
        tensors = [t for _, _, t in slots if isinstance(t, torch.Tensor)]
        slots = tuple(zip(*slots)) if slots else ((), (), ())  # (containers, names, objects), for map()
        from .nn.modules import FastModule

        fast = [m for m in mods if isinstance(m, FastModule)]
        return (mods, fast), _module_flags(mods, fast), slots, tensors, _addresses_and_versions(tensors)

    def _probe_still_valid(self) -> bool:
        """About 0.1 ms for a yolo12n here (352 modules, 239 tensors; a walk over its modules costs 0.3 ms)."""
        probe = self.__dict__["_fingerprint"]
        if probe is None:
            return False
        (mods, fast), flags, slots, tensors, ptrs = probe
        containers, names, objects = slots
        return (_module_flags(mods, fast) == flags and all(map(operator.is_, map(dict.get, containers, names), objects))
                and _addresses_and_versions(tensors) == ptrs)

    def forward(self, *args, **kwargs):
        if not self._eligible(args, kwargs):
            if self.module.training and not self.__dict__.get("_train_warned"):
                self._warn_train_mode(args)
            return self.module(*args, **kwargs)
        with self.__dict__["_lock"]:  # one copy-in / replay / copy-out at a time (the static buffers are shared)
            return self._replay_or_capture(args[0], kwargs)

    def _replay_or_capture(self, x: torch.Tensor, kwargs: dict):
        graphs = self.__dict__["_graphs"]
        if (self.check_state or self.__dict__["_fingerprint"] is None) and not self._probe_still_valid():
            self._drop_graphs()  # re-allocated or updated tensors, swapped classes, module surgery: all stale
            self.__dict__["_fingerprint"] = probe = self._probe()
            if not _probe_eligible(probe):
                self.__dict__["_fingerprint"] = None
                return self.module(x, **kwargs)  # a train-mode submodule or a hook: they need the Python
        key = (tuple(x.shape), x.dtype, x.device, torch.is_inference_mode_enabled(), tuple(sorted(kwargs.items())))
        g = graphs.get(key)
        if g is None:
            seen = self.__dict__["_seen"]
            if key not in seen:  # first sighting: eager (a signature seen once is not worth a capture)
                seen[key] = None
                while len(seen) > 4 * self.max_graphs:
                    seen.pop(next(iter(seen)))
                return self.module(x, **kwargs)
            if self.__dict__["_captures"] >= 4 * self.max_graphs:  # signatures cycle through more graphs than kept
                if not self.__dict__["_thrash_warned"]:
                    self.__dict__["_thrash_warned"] = True
                    warnings.warn(f"yolov12_fast.cuda_graphs: {self.__dict__['_captures']} captures for at most "
                                  f"{self.max_graphs} kept graphs (more input shapes than max_graphs in rotation); "
                                  "new shapes run eagerly from now on, kept graphs still replay (raise max_graphs, "
                                  "or reset())", RuntimeWarning, stacklevel=4)
                return self.module(x, **kwargs)
            g = self._capture(x, kwargs)
            if g is None:
                return self.module(x, **kwargs)
            self.__dict__["_captures"] += 1
            graphs[key] = g
            while len(graphs) > self.max_graphs:
                graphs.popitem(last=False)  # after graph capture's synchronize: no replay of it is in flight
        else:
            graphs.move_to_end(key)
        with torch.cuda.device(x.device):
            g.static_in.copy_(x)
            g.graph.replay()
            return _clone(g.static_out)

    def _warn_train_mode(self, args) -> None:
        """Once: a train-mode module called for inference on CUDA is never captured, which would otherwise go
        unnoticed (no error, no speed-up)."""
        x = args[0] if len(args) == 1 else None
        if isinstance(x, torch.Tensor) and x.is_cuda and not torch.is_grad_enabled():
            self.__dict__["_train_warned"] = True
            warnings.warn(f"yolov12_fast.cuda_graphs: {type(self.module).__name__} is in training mode, so its calls "
                          "run eagerly (a graph replay would skip what train mode does per call: BatchNorm statistics, "
                          "dropout); call .eval() on it for inference with graph replays", RuntimeWarning, stacklevel=4)

    def _capture(self, x: torch.Tensor, kwargs: dict):
        with torch.cuda.device(x.device):  # capture and its pool on the input's device, whatever the current one
            return self._capture_here(x, kwargs)

    def _capture_here(self, x: torch.Tensor, kwargs: dict):
        static_in = torch.empty_like(x, memory_format=torch.contiguous_format)
        static_in.copy_(x)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up off the capture (cuDNN / Triton pick and load their kernels);
            for _ in range(self.warmup):  # its errors (a bad input) are the caller's, raised as eager would
                self.module(static_in, **kwargs)
        torch.cuda.current_stream(x.device).wait_stream(side)
        before = self.__dict__["_fingerprint"]
        stream = torch.cuda.current_stream(x.device)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: CUDA calls of other threads (an allocation, a sync) do not break this capture
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_out = self.module(static_in, **kwargs)
        except Exception as e:  # noqa: BLE001 - a capture failure leaves the module eager, with a warning
            torch.cuda.set_stream(stream)  # torch leaves its capture stream current when capture_end raises
            torch.cuda.synchronize(x.device)
            _recover_from_failed_capture(graph, x.device)
            return self._disable(f"{type(e).__name__}: {e}")
        after = self._probe()
        if before is not None and after[4] != before[4]:  # the forward changed a parameter / buffer in place
            return self._disable("the forward changes the module's parameters or buffers in place (a replay would "
                                 "repeat that change without running the module's Python)")
        return _Graph(graph, static_in, static_out, _state_tensors(self.module))

    def _disable(self, why: str):
        self.__dict__["_disabled"] = why
        warnings.warn(f"yolov12_fast.cuda_graphs: capturing {type(self.module).__name__} failed ({why[:300]}); it "
                      "runs eagerly from now on (reset_capture() to try again)", RuntimeWarning, stacklevel=5)
        return None

    def _drop_graphs(self) -> None:
        graphs = self.__dict__["_graphs"]
        if graphs:
            torch.cuda.synchronize()  # no replay may still read what the graphs keep alive
            graphs.clear()

    def reset_capture(self) -> None:
        """Allow capture again after a failure, and drop the graphs."""
        self.__dict__["_disabled"] = None
        self.reset()

    def extra_repr(self) -> str:
        return f"max_graphs={self.max_graphs}, graphs={self.num_graphs}"


_FAILED_CAPTURES: list = []  # graphs whose capture failed, kept alive: see _recover_from_failed_capture


def _recover_from_failed_capture(graph: "torch.cuda.CUDAGraph", device: torch.device) -> None:
    """Undo what a failed capture leaves behind, so that the user's program runs on as if it had not been tried.

    When the stream capture is invalidated (a host sync, an op that cannot be captured), torch's capture_end raises
    before its clean-up (torch 2.11 at least):
    - the device's default CUDA generator stays in capture mode: every later random op on the device raises
      "Offset increment outside graph capture encountered unexpectedly" (found on the H100, 2026-11-27: after one
      failed capture, every torch.randn of the test session failed). A capture that succeeds ends that mode: one
      tiny graph is captured here (an add, no random number drawn: the random stream is unchanged) and dropped;
    - the caching allocator keeps the graph's pool open with a filter that refers to the graph object: the failed
      graph is kept alive (one per failed wrapper, which then stays eager) so that the filter never reads freed
      memory."""
    _FAILED_CAPTURES.append(graph)
    try:
        with torch.cuda.device(device):
            target = torch.zeros(1, device=device)
            fix = torch.cuda.CUDAGraph()
            with torch.cuda.graph(fix, capture_error_mode="thread_local"):
                target.add_(1)
            del fix
    except Exception as e:  # noqa: BLE001 - say so; the module still runs eagerly
        warnings.warn(f"yolov12_fast.cuda_graphs: could not reset torch's CUDA state after a failed capture ({e}); "
                      "random ops on this device may fail from now on", RuntimeWarning, stacklevel=6)


def cuda_graphs(module: nn.Module, max_graphs: int = 4, warmup: int = 3, check_state: bool = True) -> CUDAGraphed:
    """Wrap `module` so that eager inference calls on CUDA replay a CUDA graph per input signature (see
    yolov12_fast.graphs). Returns the wrapper; `module` itself is unchanged.

    max_graphs: input signatures kept (least recently used dropped). warmup: eager runs before each capture.
    check_state: compare the module's classes, children, training flags, hooks, tensor addresses and versions with
    the captured ones at every call (about 0.1 ms for a yolo12n); False skips that: then call `reset()` after
    changing the module."""
    return CUDAGraphed(module, max_graphs=max_graphs, warmup=warmup, check_state=check_state)
