/*! \file gemm.cpp \brief CPU reference 8-bit GEMM: exact int32 accumulation for int8, float64 for float8. */
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
  at::parallel_for(0, g.M, 1, [&](int64_t mb, int64_t me) {
    std::vector<int32_t> ai(int8 ? g.K : 0);
    std::vector<double> af(int8 ? 0 : g.K);
    for (int64_t m = mb; m < me; ++m) {
      if (int8)
        for (int64_t k = 0; k < g.K; ++k) ai[k] = static_cast<const int8_t*>(g.a)[m * g.lda + k];
      else
        for (int64_t k = 0; k < g.K; ++k) af[k] = load_float(g.a, g.a_dtype, m * g.lda + k);
      const float sa = g.scale_a[g.scale_a_per_row ? m : 0];
      for (int64_t n = 0; n < g.N; ++n) {
        double acc;
        if (int8) {
          int32_t s = 0;  // |sum| <= K * 127^2 < 2^31 for K < 133144
          const int32_t* b = bi.data() + n * g.K;
          for (int64_t k = 0; k < g.K; ++k) s += ai[k] * b[k];
          acc = s;
        } else {
          double s = 0;
          const double* b = bf.data() + n * g.K;
          for (int64_t k = 0; k < g.K; ++k) s += af[k] * b[k];
          acc = s;
        }
        const float sb = g.scale_b[g.scale_b_per_row ? n : 0];
        double v = acc * static_cast<double>(sa) * static_cast<double>(sb);
        if (g.bias) v += load_float(g.bias, g.out_dtype, n);
        store_float(g.d, g.out_dtype, m * g.ldd + n, static_cast<float>(v));
      }
    }
  });
}

}  // namespace halo::cpu
