// The channel-attention network (csrc/composition/composition.h: ca_network, ca_network_backward) on CPU for small
// sizes: plain vectorised loops, single-threaded. At MERANet's sizes ([2N, C] x [C, C/r] with N <= 8) the
// GEMM library's per-call cost (threading, packing) is several times the arithmetic, and the ATen
// composition makes about ten calls forward and fifteen backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "composition/composition.h"
#include "ops/channel_attention.h"
#include "isa.h"

#define MERANET_KERNELS_HEADER "ca_network_cpu_kernels.h"
#define MERANET_KERNELS_PREFIX network
#include "isa_variants.h"

namespace meranet {
namespace {

// Multiply-adds of one [2N, C] x [C, R] product up to which the loops run. channel_attention forward +
// backward at [N, 512, 1, 2, 2], r = 16, loops / ATen GEMM (2 threads, AMD EPYC): N = 4 219 / 378 us,
// N = 8 (2^18) 340 / 488, N = 16 589 / 757, N = 32 1327 / 1261, N = 64 2653 / 2179 (medians of 300 calls,
// one run each; single runs move by up to 40 %, so the crossover lies somewhere in 2^19..2^20). MERANet's
// blocks at batch <= 8 all stay below.
constexpr int64_t kMaxLoopMultiplyAdds = int64_t(1) << 18;

// A contiguous copy of a weight or bias in the accumulation dtype (undefined for an absent bias).
at::Tensor in_acc(const OptTensor& t, at::ScalarType acc) {
  return t.has_value() && t->defined() ? in_dtype(*t, acc).contiguous() : at::Tensor();
}

template <typename acc_t>
const acc_t* ptr(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<acc_t>() : nullptr;
}

// The pooled rows v = [avg; max] as one contiguous [2N, C] buffer.
template <typename acc_t>
std::vector<acc_t> stacked_rows(const at::Tensor& avg, const at::Tensor& mx) {
  const int64_t size = avg.numel();
  std::vector<acc_t> v(2 * size);
  std::copy_n(avg.contiguous().const_data_ptr<acc_t>(), size, v.data());
  std::copy_n(mx.contiguous().const_data_ptr<acc_t>(), size, v.data() + size);
  return v;
}

}  // namespace

bool ca_network_runs_on_cpu_loops(const at::Tensor& avg, const at::Tensor& w_reduce) {
  return avg.is_cpu() && 2 * avg.size(0) * avg.size(1) * w_reduce.size(0) <= kMaxLoopMultiplyAdds;
}

at::Tensor ca_network_cpu(const at::Tensor& avg, const at::Tensor& mx, const at::Tensor& w_reduce,
                          const OptTensor& b_reduce, const at::Tensor& w_expand, const OptTensor& b_expand) {
  const auto acc = avg.scalar_type();
  const int64_t N = avg.size(0), C = avg.size(1), R = w_reduce.size(0);
  const at::Tensor wr = in_acc(w_reduce, acc), br = in_acc(b_reduce, acc), we = in_acc(w_expand, acc),
                   be = in_acc(b_expand, acc);
  at::Tensor a = at::empty({N, C}, avg.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "ca_network_cpu", [&] {
    const std::vector<scalar_t> v = stacked_rows<scalar_t>(avg, mx);
    std::vector<scalar_t> h(2 * N * R), z(2 * N * R);
    MERANET_ISA_PICK(network, network_hidden, scalar_t)(v.data(), ptr<scalar_t>(wr), ptr<scalar_t>(br), 2 * N, C, R,
                                                         h.data(), z.data());
    MERANET_ISA_PICK(network, network_output, scalar_t)(z.data(), ptr<scalar_t>(we), ptr<scalar_t>(be), N, C, R,
                                                         a.mutable_data_ptr<scalar_t>());
  });
  return a;
}

NetworkGrads ca_network_backward_cpu(const at::Tensor& grad_a, const at::Tensor& a, const at::Tensor& avg,
                                     const at::Tensor& mx, const at::Tensor& w_reduce, const OptTensor& b_reduce,
                                     const at::Tensor& w_expand, const OptTensor& b_expand) {
  const auto acc = a.scalar_type();
  const int64_t N = avg.size(0), C = avg.size(1), R = w_reduce.size(0);
  const at::Tensor wr = in_acc(w_reduce, acc), br = in_acc(b_reduce, acc), we = in_acc(w_expand, acc);
  const auto opts = a.options();
  at::Tensor gv = at::empty({2 * N, C}, opts), g_wr = at::empty({R, C}, opts), g_br = at::empty({R}, opts),
             g_we = at::empty({C, R}, opts), g_be = at::empty({C}, opts);
  AT_DISPATCH_FLOATING_TYPES(acc, "ca_network_backward_cpu", [&] {
    const std::vector<scalar_t> v = stacked_rows<scalar_t>(avg, mx);
    std::vector<scalar_t> h(2 * N * R), z(2 * N * R), gs(N * C), q(N * R);
    MERANET_ISA_PICK(network, network_hidden, scalar_t)(v.data(), ptr<scalar_t>(wr), ptr<scalar_t>(br), 2 * N, C, R,
                                                         h.data(), z.data());
    const at::Tensor ga = in_dtype(grad_a, acc).contiguous(), ac = a.contiguous();
    const scalar_t *gp = ga.const_data_ptr<scalar_t>(), *ap = ac.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < N * C; ++i) gs[i] = gp[i] * ap[i] * (1 - ap[i]);  // sigmoid'
    MERANET_ISA_PICK(network, network_backward, scalar_t)(
        gs.data(), v.data(), h.data(), z.data(), ptr<scalar_t>(wr), ptr<scalar_t>(we), N, C, R,
        g_we.mutable_data_ptr<scalar_t>(), g_be.mutable_data_ptr<scalar_t>(), g_wr.mutable_data_ptr<scalar_t>(),
        g_br.mutable_data_ptr<scalar_t>(), gv.mutable_data_ptr<scalar_t>(), q.data());
  });
  return {gv.narrow(0, 0, N),
          gv.narrow(0, N, N),
          in_dtype(g_wr, w_reduce.scalar_type()),
          in_dtype(g_br, bias_grad_dtype(b_reduce, w_reduce)),
          in_dtype(g_we, w_expand.scalar_type()),
          in_dtype(g_be, bias_grad_dtype(b_expand, w_expand))};
}

}  // namespace meranet
