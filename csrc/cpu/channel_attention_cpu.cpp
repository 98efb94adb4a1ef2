// CPU kernels of the channel-attention operators (csrc/ops/channel_attention.h).
//
// Every kernel views an activation as [N, C, S] (S = T*H*W) in one of two dense layouts: NCTHW
// (positions contiguous) or channels_last_3d (channels contiguous), with the inner loop running
// along the contiguous dimension (the vectorised rows are in ca_ra_cpu_kernels.h). NCTHW work is split
// into (n, c) rows, long contiguous streams; channels_last_3d work into tasks of (sample, chunk of
// kChunk positions), whose reductions over positions write one partial row per task, summed in a
// fixed order afterwards. Either way results do not depend on the thread count. Accumulation: float32
// (float64 for float64 inputs).
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

namespace meranet {

c10::MemoryFormat dense_format(const at::Tensor& x) {
  if (!x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast3d)) {
    return at::MemoryFormat::ChannelsLast3d;
  }
  return at::MemoryFormat::Contiguous;
}

void check_activation(const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK(x.defined(), op, ": ", name, " must be a defined tensor");
  TORCH_CHECK(x.dim() == 5, op, ": ", name, " must be a 5-D tensor [N, C, T, H, W], got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": ", name, " must be a floating-point tensor, got ",
              x.scalar_type());
  TORCH_CHECK(x.size(1) >= 1, op, ": ", name, " must have at least one channel, got shape ", x.sizes());
  TORCH_CHECK(x.size(0) == 0 || x.size(2) * x.size(3) * x.size(4) >= 1, op, ": ", name,
              " must have T*H*W >= 1 (nothing to pool over), got shape ", x.sizes());
}

void check_same_activation(const char* op, const char* name, const at::Tensor& t, const at::Tensor& y) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a defined tensor");
  TORCH_CHECK(t.sizes() == y.sizes(), op, ": ", name, " shape ", t.sizes(), " must equal y shape ", y.sizes());
  TORCH_CHECK(t.scalar_type() == y.scalar_type(), op, ": ", name, " dtype (", t.scalar_type(),
              ") must match y dtype (", y.scalar_type(), ")");
  TORCH_CHECK(t.device() == y.device(), op, ": ", name, " is on ", t.device(), " but y is on ", y.device());
}

void check_small(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape,
                 at::ScalarType dtype, const at::Tensor& y) {
  TORCH_CHECK(t.defined(), op, ": ", name, " must be a defined tensor");
  TORCH_CHECK(t.sizes() == shape && t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, " of shape ",
              shape, ", got ", t.scalar_type(), " ", t.sizes());
  TORCH_CHECK(t.device() == y.device(), op, ": ", name, " is on ", t.device(), " but y is on ", y.device());
}

