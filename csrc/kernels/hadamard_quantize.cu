/*!
 * \file hadamard_quantize.cu
 * \brief hadamard_quantize(): y = H(x), per-tensor absmax scale, q = Q(y) and/or qt = Q(y)^T, without host sync.
 *
 * Two passes over x (see notes/hadamard_kernels.md for why), each its own kernel: pass 1 runs the transform with
 * HqEpilogue<kAmax> (one partial maximum per CTA into the workspace, nothing else written); pass 2 runs it again
 * with HqEpilogue<kQuant>, which first reduces the partial maxima (or reads amax_in, and then pass 1 is skipped)
 * and writes the codes. Both passes do the same float32 arithmetic per group, so the absmax is exactly that of the
 * quantized values. The power-of-two passes use small tiles and many resident CTAs (Pow2FusedConfig); pass 1 takes
 * |a| + |b| of its last butterfly's pairs instead of doing it (EpiAbsPairs), and pass 2 (then the transpose) starts
 * under programmatic dependent launch (pdl_ok, HALO_PDL=0 turns it off).
 *
 * On the power-of-two route pass 2 walks the tiles in the reverse order of pass 1 (tile_order in hadamard_impl.cuh),
 * so it starts on the part of x that pass 1 read last and L2 still holds; transpose_kernel then walks forwards and
 * starts on the part of q that pass 2 wrote last (H100, 16384 rows, three runs: q+qt 1.2-3.0 % faster, q alone
 * 0-1.3 %).
 *
 * The transposed output: pass 2 writes q (into the workspace when the caller wants qt only) and transpose_kernel
 * turns it into qt (+2 B/element, at 0.84 of clone bandwidth on H100). Writing qt from pass 2 itself, through a
 * 32-row code buffer in shared memory, was slower on H100 from n = 1024 on (the buffer cut the resident CTAs of
 * the issue-bound pass) and no faster at n = 128, so it was dropped. The generic kernel writes q and qt directly.
 */
#include "hadamard.h"
#include "hadamard_impl.cuh"

namespace halo {
namespace detail {
namespace {

constexpr int kMaxPartials = 1024;
constexpr size_t kPartialBytes = kMaxPartials * sizeof(float);
/*! \brief Smallest log2(n) the fused power-of-two path is instantiated for (n <= 16 takes the generic kernel). */
constexpr int kMinFusedP = 5;

/*! \brief Which pass a fused kernel runs. */
enum class HqMode : int {
  kAmax = 0,   //!< pass 1: partial maxima only
  kQuant = 1,  //!< pass 2: codes
};

/*! \brief Parameters of the fused epilogue. */
struct HqParams {
  DType qdtype = DType::kInt8;
  float* partials = nullptr;  //!< kAmax: one float per CTA
  uint8_t* q = nullptr;       //!< [rows, cols] codes, or nullptr
  uint8_t* qt = nullptr;      //!< [cols, rows] codes written by the generic kernel, or nullptr
  int64_t rows = 0, cols = 0, n = 0;
  float scale = 1.f;          //!< HadamardArgs::scale
  const float* post_signs = nullptr;
  const float* amax = nullptr;  //!< pass 2: partial maxima (amax_count > 0) or amax_in (amax_count == 0)
  int amax_count = 0;
  float* scale_out = nullptr;  //!< [1], written by CTA 0 in pass 2
};

/*! \brief 4 codes of v * inv for a run-time 8-bit dtype (uniform branch). */
__device__ __forceinline__ uint32_t quant4_rt(DType q, const float* v, float inv) {
  switch (q) {
    case DType::kInt8: return quant4<DType::kInt8>(v, inv);
    case DType::kFloat8E4M3: return quant4<DType::kFloat8E4M3>(v, inv);
    default: return quant4<DType::kFloat8E5M2>(v, inv);
  }
}

/*!
 * \brief Epilogue of both passes. MODE is a template argument, so each pass is its own kernel: one kernel with the
 * mode chosen at run time cost 20-40 % in both passes on H100 (pass 1 carried pass 2's code and register
 * allocation). The code dtype is a uniform run-time switch: as a template argument it gained 0-1.5 % (measured),
 * not worth three times the instantiations.
 * It gets u = H x unscaled; y = scale * u. kAmax: running max |u| per thread, CTA maximum times |scale| to
 * partials[blockIdx.x] (exactly max |fl(scale * u)|, rounding being monotonic), so pass 1 spends no multiply per
 * element. kQuant: codes of u * (scale * inv) to q (one multiply per element; within an ulp of y * inv).
 */
template <int VEC, HqMode MODE>
struct HqEpilogue {
  using Params = HqParams;
  static constexpr bool kAmax = MODE == HqMode::kAmax;
  /*! \brief pow2_kernel hands pass 1 |a| + |b| of its last butterfly's pairs (put_abs), see EpiAbsPairs. */
  static constexpr bool kAbsPairs = kAmax;
  struct Group {
    int64_t row, gcol;
    uint8_t* q;          //!< start of the group in q, or nullptr
    const float* signs;  //!< post signs of the group, or nullptr
    bool valid;
  };
  Params p;
  float mult = 0.f;  //!< pass 2: scale * inv
  float m = 0.f;     //!< pass 1

