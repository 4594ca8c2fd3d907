/*! \file gemm.cpp \brief CPU reference 8-bit GEMM: exact int32 accumulation for int8, float64 for float8; optional
 * Hadamard over blocks of rows of the product (QGemmArgs::row_hadamard) before the scales. */
#include <ATen/Parallel.h>

#include <vector>

#include "cpu/cpu_ops.h"
#include "cpu/dtype_utils.h"

namespace halo::cpu {

void qgemm(const QGemmArgs& g) {
  const bool int8 = g.a_dtype == DType::kInt8;
  // Decode B once (rows of K values) so the inner loop is a plain dot product the compiler vectorizes.
  std::vector<int32_t> bi;
  std::vector<double> bf;
  if (int8) {
    bi.resize(g.N * g.K);
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t k = 0; k < g.K; ++k) bi[n * g.K + k] = static_cast<const int8_t*>(g.b)[n * g.ldb + k];
  } else {
    bf.resize(g.N * g.K);
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t k = 0; k < g.K; ++k) bf[n * g.K + k] = load_float(g.b, g.b_dtype, n * g.ldb + k);
  }
  // Rows in blocks of rb (row_hadamard, else 1): the block's products in float64 (exact: int8 sums are integers
  // below 2^53, float8 products have <= 8 significant bits), the row butterflies of H_rb, then the scales.
  const int64_t rb = g.row_hadamard > 1 ? g.row_hadamard : 1;
  at::parallel_for(0, g.M / rb, 1, [&](int64_t blk_b, int64_t blk_e) {
    std::vector<int32_t> ai(int8 ? g.K : 0);
    std::vector<double> af(int8 ? 0 : g.K);
    std::vector<double> acc(rb * g.N);
    for (int64_t blk = blk_b; blk < blk_e; ++blk) {
      for (int64_t r = 0; r < rb; ++r) {
        const int64_t m = blk * rb + r;
        if (int8)
          for (int64_t k = 0; k < g.K; ++k) ai[k] = static_cast<const int8_t*>(g.a)[m * g.lda + k];
        else
          for (int64_t k = 0; k < g.K; ++k) af[k] = load_float(g.a, g.a_dtype, m * g.lda + k);
        for (int64_t n = 0; n < g.N; ++n) {
          if (int8) {
            int32_t s = 0;  // |sum| <= K * 127^2 < 2^31 for K < 133144
            const int32_t* b = bi.data() + n * g.K;
            for (int64_t k = 0; k < g.K; ++k) s += ai[k] * b[k];
            acc[r * g.N + n] = s;
          } else {
            double s = 0;
            const double* b = bf.data() + n * g.K;
            for (int64_t k = 0; k < g.K; ++k) s += af[k] * b[k];
            acc[r * g.N + n] = s;
          }
        }
      }
      for (int64_t h = 1; h < rb; h <<= 1)  // (H_rb acc): butterflies over the row index bits
        for (int64_t r = 0; r < rb; ++r)
          if ((r & h) == 0)
            for (int64_t n = 0; n < g.N; ++n) {
              const double x = acc[r * g.N + n], y = acc[(r + h) * g.N + n];
              acc[r * g.N + n] = x + y;
              acc[(r + h) * g.N + n] = x - y;
            }
      for (int64_t r = 0; r < rb; ++r) {
        const int64_t m = blk * rb + r;
        const float sa = g.scale_a[g.scale_a_per_row ? m : 0];
        for (int64_t n = 0; n < g.N; ++n) {
          const float sb = g.scale_b[g.scale_b_per_row ? n : 0];
          double v = acc[r * g.N + n] * static_cast<double>(sa) * static_cast<double>(sb);
          if (g.bias) v += load_float(g.bias, g.out_dtype, n);
          store_float(g.d, g.out_dtype, m * g.ldd + n, static_cast<float>(v));
        }
      }
    }
  });
}

}  // namespace halo::cpu
