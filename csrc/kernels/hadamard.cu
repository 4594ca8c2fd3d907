/*!
 * \file hadamard.cu
 * \brief hadamard_transform(): power-of-two kernel (pow2_kernel; shfl_kernel for 16-bit rows of 256), dense-factor
 * tensor-core kernel (dense_kernel) and the generic fallback, with a store epilogue. See notes/hadamard_kernels.md for the design and numbers.
 */
#include <cstdlib>

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

/*!
 * \brief Small power-of-two transforms (n = 2^P, P = 7 or 8) of 16-bit rows in registers and warp shuffles, no shared
 * memory: a group of n elements belongs to LG = n / 16 lanes (8 or 16), lane l holding 2 packets of 8 elements at
 * element offsets 8 l and 8 l + 8 LG (so each load and store instruction of a lane group covers 16 LG contiguous
 * bytes). The butterflies of element bits 0-2 (inside a packet) and bit log2(8 LG) (across a lane's two packets) run
 * in registers, the other log2(LG) bits with __shfl_xor_sync inside the lane group (v' = partner + sign * v, one
 * FMA). A warp handles 32 / LG groups a step, U steps' loads issued before any arithmetic; the grid is persistent. Same epilogue order as pow2_kernel:
 * pre-signs after the load, then scale and the post-signs before the store.
 */
template <typename T, int P>
struct ShflPlan {
  static_assert(sizeof(T) == 2 && (P == 7 || P == 8), "16-bit rows of 128 or 256");
  static constexpr int kN = 1 << P;
  static constexpr int kLG = P == 7 ? 8 : 16;  //!< lanes per group
  static constexpr int kK = kN / (8 * kLG);     //!< packets per lane (2)
  static constexpr int kE = 8 * kK;             //!< elements per lane
  static constexpr int kU = 2;                  //!< warp steps in flight per thread
  static constexpr int kThreads = 256;
  static constexpr int kGroupsPerWarpStep = 32 / kLG;
};

struct ShflParams {
  const void* x = nullptr;
  void* out = nullptr;
  int64_t x_stride = 0, out_stride = 0;
  uint32_t num_groups = 0;  //!< groups (< 2^31, pow2_fast_ok)
  FastDivmod gpr;           //!< groups per row
  float scale = 1.f;
  const float* pre_signs = nullptr;
  const float* post_signs = nullptr;
};

template <typename T, int P>
__global__ void __launch_bounds__(ShflPlan<T, P>::kThreads) shfl_kernel(const ShflParams p) {
  using Plan = ShflPlan<T, P>;
  constexpr int K = Plan::kK, E = Plan::kE, U = Plan::kU, LG = Plan::kLG, GW = Plan::kGroupsPerWarpStep;
  constexpr int kStride = 8 * LG;  //!< elements between a lane's packets
  const int lane = threadIdx.x & 31, sub = lane % LG;
  const uint32_t warp = (blockIdx.x * Plan::kThreads + threadIdx.x) / 32;
  const uint32_t warps = gridDim.x * Plan::kThreads / 32;
  const uint32_t steps = (p.num_groups + GW - 1) / GW;  // GW groups a warp step
  for (uint32_t s0 = warp; s0 < steps; s0 += warps * U) {
    float v[U][E];
    uint32_t gr[U], gc[U];
    bool ok[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const uint32_t g = (s0 + u * warps) * GW + lane / LG;
      ok[u] = g < p.num_groups;
      p.gpr.divmod(ok[u] ? g : 0, gr[u], gc[u]);
      if (ok[u]) {
        const T* src = static_cast<const T*>(p.x) + int64_t(gr[u]) * p.x_stride + gc[u] * Plan::kN + 8 * sub;
#pragma unroll
        for (int k = 0; k < K; ++k) Vec<T>::unpack(ldg16(src + kStride * k), v[u] + 8 * k);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (p.pre_signs != nullptr && ok[u]) {
#pragma unroll
        for (int k = 0; k < K; ++k)
          mul_signs<8>(p.pre_signs + gc[u] * Plan::kN + 8 * sub + kStride * k, v[u] + 8 * k);
      }
      // element bits 0-2 and log2(kStride): registers (index i = 8 k + j for element 8 sub + kStride k + j)
#pragma unroll
      for (int h = 1; h < E; h <<= 1) {
#pragma unroll
        for (int i = 0; i < E; ++i) {
          if (i & h) continue;
          const float a = v[u][i], b = v[u][i | h];
          v[u][i] = a + b;
          v[u][i | h] = a - b;
        }
      }
      // the element bits 3.. of the lane: shuffles inside each aligned group of LG lanes
#pragma unroll
      for (int m = 1; m < LG; m <<= 1) {
        const float sg = (sub & m) ? -1.f : 1.f;
#pragma unroll
        for (int i = 0; i < E; ++i) {
          const float o = __shfl_xor_sync(0xffffffffu, v[u][i], m);
          v[u][i] = fmaf(sg, v[u][i], o);
        }
      }
      if (!ok[u]) continue;
      T* dst = static_cast<T*>(p.out) + int64_t(gr[u]) * p.out_stride + gc[u] * Plan::kN + 8 * sub;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        float* w = v[u] + 8 * k;
        if (p.post_signs != nullptr) mul_signs<8>(p.post_signs + gc[u] * Plan::kN + 8 * sub + kStride * k, w);
#pragma unroll
        for (int j = 0; j < 8; ++j) w[j] *= p.scale;
        stg16(dst + kStride * k, Vec<T>::pack(w));
      }
    }
  }
}

/*! \brief Whether shfl_kernel takes this transform (HALO_HAD_SHFL=0 turns it off, for A/B; read at every launch). */
inline bool shfl_ok() {
  const char* e = std::getenv("HALO_HAD_SHFL");
  return !(e != nullptr && e[0] == '0');
}

template <typename T, int P>
cudaError_t launch_shfl(const HadamardArgs& a, void* out, int64_t out_stride, cudaStream_t stream) {
  using Plan = ShflPlan<T, P>;
  ShflParams p;
  p.x = a.x, p.out = out, p.x_stride = a.x_row_stride, p.out_stride = out_stride;
  p.gpr = FastDivmod(static_cast<uint32_t>(a.cols / a.n));
  p.num_groups = static_cast<uint32_t>(a.rows * (a.cols / a.n));
  p.scale = a.scale;
  p.pre_signs = a.signs_after ? nullptr : a.signs;
  p.post_signs = a.signs_after ? a.signs : nullptr;
  constexpr int64_t kGroupsPerCta = int64_t(Plan::kGroupsPerWarpStep) * Plan::kThreads / 32;
  const int64_t ctas = (int64_t(p.num_groups) + kGroupsPerCta - 1) / kGroupsPerCta;
  auto kernel = shfl_kernel<T, P>;
  int grid = 0;
  HALO_RETURN_IF_ERROR(persistent_grid(kernel, Plan::kThreads, 0, ctas, &grid));
  kernel<<<grid, Plan::kThreads, 0, stream>>>(p);
  return cudaPeekAtLastError();
}

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
  // measured on H100 (bf16, 128M elements, x clone, interleaved A/B, notes/hadamard_kernels.md): 128 0.931 vs 0.905
  // with pow2_kernel, 256 0.928-0.932 vs 0.897-0.904
  if constexpr (sizeof(T) == 2) {
    if (out_ok && (log2p == 7 || log2p == 8) && pow2_fast_ok(a, sizeof(T)) && shfl_ok())
      return log2p == 7 ? launch_shfl<T, 7>(a, out, out_stride, stream) : launch_shfl<T, 8>(a, out, out_stride, stream);
  }
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
