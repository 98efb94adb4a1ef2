// meranet::ra_tail = relu(STA(CA(y)) + shortcut) composed from the kernel-level ops, its backward
// meranet::ra_tail_backward, and the autograd that joins them (schedule in meranet_fast/ops/ra_tail.py).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "composition/composition.h"

namespace meranet {
namespace {

using Outputs = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using Grads = Outputs;

// (out, a, attn, pooled, sta_argmax, avg, max, ca_argmax); everything after out is kept for the backward.
Outputs ra_tail(const Tensor& y, const Tensor& shortcut, const Tensor& w_reduce, const OptTensor& b_reduce,
                const Tensor& w_expand, const OptTensor& b_expand, const Tensor& st_weight, const OptTensor& st_bias,
                c10::string_view backend) {
  NoAutocast no_autocast;
  const Kernels& k = kernels("ra_tail", std::string(backend));
  auto [avg, mx, ca_argmax] = k.ca_pool.call(y);
  Tensor a = ca_network(avg, mx, w_reduce, b_reduce, w_expand, b_expand);
  auto [pooled, sta_argmax] = k.ra_pool.call(y, a);
  auto [out, attn] = k.ra_attend.call(y, shortcut, a, pooled, st_weight, st_bias);
  return {out, a, attn, pooled, sta_argmax, avg, mx, ca_argmax};
}

// (grad_y, grad_shortcut, grad_w_reduce, grad_b_reduce, grad_w_expand, grad_b_expand, grad_st_weight,
// grad_st_bias); bias gradients are computed whether or not the biases exist.
Grads ra_tail_backward(const Tensor& grad_out, const Tensor& out, const Tensor& y, const Tensor& w_reduce,
                       const OptTensor& b_reduce, const Tensor& w_expand, const OptTensor& b_expand,
                       const Tensor& st_weight, const Tensor& a, const Tensor& attn, const Tensor& pooled,
                       const Tensor& sta_argmax, const Tensor& avg, const Tensor& mx, const Tensor& ca_argmax,
                       c10::string_view backend) {
  NoAutocast no_autocast;
  const Kernels& k = kernels("ra_tail_backward", std::string(backend));
  auto [grad_z, grad_pooled, grad_st_weight, grad_st_bias] =
      k.ra_attend_bwd.call(grad_out, out, y, a, attn, pooled, st_weight);
  const Tensor da = k.ca_scale_grad.call(grad_z, y, attn, grad_pooled, sta_argmax);
  auto [g_avg, g_max, g_wr, g_br, g_we, g_be] =
      ca_network_backward(da, a, avg, mx, w_reduce, b_reduce, w_expand, b_expand);
  Tensor grad_y = k.ca_input_grad.call(grad_z, a, g_avg, g_max, ca_argmax, attn, grad_pooled, sta_argmax);
  return {grad_y, grad_z, g_wr, g_br, g_we, g_be, grad_st_weight, grad_st_bias};
}

class RaTailFunction : public torch::autograd::Function<RaTailFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& y,
                                                const Tensor& shortcut, const Tensor& w_reduce,
                                                const OptTensor& b_reduce, const Tensor& w_expand,
                                                const OptTensor& b_expand, const Tensor& st_weight,
                                                const OptTensor& st_bias, c10::string_view backend) {
    static const auto op = typed_op<decltype(ra_tail)>("meranet::ra_tail");
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [out, a, attn, pooled, sta_argmax, avg, mx, ca_argmax] =
        op.call(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias, backend);
    // The shortcut is not saved: its gradient is grad_z, which needs only grad_out and out.
    ctx->save_for_backward({y, out, w_reduce, b_reduce.value_or(Tensor()), w_expand, b_expand.value_or(Tensor()),
                            st_weight, st_bias.value_or(Tensor()), a, attn, pooled, sta_argmax, avg, mx,
                            ca_argmax});
    ctx->saved_data["backend"] = std::string(backend);
    ctx->mark_non_differentiable({a, attn, pooled, sta_argmax, avg, mx, ca_argmax});
    ctx->set_materialize_grads(false);  // only out's gradient is used: no zero tensors for the maps
    return {out, a, attn, pooled, sta_argmax, avg, mx, ca_argmax};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const Tensor& grad_out = grads[0];
    if (!grad_out.defined()) return torch::autograd::variable_list(9);
    const auto saved = ctx->get_saved_variables();
    const Tensor &y = saved[0], &out = saved[1], &w_reduce = saved[2], &b_reduce = saved[3], &w_expand = saved[4],
                 &b_expand = saved[5], &st_weight = saved[6], &st_bias = saved[7];
    static const auto op = typed_op<decltype(ra_tail_backward)>("meranet::ra_tail_backward");
    auto [grad_y, grad_shortcut, g_wr, g_br, g_we, g_be, g_sw, g_sb] =
        op.call(grad_out, out, y, w_reduce, as_optional(b_reduce), w_expand, as_optional(b_expand), st_weight,
                saved[8], saved[9], saved[10], saved[11], saved[12], saved[13], saved[14],
                ctx->saved_data["backend"].toStringRef());
    return {grad_y, grad_shortcut, g_wr, grad_if_given(g_br, b_reduce), g_we, grad_if_given(g_be, b_expand),
            g_sw, grad_if_given(g_sb, st_bias), Tensor()};
  }
};

Outputs ra_tail_autograd(const Tensor& y, const Tensor& shortcut, const Tensor& w_reduce, const OptTensor& b_reduce,
                         const Tensor& w_expand, const OptTensor& b_expand, const Tensor& st_weight,
                         const OptTensor& st_bias, c10::string_view backend) {
  const auto r = RaTailFunction::apply(y, shortcut, w_reduce, b_reduce, w_expand, b_expand, st_weight, st_bias,
                                       backend);
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]};
}

}  // namespace

TORCH_LIBRARY_IMPL(meranet, CompositeExplicitAutograd, m) {
  m.impl("ra_tail", &ra_tail);
  m.impl("ra_tail_backward", &ra_tail_backward);
}

TORCH_LIBRARY_IMPL(meranet, Autograd, m) {
  m.impl("ra_tail", &ra_tail_autograd);
  m.impl("ra_tail_backward", torch::CppFunction::makeFromBoxedFunction<&backward_op_without_derivative>());
}

}  // namespace meranet
