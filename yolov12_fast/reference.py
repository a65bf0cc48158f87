"""Plain-PyTorch reference of YOLOv12 area attention: the oracle for tests and the baseline for benchmarks.

Everything here follows ../shared/docs/REFERENCE.md and computes in the dtype of its inputs (pass float64
tensors to get the float64 oracle). It materialises the n x n score matrix per area on purpose: it is the
naive math the fused kernels are measured against.

Layout convention shared with the fused ops: q, k, v are (B, heads, head_dim, N) with N = H*W tokens in raster
order, any strides; area j owns tokens [j*N/area, (j+1)*N/area) (areas may cut rows).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

__all__ = [
    "area_attention", "area_attention_lse", "area_attention_backward",
    "conv_params", "conv", "pe", "aattn", "ablock", "a2c2f",
]


def _split_areas(x: torch.Tensor, area: int) -> torch.Tensor:
    """(B, heads, D, N) -> (B, heads, area, n, D)."""
    B, H, D, N = x.shape
    return x.reshape(B, H, D, area, N // area).permute(0, 1, 3, 4, 2)


def _merge_areas(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, area, n, D) -> (B, heads, D, N), contiguous."""
    B, H, A, n, D = x.shape
    return x.permute(0, 1, 4, 2, 3).reshape(B, H, D, A * n).contiguous()


def _scores(q, k, area, scale):
    qa, ka = _split_areas(q, area), _split_areas(k, area)
    return (qa * scale) @ ka.transpose(-1, -2)  # (B, heads, area, n, n); q scaled first, as ultralytics does


def area_attention_lse(q, k, v, area: int, scale: float | None = None, residual: torch.Tensor | None = None):
    """Returns (out, lse): out (B, heads, D, N) = softmax(scale q^T k) v per area (+ residual), contiguous;
    lse (B, heads, N) = natural-log sum of exp of the scaled scores of each query row."""
    scale = q.shape[2] ** -0.5 if scale is None else scale
    s = _scores(q, k, area, scale)
    lse = torch.logsumexp(s, dim=-1)  # (B, heads, area, n)
    p = torch.softmax(s, dim=-1)
    out = _merge_areas(p @ _split_areas(v, area))
    if residual is not None:
        out = out + residual
    return out, lse.flatten(2)


def area_attention(q, k, v, area: int, scale: float | None = None, residual: torch.Tensor | None = None):
    """Area attention exactly as ultralytics computes it (in the inputs' dtype); see the module docstring."""
    return area_attention_lse(q, k, v, area, scale, residual)[0]


def area_attention_backward(dout, q, k, v, area: int, scale: float | None = None, out: torch.Tensor | None = None):
    """Gradients (dq, dk, dv) of area_attention w.r.t. q, k, v for upstream gradient dout, each (B, heads, D, N).
    (The gradient w.r.t. a residual is dout itself.) With `out` (the attention output, as a kernel would have
    stored it), the softmax term rowsum(dP * P) is taken as rowsum(dout * out) like the fused kernels do, so the
    rounding of a stored output shows in this naive computation too."""
    scale = q.shape[2] ** -0.5 if scale is None else scale
    p = torch.softmax(_scores(q, k, area, scale), dim=-1)
    qa, ka, va, doa = (_split_areas(t, area) for t in (q, k, v, dout))
    dv = p.transpose(-1, -2) @ doa
    dp = doa @ va.transpose(-1, -2)
    if out is None:
        delta = (dp * p).sum(-1, keepdim=True)
    else:
        delta = (doa * _split_areas(out, area)).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    dq = (ds @ ka) * scale
    dk = (ds.transpose(-1, -2) @ qa) * scale
    return _merge_areas(dq), _merge_areas(dk), _merge_areas(dv)


# ----------------------------------------------------------------------------------------------------------------
# Module-level math (REFERENCE.md): ultralytics Conv, AAttn (ultralytics/v1.0 and turbo), ABlock, A2C2f.
# Every function computes in x's dtype and on x's device; parameters are cast, modules are never modified.
# ----------------------------------------------------------------------------------------------------------------

