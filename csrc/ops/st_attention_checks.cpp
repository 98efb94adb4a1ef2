// Input validation for meranet::st_attention_fwd / _bwd, shared by every dispatch key.
#include <c10/util/Exception.h>

#include "ops/meranet_fast.h"
#include "ops/st_attention.h"

namespace meranet {

void check_st_attention_forward_inputs(const at::Tensor& x, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 5, "st_attention: x must be a 5-D tensor [N, C, T, H, W], got shape ",
              x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "st_attention: x must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK(x.size(1) >= 1, "st_attention: x must have at least one channel, got shape ", x.sizes());
  check_argmax_channels("st_attention", "x", x.size(1));
  TORCH_CHECK(weight.dim() == 5 && weight.size(0) == 1 && weight.size(1) == 2 &&
                  weight.size(2) == weight.size(3) && weight.size(3) == weight.size(4),
              "st_attention: weight must have shape [1, 2, k, k, k], got ", weight.sizes());
  const int64_t k = weight.size(2);
  TORCH_CHECK(k == 3 || k == 5 || k == 7, "st_attention: weight kernel size k must be 3, 5 or 7, got ", k);
  TORCH_CHECK(weight.scalar_type() == x.scalar_type(), "st_attention: weight dtype (",
              weight.scalar_type(), ") must match x dtype (", x.scalar_type(), ")");
  TORCH_CHECK(weight.device() == x.device(), "st_attention: weight is on ", weight.device(),
              " but x is on ", x.device());
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == 1, "st_attention: bias must have shape [1], got ",
                bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), "st_attention: bias dtype (",
                bias->scalar_type(), ") must match x dtype (", x.scalar_type(), ")");
    TORCH_CHECK(bias->device() == x.device(), "st_attention: bias is on ", bias->device(),
                " but x is on ", x.device());
  }
}

void check_st_attention_backward_inputs(const at::Tensor& grad_out, const at::Tensor& x,
                                        const at::Tensor& weight, const at::Tensor& attn,
                                        const at::Tensor& pooled, const at::Tensor& argmax) {
  check_st_attention_forward_inputs(x, weight, std::nullopt);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), "st_attention backward: grad_out shape ", grad_out.sizes(),
              " must equal x shape ", x.sizes());
  TORCH_CHECK(grad_out.scalar_type() == x.scalar_type() && grad_out.device() == x.device(),
              "st_attention backward: grad_out must have x's dtype and device");
  const auto n = x.size(0), t = x.size(2), h = x.size(3), w = x.size(4);
  // The saved maps are in the accumulation type: float64 for float64 x, float32 otherwise.
  const at::ScalarType acc = acc_scalar_type(x.scalar_type());
  TORCH_CHECK(attn.sizes() == at::IntArrayRef({n, 1, t, h, w}) && attn.scalar_type() == acc,
              "st_attention backward: attn must be ", acc, " [N, 1, T, H, W] (as saved by the forward), got ",
              attn.scalar_type(), " ", attn.sizes());
  TORCH_CHECK(pooled.sizes() == at::IntArrayRef({n, 2, t, h, w}) && pooled.scalar_type() == acc,
              "st_attention backward: pooled must be ", acc, " [N, 2, T, H, W] (as saved by the forward), got ",
              pooled.scalar_type(), " ", pooled.sizes());
  TORCH_CHECK(argmax.sizes() == at::IntArrayRef({n, t, h, w}) && argmax.scalar_type() == at::kInt,
              "st_attention backward: argmax must be int32 [N, T, H, W], got ", argmax.scalar_type(), " ",
              argmax.sizes());
  for (const at::Tensor* saved : {&attn, &pooled, &argmax}) {
    TORCH_CHECK(saved->device() == x.device(), "st_attention backward: saved tensors must be on x's device");
  }
}

}  // namespace meranet
