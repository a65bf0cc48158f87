// bias_act_cxx on CPU: out = act(y + bias[c]) through ATen (the op exists on every device so that code written for
// the CUDA kernel runs and is tested anywhere; on a CPU the patched blocks fold the bias into their GEMMs instead).
#include <ATen/ATen.h>
#include <torch/library.h>

namespace yolov12_fast {
namespace {

void bias_act_cpu(const at::Tensor& y, const at::Tensor& bias, bool silu, const at::Tensor& out) {
  constexpr const char* op = "bias_act_cxx (CPU)";
  TORCH_CHECK(y.dim() == 4, op, ": y must be 4-D (B, C, H, W), got ", y.sizes());
  TORCH_CHECK(out.sizes() == y.sizes() && out.scalar_type() == y.scalar_type() && out.device() == y.device(), op,
              ": out must have y's shape, dtype and device (", y.sizes(), ", ", y.scalar_type(), ", ", y.device(),
              "), got ", out.sizes(), ", ", out.scalar_type(), ", ", out.device());
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == y.size(1) && bias.scalar_type() == y.scalar_type() &&
                  bias.device() == y.device(),
              op, ": bias must be (", y.size(1), ",) with y's dtype and device, got ", bias.sizes(), " ",
              bias.scalar_type(), " ", bias.device());
  at::Tensor r = y + bias.view({1, -1, 1, 1});
  out.copy_(silu ? at::silu(r) : r);
}

}  // namespace

TORCH_LIBRARY_IMPL(yolov12_fast, CPU, m) { m.impl("bias_act_cxx", &bias_act_cpu); }

}  // namespace yolov12_fast
