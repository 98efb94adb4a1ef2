// CUDA kernels of the channel-attention operators (csrc/ops/channel_attention.h), registered for the CUDA
// dispatch key of meranet::ca_pool / ca_scale / ca_scale_grad / ca_input_grad. Values, dtypes, layouts
// and tie rules follow the CPU kernels (csrc/cpu/channel_attention_cpu.cpp), which are the ground truth.
//
// Activations are made dense in meranet::dense_format (NCTHW, or channels_last_3d when y is in it) and
// viewed as [N, C, S], S = T*H*W (csrc/cuda/common.cuh). Accumulation type acc_t = at::opmath_type:
// float for float16/bfloat16/float32, double for float64.
//
// Reductions over positions (ca_pool, ca_scale_grad) run in two passes, both deterministic:
//   pass 1  reduce_positions_kernel: block (row, chunk) reduces kChunkLen positions of its channels
//           with a fixed shared-memory tree and writes one partial (sum[, max, argmax]) per channel to
//           part[(n*chunks + chunk)*C + c];
//             NCTHW: one (n, c) per block, 256 threads over consecutive positions (coalesced);
//             CL:    32 consecutive channels per block (threadIdx.x, coalesced), 8 position slices
//                    (threadIdx.y) reduced over y.
//   pass 2  combine_chunks_kernel: one thread per (n, c) adds the chunk partials in chunk order.
//   No float atomics anywhere: results do not vary from run to run.
// Elementwise ops (ca_scale, ca_input_grad): grid-stride loop over flat offsets of the dense tensor.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <optional>
#include <tuple>

#include "cuda/common.cuh"
#include "ops/channel_attention.h"

