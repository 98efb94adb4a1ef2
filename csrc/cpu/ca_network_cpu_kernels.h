// The channel-attention network on the pooled rows, as plain loops (compiled per ISA by isa_variants.h).
// v = [avg; max] ([2N, C] rows), h = Ws v + bs ([2N, R]), z = relu(h), e = We z + be ([2N, C]),
// a = sigmoid(e[:N] + e[N:]). Every inner loop runs over a contiguous row (a dot product or an axpy) so it
// vectorises; the sizes are tiny (csrc/cpu/ca_network_cpu.cpp sends larger ones to ATen's GEMM).
// No include guard: isa_variants.h includes it once per instruction set.

// h[r, j] = bs[j] + sum_c v[r, c] Ws[j, c] and z = relu(h) (a NaN stays NaN, like torch.relu).
template <typename acc_t>
void network_hidden(const acc_t* v, const acc_t* w_reduce, const acc_t* b_reduce, int64_t rows, int64_t C,
                    int64_t R, acc_t* h, acc_t* z) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < R; ++j) {
      acc_t s = 0;
      const acc_t* vr = v + r * C;
      const acc_t* wj = w_reduce + j * C;
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < C; ++c) s += vr[c] * wj[c];
      const acc_t x = s + (b_reduce ? b_reduce[j] : acc_t(0));
      h[r * R + j] = x;
      z[r * R + j] = x < 0 ? acc_t(0) : x;
    }
  }
}

// a[n, c] = sigmoid(e[n, c] + e[N + n, c]), e[r, c] = be[c] + sum_j z[r, j] We[c, j].
template <typename acc_t>
void network_output(const acc_t* z, const acc_t* w_expand, const acc_t* b_expand, int64_t N, int64_t C, int64_t R,
                    acc_t* a) {
  for (int64_t n = 0; n < N; ++n) {
    const acc_t* z_avg = z + n * R;
    const acc_t* z_max = z + (N + n) * R;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t* wc = w_expand + c * R;
      acc_t s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < R; ++j) s += (z_avg[j] + z_max[j]) * wc[j];
      const acc_t e = s + (b_expand ? 2 * b_expand[c] : acc_t(0));  // both rows add be
      a[n * C + c] = acc_t(1) / (acc_t(1) + std::exp(-e));
    }
  }
}

// Gradients given gs = dL/da * a * (1 - a) ([N, C]) and the forward's h, z: g_we [C, R], g_be [C], g_ws [R, C],
// g_bs [R], gv [2N, C] (rows: avg then max). Both rows r = n and r = N + n receive gs[n]. Outputs are
// overwritten; q is [N, R] scratch.
template <typename acc_t>
void network_backward(const acc_t* gs, const acc_t* v, const acc_t* h, const acc_t* z, const acc_t* w_reduce,
                      const acc_t* w_expand, int64_t N, int64_t C, int64_t R, acc_t* g_we, acc_t* g_be,
                      acc_t* g_wr, acc_t* g_br, acc_t* gv, acc_t* q) {
  std::fill(g_we, g_we + C * R, acc_t(0));
  std::fill(q, q + N * R, acc_t(0));
  for (int64_t c = 0; c < C; ++c) g_be[c] = 0;
  for (int64_t n = 0; n < N; ++n) {
    const acc_t* z_avg = z + n * R;
    const acc_t* z_max = z + (N + n) * R;
    acc_t* qn = q + n * R;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t g = gs[n * C + c];
      acc_t* gw = g_we + c * R;
      const acc_t* wc = w_expand + c * R;
#pragma omp simd
      for (int64_t j = 0; j < R; ++j) {
        gw[j] += g * (z_avg[j] + z_max[j]);  // d/dWe of both rows
        qn[j] += g * wc[j];                  // dL/dz, the same for both rows
      }
      g_be[c] += 2 * g;
    }
  }
  std::fill(g_wr, g_wr + R * C, acc_t(0));
  std::fill(gv, gv + 2 * N * C, acc_t(0));
  for (int64_t j = 0; j < R; ++j) g_br[j] = 0;
  for (int64_t r = 0; r < 2 * N; ++r) {
    const acc_t* vr = v + r * C;
    acc_t* gvr = gv + r * C;
    for (int64_t j = 0; j < R; ++j) {
      const acc_t gh = h[r * R + j] > 0 ? q[(r % N) * R + j] : acc_t(0);  // relu'(h), 0 at h == 0 like torch
      g_br[j] += gh;
      acc_t* gw = g_wr + j * C;
      const acc_t* wj = w_reduce + j * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        gw[c] += gh * vr[c];
        gvr[c] += gh * wj[c];
      }
    }
  }
}
