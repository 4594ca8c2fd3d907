/*! \file ey_quantize.cpp \brief CPU reference of ey_quantize (kernels/ey_quantize.h), bit-identical to the kernel. */
#include <cmath>
#include <vector>

#include "cpu/cpu_ops.h"
#include "cpu/dtype_utils.h"

namespace halo::cpu {

void ey_quantize(const EyQuantArgs& a) {
  if (a.rows == 0 || a.cols == 0) return;
  const int b = a.block;
  const float rs = static_cast<float>(1.0 / std::sqrt(static_cast<double>(b)));
  const int64_t nb = a.rows / b;
  // per-column absmax of E_Y and the transpose codes
  if (a.qt != nullptr) {
    std::vector<float> amax(static_cast<size_t>(a.cols), 0.0f);
    for (int64_t r = 0; r < a.rows; ++r)
      for (int64_t c = 0; c < a.cols; ++c)
        amax[c] = std::max(amax[c], std::fabs(load_float(a.ey, a.dtype, r * a.ld + c)));
    for (int64_t c = 0; c < a.cols; ++c) {
      const QuantScale qs(amax[c], a.qdtype);
      a.scale_t[c] = qs.scale;
      for (int64_t r = 0; r < a.rows; ++r)
        store_quant(a.qt, a.qdtype, c * a.rows + r, load_float(a.ey, a.dtype, r * a.ld + c), qs.inv);
    }
  }
  if (a.q_rot == nullptr) return;
  // R E_Y: per block of b rows, signs then the butterflies (same order as the kernel), then * 1/sqrt(b)
  std::vector<float> rot(static_cast<size_t>(a.rows * a.cols));
  std::vector<float> col(static_cast<size_t>(b));
  for (int64_t blk = 0; blk < nb; ++blk) {
    for (int64_t c = 0; c < a.cols; ++c) {
      for (int i = 0; i < b; ++i) {
        const float x = load_float(a.ey, a.dtype, (blk * b + i) * a.ld + c);
        col[i] = a.signs != nullptr ? x * a.signs[i] : x;
      }
      for (int h = 1; h < b; h <<= 1)
        for (int i0 = 0; i0 < b; i0 += 2 * h)
          for (int i = i0; i < i0 + h; ++i) {
            const float x = col[i], y = col[i + h];
            col[i] = x + y;
            col[i + h] = x - y;
          }
      for (int i = 0; i < b; ++i) rot[(blk * b + i) * a.cols + c] = col[i] * rs;
    }
  }
  float amax = 0.0f;
  for (float v : rot) amax = std::max(amax, std::fabs(v));
  const QuantScale qs(amax, a.qdtype);
  a.scale_rot[0] = qs.scale;
  for (int64_t i = 0; i < a.rows * a.cols; ++i) store_quant(a.q_rot, a.qdtype, i, rot[i], qs.inv);
}

}  // namespace halo::cpu