  __device__ explicit HqEpilogue(const Params& params) : p(params) {}
  __device__ void init() {
    // Programmatic dependent launch: pass 1 lets pass 2 start on SMs its finished CTAs free, and pass 2 lets the
    // transpose start; pass 2 waits here (after its first tiles' copies are issued) for pass 1's partial maxima.
    griddep_launch_dependents();
    if constexpr (!kAmax) {
      griddep_wait();
      __shared__ float red[32];
      const float amax = p.amax_count > 0 ? reduce_partials(p.amax, p.amax_count, red) : __ldg(p.amax);
      const QuantScale qs(amax, qmax_dev(p.qdtype));
      mult = __fmul_rn(p.scale, qs.inv);
      if (blockIdx.x == 0 && threadIdx.x == 0) *p.scale_out = qs.scale;
    }
  }
  __device__ Group group(int64_t row, int64_t gcol, bool valid) const {
    if constexpr (kAmax) return {row, gcol, nullptr, nullptr, valid};
    return {row, gcol, p.q != nullptr ? p.q + row * p.cols + gcol * p.n : nullptr,
            p.post_signs != nullptr ? p.post_signs + gcol * p.n : nullptr, valid};
  }
  /*! \brief 4 codes of v * mult. */
  __device__ __forceinline__ uint32_t code4(const float* v) const { return quant4_rt(p.qdtype, v, mult); }
  __device__ void put(const Group& g, uint32_t col, float* v) {
    if (!g.valid) return;
    if constexpr (kAmax) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) m = fmaxf(m, fabsf(v[j]));
    } else {
      if (g.signs != nullptr) mul_signs<VEC>(g.signs + col, v);
      if constexpr (VEC == 8) {
        *reinterpret_cast<uint2*>(g.q + col) = make_uint2(code4(v), code4(v + 4));
      } else {
        *reinterpret_cast<uint32_t*>(g.q + col) = code4(v);
      }
    }
  }
  /*! \brief Pass 1 on pow2_kernel: |a| + |b| of a pair of the last butterfly, = max(|a + b|, |a - b|). */
  __device__ __forceinline__ void put_abs(float a) { m = fmaxf(m, a); }
  /*! \brief Generic-kernel path: one value; q and qt written directly. */
  __device__ void put1(const Group& g, uint32_t col, float v) {
    if constexpr (kAmax) {
      m = fmaxf(m, fabsf(v));
      return;
    }
    if (g.signs != nullptr) v *= g.signs[col];
    float w[4] = {v, 0.f, 0.f, 0.f};
    const uint8_t c = static_cast<uint8_t>(code4(w) & 0xffu);
    if (g.q != nullptr) g.q[col] = c;
    if (p.qt != nullptr) p.qt[(g.gcol * p.n + col) * p.rows + g.row] = c;
  }
  __device__ void finish() {
    if constexpr (kAmax) {
      __shared__ float red[32];
      const float b = block_max(m, red);
      if (threadIdx.x == 0) p.partials[blockIdx.x] = __fmul_rn(fabsf(p.scale), b);
    }
  }
};

/*!
 * \brief qt = q^T for byte matrices: 256 x 128 tiles through shared memory. VEC (rows % 32 == 0, cols % 16 == 0,
 * 16-byte aligned pointers): q arrives as 16-byte loads (128-byte runs of q rows); each thread byte-transposes a
 * 32-row x 4-column block in registers (8 byte-permutes per 4x4) and puts the four 32-byte qt pieces back into the
 * buffer, now in qt layout [128][256] with the 16-byte chunks XOR-swizzled by row (conflict-free writes and reads);
 * qt then leaves as 16-byte stores in 256-byte runs of qt rows. (Storing the 32-byte pieces straight from
 * registers, 32 qt rows per warp instruction, ran at 0.43 of clone bandwidth on H100.) Otherwise byte accesses.
 */
template <bool VEC>
__global__ void __launch_bounds__(256) transpose_kernel(const uint8_t* q, uint8_t* qt, int64_t rows, int64_t cols) {
  constexpr int TR = 256, TC = 128;
  __shared__ __align__(16) uint8_t tile[TR * TC];
  const int64_t tiles_c = (cols + TC - 1) / TC, tiles = ((rows + TR - 1) / TR) * tiles_c;
  griddep_wait();  // launched with programmatic serialization after pass 2: q must be complete
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t r0 = (t / tiles_c) * TR, c0 = (t % tiles_c) * TC;
    if constexpr (VEC) {
      for (int k = threadIdx.x; k < TR * TC / 16; k += blockDim.x) {
        const int r = k / (TC / 16), c = (k % (TC / 16)) * 16;
        if (r0 + r < rows && c0 + c < cols)
          *reinterpret_cast<uint4*>(tile + r * TC + c) = ldg16(q + (r0 + r) * cols + c0 + c);
      }
      __syncthreads();
      // Task: rows [task_r, task_r + 32) x columns [task_c, task_c + 4) of the tile (a warp: 32 rows x 128 columns).
      const int task_r = (threadIdx.x / (TC / 4)) * 32, task_c = (threadIdx.x % (TC / 4)) * 4;
      uint32_t col[4][8];
#pragma unroll
      for (int b = 0; b < 8; ++b) {
        uint32_t w[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = *reinterpret_cast<const uint32_t*>(tile + (task_r + 4 * b + k) * TC + task_c);
        const uint32_t lo01 = __byte_perm(w[0], w[1], 0x5140), hi01 = __byte_perm(w[0], w[1], 0x7362);
        const uint32_t lo23 = __byte_perm(w[2], w[3], 0x5140), hi23 = __byte_perm(w[2], w[3], 0x7362);
        col[0][b] = __byte_perm(lo01, lo23, 0x5410);
        col[1][b] = __byte_perm(lo01, lo23, 0x7632);
        col[2][b] = __byte_perm(hi01, hi23, 0x5410);
        col[3][b] = __byte_perm(hi01, hi23, 0x7632);
      }
      __syncthreads();  // every block is in registers: the buffer takes the qt layout
      // qt layout: row c (tile column) holds the 256 tile rows as 16 chunks of 16 bytes; chunk k of row c sits at
      // chunk k ^ ((c >> 2) & 7): a warp's 16-byte writes (rows 4 apart, same chunk) then hit 8 distinct bank groups.
      auto at = [&](int c, int k) { return tile + c * TR + ((k ^ ((c >> 2) & 7)) << 4); };
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int c = task_c + j, k = task_r / 16;
        *reinterpret_cast<uint4*>(at(c, k)) = make_uint4(col[j][0], col[j][1], col[j][2], col[j][3]);
        *reinterpret_cast<uint4*>(at(c, k + 1)) = make_uint4(col[j][4], col[j][5], col[j][6], col[j][7]);
      }
      __syncthreads();
      for (int k = threadIdx.x; k < TR * TC / 16; k += blockDim.x) {
        const int c = k / (TR / 16), kk = k % (TR / 16);
        if (c0 + c < cols && r0 + kk * 16 < rows)
          stg16(qt + (c0 + c) * rows + r0 + kk * 16, *reinterpret_cast<const uint4*>(at(c, kk)));
      }
    } else {
      for (int k = threadIdx.x; k < TR * TC; k += blockDim.x) {
        const int r = k / TC, c = k % TC;
        if (r0 + r < rows && c0 + c < cols) tile[r * TC + c] = q[(r0 + r) * cols + c0 + c];
      }
      __syncthreads();
      for (int k = threadIdx.x; k < TR * TC; k += blockDim.x) {
        const int c = k / TR, r = k % TR;
        if (r0 + r < rows && c0 + c < cols) qt[(c0 + c) * rows + r0 + r] = tile[r * TC + c];
      }
    }
    __syncthreads();
  }
}