namespace {

using cpu_detail::kChunk;
using cpu_detail::num_chunks;

#define MERANET_KERNELS_HEADER "ca_ra_cpu_kernels.h"
#define MERANET_KERNELS_PREFIX pool
#include "isa_variants.h"

// ---------------------------------------------------------------------------------------------
// ca_pool: per (n, c) sum, max and first argmax over the S positions (ca_ra_cpu_kernels.h).
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, bool CL>
void ca_pool_kernel(const scalar_t* y, int64_t N, int64_t C, int64_t S, at::opmath_type<scalar_t>* avg,
                    at::opmath_type<scalar_t>* mx, int64_t* idx) {
  using acc_t = at::opmath_type<scalar_t>;
  // NCTHW: a task is one chunk of kRowChunk positions of one (n, c) row; long contiguous streams keep
  // the hardware prefetchers busy. channels_last_3d: a task is kChunk positions of a sample, every channel.
  constexpr int64_t kRowChunk = int64_t(1) << 20;
  const int64_t chunk = CL ? kChunk : kRowChunk;
  const int64_t chunks = std::max<int64_t>(1, (S + chunk - 1) / chunk);
  std::vector<acc_t> psum(N * chunks * C), pmax(N * chunks * C);
  std::vector<int64_t> pidx(N * chunks * C);
  if constexpr (!CL) {
    const auto pool = MERANET_ISA_PICK(pool, pool_rows, scalar_t);
    at::parallel_for(0, N * C * chunks, 4, [&](int64_t begin, int64_t end) {
      if (chunks == 1) {  // whole rows, the usual case: task = row = n * C + c, partial index j = row
        pool(y + begin * S, end - begin, S, &psum[begin], &pmax[begin], &pidx[begin]);
        return;
      }
      for (int64_t task = begin; task < end; ++task) {
        const int64_t row = task / chunks, k = task % chunks, n = row / C, c = row % C;
        const int64_t s0 = k * chunk, s1 = std::min(S, s0 + chunk), j = (n * chunks + k) * C + c;
        pool(y + row * S + s0, 1, s1 - s0, &psum[j], &pmax[j], &pidx[j]);
        pidx[j] += s0;
      }
    });
  } else {
    const auto pool = MERANET_ISA_PICK(pool, pool_positions_cl, scalar_t);
    at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t n = task / chunks, s0 = (task % chunks) * chunk, s1 = std::min(S, s0 + chunk);
        pool(y + n * C * S, C, s0, s1, psum.data() + task * C, pmax.data() + task * C, pidx.data() + task * C);
      }
    });
  }
  // Combine the chunks in order; takes_max keeps the earliest chunk on ties (first index overall).
  at::parallel_for(0, N * C, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / C, c = i % C;
      acc_t total = 0, b = -std::numeric_limits<acc_t>::infinity();
      int64_t bi = 0;
      for (int64_t k = 0; k < chunks; ++k) {
        const int64_t j = (n * chunks + k) * C + c;
        total += psum[j];
        if (k == 0 || pool_default::takes_max(pmax[j], b)) {
          b = pmax[j];
          bi = pidx[j];
        }
      }
      avg[i] = total / static_cast<acc_t>(S);
      mx[i] = b;
      idx[i] = bi;
    }
  });
}

// ---------------------------------------------------------------------------------------------
// ca_scale: out = y * scale[n, c]
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, bool CL>
void ca_scale_kernel(const scalar_t* y, const at::opmath_type<scalar_t>* scale, scalar_t* out, int64_t N,
                     int64_t C, int64_t S) {
  const auto scale_row = MERANET_ISA_PICK(pool, scale_row, scalar_t, CL);
  if (!CL) {  // a task is one (n, c) row: one scale, a long contiguous stream
    at::parallel_for(0, N * C, 4, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) scale_row(y + row * S, scale + row, S, out + row * S);
    });
    return;
  }
  const int64_t chunks = num_chunks(S);
  at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, s0 = (task % chunks) * kChunk, s1 = std::min(S, s0 + kChunk);
      for (int64_t s = s0; s < s1; ++s) scale_row(y + (n * S + s) * C, scale + n * C, C, out + (n * S + s) * C);
    }
  });
}

// Per-position terms of the gradient wrt u = y * a when a spatio-temporal attention follows:
// gu = g * A[s] + gP0[s] / C + gP1[s] * [c == I[s]]. Without it (STA = false): gu = g.
template <typename acc_t>
struct StaGrad {
  const acc_t* attn = nullptr;    // [N, S]
  const acc_t* gpooled = nullptr;  // [N, 2, S]
  const int32_t* argmax = nullptr;  // [N, S]
};

