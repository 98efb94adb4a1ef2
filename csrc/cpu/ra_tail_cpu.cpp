// CPU kernels of the fused residual-attention tail (csrc/ops/ra_tail.h).
//
// Same scheme as csrc/cpu/channel_attention_cpu.cpp: activations viewed as [N, C, S] in NCTHW or
// channels_last_3d; elementwise NCTHW passes run whole (n, c) rows, reductions over channels run tasks
// of (sample, chunk of kChunk positions) (vectorised rows in ca_ra_cpu_kernels.h).
// The k^3 (2 -> 1) conv of the pooled maps and its backward are the st_attention kernels
// (csrc/cpu/pooled_attention_cpu.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "ops/channel_attention.h"
#include "isa.h"
#include "ops/meranet_fast.h"
#include "pooled_attention_cpu.h"
#include "ops/ra_tail.h"

namespace meranet {
namespace {

using cpu_detail::kChunk;
using cpu_detail::num_chunks;

#define MERANET_KERNELS_HEADER "ca_ra_cpu_kernels.h"
#define MERANET_KERNELS_PREFIX pool
#include "isa_variants.h"

struct Geometry {
  int64_t N, C, S, T, H, W;
};

Geometry geometry(const at::Tensor& y) {
  return {y.size(0), y.size(1), y.size(2) * y.size(3) * y.size(4), y.size(2), y.size(3), y.size(4)};
}

// ---------------------------------------------------------------------------------------------
// ra_pool: mean / max / first argmax over C of u = y * scale[n, c] (ca_ra_cpu_kernels.h)
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, bool CL>
void ra_pool_kernel(const scalar_t* y, const at::opmath_type<scalar_t>* scale, Geometry g,
                    at::opmath_type<scalar_t>* pooled, int32_t* argmax) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = g.N, C = g.C, S = g.S, chunks = num_chunks(S);
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
  const auto pool = MERANET_ISA_PICK(pool, pool_channels, scalar_t, CL);
  at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, s0 = (task % chunks) * kChunk, s1 = std::min(S, s0 + kChunk);
      acc_t* p0 = pooled + n * 2 * S + s0;
      pool(y + n * C * S, scale + n * C, C, S, s0, s1, p0, p0 + S, argmax + n * S + s0);
      for (int64_t i = 0; i < s1 - s0; ++i) p0[i] *= inv_c;  // sum -> mean
    }
  });
}

// ---------------------------------------------------------------------------------------------
// ra_attend (after A = sigmoid(conv(P) + b), csrc/cpu/pooled_attention_cpu.h):
// out = relu(y * scale * A + shortcut); relu(NaN) = NaN like torch.relu (z < 0 ? 0 : z).
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, bool CL>
void ra_attend_kernel(const scalar_t* y, const scalar_t* sc, const at::opmath_type<scalar_t>* scale,
                      const at::opmath_type<scalar_t>* attn, Geometry g, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = g.N, C = g.C, S = g.S;
  if constexpr (!CL) {  // a task is one (n, c) row: long contiguous streams
    at::parallel_for(0, N * C, 4, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const acc_t av = scale[row];
        const acc_t* A = attn + (row / C) * S;
        const scalar_t* yr = y + row * S;
        const scalar_t* sr = sc + row * S;
        scalar_t* orow = out + row * S;
#pragma omp simd
        for (int64_t s = 0; s < S; ++s) {
          const acc_t z = static_cast<acc_t>(yr[s]) * av * A[s] + static_cast<acc_t>(sr[s]);
          orow[s] = static_cast<scalar_t>(z < acc_t(0) ? acc_t(0) : z);
        }
      }
    });
    return;
  }
  const int64_t chunks = num_chunks(S);
  at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, s0 = (task % chunks) * kChunk, s1 = std::min(S, s0 + kChunk);
      const int64_t base = n * C * S;
      const acc_t* A = attn + n * S;
      const acc_t* a = scale + n * C;
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t off = base + s * C;
        const acc_t As = A[s];
        for (int64_t c = 0; c < C; ++c) {
          const acc_t z = static_cast<acc_t>(y[off + c]) * a[c] * As + static_cast<acc_t>(sc[off + c]);
          out[off + c] = static_cast<scalar_t>(z < acc_t(0) ? acc_t(0) : z);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// ra_attend_bwd, the pass over the activations: gz = g * [out > 0] (written), gA = sum_c gz * y * scale.
// The small maps (gL = gA A (1 - A), gP, gw, gb) follow in pooled_attention_backward_cpu.
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, bool CL>
void ra_attend_grad_kernel(const scalar_t* grad, const scalar_t* out, const scalar_t* y,
                           const at::opmath_type<scalar_t>* scale, Geometry g, scalar_t* gz,
                           at::opmath_type<scalar_t>* grad_attn) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = g.N, C = g.C, S = g.S, chunks = num_chunks(S);
  const auto grad_rows = MERANET_ISA_PICK(pool, relu_grad_rows, scalar_t);
  const auto grad_dot = MERANET_ISA_PICK(pool, relu_grad_dot, scalar_t);
  at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, s0 = (task % chunks) * kChunk, s1 = std::min(S, s0 + kChunk);
      const int64_t len = s1 - s0, base = n * C * S;
      const acc_t* a = scale + n * C;
      acc_t* gA = grad_attn + n * S + s0;
      if (!CL) {
        std::fill(gA, gA + len, acc_t(0));
        const int64_t off = base + s0;
        grad_rows(grad + off, out + off, y + off, a, C, S, len, gz + off, gA);
      } else {
        for (int64_t i = 0; i < len; ++i) {
          const int64_t off = base + (s0 + i) * C;
          gA[i] = grad_dot(grad + off, out + off, y + off, a, C, gz + off);
        }
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> ra_pool_cpu(const at::Tensor& y_in, const at::Tensor& scale) {
  const char* op = "ra_pool";
  check_activation(op, "y", y_in);
  const auto acc = acc_scalar_type(y_in.scalar_type());
  check_small(op, "scale", scale, {y_in.size(0), y_in.size(1)}, acc, y_in);
  const auto fmt = dense_format(y_in);
  const auto y = y_in.contiguous(fmt);
  const auto g = geometry(y);
  auto pooled = at::empty({g.N, 2, g.T, g.H, g.W}, y.options().dtype(acc));
  auto argmax = at::empty({g.N, g.T, g.H, g.W}, y.options().dtype(at::kInt));
  if (y.numel() == 0) return {pooled, argmax};
  check_argmax_channels(op, "y", g.C);
  const auto a = scale.contiguous();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast3d;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "ra_pool", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto f = cl ? ra_pool_kernel<scalar_t, true> : ra_pool_kernel<scalar_t, false>;
    f(y.const_data_ptr<scalar_t>(), a.const_data_ptr<acc_t>(), g, pooled.mutable_data_ptr<acc_t>(),
      argmax.mutable_data_ptr<int32_t>());
  });
  return {pooled, argmax};
}