/*! \brief How hadamard_quantize runs for given arguments (also sizes the workspace). */
struct Route {
  bool fast = false;       //!< power-of-two kernel or dense kernel (else generic kernel)
  DenseRoute dense;        //!< which dense-factor kernel (dense_m > 1 and fast)
  bool transpose = false;  //!< qt by transpose_kernel from q (or from the workspace)
  bool q_in_ws = false;    //!< q lives in the workspace (caller wants qt only)
};

template <typename T>
Route plan_route(const HadamardQuantArgs& a, int log2p) {
  constexpr int V = Vec<T>::kVec;
  const HadamardArgs& h = a.had;
  Route r;
  const bool q_ok = a.q == nullptr || aligned(a.q, V);
  if (h.dense_m > 1) {
    r.fast = q_ok && dense_fast_ok<T>(h, log2p, &r.dense);
  } else {
    r.fast = q_ok && log2p >= kMinFusedP && pow2_fast_ok(h, sizeof(T));
  }
  if (r.fast && a.qt != nullptr) {
    r.transpose = true;
    r.q_in_ws = a.q == nullptr;
  }
  return r;
}

/*!
 * \brief Launches one pass: the epilogue HqEpilogue<V, MODE> on the route's kernel; the power-of-two kernel with
 * the fused tile configuration (Pow2FusedConfig).
 */
