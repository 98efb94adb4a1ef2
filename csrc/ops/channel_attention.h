// Fused channel attention (docs/design.md §2.2, paper eq. 6-10): kernel-level operators shared with the RA tail.
//
//   a = sigmoid(We relu(Ws avg_thw y) + We relu(Ws max_thw y))   (the [N, C] network runs in torch)
//   out = y * a[n, c]
//
// The y-sized work is split into four kernels (meranet::ca_* operators, CPU in
// csrc/cpu/channel_attention_cpu.cpp):
//   ca_pool(y)                      -> (avg, max, argmax) per (n, c) over T*H*W       read y
//   ca_scale(y, scale)              -> y * scale[n, c]                              read y, write out
//   ca_scale_grad(g, y, [sta maps]) -> sum_thw gu * y per (n, c)                     read g, y
//   ca_input_grad(g, scale, g_avg, g_max, argmax, [sta maps])
//                                   -> gu * scale + g_avg / THW + g_max [thw == argmax]   read g, write gy
// where gu = g, or, for the RA tail (csrc/ops/ra_tail.h), the gradient wrt u = y * a through the
// spatio-temporal attention: gu = g * A + gP[0] / C + gP[1] [c == I].
//
// Small maps use the accumulation type ("acc"): float64 for float64 inputs, float32 otherwise.
// argmax over T*H*W is the FIRST flat index s = (t * H + h) * W + w of the maximum, int64.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/MemoryFormat.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <optional>
#include <tuple>

#include "ops/meranet_fast.h"

namespace meranet {

// The dense layout the CPU kernels run in: channels_last_3d when the tensor is in it (and not
// also plainly contiguous), NCTHW otherwise (other strided inputs are copied once into NCTHW).
c10::MemoryFormat dense_format(const at::Tensor& x);

// Checks shared by the CA and RA-tail kernels; `op` and `name` appear in every message.
void check_activation(const char* op, const char* name, const at::Tensor& x);
void check_same_activation(const char* op, const char* name, const at::Tensor& t, const at::Tensor& y);
void check_small(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef shape,
                 at::ScalarType dtype, const at::Tensor& y);
// The optional spatio-temporal-attention maps of ca_scale_grad / ca_input_grad: all three or none,
// validated against y; when given, A, gP and I receive contiguous versions and the result is true.
bool sta_maps(const char* op, const at::Tensor& y, const std::optional<at::Tensor>& attn,
              const std::optional<at::Tensor>& grad_pooled, const std::optional<at::Tensor>& sta_argmax,
              at::Tensor& A, at::Tensor& gP, at::Tensor& I);

// (avg, max, argmax)
std::tuple<at::Tensor, at::Tensor, at::Tensor> ca_pool_cpu(const at::Tensor& y);
at::Tensor ca_scale_cpu(const at::Tensor& y, const at::Tensor& scale);
// grad_pooled: [N, 2, T, H, W] acc; attn [N, 1, T, H, W] acc; argmax [N, T, H, W] int32 (all or none).
at::Tensor ca_scale_grad_cpu(const at::Tensor& grad, const at::Tensor& y, const std::optional<at::Tensor>& attn,
                             const std::optional<at::Tensor>& grad_pooled,
                             const std::optional<at::Tensor>& sta_argmax);
at::Tensor ca_input_grad_cpu(const at::Tensor& grad, const at::Tensor& scale, const at::Tensor& grad_avg,
                             const at::Tensor& grad_max, const at::Tensor& argmax,
                             const std::optional<at::Tensor>& attn, const std::optional<at::Tensor>& grad_pooled,
                             const std::optional<at::Tensor>& sta_argmax);

namespace cpu_detail {

// Positions per CPU task: a task is (sample n, chunk of kChunk positions).
constexpr int64_t kChunk = 1024;

inline int64_t num_chunks(int64_t S) { return std::max<int64_t>(1, (S + kChunk - 1) / kChunk); }

// out[n, c] = sum over chunks k (in order) of part[(n * chunks + k) * C + c]: deterministic.
template <typename acc_t>
void sum_partials(const acc_t* part, int64_t N, int64_t chunks, int64_t C, acc_t* out) {
  at::parallel_for(0, N * C, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / C, c = i % C;
      acc_t total = 0;
      for (int64_t k = 0; k < chunks; ++k) total += part[(n * chunks + k) * C + c];
      out[i] = total;
    }
  });
}

}  // namespace cpu_detail

}  // namespace meranet