def conv_params(conv_module, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of an ultralytics Conv with its BatchNorm folded in (eval-mode running statistics).

    Accepts the unfused form (conv: Conv2d, with or without bias, followed by bn: BatchNorm2d) and the fused form
    (after model.fuse(): Conv2d with bias, no bn). The fold is computed in float64 and the result cast to `dtype`
    (default: the conv weight's dtype); the bias is zeros when there is neither conv bias nor BN."""
    c = conv_module.conv
    dtype = c.weight.dtype if dtype is None else dtype
    w = c.weight.detach().double()
    b = c.bias.detach().double() if c.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                         device=w.device)
    bn = getattr(conv_module, "bn", None)
    if isinstance(bn, torch.nn.BatchNorm2d):
        if not bn.track_running_stats or bn.running_mean is None:
            raise ValueError("conv_params: the BatchNorm has no running statistics to fold")
        s = (bn.running_var.double() + bn.eps).rsqrt()
        if bn.weight is not None:
            s = s * bn.weight.detach().double()
        b = (b - bn.running_mean.double()) * s
        if bn.bias is not None:
            b = b + bn.bias.detach().double()
        w = w * s.view(-1, *([1] * (w.dim() - 1)))
    elif bn is not None and not isinstance(bn, torch.nn.Identity):
        raise TypeError(f"conv_params: unsupported normalisation {type(bn).__name__}")
    return w.to(dtype), b.to(dtype)


def _act_of(conv_module) -> bool:
    act = getattr(conv_module, "act", None)
    if act is None or isinstance(act, torch.nn.Identity):
        return False
    if isinstance(act, torch.nn.SiLU):
        return True
    raise TypeError(f"reference.conv: unsupported activation {type(act).__name__}")


def conv(x: torch.Tensor, conv_module, act: bool | None = None) -> torch.Tensor:
    """Apply an ultralytics Conv (BN folded, eval mode) in x's dtype: Conv2d(+bias) then SiLU if act else nothing.
    act=None takes the activation from the module (SiLU or Identity)."""
    act = _act_of(conv_module) if act is None else bool(act)
    w, b = conv_params(conv_module, x.dtype)
    c = conv_module.conv
    y = F.conv2d(x, w.to(x.device), b.to(x.device), c.stride, c.padding, c.dilation, c.groups)
    return F.silu(y) if act else y


def pe(v_nchw: torch.Tensor, pe_conv_module) -> torch.Tensor:
    """AAttn positional encoding: the depthwise conv (7x7 ultralytics/v1.0, 5x5 turbo; its own padding) over the
    whole V map, zero padding at the image border only, BN folded, bias on pe.conv honoured, no activation."""
    return conv(v_nchw, pe_conv_module, act=False)


def _aattn_qkv(module, x: torch.Tensor):
    """q, k, v as (B, heads, head_dim, N) views, per the module's parameter layout."""
    B, C, H, W = x.shape
    N, heads = H * W, module.num_heads
    D = module.head_dim
    if hasattr(module, "qkv"):  # ultralytics / v1.0: head h owns channels [3Dh, 3Dh+3D) = its q, k, v
        qkv = conv(x, module.qkv, act=False).view(B, heads, 3 * D, N)
        q, k, v = qkv.split(D, dim=2)
    elif hasattr(module, "qk") and hasattr(module, "v"):  # turbo: all q in [0, C), all k in [C, 2C); separate v
        qk = conv(x, module.qk, act=False).view(B, 2, heads, D, N)
        q, k = qk.unbind(1)
        v = conv(x, module.v, act=False).view(B, heads, D, N)
    else:
        raise TypeError(f"aattn: {type(module).__name__} has neither qkv (ultralytics/v1.0) nor qk+v (turbo)")
    return q, k, v


def aattn(module, x: torch.Tensor) -> torch.Tensor:
    """AAttn forward (REFERENCE.md), either variant (detected by attributes): proj(O + pe(V)) with
    O = area_attention(Q, K, V) per image, area and head, in x's dtype."""
    B, C, H, W = x.shape
    q, k, v = _aattn_qkv(module, x)
    heads, D = q.shape[1], q.shape[2]
    v_map = v.reshape(B, heads * D, H, W)
    p = pe(v_map, module.pe).view(B, heads, D, H * W)
    o = area_attention(q, k, v, module.area, scale=D ** -0.5, residual=p)  # O + pe(V)
    return conv(o.view(B, heads * D, H, W), module.proj, act=False)


def ablock(module, x: torch.Tensor) -> torch.Tensor:
    """ABlock: x1 = x + aattn(x); x1 + mlp(x1), mlp = Conv 1x1 (SiLU) -> Conv 1x1 (no activation)."""
    x1 = x + aattn(module.attn, x)
    h = conv(x1, module.mlp[0], act=True)
    return x1 + conv(h, module.mlp[1], act=False)


def _is_ablock_pair(m) -> bool:
    return isinstance(m, torch.nn.Sequential) and len(m) > 0 and all(
        hasattr(b, "attn") and hasattr(b, "mlp") for b in m)


def a2c2f(module, x: torch.Tensor) -> torch.Tensor:
    """A2C2f (R-ELAN): y0 = cv1(x); y_i = m_i(y_{i-1}) (a pair of ABlocks when a2, else the C3k module itself, run
    as a copy cast to x's dtype); z = cv2(cat(y0..yn)); x + gamma * z when gamma is present, else z."""
    ys = [conv(x, module.cv1, act=True)]
    for m in module.m:
        y = ys[-1]
        if _is_ablock_pair(m):
            for blk in m:
                y = ablock(blk, y)
        else:
            y = copy.deepcopy(m).to(device=x.device, dtype=x.dtype).eval()(y)
        ys.append(y)
    z = conv(torch.cat(ys, 1), module.cv2, act=True)
    gamma = getattr(module, "gamma", None)
    if gamma is not None:
        return x + gamma.detach().to(device=x.device, dtype=x.dtype).view(1, -1, 1, 1) * z
    return z