template <typename T, HqMode MODE>
cudaError_t hq_launch(const HadamardArgs& h, int log2p, const Route& route, const HqParams& p, int max_grid,
                      cudaStream_t stream, int* grid, bool pdl = false) {
  using Epi = HqEpilogue<Vec<T>::kVec, MODE>;
  constexpr bool kReverse = MODE == HqMode::kQuant;  // pass 2 first reads what pass 1 left in L2 (tile_order)
  if (!route.fast) return launch_generic<T, Epi>(h, log2p, p, max_grid, stream, grid);
  // (the dense kernel keeps the forward order: reversed, it measured 4-7 % slower at n = 14336 on H100)
  if (h.dense_m > 1) return launch_dense<T, Epi>(h, log2p, route.dense, p, max_grid, stream, grid);
  return dispatch_log2<kMinFusedP>(log2p, [&](auto P) {
    return launch_pow2<T, decltype(P)::value, Epi, Pow2FusedConfig>(h, p, max_grid, stream, grid, kReverse, pdl);
  });
}

template <typename T>
cudaError_t hq_typed(const HadamardQuantArgs& a, int log2p, void* workspace, cudaStream_t stream) {
  const HadamardArgs& h = a.had;
  const Route route = plan_route<T>(a, log2p);
  HqParams p;
  p.qdtype = a.qdtype;
  p.partials = static_cast<float*>(workspace);
  p.q = static_cast<uint8_t*>(route.q_in_ws ? static_cast<unsigned char*>(workspace) + kPartialBytes : a.q);
  p.rows = h.rows, p.cols = h.cols, p.n = h.n;
  p.post_signs = h.signs_after ? h.signs : nullptr;
  p.scale = h.scale;
  p.scale_out = a.scale;

  // Pass 1: partial maxima (skipped when the caller has the absmax).
  p.amax = a.amax_in;
  if (a.amax_in == nullptr) {
    int grid = 0;
    HALO_RETURN_IF_ERROR((hq_launch<T, HqMode::kAmax>(h, log2p, route, p, kMaxPartials, stream, &grid)));
    p.amax = p.partials;
    p.amax_count = grid;
  }

  // Pass 2: codes (the generic kernel also writes qt). On the power-of-two route it starts under programmatic
  // dependent launch after pass 1 (its first tiles load while pass 1's last CTAs finish), and so does the transpose.
  if (!route.fast) p.qt = static_cast<uint8_t*>(a.qt);
  const bool pdl_route = route.fast && h.dense_m == 1;
  HALO_RETURN_IF_ERROR(
      (hq_launch<T, HqMode::kQuant>(h, log2p, route, p, 1 << 30, stream, nullptr, pdl_route && a.amax_in == nullptr)));
  if (!route.transpose) return cudaSuccess;
  const bool vec = h.rows % 32 == 0 && h.cols % 16 == 0 && aligned(p.q, 16) && aligned(a.qt, 16);
  const int64_t tiles = ((h.rows + 255) / 256) * ((h.cols + 127) / 128);
  int sms = 0;
  HALO_RETURN_IF_ERROR(sm_count(&sms));
  const int grid = static_cast<int>(tiles < int64_t(sms) * 8 ? tiles : int64_t(sms) * 8);
  auto kernel = vec ? transpose_kernel<true> : transpose_kernel<false>;
  const bool pdl = pdl_route && pdl_ok(reinterpret_cast<const void*>(kernel));
  return launch_kernel(kernel, grid, 256, 0, stream, pdl, static_cast<const uint8_t*>(p.q),
                       static_cast<uint8_t*>(a.qt), h.rows, h.cols);
}