namespace meranet {
namespace {

using namespace cuda_common;

constexpr int64_t kChunkLen = 4096;  // positions per pass-1 block
constexpr int kPmThreads = 256;      // NCTHW pass 1: threads per block, all on one (n, c)
constexpr int kClLanes = 32;         // CL pass 1: channels per block (threadIdx.x)
constexpr int kClRows = 8;           // CL pass 1: position slices per block (threadIdx.y)
static_assert(kPmThreads == kClLanes * kClRows, "pass-1 blocks use one shared-memory size");

int64_t num_chunks(int64_t S) { return std::max<int64_t>(1, ceil_div(S, kChunkLen)); }

// What pass 1 reduces per (n, c) over s:
//   kPool:   y                       -> sum, max, first argmax
//   kDot:    g * y                   -> sum
//   kDotSta: gu * y, gu = g*A[s] + gP0[s]/C + gP1[s]*[c == I[s]]  (gradient through the STA) -> sum
enum ReduceMode { kPool = 0, kDot = 1, kDotSta = 2 };

// STA maps of the RA tail (csrc/ops/ra_tail.h): attn [N, S], grad_pooled [N, 2, S], argmax [N, S] int32.
template <typename acc_t>
struct StaMaps {
  const acc_t* attn = nullptr;
  const acc_t* gpooled = nullptr;
  const int32_t* argmax = nullptr;
};

// gu for element (n, c, s) given g there; same arithmetic order as the CPU kernel.
template <typename acc_t>
__device__ __forceinline__ acc_t sta_grad(acc_t g, const StaMaps<acc_t>& m, int64_t n, int64_t c, int64_t s,
                                          int64_t S, acc_t inv_c) {
  const int64_t ns = n * S + s;
  acc_t gu = g * m.attn[ns] + m.gpooled[(2 * n) * S + s] * inv_c;  // gP0 at (n*2 + 0)*S + s
  if (m.argmax[ns] == c) gu += m.gpooled[(2 * n + 1) * S + s];      // gP1 at (n*2 + 1)*S + s
  return gu;
}

// ---------------------------------------------------------------------------------------------
// Pass 1. Grid (rows, chunks): chunk k = blockIdx.y covers positions [k*kChunkLen, min(S, ..+kChunkLen)).
//   NCTHW: row = blockIdx.x = n*C + c; thread tid scans s = s0 + tid, s0 + tid + 256, ...
//          Group of threads sharing a channel: all 256 (member = tid, member stride 1).
//   CL:    row = blockIdx.x = n*ctiles + ct; c = ct*32 + threadIdx.x; thread scans
//          s = s0 + threadIdx.y, + 8, ...  Group sharing a channel: the 8 rows y (member = y, stride 32).
// Every thread scans its positions in increasing order (max_update keeps the first index), then the
// group is merged by a fixed tree over members in shared memory.
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t, bool CL, int MODE>
__global__ void __launch_bounds__(kPmThreads)
reduce_positions_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, StaMaps<acc_t> sta,
                        int64_t C, int64_t S, int64_t chunks, acc_t* __restrict__ psum, acc_t* __restrict__ pmax,
                        int64_t* __restrict__ pidx) {
  constexpr bool kMax = MODE == kPool;
  __shared__ acc_t sh_sum[kPmThreads];
  __shared__ acc_t sh_max[kMax ? kPmThreads : 1];
  __shared__ int64_t sh_idx[kMax ? kPmThreads : 1];

  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  const int64_t s0 = chunk * kChunkLen;
  const int64_t s1 = std::min<int64_t>(S, s0 + kChunkLen);
  const acc_t inv_c = acc_t(1) / static_cast<acc_t>(C);

  int64_t n, c, first, step;
  int member, member_stride, members;
  if (CL) {
    const int64_t ctiles = ceil_div(C, kClLanes);
    n = blockIdx.x / ctiles;
    c = (blockIdx.x - n * ctiles) * kClLanes + threadIdx.x;
    first = s0 + threadIdx.y;
    step = kClRows;
    member = threadIdx.y;
    member_stride = kClLanes;
    members = kClRows;
  } else {
    n = blockIdx.x / C;
    c = blockIdx.x - n * C;
    first = s0 + tid;
    step = kPmThreads;
    member = tid;
    member_stride = 1;
    members = kPmThreads;
  }
  const bool active = c < C;  // CL: the last channel tile may be partial

  acc_t sum = 0, best = neg_inf<acc_t>();
  int64_t best_i = kNoIndex;
  if (active) {
    for (int64_t s = first; s < s1; s += step) {
      const int64_t off = elem_offset<CL>(n, c, s, C, S);
      const acc_t av = static_cast<acc_t>(a[off]);
      if constexpr (MODE == kPool) {
        sum += av;
        max_update(best, best_i, av, s);
      } else if constexpr (MODE == kDot) {
        sum += av * static_cast<acc_t>(b[off]);
      } else {
        sum += sta_grad(av, sta, n, c, s, S, inv_c) * static_cast<acc_t>(b[off]);
      }
    }
  }
  sh_sum[tid] = sum;
  if constexpr (kMax) {
    sh_max[tid] = best;
    sh_idx[tid] = best_i;
  }
  __syncthreads();
  // Fixed tree over the members of each group: member m takes member m + half (members is a power of 2).
  for (int half = members / 2; half > 0; half /= 2) {
    if (member < half) {
      const int other = tid + half * member_stride;
      sh_sum[tid] += sh_sum[other];
      if constexpr (kMax) {
        if (max_takes_over(sh_max[other], sh_idx[other], sh_max[tid], sh_idx[tid])) {
          sh_max[tid] = sh_max[other];
          sh_idx[tid] = sh_idx[other];
        }
      }
    }
    __syncthreads();
  }
  if (member == 0 && active) {
    const int64_t p = (n * chunks + chunk) * C + c;
    psum[p] = sh_sum[tid];
    if constexpr (kMax) {
      pmax[p] = sh_max[tid];
      pidx[p] = sh_idx[tid];
    }
  }
}

// Pass 2: out_sum[i] = (sum over chunks k in order of psum[(n*chunks + k)*C + c]) / divisor, and the
// merged max / first argmax (the first NaN wins; index 0 when no value was taken: all -inf, as on CPU).
template <typename acc_t, bool WITH_MAX>
__global__ void combine_chunks_kernel(const acc_t* __restrict__ psum, const acc_t* __restrict__ pmax,
                                      const int64_t* __restrict__ pidx, int64_t N, int64_t C, int64_t chunks,
                                      acc_t divisor, acc_t* __restrict__ out_sum, acc_t* __restrict__ out_max,
                                      int64_t* __restrict__ out_idx) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < N * C;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = i / C, c = i - n * C;
    acc_t total = 0, best = neg_inf<acc_t>();
    int64_t best_i = kNoIndex;
    for (int64_t k = 0; k < chunks; ++k) {
      const int64_t p = (n * chunks + k) * C + c;
      total += psum[p];
      if constexpr (WITH_MAX) {
        if (max_takes_over(pmax[p], pidx[p], best, best_i)) {
          best = pmax[p];
          best_i = pidx[p];
        }
      }
    }
    out_sum[i] = total / divisor;
    if constexpr (WITH_MAX) {
      out_max[i] = best;
      out_idx[i] = index_or_zero(best_i);
    }
  }
}