// ---------------------------------------------------------------------------------------------
// ca_scale_grad: ga[n, c] = sum_s gu * y
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, bool CL, bool STA>
void ca_scale_grad_kernel(const scalar_t* g, const scalar_t* y, StaGrad<at::opmath_type<scalar_t>> sta, int64_t N,
                          int64_t C, int64_t S, at::opmath_type<scalar_t>* ga) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
  if constexpr (!CL) {  // a task is one (n, c) row: a long contiguous dot product, no partials
    const auto dot = MERANET_ISA_PICK(pool, grad_dot_row, scalar_t, STA);
    at::parallel_for(0, N * C, 4, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / C;
        const acc_t* gp0 = STA ? sta.gpooled + n * 2 * S : nullptr;
        ga[row] = dot(g + row * S, y + row * S, STA ? sta.attn + n * S : nullptr, gp0, STA ? gp0 + S : nullptr,
                      STA ? sta.argmax + n * S : nullptr, static_cast<int32_t>(row % C), inv_c, S);
      }
    });
    return;
  }
  const int64_t chunks = num_chunks(S);
  std::vector<acc_t> part(N * chunks * C);
  at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, s0 = (task % chunks) * kChunk, s1 = std::min(S, s0 + kChunk);
      const int64_t base = n * C * S;
      acc_t* acc = part.data() + task * C;
      const acc_t* A = STA ? sta.attn + n * S : nullptr;
      const acc_t* gp0 = STA ? sta.gpooled + n * 2 * S : nullptr;
      const acc_t* gp1 = STA ? gp0 + S : nullptr;
      const int32_t* I = STA ? sta.argmax + n * S : nullptr;
      std::fill(acc, acc + C, acc_t(0));
      for (int64_t s = s0; s < s1; ++s) {
        const scalar_t* gcol = g + base + s * C;
        const scalar_t* ycol = y + base + s * C;
        if (STA) {
          const acc_t As = A[s], m0 = gp0[s] * inv_c;
          for (int64_t c = 0; c < C; ++c) {
            acc[c] += (static_cast<acc_t>(gcol[c]) * As + m0) * static_cast<acc_t>(ycol[c]);
          }
          const int64_t ci = I[s];
          acc[ci] += gp1[s] * static_cast<acc_t>(ycol[ci]);
        } else {
          for (int64_t c = 0; c < C; ++c) acc[c] += static_cast<acc_t>(gcol[c]) * static_cast<acc_t>(ycol[c]);
        }
      }
    }
  });
  cpu_detail::sum_partials(part.data(), N, chunks, C, ga);
}

// ---------------------------------------------------------------------------------------------
// ca_input_grad: gy = gu * scale[n, c] + g_avg[n, c] / S + g_max[n, c] * [s == argmax[n, c]]
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, bool CL, bool STA>
void ca_input_grad_kernel(const scalar_t* g, const at::opmath_type<scalar_t>* scale,
                          const at::opmath_type<scalar_t>* gavg, const at::opmath_type<scalar_t>* gmax,
                          const int64_t* am, StaGrad<at::opmath_type<scalar_t>> sta, int64_t N, int64_t C, int64_t S,
                          scalar_t* gy) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C), inv_s = acc_t(1) / static_cast<acc_t>(S);
  if constexpr (!CL) {  // a task is one (n, c) row
    const auto input_grad = MERANET_ISA_PICK(pool, input_grad_row, scalar_t, STA);
    at::parallel_for(0, N * C, 4, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / C;
        const int32_t c = static_cast<int32_t>(row % C);
        const acc_t* A = STA ? sta.attn + n * S : nullptr;
        const acc_t* gp0 = STA ? sta.gpooled + n * 2 * S : nullptr;
        const acc_t* gp1 = STA ? gp0 + S : nullptr;
        const int32_t* I = STA ? sta.argmax + n * S : nullptr;
        const acc_t av = scale[row], mean_term = gavg[row] * inv_s;
        input_grad(g + row * S, A, gp0, gp1, I, c, inv_c, av, mean_term, S, gy + row * S);
        // The max term at the argmax: that element again, with it added.
        const int64_t sm = am[row];
        const acc_t gu = pool_default::gu_at<scalar_t, STA>(g + row * S, A, gp0, gp1, I, c, inv_c, sm);
        gy[row * S + sm] = static_cast<scalar_t>(gu * av + mean_term + gmax[row]);
      }
    });
    return;
  }
  const int64_t chunks = num_chunks(S);
  at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, s0 = (task % chunks) * kChunk, s1 = std::min(S, s0 + kChunk);
      const int64_t base = n * C * S;
      const acc_t* a = scale + n * C;
      const acc_t* A = STA ? sta.attn + n * S : nullptr;
      const acc_t* gp0 = STA ? sta.gpooled + n * 2 * S : nullptr;
      const acc_t* gp1 = STA ? gp0 + S : nullptr;
      const int32_t* I = STA ? sta.argmax + n * S : nullptr;
      for (int64_t s = s0; s < s1; ++s) {
        const scalar_t* gcol = g + base + s * C;
        scalar_t* ocol = gy + base + s * C;
        const acc_t As = STA ? A[s] : acc_t(1), m0 = STA ? gp0[s] * inv_c : acc_t(0);
        const int64_t ci = STA ? I[s] : -1;
        for (int64_t c = 0; c < C; ++c) {
          const int64_t i = n * C + c;
          acc_t gu = static_cast<acc_t>(gcol[c]) * As + m0;
          if (STA && c == ci) gu += gp1[s];
          acc_t v = gu * a[c] + gavg[i] * inv_s;
          if (am[i] == s) v += gmax[i];
          ocol[c] = static_cast<scalar_t>(v);
        }
      }
    }
  });
}

