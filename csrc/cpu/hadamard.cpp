/*! \file hadamard.cpp \brief CPU Hadamard transform, quantization and fused Hadamard+quantize (float64 math). */
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/cpu_ops.h"
#include "cpu/dtype_utils.h"

namespace halo::cpu {
namespace {

/*! \brief In-place unnormalized Walsh-Hadamard transform (Sylvester order) of v[0..len), len a power of two. */
void fwht(double* v, int64_t len) {
  for (int64_t h = 1; h < len; h *= 2) {
    for (int64_t i = 0; i < len; i += 2 * h) {
      for (int64_t j = i; j < i + h; ++j) {
        const double a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
    }
  }
}

/*!
 * \brief Transforms one group of n elements starting at column c0 of a row: g (input values, signs applied before
 * the call when signs_after is false) becomes scale * L * G * S (viewed as [m, 2^p]); tmp holds m * 2^p doubles.
 */
void transform_group(const HadamardArgs& a, double* g, double* tmp) {
  const int m = a.dense_m;
  const int64_t pw = a.n / m;
  for (int r = 0; r < m; ++r) fwht(g + r * pw, pw);
  if (m > 1) {
    for (int i = 0; i < m; ++i) {
      double* out = tmp + i * pw;
      std::fill(out, out + pw, 0.0);
      for (int j = 0; j < m; ++j) {
        const double s = a.dense_left[i * m + j];
        const double* in = g + j * pw;
        for (int64_t k = 0; k < pw; ++k) out[k] += s * in[k];
      }
    }
    std::copy(tmp, tmp + a.n, g);
  }
  for (int64_t k = 0; k < a.n; ++k) g[k] *= a.scale;
}

/*!
 * \brief Calls fn(row, values) for each row with the transformed row in float64 (signs applied), in parallel.
 * fn must only write row-local outputs.
 */
template <typename Fn>
void for_each_transformed_row(const HadamardArgs& a, Fn&& fn) {
  at::parallel_for(0, a.rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> row(a.cols), tmp(a.n);
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t c = 0; c < a.cols; ++c) {
        double v = load_float(a.x, a.dtype, r * a.x_row_stride + c);
        if (a.signs && !a.signs_after) v *= a.signs[c];
        row[c] = v;
      }
      for (int64_t c0 = 0; c0 < a.cols; c0 += a.n) transform_group(a, row.data() + c0, tmp.data());
      if (a.signs && a.signs_after)
        for (int64_t c = 0; c < a.cols; ++c) row[c] *= a.signs[c];
      fn(r, row.data());
    }
  });
}

int64_t groups_per_row(const QuantizeArgs& a) {
  switch (a.granularity) {
    case Granularity::kTensor: return 1;
    case Granularity::kRow: return 1;
    case Granularity::kBlock: return a.cols / a.block;
  }
  return 1;
}

}  // namespace

void hadamard_transform(const HadamardArgs& a, void* out, int64_t out_row_stride) {
  for_each_transformed_row(a, [&](int64_t r, const double* v) {
    for (int64_t c = 0; c < a.cols; ++c) store_float(out, a.dtype, r * out_row_stride + c, static_cast<float>(v[c]));
  });
}

void quantize(const QuantizeArgs& a) {
  const int64_t gpr = groups_per_row(a);
  const int64_t glen = a.cols / gpr;
  float tensor_amax = 0.f;
  if (a.granularity == Granularity::kTensor) {
    tensor_amax = at::parallel_reduce(
        0, a.rows, 1, 0.f,
        [&](int64_t b, int64_t e, float acc) {
          for (int64_t r = b; r < e; ++r)
            for (int64_t c = 0; c < a.cols; ++c)
              acc = std::max(acc, std::fabs(load_float(a.x, a.dtype, r * a.x_row_stride + c)));
          return acc;
        },
        [](float x, float y) { return std::max(x, y); });
    a.scale[0] = QuantScale(tensor_amax, a.qdtype).scale;
  }
  at::parallel_for(0, a.rows, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      for (int64_t g = 0; g < gpr; ++g) {
        const int64_t c0 = g * glen;
        float amax = tensor_amax;
        if (a.granularity != Granularity::kTensor) {
          amax = 0.f;
          for (int64_t c = c0; c < c0 + glen; ++c)
            amax = std::max(amax, std::fabs(load_float(a.x, a.dtype, r * a.x_row_stride + c)));
          a.scale[r * gpr + g] = QuantScale(amax, a.qdtype).scale;
        }
        const QuantScale qs(amax, a.qdtype);
        for (int64_t c = c0; c < c0 + glen; ++c)
          store_quant(a.q, a.qdtype, r * a.cols + c, load_float(a.x, a.dtype, r * a.x_row_stride + c), qs.inv);
      }
    }
  });
}

void dequantize(const QuantizeArgs& a, void* out) {
  const int64_t gpr = groups_per_row(a);
  const int64_t glen = a.cols / gpr;
  at::parallel_for(0, a.rows, 1, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      for (int64_t c = 0; c < a.cols; ++c) {
        const float s = a.granularity == Granularity::kTensor ? a.scale[0] : a.scale[r * gpr + c / glen];
        store_float(out, a.dtype, r * a.cols + c, load_float(a.q, a.qdtype, r * a.cols + c) * s);
      }
  });
}

void hadamard_quantize(const HadamardQuantArgs& a) {
  const HadamardArgs& h = a.had;
  float amax = 0.f;
  if (a.amax_in) {
    amax = a.amax_in[0];
  } else {
    std::vector<float> row_amax(h.rows, 0.f);
    for_each_transformed_row(h, [&](int64_t r, const double* v) {
      float m = 0.f;
      for (int64_t c = 0; c < h.cols; ++c) m = std::max(m, std::fabs(static_cast<float>(v[c])));
      row_amax[r] = m;
    });
    for (float m : row_amax) amax = std::max(amax, m);
  }
  const QuantScale qs(amax, a.qdtype);
  a.scale[0] = qs.scale;
  for_each_transformed_row(h, [&](int64_t r, const double* v) {
    for (int64_t c = 0; c < h.cols; ++c) {
      const float f = static_cast<float>(v[c]);
      if (a.q) store_quant(a.q, a.qdtype, r * h.cols + c, f, qs.inv);
      if (a.qt) store_quant(a.qt, a.qdtype, c * h.rows + r, f, qs.inv);
    }
  });
}

}  // namespace halo::cpu