// Runs both passes. out_max / out_idx only for kPool; divisor S for the mean, 1 for the dot products.
template <typename scalar_t, int MODE>
void reduce_positions(const at::Tensor& a, const at::Tensor& b, StaMaps<at::opmath_type<scalar_t>> sta, bool cl,
                      int64_t N, int64_t C, int64_t S, at::Tensor& out_sum, at::Tensor* out_max,
                      at::Tensor* out_idx, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kMax = MODE == kPool;
  const int64_t chunks = num_chunks(S);
  const int64_t rows = cl ? N * ceil_div(C, kClLanes) : N * C;
  TORCH_CHECK(rows <= INT_MAX && chunks <= 65535, "channel attention (CUDA): tensor too large (", rows,
              " rows x ", chunks, " chunks of ", kChunkLen, " positions): the grid allows at most 2^31 - 1 rows "
              "and 65535 chunks, i.e. T*H*W <= ", 65535 * kChunkLen, " positions per sample");
  const auto opts = a.options().dtype(out_sum.scalar_type()).memory_format(at::MemoryFormat::Contiguous);
  at::Tensor psum = at::empty({N * chunks * C}, opts);
  at::Tensor pmax = kMax ? at::empty({N * chunks * C}, opts) : at::Tensor();
  at::Tensor pidx = kMax ? at::empty({N * chunks * C}, opts.dtype(at::kLong)) : at::Tensor();
  acc_t* pmax_p = kMax ? pmax.data_ptr<acc_t>() : nullptr;
  int64_t* pidx_p = kMax ? pidx.data_ptr<int64_t>() : nullptr;
  const scalar_t* b_p = b.defined() ? b.data_ptr<scalar_t>() : nullptr;

  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(chunks));
  if (cl) {
    reduce_positions_kernel<scalar_t, acc_t, true, MODE><<<grid, dim3(kClLanes, kClRows), 0, stream>>>(
        a.data_ptr<scalar_t>(), b_p, sta, C, S, chunks, psum.data_ptr<acc_t>(), pmax_p, pidx_p);
  } else {
    reduce_positions_kernel<scalar_t, acc_t, false, MODE><<<grid, kPmThreads, 0, stream>>>(
        a.data_ptr<scalar_t>(), b_p, sta, C, S, chunks, psum.data_ptr<acc_t>(), pmax_p, pidx_p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  combine_chunks_kernel<acc_t, kMax><<<grid_stride_blocks(N * C, kElemThreads), kElemThreads, 0, stream>>>(
      psum.data_ptr<acc_t>(), pmax_p, pidx_p, N, C, chunks, kMax ? static_cast<acc_t>(S) : acc_t(1),
      out_sum.data_ptr<acc_t>(), kMax ? out_max->data_ptr<acc_t>() : nullptr,
      kMax ? out_idx->data_ptr<int64_t>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------
// ca_scale: out[i] = y[i] * scale[n, c], i a flat offset of the dense tensor.
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t, bool CL>
__global__ void scale_kernel(const scalar_t* __restrict__ y, const acc_t* __restrict__ scale,
                             scalar_t* __restrict__ out, int64_t numel, int64_t C, int64_t S) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c, s;
    elem_coords<CL>(i, C, S, n, c, s);
    out[i] = static_cast<scalar_t>(static_cast<acc_t>(y[i]) * scale[n * C + c]);
  }
}

// ---------------------------------------------------------------------------------------------
// ca_input_grad: gy[i] = gu * scale[n, c] + g_avg[n, c] / S (+ g_max[n, c] when s == argmax[n, c]),
// gu = g, or the STA gradient (STA = true).
// ---------------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t, bool CL, bool STA>
__global__ void input_grad_kernel(const scalar_t* __restrict__ g, const acc_t* __restrict__ scale,
                                  const acc_t* __restrict__ gavg, const acc_t* __restrict__ gmax,
                                  const int64_t* __restrict__ am, StaMaps<acc_t> sta, int64_t numel, int64_t C,
                                  int64_t S, acc_t inv_c, acc_t inv_s, scalar_t* __restrict__ gy) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c, s;
    elem_coords<CL>(i, C, S, n, c, s);
    const int64_t nc = n * C + c;
    acc_t gu = static_cast<acc_t>(g[i]);
    if constexpr (STA) gu = sta_grad(gu, sta, n, c, s, S, inv_c);
    acc_t v = gu * scale[nc] + gavg[nc] * inv_s;
    if (am[nc] == s) v += gmax[nc];
    gy[i] = static_cast<scalar_t>(v);
  }
}

