// CPU kernels of the fused residual-attention tail (csrc/ra_tail.h).
//
// Same scheme as csrc/cpu/channel_attention_cpu.cpp: activations viewed as [N, C, S] in NCTHW or
// channels_last_3d, tasks of (sample, chunk of positions), fixed-order reduction of per-task partials.
// The k^3 (2 -> 1) conv of the pooled maps is computed directly from the small [N, 2, S] maps.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "channel_attention.h"
#include "ra_tail.h"

namespace meranet {
namespace {

using cpu_detail::kChunk;
using cpu_detail::num_chunks;

struct Geometry {
  int64_t N, C, S, T, H, W;
};

Geometry geometry(const at::Tensor& y) {
  return {y.size(0), y.size(1), y.size(2) * y.size(3) * y.size(4), y.size(2), y.size(3), y.size(4)};
}

// ---------------------------------------------------------------------------------------------
// ra_pool: mean / max / first argmax over C of u = y * scale[n, c]
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, bool CL>
void ra_pool_kernel(const scalar_t* y, const at::opmath_type<scalar_t>* scale, Geometry g,
                    at::opmath_type<scalar_t>* pooled, int32_t* argmax) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = g.N, C = g.C, S = g.S, chunks = num_chunks(S);
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);
  at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> sum(kChunk), best(kChunk);
    std::vector<int32_t> arg(kChunk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, s0 = (task % chunks) * kChunk, s1 = std::min(S, s0 + kChunk);
      const int64_t len = s1 - s0, base = n * C * S;
      const acc_t* a = scale + n * C;
      std::fill(sum.begin(), sum.begin() + len, acc_t(0));
      std::fill(best.begin(), best.begin() + len, -std::numeric_limits<acc_t>::infinity());
      std::fill(arg.begin(), arg.begin() + len, 0);
      if (!CL) {
        for (int64_t c = 0; c < C; ++c) {
          const acc_t av = a[c];
          const scalar_t* row = y + base + c * S + s0;
          for (int64_t i = 0; i < len; ++i) {
            const acc_t u = static_cast<acc_t>(row[i]) * av;
            sum[i] += u;
            if (u > best[i]) {  // strict: first channel on ties
              best[i] = u;
              arg[i] = static_cast<int32_t>(c);
            }
          }
        }
      } else {
        for (int64_t i = 0; i < len; ++i) {
          const scalar_t* col = y + base + (s0 + i) * C;
          acc_t total = 0, b = -std::numeric_limits<acc_t>::infinity();
          int32_t bc = 0;
          for (int64_t c = 0; c < C; ++c) {
            const acc_t u = static_cast<acc_t>(col[c]) * a[c];
            total += u;
            if (u > b) {
              b = u;
              bc = static_cast<int32_t>(c);
            }
          }
          sum[i] = total;
          best[i] = b;
          arg[i] = bc;
        }
      }
      acc_t* p0 = pooled + n * 2 * S + s0;
      acc_t* p1 = p0 + S;
      int32_t* I = argmax + n * S + s0;
      for (int64_t i = 0; i < len; ++i) {
        p0[i] = sum[i] * inv_c;
        p1[i] = best[i];
        I[i] = arg[i];
      }
    }
  });
}

// logit at (t, h, x): sum over both maps and the k^3 taps (cross-correlation, zero padding), no bias.
template <typename acc_t>
inline acc_t conv_at(const acc_t* P0, const acc_t* P1, const acc_t* w, int64_t K, const Geometry& g, int64_t t,
                     int64_t h, int64_t x) {
  const int64_t r = K / 2, KKK = K * K * K;
  acc_t L = 0;
  for (int64_t dt = 0; dt < K; ++dt) {
    const int64_t tt = t + dt - r;
    if (tt < 0 || tt >= g.T) continue;
    for (int64_t dh = 0; dh < K; ++dh) {
      const int64_t hh = h + dh - r;
      if (hh < 0 || hh >= g.H) continue;
      const int64_t row = (tt * g.H + hh) * g.W;
      const acc_t* w0 = w + (dt * K + dh) * K;
      const acc_t* w1 = w0 + KKK;
      for (int64_t dw = 0; dw < K; ++dw) {
        const int64_t ww = x + dw - r;
        if (ww < 0 || ww >= g.W) continue;
        L += w0[dw] * P0[row + ww] + w1[dw] * P1[row + ww];
      }
    }
  }
  return L;
}

