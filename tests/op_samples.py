"""Sample inputs for every registered yolov12_fast:: op (tests/test_ops.py opchecks each one and fails for a
registered op without samples here)."""

import torch


def _qkv(B=2, heads=2, D=32, H=4, W=6, dtype=torch.float32, device="cpu", grad=False):
    qkv = torch.randn(B, 3 * heads * D, H, W, dtype=dtype, device=device)
    q, k, v = qkv.view(B, heads, 3 * D, H * W).split(D, dim=2)
    if grad:
        q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    return q, k, v


def samples(op_name: str, backend: str, device="cpu", dtype=torch.float32):
    """List of argument tuples for torch.ops.yolov12_fast.<op_name>."""
    out = []
    if op_name == "area_attention_fwd":
        for grad in (False, True):
            q, k, v = _qkv(dtype=dtype, device=device, grad=grad)
            out.append((q, k, v, 4, 32 ** -0.5, None, backend))
            res = torch.randn(q.shape, dtype=dtype, device=device, requires_grad=grad)
            out.append((q, k, v, 1, 0.2, res, backend))
    elif op_name == "area_attention_add_":
        q, k, v = _qkv(dtype=dtype, device=device)
        out.append((q, k, v, 4, 32 ** -0.5, torch.randn(q.shape, dtype=dtype, device=device), backend))
        r = torch.randn(q.shape[0], q.shape[1], q.shape[3], q.shape[2], dtype=dtype, device=device).transpose(2, 3)
        out.append((q, k, v, 1, 0.2, r, backend))  # a strided residual: computed out of place, copied back
    elif op_name == "area_attention_bwd":
        q, k, v = _qkv(dtype=dtype, device=device)
        res = torch.randn(q.shape, dtype=dtype, device=device)
        o, lse = torch.ops.yolov12_fast.area_attention_fwd(q, k, v, 4, 32 ** -0.5, res, "reference")
        out.append((torch.randn_like(o), q, k, v, o, res, lse, 4, 32 ** -0.5, backend))
    elif op_name == "pe_add":
        q, k, v = _qkv(dtype=dtype, device=device)
        w = torch.randn(64, 1, 7, 7, dtype=dtype, device=device)
        out.append((v, w, torch.randn(64, dtype=dtype, device=device), torch.randn(v.shape, dtype=dtype, device=device), 4, 6, backend))
        out.append((v, torch.randn(64, 1, 5, 5, dtype=dtype, device=device), None, None, 4, 6, backend))
        q, k, v = _qkv(dtype=dtype, device=device, grad=True)
        w = torch.randn(64, 1, 5, 5, dtype=dtype, device=device, requires_grad=True)
        bias = torch.randn(64, dtype=dtype, device=device, requires_grad=True)
        out.append((v, w, bias, torch.randn(v.shape, dtype=dtype, device=device, requires_grad=True), 4, 6, backend))
    elif op_name in ("mlp_residual", "mlp_residual_out"):
        C, HID = 32, 70
        for grad, cl in ((False, False), (True, True)):
            x = torch.randn(2, C, 3, 5, dtype=dtype, device=device)
            if cl:
                x = x.to(memory_format=torch.channels_last)
            w = [torch.randn(HID, C, 1, 1), torch.randn(HID), torch.randn(C, HID, 1, 1), torch.randn(C)]
            w = [(t * 0.2).to(dtype=dtype, device=device) for t in w]
            if op_name == "mlp_residual":
                out.append((x.requires_grad_(grad), *(t.requires_grad_(grad) for t in w), backend))
            else:
                buf = torch.empty(2, 3 * C, 3, 5, dtype=dtype, device=device)
                out.append((x, *w, buf[:, C:2 * C], backend))
    elif op_name == "conv1x1_silu_residual":
        K, C = 96, 48  # A2C2f: K = (1 + n) * c_ input channels of the aggregation buffer, C = c2 out
        for grad, cl, residual in ((False, False, True), (True, True, True), (True, False, False)):
            x = torch.randn(2, K, 3, 5, dtype=dtype, device=device)
            if cl:
                x = x.to(memory_format=torch.channels_last)
            w = (torch.randn(C, K, 1, 1) * 0.1).to(dtype=dtype, device=device).requires_grad_(grad)
            b = torch.randn(C, dtype=dtype, device=device).requires_grad_(grad)
            r = g = None
            if residual:
                r = torch.randn(2, C, 3, 5, dtype=dtype, device=device).requires_grad_(grad)
                g = (torch.rand(C) + 0.5).to(dtype=dtype, device=device).requires_grad_(grad)
            out.append((x.requires_grad_(grad), w, b, r, g, backend))
    elif op_name == "area_attention_fwd_cxx":
        q, k, v = _qkv(dtype=dtype, device=device)
        out.append((q, k, v, 4, 32 ** -0.5, None))
        out.append((q, k, v, 1, 0.2, torch.randn(q.shape, dtype=dtype, device=device)))
    elif op_name == "area_attention_bwd_cxx":
        q, k, v = _qkv(dtype=dtype, device=device)
        o, lse = torch.ops.yolov12_fast.area_attention_fwd(q, k, v, 4, 32 ** -0.5, None, "reference")
        out.append((torch.randn_like(o), q, k, v, o, None, lse, 4, 32 ** -0.5))
    elif op_name == "pe_add_cxx":
        q, k, v = _qkv(dtype=dtype, device=device)
        out.append((v, torch.randn(64, 1, 7, 7, dtype=dtype, device=device), None, torch.randn(v.shape, dtype=dtype, device=device), 4, 6))
    elif op_name == "pe_add_wgrad_cxx":
        q, k, v = _qkv(dtype=dtype, device=device)
        out.append((torch.randn(v.shape, dtype=dtype, device=device), v, 7, 4, 6))
        out.append((torch.randn(v.shape, dtype=dtype, device=device).transpose(2, 3).contiguous().transpose(2, 3), v, 3, 4, 6))
    elif op_name == "bias_act_cxx":
        y = torch.randn(2, 6, 3, 5, dtype=dtype, device=device)
        b = torch.randn(6, dtype=dtype, device=device)
        out.append((y, b, True, torch.empty_like(y)))
        ycl = y.contiguous(memory_format=torch.channels_last)
        out.append((ycl, b, False, torch.empty_like(ycl)))
    return out