template <typename acc_t>
StaMaps<acc_t> maps_of(bool sta, const at::Tensor& A, const at::Tensor& gP, const at::Tensor& I) {
  StaMaps<acc_t> m;
  if (sta) {
    m.attn = A.data_ptr<acc_t>();
    m.gpooled = gP.data_ptr<acc_t>();
    m.argmax = I.data_ptr<int32_t>();
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// Operators
// ---------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor, at::Tensor> ca_pool_cuda(const at::Tensor& y_in) {
  check_activation("ca_pool", "y", y_in);
  check_on_cuda("ca_pool", "y", y_in);
  const c10::cuda::CUDAGuard guard(y_in.device());
  const auto fmt = dense_format(y_in);
  const auto y = y_in.contiguous(fmt);
  const int64_t N = y.size(0), C = y.size(1), S = y.size(2) * y.size(3) * y.size(4);
  const auto acc = acc_scalar_type(y.scalar_type());
  auto avg = at::empty({N, C}, y.options().dtype(acc).memory_format(at::MemoryFormat::Contiguous));
  auto mx = at::empty({N, C}, avg.options());
  auto idx = at::empty({N, C}, avg.options().dtype(at::kLong));
  if (y.numel() == 0) return {avg, mx, idx};
  const bool cl = fmt == at::MemoryFormat::ChannelsLast3d;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "ca_pool_cuda", [&] {
    reduce_positions<scalar_t, kPool>(y, at::Tensor(), {}, cl, N, C, S, avg, &mx, &idx, stream);
  });
  return {avg, mx, idx};
}