// ---------------------------------------------------------------------------------------------
// ra_attend: A = sigmoid(conv(P) + b); out = relu(y * scale * A + shortcut)
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, bool CL>
void ra_attend_kernel(const scalar_t* y, const scalar_t* sc, const at::opmath_type<scalar_t>* scale,
                      const at::opmath_type<scalar_t>* pooled, const at::opmath_type<scalar_t>* w,
                      at::opmath_type<scalar_t> bias, int64_t K, Geometry g, scalar_t* out,
                      at::opmath_type<scalar_t>* attn) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = g.N, C = g.C, S = g.S, chunks = num_chunks(S);
  at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, s0 = (task % chunks) * kChunk, s1 = std::min(S, s0 + kChunk);
      const int64_t base = n * C * S;
      const acc_t* P0 = pooled + n * 2 * S;
      const acc_t* P1 = P0 + S;
      acc_t* A = attn + n * S;
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t x = s % g.W, th = s / g.W;
        const acc_t L = bias + conv_at(P0, P1, w, K, g, th / g.H, th % g.H, x);
        A[s] = acc_t(1) / (acc_t(1) + std::exp(-L));
      }
      const acc_t* a = scale + n * C;
      if (!CL) {
        for (int64_t c = 0; c < C; ++c) {
          const acc_t av = a[c];
          const int64_t off = base + c * S;
          for (int64_t s = s0; s < s1; ++s) {
            const acc_t z = static_cast<acc_t>(y[off + s]) * av * A[s] + static_cast<acc_t>(sc[off + s]);
            out[off + s] = static_cast<scalar_t>(z > acc_t(0) ? z : acc_t(0));
          }
        }
      } else {
        for (int64_t s = s0; s < s1; ++s) {
          const int64_t off = base + s * C;
          const acc_t As = A[s];
          for (int64_t c = 0; c < C; ++c) {
            const acc_t z = static_cast<acc_t>(y[off + c]) * a[c] * As + static_cast<acc_t>(sc[off + c]);
            out[off + c] = static_cast<scalar_t>(z > acc_t(0) ? z : acc_t(0));
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// ra_attend_bwd
//   phase 1: gz = g * [out > 0] (written), gA = sum_c gz * y * scale, gL = gA * A * (1 - A)
//   phase 2: gP[q] = sum_o w[o] gL[q - o + r]; gw[o] = sum_q P[q] gL[q - o + r]; gb = sum gL
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, bool CL>
void ra_attend_bwd_kernel(const scalar_t* grad, const scalar_t* out, const scalar_t* y,
                          const at::opmath_type<scalar_t>* scale, const at::opmath_type<scalar_t>* attn,
                          const at::opmath_type<scalar_t>* pooled, const at::opmath_type<scalar_t>* w, int64_t K,
                          Geometry g, scalar_t* gz, at::opmath_type<scalar_t>* gpooled, at::opmath_type<scalar_t>* gw,
                          at::opmath_type<scalar_t>* gb) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = g.N, C = g.C, S = g.S, chunks = num_chunks(S), KKK = K * K * K, r = K / 2;
  std::vector<acc_t> glogit(N * S);
  at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> gA(kChunk);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, s0 = (task % chunks) * kChunk, s1 = std::min(S, s0 + kChunk);
      const int64_t len = s1 - s0, base = n * C * S;
      const acc_t* a = scale + n * C;
      if (!CL) {
        std::fill(gA.begin(), gA.begin() + len, acc_t(0));
        for (int64_t c = 0; c < C; ++c) {
          const acc_t av = a[c];
          const int64_t off = base + c * S + s0;
          for (int64_t i = 0; i < len; ++i) {
            const acc_t gv = static_cast<acc_t>(out[off + i]) > acc_t(0) ? static_cast<acc_t>(grad[off + i]) : acc_t(0);
            gz[off + i] = static_cast<scalar_t>(gv);
            gA[i] += gv * static_cast<acc_t>(y[off + i]) * av;
          }
        }
      } else {
        for (int64_t i = 0; i < len; ++i) {
          const int64_t off = base + (s0 + i) * C;
          acc_t total = 0;
          for (int64_t c = 0; c < C; ++c) {
            const acc_t gv = static_cast<acc_t>(out[off + c]) > acc_t(0) ? static_cast<acc_t>(grad[off + c]) : acc_t(0);
            gz[off + c] = static_cast<scalar_t>(gv);
            total += gv * static_cast<acc_t>(y[off + c]) * a[c];
          }
          gA[i] = total;
        }
      }
      const acc_t* A = attn + n * S;
      for (int64_t i = 0; i < len; ++i) {
        const acc_t As = A[s0 + i];
        glogit[n * S + s0 + i] = gA[i] * As * (acc_t(1) - As);
      }
    }
  });

  const int64_t tasks = N * chunks;
  std::vector<acc_t> gw_part(tasks * 2 * KKK, acc_t(0)), gb_part(tasks, acc_t(0));
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / chunks, s0 = (task % chunks) * kChunk, s1 = std::min(S, s0 + kChunk);
      const acc_t* gL = glogit.data() + n * S;
      const acc_t* P0 = pooled + n * 2 * S;
      const acc_t* P1 = P0 + S;
      acc_t* gP0 = gpooled + n * 2 * S;
      acc_t* gP1 = gP0 + S;
      acc_t* gw0 = gw_part.data() + task * 2 * KKK;
      acc_t* gw1 = gw0 + KKK;
      acc_t gbias = 0;
      for (int64_t q = s0; q < s1; ++q) {
        const int64_t x = q % g.W, th = q / g.W, h = th % g.H, t = th / g.H;
        const acc_t p0 = P0[q], p1 = P1[q];
        acc_t m0 = 0, m1 = 0;
        gbias += gL[q];
        for (int64_t dt = 0; dt < K; ++dt) {
          const int64_t tt = t - dt + r;
          if (tt < 0 || tt >= g.T) continue;
          for (int64_t dh = 0; dh < K; ++dh) {
            const int64_t hh = h - dh + r;
            if (hh < 0 || hh >= g.H) continue;
            const int64_t row = (tt * g.H + hh) * g.W;
            const int64_t o0 = (dt * K + dh) * K;
            for (int64_t dw = 0; dw < K; ++dw) {
              const int64_t ww = x - dw + r;
              if (ww < 0 || ww >= g.W) continue;
              const acc_t gl = gL[row + ww];
              m0 += w[o0 + dw] * gl;
              m1 += w[KKK + o0 + dw] * gl;
              gw0[o0 + dw] += p0 * gl;
              gw1[o0 + dw] += p1 * gl;
            }
          }
        }
        gP0[q] = m0;
        gP1[q] = m1;
      }
      gb_part[task] = gbias;
    }
  });
  for (int64_t o = 0; o < 2 * KKK; ++o) {
    acc_t total = 0;
    for (int64_t task = 0; task < tasks; ++task) total += gw_part[task * 2 * KKK + o];
    gw[o] = total;
  }
  acc_t total = 0;
  for (int64_t task = 0; task < tasks; ++task) total += gb_part[task];
  gb[0] = total;
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
  TORCH_CHECK(g.C <= std::numeric_limits<int32_t>::max(), op, ": y has too many channels for an int32 argmax");
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
  const auto acc = acc_scalar_type(y_in.scalar_type());
  const auto n = y_in.size(0), t = y_in.size(2), h = y_in.size(3), w = y_in.size(4);
  const bool has_bias = bias.has_value() && bias->defined();
  const auto fmt = dense_format(y_in);
  const auto y = y_in.contiguous(fmt);
  const auto sc = shortcut.contiguous(fmt);
  const auto g = geometry(y);
  auto out = at::empty_like(y, y.options(), fmt);
  auto attn = at::empty({n, 1, t, h, w}, y.options().dtype(acc));
  if (y.numel() == 0) return {out, attn};
  const auto w_acc = weight.to(acc).contiguous();
  const auto a = scale.contiguous();
  const auto P = pooled.contiguous();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast3d;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "ra_attend", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t b = has_bias ? bias->to(acc).item<acc_t>() : acc_t(0);
    auto f = cl ? ra_attend_kernel<scalar_t, true> : ra_attend_kernel<scalar_t, false>;
    f(y.const_data_ptr<scalar_t>(), sc.const_data_ptr<scalar_t>(), a.const_data_ptr<acc_t>(), P.const_data_ptr<acc_t>(),
      w_acc.const_data_ptr<acc_t>(), b, weight.size(2), g, out.mutable_data_ptr<scalar_t>(),
      attn.mutable_data_ptr<acc_t>());
  });
  return {out, attn};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ra_attend_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& out_in, const at::Tensor& y_in, const at::Tensor& scale,
    const at::Tensor& attn, const at::Tensor& pooled, const at::Tensor& weight) {
  check_ra_attend_bwd_inputs(grad_out, out_in, y_in, scale, attn, pooled, weight);
  const auto acc = acc_scalar_type(y_in.scalar_type());
  const auto n = y_in.size(0), t = y_in.size(2), h = y_in.size(3), w = y_in.size(4);
  const auto fmt = dense_format(y_in);
  const auto y = y_in.contiguous(fmt);
  const auto gout = grad_out.contiguous(fmt);
  const auto out = out_in.contiguous(fmt);
  const auto g = geometry(y);
  auto gz = at::empty_like(y, y.options(), fmt);
  auto gpooled = at::empty({n, 2, t, h, w}, y.options().dtype(acc));
  auto gw = at::zeros(weight.sizes(), y.options().dtype(acc));
  auto gb = at::zeros({1}, y.options().dtype(acc));
  if (y.numel() > 0) {
    const auto w_acc = weight.to(acc).contiguous();
    const auto a = scale.contiguous(), A = attn.contiguous(), P = pooled.contiguous();
    const bool cl = fmt == at::MemoryFormat::ChannelsLast3d;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "ra_attend_bwd", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      auto f = cl ? ra_attend_bwd_kernel<scalar_t, true> : ra_attend_bwd_kernel<scalar_t, false>;
      f(gout.const_data_ptr<scalar_t>(), out.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
        a.const_data_ptr<acc_t>(), A.const_data_ptr<acc_t>(), P.const_data_ptr<acc_t>(), w_acc.const_data_ptr<acc_t>(),
        weight.size(2), g, gz.mutable_data_ptr<scalar_t>(), gpooled.mutable_data_ptr<acc_t>(),
        gw.mutable_data_ptr<acc_t>(), gb.mutable_data_ptr<acc_t>());
    });
  }
  return {gz, gpooled, gw.to(weight.scalar_type()), gb.to(weight.scalar_type())};
}

TORCH_LIBRARY_IMPL(meranet, CPU, m) {
  m.impl("ra_pool", &ra_pool_cpu);
  m.impl("ra_attend", &ra_attend_cpu);
  m.impl("ra_attend_bwd", &ra_attend_bwd_cpu);
}

}  // namespace meranet
