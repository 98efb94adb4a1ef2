// What the composed operators share: meranet::channel_attention (csrc/composition/channel_attention_op.cpp) and
// meranet::ra_tail (csrc/composition/ra_tail_op.cpp) chain kernel-level ops with the tiny [N, C] network, and their
// autograd is C++ too, so a call costs one dispatch from Python and a backward none.
//
// One composition serves every backend: the kernel-level ops are looked up by name, "cpp" and "cuda"
// -> meranet::ca_pool ... (the dispatcher picks the CPU or CUDA kernel from the tensors' device),
// "triton" -> meranet::ca_pool_triton ... (registered by meranet_fast/ops/triton/ when it is imported).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <optional>
#include <string>
#include <tuple>

namespace meranet {

using at::Tensor;
using OptTensor = std::optional<at::Tensor>;

// The kernel-level ops of one backend (schemas in csrc/ops/meranet.cpp).
struct Kernels {
  c10::TypedOperatorHandle<std::tuple<Tensor, Tensor, Tensor>(const Tensor&)> ca_pool;
  c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&)> ca_scale;
  c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&)>
      ca_scale_grad;
  c10::TypedOperatorHandle<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                  const OptTensor&, const OptTensor&, const OptTensor&)>
      ca_input_grad;
  c10::TypedOperatorHandle<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&)> ra_pool;
  c10::TypedOperatorHandle<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                      const Tensor&, const OptTensor&)>
      ra_attend;
  c10::TypedOperatorHandle<std::tuple<Tensor, Tensor, Tensor, Tensor>(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&)>
      ra_attend_bwd;
};

// The ops of a concrete backend ("cpp", "cuda" or "triton"); `op` names the caller in errors.
const Kernels& kernels(const char* op, const std::string& backend);

// The operator `name` (e.g. "meranet::ra_tail"), called with the C++ signature Signature.
template <class Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// An undefined tensor (an absent bias, a gradient autograd left out) as an absent optional.
inline OptTensor as_optional(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// The gradient of an optional input as autograd wants it: none when the input is absent (undefined).
inline Tensor grad_if_given(const Tensor& grad, const Tensor& input) { return input.defined() ? grad : Tensor(); }

// Autograd kernel of the backward operators (boxed, for any schema): they have no derivative, so with
// grad mode on and an input that requires grad (double backward, create_graph=True) it raises an error
// naming the operator; otherwise it runs the operator below autograd.
void backward_op_without_derivative(const c10::OperatorHandle& op, torch::jit::Stack* stack);

// The compositions run without autocast: the kernels take y's dtype, and the network runs in the
// accumulation dtype of the pooled rows whatever autocast region the operator was called from.
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

// The shared channel-attention network on the pooled rows (avg, max: [N, C] in the accumulation dtype):
// a = sigmoid(e(avg) + e(max)), e(v) = We relu(Ws v + bs) + be, in avg's dtype (weights are cast to it).
Tensor ca_network(const Tensor& avg, const Tensor& mx, const Tensor& w_reduce, const OptTensor& b_reduce,
                  const Tensor& w_expand, const OptTensor& b_expand);

// Its gradients given grad_a = dL/da: (g_avg, g_max, g_w_reduce, g_b_reduce, g_w_expand, g_b_expand), the
// weights' in their own dtype; an absent bias gets a gradient in its weight's dtype (callers drop it).
using NetworkGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
NetworkGrads ca_network_backward(const Tensor& grad_a, const Tensor& a, const Tensor& avg, const Tensor& mx,
                                 const Tensor& w_reduce, const OptTensor& b_reduce, const Tensor& w_expand,
                                 const OptTensor& b_expand);

// Both run ATen ops (any device), or on CPU below a size limit plain loops (csrc/cpu/ca_network_cpu.cpp).
bool ca_network_runs_on_cpu_loops(const Tensor& avg, const Tensor& w_reduce);
Tensor ca_network_cpu(const Tensor& avg, const Tensor& mx, const Tensor& w_reduce, const OptTensor& b_reduce,
                      const Tensor& w_expand, const OptTensor& b_expand);
NetworkGrads ca_network_backward_cpu(const Tensor& grad_a, const Tensor& a, const Tensor& avg, const Tensor& mx,
                                     const Tensor& w_reduce, const OptTensor& b_reduce, const Tensor& w_expand,
                                     const OptTensor& b_expand);

// The dtype of a bias gradient: the bias's, or its weight's when the bias is absent.
inline at::ScalarType bias_grad_dtype(const OptTensor& bias, const Tensor& weight) {
  return bias.has_value() && bias->defined() ? bias->scalar_type() : weight.scalar_type();
}

}  // namespace meranet
