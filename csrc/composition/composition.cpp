// Kernel lookup per backend and the channel-attention network (csrc/composition/composition.h).
#include "composition/composition.h"

#include "ops/channel_attention.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>

namespace meranet {
namespace {

template <class Handle>
struct SignatureOf;
template <class Signature>
struct SignatureOf<c10::TypedOperatorHandle<Signature>> {
  using type = Signature;
};

// The handle a Kernels member expects, found by the op's name.
template <class Handle>
Handle find(const char* op, const std::string& name, const std::string& suffix) {
  const std::string full = "meranet::" + name + suffix;
  const auto handle = c10::Dispatcher::singleton().findSchema({full, ""});
  TORCH_CHECK(handle.has_value(), op, ": the kernel operator ", full, " is not registered",
              suffix.empty() ? "" : " (import meranet_fast.ops.triton.channel_attention and .ra_tail first)");
  return handle->typed<typename SignatureOf<Handle>::type>();
}

Kernels lookup(const char* op, const std::string& suffix) {
  return Kernels{
      find<decltype(Kernels::ca_pool)>(op, "ca_pool", suffix),
      find<decltype(Kernels::ca_scale)>(op, "ca_scale", suffix),
      find<decltype(Kernels::ca_scale_grad)>(op, "ca_scale_grad", suffix),
      find<decltype(Kernels::ca_input_grad)>(op, "ca_input_grad", suffix),
      find<decltype(Kernels::ra_pool)>(op, "ra_pool", suffix),
      find<decltype(Kernels::ra_attend)>(op, "ra_attend", suffix),
      find<decltype(Kernels::ra_attend_bwd)>(op, "ra_attend_bwd", suffix),
  };
}

OptTensor cast(const OptTensor& t, at::ScalarType dtype) {
  return t.has_value() && t->defined() ? OptTensor(in_dtype(*t, dtype)) : std::nullopt;
}

}  // namespace

const Kernels& kernels(const char* op, const std::string& backend) {
  if (backend == "triton") {
    static const Kernels triton = lookup(op, "_triton");  // a failed lookup is retried on the next call
    return triton;
  }
  TORCH_CHECK(backend == "cpp" || backend == "cuda", op, ": backend must be 'cpp', 'cuda' or 'triton', got '",
              backend, "'");
  static const Kernels compiled = lookup(op, "");
  return compiled;
}

void backward_op_without_derivative(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  if (at::GradMode::is_enabled()) {
    for (const c10::IValue& arg : torch::jit::last(*stack, op.schema().arguments().size())) {
      TORCH_CHECK(!(arg.isTensor() && arg.toTensor().requires_grad()), op.schema().name(),
                  " has no derivative: double backward (create_graph=True) through the fused operator is not "
                  "supported");
    }
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  op.callBoxed(stack);
}

Tensor ca_network(const Tensor& avg, const Tensor& mx, const Tensor& w_reduce, const OptTensor& b_reduce,
                  const Tensor& w_expand, const OptTensor& b_expand) {
  if (ca_network_runs_on_cpu_loops(avg, w_reduce)) {
    return ca_network_cpu(avg, mx, w_reduce, b_reduce, w_expand, b_expand);
  }
  const auto dtype = avg.scalar_type();
  const int64_t n = avg.size(0);
  const Tensor v = at::cat({avg, mx});  // both pooled rows through the same network at once
  const Tensor h = at::linear(v, in_dtype(w_reduce, dtype), cast(b_reduce, dtype));
  const Tensor e = at::linear(at::relu(h), in_dtype(w_expand, dtype), cast(b_expand, dtype));
  return at::sigmoid(e.narrow(0, 0, n) + e.narrow(0, n, n));
}

NetworkGrads ca_network_backward(const Tensor& grad_a, const Tensor& a, const Tensor& avg, const Tensor& mx,
                                 const Tensor& w_reduce, const OptTensor& b_reduce, const Tensor& w_expand,
                                 const OptTensor& b_expand) {
  if (ca_network_runs_on_cpu_loops(avg, w_reduce)) {
    return ca_network_backward_cpu(grad_a, a, avg, mx, w_reduce, b_reduce, w_expand, b_expand);
  }
  const auto dtype = a.scalar_type();
  const int64_t n = avg.size(0);
  const Tensor v = at::cat({avg, mx});
  // h is recomputed ([2N, C/r] is tiny); gs2: both pooled rows feed the same sigmoid.
  const Tensor h = at::linear(v, in_dtype(w_reduce, dtype), cast(b_reduce, dtype));
  const Tensor gs = grad_a * a * (1 - a);                             // sigmoid'
  const Tensor gs2 = at::cat({gs, gs});
  const Tensor g_we = gs2.t().mm(at::relu(h));                        // [C, C/r]
  const Tensor gh = gs2.mm(in_dtype(w_expand, dtype)) * (h > 0);      // relu'(h), 0 at h == 0 like torch
  const Tensor g_wr = gh.t().mm(v);                                   // [C/r, C]
  const Tensor gv = gh.mm(in_dtype(w_reduce, dtype));                 // [2N, C]
  return {gv.narrow(0, 0, n),
          gv.narrow(0, n, n),
          in_dtype(g_wr, w_reduce.scalar_type()),
          in_dtype(gh.sum(0), bias_grad_dtype(b_reduce, w_reduce)),
          in_dtype(g_we, w_expand.scalar_type()),
          in_dtype(gs2.sum(0), bias_grad_dtype(b_expand, w_expand))};
}

}  // namespace meranet
