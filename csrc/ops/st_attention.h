// Fused spatio-temporal attention (docs/design.md §2.1): declarations shared by the CPU and CUDA kernels.
//
// Forward:  out = x * A,  A = sigmoid(conv3d([mean_c x; max_c x], weight, bias, pad = k/2))
// Saved for backward: attn A [N,1,T,H,W], pooled P [N,2,T,H,W] in the accumulation type (float64 for
// float64 x, float32 otherwise), argmax I [N,T,H,W] i32 (first channel index of the maximum), plus x.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace meranet {

// Every message names the argument that is wrong (csrc/ops/st_attention_checks.cpp).
void check_st_attention_forward_inputs(const at::Tensor& x, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias);
void check_st_attention_backward_inputs(const at::Tensor& grad_out, const at::Tensor& x,
                                        const at::Tensor& weight, const at::Tensor& attn,
                                        const at::Tensor& pooled, const at::Tensor& argmax);

// (out, attn, pooled, argmax)
using StAttentionForward = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
// (grad_x, grad_weight, grad_bias)
using StAttentionBackward = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

}  // namespace meranet