std::tuple<at::Tensor, at::Tensor> ra_attend_cpu(const at::Tensor& y_in, const at::Tensor& shortcut,
                                                 const at::Tensor& scale, const at::Tensor& pooled,
                                                 const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  check_ra_attend_inputs(y_in, shortcut, scale, pooled, weight, bias);
  const auto fmt = dense_format(y_in);
  const auto y = y_in.contiguous(fmt);
  const auto sc = shortcut.contiguous(fmt);
  const auto g = geometry(y);
  auto out = at::empty_like(y, y.options(), fmt);
  if (y.numel() == 0) {
    return {out, at::empty({g.N, 1, g.T, g.H, g.W}, y.options().dtype(acc_scalar_type(y.scalar_type())))};
  }
  const auto attn = pooled_attention_cpu(pooled, weight, bias);
  const auto a = scale.contiguous();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast3d;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "ra_attend", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto f = cl ? ra_attend_kernel<scalar_t, true> : ra_attend_kernel<scalar_t, false>;
    f(y.const_data_ptr<scalar_t>(), sc.const_data_ptr<scalar_t>(), a.const_data_ptr<acc_t>(),
      attn.const_data_ptr<acc_t>(), g, out.mutable_data_ptr<scalar_t>());
  });
  return {out, attn};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ra_attend_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& out_in, const at::Tensor& y_in, const at::Tensor& scale,
    const at::Tensor& attn, const at::Tensor& pooled, const at::Tensor& weight) {
  check_ra_attend_bwd_inputs(grad_out, out_in, y_in, scale, attn, pooled, weight);
  const auto acc = acc_scalar_type(y_in.scalar_type());
  const auto fmt = dense_format(y_in);
  const auto y = y_in.contiguous(fmt);
  const auto gout = grad_out.contiguous(fmt);
  const auto out = out_in.contiguous(fmt);
  const auto g = geometry(y);
  auto gz = at::empty_like(y, y.options(), fmt);
  if (y.numel() == 0) {
    return {gz, at::empty({g.N, 2, g.T, g.H, g.W}, y.options().dtype(acc)), at::zeros(weight.sizes(), weight.options()),
            at::zeros({1}, weight.options())};
  }
  auto grad_attn = at::empty({g.N, g.S}, y.options().dtype(acc));
  const auto a = scale.contiguous();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast3d;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "ra_attend_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto f = cl ? ra_attend_grad_kernel<scalar_t, true> : ra_attend_grad_kernel<scalar_t, false>;
    f(gout.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
      a.const_data_ptr<acc_t>(), g, gz.mutable_data_ptr<scalar_t>(), grad_attn.mutable_data_ptr<acc_t>());
  });
  // The mean map's gradient stays undivided here: the channel-attention backward divides it by C.
  auto [gpooled, gw, gb] = pooled_attention_backward_cpu(grad_attn, attn, pooled, weight, 1);
  return {gz, gpooled, gw, gb};
}

TORCH_LIBRARY_IMPL(meranet, CPU, m) {
  m.impl("ra_pool", &ra_pool_cpu);
  m.impl("ra_attend", &ra_attend_cpu);
  m.impl("ra_attend_bwd", &ra_attend_bwd_cpu);
}

}  // namespace meranet
