// Input validation of the RA-tail kernel operators, shared by the CPU and CUDA implementations
// (each message names the operator and the argument that is wrong).
#include <c10/util/Exception.h>

#include "ops/channel_attention.h"
#include "ops/ra_tail.h"

namespace meranet {
namespace {

void check_st_weight(const char* op, const at::Tensor& weight, const at::Tensor& y) {
  TORCH_CHECK(weight.defined(), op, ": weight must be a defined tensor");
  TORCH_CHECK(weight.dim() == 5 && weight.size(0) == 1 && weight.size(1) == 2 && weight.size(2) == weight.size(3) &&
                  weight.size(3) == weight.size(4),
              op, ": weight must have shape [1, 2, k, k, k], got ", weight.sizes());
  const int64_t k = weight.size(2);
  TORCH_CHECK(k == 3 || k == 5 || k == 7, op, ": weight kernel size k must be 3, 5 or 7, got ", k);
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()), op, ": weight must be floating point, got ",
              weight.scalar_type());
  TORCH_CHECK(weight.device() == y.device(), op, ": weight is on ", weight.device(), " but y is on ", y.device());
}

}  // namespace

void check_ra_attend_inputs(const at::Tensor& y, const at::Tensor& shortcut, const at::Tensor& scale,
                            const at::Tensor& pooled, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias) {
  const char* op = "ra_attend";
  check_activation(op, "y", y);
  check_same_activation(op, "shortcut", shortcut, y);
  const auto acc = acc_scalar_type(y.scalar_type());
  const auto n = y.size(0), c = y.size(1), t = y.size(2), h = y.size(3), w = y.size(4);
  check_small(op, "scale", scale, {n, c}, acc, y);
  check_small(op, "pooled", pooled, {n, 2, t, h, w}, acc, y);
  check_st_weight(op, weight, y);
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == 1 && at::isFloatingType(bias->scalar_type()), op,
                ": bias must be a floating tensor of shape [1], got ", bias->scalar_type(), " ", bias->sizes());
    TORCH_CHECK(bias->device() == y.device(), op, ": bias is on ", bias->device(), " but y is on ", y.device());
  }
}

void check_ra_attend_bwd_inputs(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& y,
                                const at::Tensor& scale, const at::Tensor& attn, const at::Tensor& pooled,
                                const at::Tensor& weight) {
  const char* op = "ra_attend_bwd";
  check_activation(op, "y", y);
  check_same_activation(op, "grad_out", grad_out, y);
  check_same_activation(op, "out", out, y);
  const auto acc = acc_scalar_type(y.scalar_type());
  const auto n = y.size(0), c = y.size(1), t = y.size(2), h = y.size(3), w = y.size(4);
  check_small(op, "scale", scale, {n, c}, acc, y);
  check_small(op, "attn", attn, {n, 1, t, h, w}, acc, y);
  check_small(op, "pooled", pooled, {n, 2, t, h, w}, acc, y);
  check_st_weight(op, weight, y);
}

}  // namespace meranet
