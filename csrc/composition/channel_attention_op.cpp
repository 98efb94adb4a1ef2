// meranet::channel_attention = y * sigmoid(network(pool(y))) composed from the kernel-level ops, its
// backward meranet::channel_attention_backward, and the autograd that joins them (schedule in
// meranet_fast/ops/channel_attention.py).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "composition/composition.h"
#include "ops/channel_attention.h"

namespace meranet {
namespace {

using Outputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

// (out, a, avg, max, argmax): a, avg, max [N, C] in the accumulation dtype, argmax int64.
Outputs channel_attention(const Tensor& y, const Tensor& w_reduce, const OptTensor& b_reduce, const Tensor& w_expand,
                          const OptTensor& b_expand, c10::string_view backend) {
  NoAutocast no_autocast;
  const Kernels& k = kernels("channel_attention", std::string(backend));
  auto [avg, mx, argmax] = k.ca_pool.call(y);
  Tensor a = ca_network(avg, mx, w_reduce, b_reduce, w_expand, b_expand);
  return {k.ca_scale.call(y, a), a, avg, mx, argmax};
}

// (grad_y, grad_w_reduce, grad_b_reduce, grad_w_expand, grad_b_expand) from the gradients of out, a, avg
// and max (each may be absent); bias gradients are computed whether or not the biases exist.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> channel_attention_backward(
    const OptTensor& grad_out, const OptTensor& grad_a, const OptTensor& grad_avg, const OptTensor& grad_max,
    const Tensor& y, const Tensor& w_reduce, const OptTensor& b_reduce, const Tensor& w_expand,
    const OptTensor& b_expand, const Tensor& a, const Tensor& avg, const Tensor& mx, const Tensor& argmax,
    c10::string_view backend) {
  NoAutocast no_autocast;
  const Kernels& k = kernels("channel_attention_backward", std::string(backend));
  const auto given = [](const OptTensor& t) { return t.has_value() && t->defined(); };
  const Tensor g = given(grad_out) ? grad_out->contiguous(dense_format(y))
                                   : at::zeros_like(y, y.options().memory_format(dense_format(y)));
  Tensor da = k.ca_scale_grad.call(g, y, std::nullopt, std::nullopt, std::nullopt);
  if (given(grad_a)) da = da + *grad_a;
  auto [g_avg, g_max, g_wr, g_br, g_we, g_be] =
      ca_network_backward(da, a, avg, mx, w_reduce, b_reduce, w_expand, b_expand);
  if (given(grad_avg)) g_avg = g_avg + *grad_avg;
  if (given(grad_max)) g_max = g_max + *grad_max;
  Tensor grad_y = k.ca_input_grad.call(g, a, g_avg, g_max, argmax, std::nullopt, std::nullopt, std::nullopt);
  return {grad_y, g_wr, g_br, g_we, g_be};
}

class ChannelAttentionFunction : public torch::autograd::Function<ChannelAttentionFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& y,
                                                const Tensor& w_reduce, const OptTensor& b_reduce,
                                                const Tensor& w_expand, const OptTensor& b_expand,
                                                c10::string_view backend) {
    static const auto op = typed_op<decltype(channel_attention)>("meranet::channel_attention");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, a, avg, mx, argmax] = op.call(y, w_reduce, b_reduce, w_expand, b_expand, backend);
    ctx->save_for_backward({y, w_reduce, b_reduce.value_or(Tensor()), w_expand, b_expand.value_or(Tensor()), a,
                            avg, mx, argmax});
    ctx->saved_data["backend"] = std::string(backend);
    ctx->mark_non_differentiable({argmax});
    ctx->set_materialize_grads(false);  // absent output gradients stay absent (the backward op takes Tensor?)
    return {out, a, avg, mx, argmax};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (!grads[0].defined() && !grads[1].defined() && !grads[2].defined() && !grads[3].defined()) {
      return torch::autograd::variable_list(6);
    }
    static const auto op = typed_op<decltype(channel_attention_backward)>("meranet::channel_attention_backward");
    const auto saved = ctx->get_saved_variables();
    const Tensor &b_reduce = saved[2], &b_expand = saved[4];
    auto [grad_y, g_wr, g_br, g_we, g_be] =
        op.call(as_optional(grads[0]), as_optional(grads[1]), as_optional(grads[2]), as_optional(grads[3]), saved[0],
                saved[1], as_optional(b_reduce), saved[3], as_optional(b_expand), saved[5], saved[6], saved[7],
                saved[8], ctx->saved_data["backend"].toStringRef());
    return {grad_y, g_wr, grad_if_given(g_br, b_reduce), g_we, grad_if_given(g_be, b_expand), Tensor()};
  }
};

Outputs channel_attention_autograd(const Tensor& y, const Tensor& w_reduce, const OptTensor& b_reduce,
                                   const Tensor& w_expand, const OptTensor& b_expand, c10::string_view backend) {
  const auto r = ChannelAttentionFunction::apply(y, w_reduce, b_reduce, w_expand, b_expand, backend);
  return {r[0], r[1], r[2], r[3], r[4]};
}

}  // namespace

TORCH_LIBRARY_IMPL(meranet, CompositeExplicitAutograd, m) {
  m.impl("channel_attention", &channel_attention);
  m.impl("channel_attention_backward", &channel_attention_backward);
}

TORCH_LIBRARY_IMPL(meranet, Autograd, m) {
  m.impl("channel_attention", &channel_attention_autograd);
  m.impl("channel_attention_backward", torch::CppFunction::makeFromBoxedFunction<&backward_op_without_derivative>());
}

}  // namespace meranet