at::Tensor ca_scale_cuda(const at::Tensor& y_in, const at::Tensor& scale) {
  check_activation("ca_scale", "y", y_in);
  check_on_cuda("ca_scale", "y", y_in);
  check_small("ca_scale", "scale", scale, {y_in.size(0), y_in.size(1)}, acc_scalar_type(y_in.scalar_type()), y_in);
  const c10::cuda::CUDAGuard guard(y_in.device());
  const auto fmt = dense_format(y_in);
  const auto y = y_in.contiguous(fmt);
  const auto a = scale.contiguous();
  auto out = at::empty_like(y, y.options(), fmt);
  if (out.numel() == 0) return out;
  const int64_t C = y.size(1), S = y.size(2) * y.size(3) * y.size(4), numel = y.numel();
  const bool cl = fmt == at::MemoryFormat::ChannelsLast3d;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const unsigned blocks = grid_stride_blocks(numel, kElemThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "ca_scale_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto kernel = cl ? scale_kernel<scalar_t, acc_t, true> : scale_kernel<scalar_t, acc_t, false>;
    kernel<<<blocks, kElemThreads, 0, stream>>>(y.data_ptr<scalar_t>(), a.data_ptr<acc_t>(),
                                                 out.data_ptr<scalar_t>(), numel, C, S);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor ca_scale_grad_cuda(const at::Tensor& grad, const at::Tensor& y_in, const std::optional<at::Tensor>& attn,
                              const std::optional<at::Tensor>& grad_pooled,
                              const std::optional<at::Tensor>& sta_argmax) {
  const char* op = "ca_scale_grad";
  check_activation(op, "y", y_in);
  check_on_cuda(op, "y", y_in);
  check_same_activation(op, "grad", grad, y_in);
  const c10::cuda::CUDAGuard guard(y_in.device());
  const auto fmt = dense_format(y_in);
  const auto y = y_in.contiguous(fmt);
  const auto g = grad.contiguous(fmt);
  at::Tensor A, gP, I;
  const bool sta = sta_maps(op, y, attn, grad_pooled, sta_argmax, A, gP, I);
  const int64_t N = y.size(0), C = y.size(1), S = y.size(2) * y.size(3) * y.size(4);
  auto ga = at::empty({N, C}, y.options().dtype(acc_scalar_type(y.scalar_type()))
                                  .memory_format(at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return ga;
  const bool cl = fmt == at::MemoryFormat::ChannelsLast3d;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, y.scalar_type(), "ca_scale_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (sta) {
      reduce_positions<scalar_t, kDotSta>(g, y, maps_of<acc_t>(true, A, gP, I), cl, N, C, S, ga, nullptr, nullptr,
                                          stream);
    } else {
      reduce_positions<scalar_t, kDot>(g, y, {}, cl, N, C, S, ga, nullptr, nullptr, stream);
    }
  });
  return ga;
}

at::Tensor ca_input_grad_cuda(const at::Tensor& grad_in, const at::Tensor& scale, const at::Tensor& grad_avg,
                              const at::Tensor& grad_max, const at::Tensor& argmax,
                              const std::optional<at::Tensor>& attn, const std::optional<at::Tensor>& grad_pooled,
                              const std::optional<at::Tensor>& sta_argmax) {
  const char* op = "ca_input_grad";
  check_activation(op, "grad", grad_in);
  check_on_cuda(op, "grad", grad_in);
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto fmt = dense_format(grad_in);
  const auto g = grad_in.contiguous(fmt);
  const auto acc = acc_scalar_type(g.scalar_type());
  const int64_t N = g.size(0), C = g.size(1), S = g.size(2) * g.size(3) * g.size(4);
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
  const int64_t numel = g.numel();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const unsigned blocks = grid_stride_blocks(numel, kElemThreads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, g.scalar_type(), "ca_input_grad_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto kernel = cl ? (sta ? input_grad_kernel<scalar_t, acc_t, true, true> : input_grad_kernel<scalar_t, acc_t, true, false>)
                     : (sta ? input_grad_kernel<scalar_t, acc_t, false, true>
                            : input_grad_kernel<scalar_t, acc_t, false, false>);
    kernel<<<blocks, kElemThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), a.data_ptr<acc_t>(), gavg.data_ptr<acc_t>(), gmax.data_ptr<acc_t>(),
        am.data_ptr<int64_t>(), maps_of<acc_t>(sta, A, gP, I), numel, C, S, acc_t(1) / static_cast<acc_t>(C),
        acc_t(1) / static_cast<acc_t>(S), gy.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gy;
}

}  // namespace
}  // namespace meranet

TORCH_LIBRARY_IMPL(meranet, CUDA, m) {
  m.impl("ca_pool", &meranet::ca_pool_cuda);
  m.impl("ca_scale", &meranet::ca_scale_cuda);
  m.impl("ca_scale_grad", &meranet::ca_scale_grad_cuda);
  m.impl("ca_input_grad", &meranet::ca_input_grad_cuda);
}