struct ActShape {
  int64_t N, C, S;
};

ActShape act_shape(const at::Tensor& y) {
  return {y.size(0), y.size(1), y.size(2) * y.size(3) * y.size(4)};
}

}  // namespace

// Optional STA maps: all three or none; validated against y (declared in channel_attention.h).
bool sta_maps(const char* op, const at::Tensor& y, const std::optional<at::Tensor>& attn,
              const std::optional<at::Tensor>& grad_pooled, const std::optional<at::Tensor>& sta_argmax,
              at::Tensor& A, at::Tensor& gP, at::Tensor& I) {
  const bool has_a = attn.has_value() && attn->defined();
  const bool has_p = grad_pooled.has_value() && grad_pooled->defined();
  const bool has_i = sta_argmax.has_value() && sta_argmax->defined();
  TORCH_CHECK(has_a == has_p && has_p == has_i, op,
              ": attn, grad_pooled and sta_argmax must be given together or not at all");
  if (!has_a) return false;
  const auto n = y.size(0), t = y.size(2), h = y.size(3), w = y.size(4);
  const auto acc = acc_scalar_type(y.scalar_type());
  check_small(op, "attn", *attn, {n, 1, t, h, w}, acc, y);
  check_small(op, "grad_pooled", *grad_pooled, {n, 2, t, h, w}, acc, y);
  check_small(op, "sta_argmax", *sta_argmax, {n, t, h, w}, at::kInt, y);
  A = attn->contiguous();
  gP = grad_pooled->contiguous();
  I = sta_argmax->contiguous();
  return true;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ca_pool_cpu(const at::Tensor& y_in) {
  check_activation("ca_pool", "y", y_in);
  const auto y = y_in.contiguous(dense_format(y_in));
  const auto [N, C, S] = act_shape(y);
  const auto acc = acc_scalar_type(y.scalar_type());
  auto avg = at::empty({N, C}, y.options().dtype(acc));
  auto mx = at::empty({N, C}, y.options().dtype(acc));
  auto idx = at::empty({N, C}, y.options().dtype(at::kLong));
  if (N == 0) return {avg, mx, idx};
  const bool cl = dense_format(y) == at::MemoryFormat::ChannelsLast3d;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "ca_pool", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto f = cl ? ca_pool_kernel<scalar_t, true> : ca_pool_kernel<scalar_t, false>;
    f(y.const_data_ptr<scalar_t>(), N, C, S, avg.mutable_data_ptr<acc_t>(), mx.mutable_data_ptr<acc_t>(),
      idx.mutable_data_ptr<int64_t>());
  });
  return {avg, mx, idx};
}

at::Tensor ca_scale_cpu(const at::Tensor& y_in, const at::Tensor& scale) {
  check_activation("ca_scale", "y", y_in);
  check_small("ca_scale", "scale", scale, {y_in.size(0), y_in.size(1)}, acc_scalar_type(y_in.scalar_type()), y_in);
  const auto fmt = dense_format(y_in);
  const auto y = y_in.contiguous(fmt);
  const auto a = scale.contiguous();
  auto out = at::empty_like(y, y.options(), fmt);
  const auto [N, C, S] = act_shape(y);
  if (out.numel() == 0) return out;
  const bool cl = fmt == at::MemoryFormat::ChannelsLast3d;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "ca_scale", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto f = cl ? ca_scale_kernel<scalar_t, true> : ca_scale_kernel<scalar_t, false>;
    f(y.const_data_ptr<scalar_t>(), a.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), N, C, S);
  });
  return out;
}

