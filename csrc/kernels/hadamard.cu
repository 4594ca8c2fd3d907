/*!
 * \file hadamard.cu
 * \brief hadamard_transform(): power-of-two kernel (pow2_kernel), dense-factor tensor-core kernel (dense_kernel)
 * and the generic fallback, with a store epilogue. See notes/hadamard_kernels.md for the design and numbers.
 */
#include "hadamard.h"
#include "hadamard_impl.cuh"

namespace halo {
namespace detail {
namespace {

/*! \brief Epilogue that writes scale * transform (times the signs after) in the input dtype, RNE rounding. */
template <typename T>
struct StoreEpilogue {
  static constexpr int kVec = Vec<T>::kVec;
  struct Params {
    void* out = nullptr;
    int64_t out_stride = 0, n = 0;
    float scale = 1.f;
    const float* post_signs = nullptr;  //!< [cols] or nullptr
  };
  struct Group {
    T* out;
    const float* signs;
    bool valid;
  };
  Params p;
  __device__ explicit StoreEpilogue(const Params& params) : p(params) {}
  __device__ void init() {}
  __device__ Group group(int64_t row, int64_t gcol, bool valid) const {
    return {static_cast<T*>(p.out) + row * p.out_stride + gcol * p.n,
            p.post_signs != nullptr ? p.post_signs + gcol * p.n : nullptr, valid};
  }
  __device__ void put(const Group& g, uint32_t col, float* v) const {
    if (!g.valid) return;
    if (g.signs != nullptr) mul_signs<kVec>(g.signs + col, v);
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[j] *= p.scale;
    stg16(g.out + col, Vec<T>::pack(v));
  }
  __device__ void put1(const Group& g, uint32_t col, float v) const {
    if (g.signs != nullptr) v *= g.signs[col];
    Vec<T>::store1(g.out, col, v * p.scale);
  }
  __device__ void finish() {}
};

template <typename T>
cudaError_t transform_typed(const HadamardArgs& a, int log2p, void* out, int64_t out_stride, cudaStream_t stream) {
  typename StoreEpilogue<T>::Params ep;
  ep.out = out, ep.out_stride = out_stride, ep.n = a.n, ep.scale = a.scale;
  ep.post_signs = a.signs_after ? a.signs : nullptr;
  const int vec = Vec<T>::kVec;
  const bool out_ok = aligned(out, 16) && out_stride % vec == 0;
  DenseRoute dense;
  if (a.dense_m > 1 && out_ok && dense_fast_ok<T>(a, log2p, &dense))
    return launch_dense<T, StoreEpilogue<T>>(a, log2p, dense, ep, 1 << 30, stream);
  if (out_ok && pow2_fast_ok(a, sizeof(T))) {
    return dispatch_log2(log2p, [&](auto P) {
      return launch_pow2<T, decltype(P)::value, StoreEpilogue<T>>(a, ep, 1 << 30, stream);
    });
  }
  return launch_generic<T, StoreEpilogue<T>>(a, log2p, ep, 1 << 30, stream);
}

}  // namespace
}  // namespace detail

cudaError_t hadamard_transform(const HadamardArgs& args, void* out, int64_t out_row_stride, cudaStream_t stream) {
  int log2p = 0;
  HALO_RETURN_IF_ERROR(detail::check_hadamard_args(args, &log2p));
  if (args.rows == 0 || args.cols == 0) return cudaSuccess;
  if (out == nullptr || out_row_stride < args.cols) return cudaErrorInvalidValue;
  return detail::dispatch_float_type(args.dtype, [&](auto t) {
    return detail::transform_typed<decltype(t)>(args, log2p, out, out_row_stride, stream);
  });
}

}  // namespace halo
