// The small-map half of the spatio-temporal attention on the CPU, shared by the st_attention and
// ra_tail operators (implemented in csrc/cpu/st_attention_cpu.cpp with its vectorised kernels).
//
// pooled: [N, 2, T, H, W] (mean map, max map) in the accumulation type (float32 or float64),
// weight: [1, 2, k, k, k] with k in {3, 5, 7}; the conv is a cross-correlation with zero padding k/2.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace meranet {

// attn [N, 1, T, H, W] = sigmoid(conv3d(pooled, weight) + bias), in pooled's dtype.
at::Tensor pooled_attention_cpu(const at::Tensor& pooled, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias);

// From grad_attn = dLoss/dattn ([N, T*H*W] or attn-shaped): (grad_pooled [N, 2, T, H, W] in pooled's
// dtype with its mean map divided by mean_divisor, grad_weight, grad_bias [1] in weight's dtype).
// Deterministic: the weight and bias sums are reduced in a fixed order in float64.
std::tuple<at::Tensor, at::Tensor, at::Tensor> pooled_attention_backward_cpu(const at::Tensor& grad_attn,
                                                                             const at::Tensor& attn,
                                                                             const at::Tensor& pooled,
                                                                             const at::Tensor& weight,
                                                                             int64_t mean_divisor);

}  // namespace meranet
