// Fused residual-attention tail (paper eq. 10-12): out = relu(STA(y * a) + shortcut), a from channel
// attention (csrc/ops/channel_attention.h). Kernel-level operators (CPU in csrc/cpu/ra_tail_cpu.cpp):
//
//   ra_pool(y, scale)                    -> pooled [N,2,T,H,W] (mean_c, max_c of u = y * scale[n,c]),
//                                           argmax [N,T,H,W] int32 (first channel)       read y
//   ra_attend(y, shortcut, scale, pooled, weight, bias)
//                                        -> out = relu(u * A + shortcut), attn A [N,1,T,H,W],
//                                           A = sigmoid(conv3d(pooled, weight, bias, pad k/2))
//                                                                              read y, shortcut, write out
//   ra_attend_bwd(grad_out, out, y, scale, attn, pooled, weight)
//                                        -> grad_z = grad_out * [out > 0] (also grad_shortcut),
//                                           grad_pooled [N,2,T,H,W], grad_weight, grad_bias
//                                                                              read g, out, y, write grad_z
// The rest of the backward is ca_scale_grad / ca_input_grad with the STA maps (attn, grad_pooled,
// argmax), which turn grad_z into the gradient wrt u.
// Small maps use the accumulation type (float64 for float64 inputs, float32 otherwise).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace meranet {

// Shared validation of the CPU and CUDA implementations (csrc/ops/ra_tail_checks.cpp).
void check_ra_attend_inputs(const at::Tensor& y, const at::Tensor& shortcut, const at::Tensor& scale,
                            const at::Tensor& pooled, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias);
void check_ra_attend_bwd_inputs(const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& y,
                                const at::Tensor& scale, const at::Tensor& attn, const at::Tensor& pooled,
                                const at::Tensor& weight);

std::tuple<at::Tensor, at::Tensor> ra_pool_cpu(const at::Tensor& y, const at::Tensor& scale);
std::tuple<at::Tensor, at::Tensor> ra_attend_cpu(const at::Tensor& y, const at::Tensor& shortcut,
                                                 const at::Tensor& scale, const at::Tensor& pooled,
                                                 const at::Tensor& weight, const std::optional<at::Tensor>& bias);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ra_attend_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& out, const at::Tensor& y, const at::Tensor& scale,
    const at::Tensor& attn, const at::Tensor& pooled, const at::Tensor& weight);

}  // namespace meranet
