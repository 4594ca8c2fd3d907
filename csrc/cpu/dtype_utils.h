/*! \file dtype_utils.h \brief Element load/store and quantization helpers for the CPU implementations. */
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>
#include <c10/util/Float8_e5m2.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "kernels/common.h"
#include "kernels/hadamard.h"

namespace halo::cpu {

/*! \brief Reads element i of a float32/float16/bfloat16/8-bit array as float. */
inline float load_float(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::kFloat32: return static_cast<const float*>(p)[i];
    case DType::kFloat16: return static_cast<float>(static_cast<const c10::Half*>(p)[i]);
    case DType::kBFloat16: return static_cast<float>(static_cast<const c10::BFloat16*>(p)[i]);
    case DType::kInt8: return static_cast<float>(static_cast<const int8_t*>(p)[i]);
    case DType::kFloat8E4M3: return static_cast<float>(static_cast<const c10::Float8_e4m3fn*>(p)[i]);
    case DType::kFloat8E5M2: return static_cast<float>(static_cast<const c10::Float8_e5m2*>(p)[i]);
  }
  throw std::invalid_argument("halo: unknown dtype");
}

/*! \brief Writes v (rounded to nearest even) as element i of a float32/float16/bfloat16 array. */
inline void store_float(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::kFloat32: static_cast<float*>(p)[i] = v; return;
    case DType::kFloat16: static_cast<c10::Half*>(p)[i] = c10::Half(v); return;
    case DType::kBFloat16: static_cast<c10::BFloat16*>(p)[i] = c10::BFloat16(v); return;
    default: throw std::invalid_argument("halo: store_float needs a floating output dtype");
  }
}

/*! \brief Scale (absmax / qmax) and its inverse for a group with absmax a, per the rule in hadamard.h. */
struct QuantScale {
  float scale, inv;
  QuantScale(float amax, DType qdtype) {
    const float a = std::max(amax, kMinAmax);
    scale = a / qmax_of(qdtype);
    inv = qmax_of(qdtype) / a;
  }
};

/*! \brief Stores round(v * inv) into element i of an 8-bit array (int8: clamp to +-127; fp8: clamp, RNE). */
inline void store_quant(void* q, DType t, int64_t i, float v, float inv) {
  const float s = v * inv;
  const float m = qmax_of(t);
  switch (t) {
    case DType::kInt8:
      static_cast<int8_t*>(q)[i] = static_cast<int8_t>(std::nearbyint(std::min(std::max(s, -m), m)));
      return;
    case DType::kFloat8E4M3:
      static_cast<c10::Float8_e4m3fn*>(q)[i] = c10::Float8_e4m3fn(std::min(std::max(s, -m), m));
      return;
    case DType::kFloat8E5M2:
      static_cast<c10::Float8_e5m2*>(q)[i] = c10::Float8_e5m2(std::min(std::max(s, -m), m));
      return;
    default: throw std::invalid_argument("halo: store_quant needs an 8-bit output dtype");
  }
}

}  // namespace halo::cpu