at::Tensor ca_scale_grad_cpu(const at::Tensor& grad, const at::Tensor& y_in, const std::optional<at::Tensor>& attn,
                             const std::optional<at::Tensor>& grad_pooled,
                             const std::optional<at::Tensor>& sta_argmax) {
  check_activation("ca_scale_grad", "y", y_in);
  check_same_activation("ca_scale_grad", "grad", grad, y_in);
  const auto fmt = dense_format(y_in);
  const auto y = y_in.contiguous(fmt);
  const auto g = grad.contiguous(fmt);
  at::Tensor A, gP, I;
  const bool sta = sta_maps("ca_scale_grad", y, attn, grad_pooled, sta_argmax, A, gP, I);
  const auto [N, C, S] = act_shape(y);
  auto ga = at::empty({N, C}, y.options().dtype(acc_scalar_type(y.scalar_type())));
  if (N == 0) return ga;
  const bool cl = fmt == at::MemoryFormat::ChannelsLast3d;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "ca_scale_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    StaGrad<acc_t> maps;
    if (sta) maps = {A.const_data_ptr<acc_t>(), gP.const_data_ptr<acc_t>(), I.const_data_ptr<int32_t>()};
    auto f = cl ? (sta ? ca_scale_grad_kernel<scalar_t, true, true> : ca_scale_grad_kernel<scalar_t, true, false>)
                : (sta ? ca_scale_grad_kernel<scalar_t, false, true> : ca_scale_grad_kernel<scalar_t, false, false>);
    f(g.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(), maps, N, C, S, ga.mutable_data_ptr<acc_t>());
  });
  return ga;
}

at::Tensor ca_input_grad_cpu(const at::Tensor& grad_in, const at::Tensor& scale, const at::Tensor& grad_avg,
                             const at::Tensor& grad_max, const at::Tensor& argmax,
                             const std::optional<at::Tensor>& attn, const std::optional<at::Tensor>& grad_pooled,
                             const std::optional<at::Tensor>& sta_argmax) {
  const char* op = "ca_input_grad";
  check_activation(op, "grad", grad_in);
  const auto fmt = dense_format(grad_in);
  const auto g = grad_in.contiguous(fmt);
  const auto acc = acc_scalar_type(g.scalar_type());
  const auto [N, C, S] = act_shape(g);
  check_small(op, "scale", scale, {N, C}, acc, g);
  check_small(op, "grad_avg", grad_avg, {N, C}, acc, g);
  check_small(op, "grad_max", grad_max, {N, C}, acc, g);
  check_small(op, "argmax", argmax, {N, C}, at::kLong, g);
  at::Tensor A, gP, I;
  const bool sta = sta_maps(op, g, attn, grad_pooled, sta_argmax, A, gP, I);
  auto gy = at::empty_like(g, g.options(), fmt);
  if (gy.numel() == 0) return gy;
  const auto a = scale.contiguous(), gavg = grad_avg.contiguous(), gmax = grad_max.contiguous();
  const auto am = argmax.contiguous();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast3d;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g.scalar_type(), "ca_input_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    StaGrad<acc_t> maps;
    if (sta) maps = {A.const_data_ptr<acc_t>(), gP.const_data_ptr<acc_t>(), I.const_data_ptr<int32_t>()};
    auto f = cl ? (sta ? ca_input_grad_kernel<scalar_t, true, true> : ca_input_grad_kernel<scalar_t, true, false>)
                : (sta ? ca_input_grad_kernel<scalar_t, false, true> : ca_input_grad_kernel<scalar_t, false, false>);
    f(g.const_data_ptr<scalar_t>(), a.const_data_ptr<acc_t>(), gavg.const_data_ptr<acc_t>(),
      gmax.const_data_ptr<acc_t>(), am.const_data_ptr<int64_t>(), maps, N, C, S, gy.mutable_data_ptr<scalar_t>());
  });
  return gy;
}

TORCH_LIBRARY_IMPL(meranet, CPU, m) {
  m.impl("ca_pool", &ca_pool_cpu);
  m.impl("ca_scale", &ca_scale_cpu);
  m.impl("ca_scale_grad", &ca_scale_grad_cpu);
  m.impl("ca_input_grad", &ca_input_grad_cpu);
}

}  // namespace meranet