/*! \brief Writes the scale of an empty tensor (absmax 0). */
__global__ void empty_scale_kernel(float* scale, float qmax) { *scale = __fdiv_rn(kMinAmax, qmax); }

cudaError_t check_hq_args(const HadamardQuantArgs& a, int* log2p) {
  HALO_RETURN_IF_ERROR(check_hadamard_args(a.had, log2p));
  if (a.qdtype != DType::kInt8 && a.qdtype != DType::kFloat8E4M3 && a.qdtype != DType::kFloat8E5M2)
    return cudaErrorInvalidValue;
  if (a.scale == nullptr || (a.q == nullptr && a.qt == nullptr)) return cudaErrorInvalidValue;
  return cudaSuccess;
}

}  // namespace
}  // namespace detail

size_t hadamard_quantize_workspace_size(const HadamardQuantArgs& args) {
  int log2p = 0;
  if (detail::check_hq_args(args, &log2p) != cudaSuccess) return detail::kPartialBytes;
  detail::Route route;
  detail::dispatch_float_type(args.had.dtype, [&](auto t) {
    route = detail::plan_route<decltype(t)>(args, log2p);
    return cudaSuccess;
  });
  return detail::kPartialBytes + (route.q_in_ws ? size_t(args.had.rows * args.had.cols) : 0);
}

cudaError_t hadamard_quantize(const HadamardQuantArgs& args, void* workspace, cudaStream_t stream) {
  int log2p = 0;
  HALO_RETURN_IF_ERROR(detail::check_hq_args(args, &log2p));
  if (args.had.rows == 0 || args.had.cols == 0) {
    detail::empty_scale_kernel<<<1, 1, 0, stream>>>(args.scale, qmax_of(args.qdtype));
    return cudaPeekAtLastError();
  }
  if (workspace == nullptr) return cudaErrorInvalidValue;
  return detail::dispatch_float_type(args.had.dtype, [&](auto t) {
    return detail::hq_typed<decltype(t)>(args, log2p, workspace, stream);
  });
}

}  // namespace halo
