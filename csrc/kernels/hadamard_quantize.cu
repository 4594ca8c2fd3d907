/*!
 * \file hadamard_quantize.cu
 * \brief hadamard_quantize(): y = H(x), per-tensor absmax scale, q = Q(y) and/or qt = Q(y)^T, without host sync.
 *
 * Two passes over x (see notes/hadamard_kernels.md for why): pass 1 runs the transform kernel with HqEpilogue in
 * kAmax mode (one partial maximum per CTA into the workspace, nothing else written); pass 2 runs it again in kQuant
 * or kQuantTrans mode, which first reduces the partial maxima (or reads amax_in, and then pass 1 is skipped) and
 * writes the codes.
 * Both passes do the same float32 arithmetic per group, so the absmax is exactly that of the quantized values.
 *
 * The transposed output is written by pass 2 itself when a CTA can hold 32 whole rows of codes (power-of-two
 * n <= 2048, rows % 32 == 0): tiles are then walked in column-major group order, codes collect in shared memory
 * and leave as 32-byte runs of qt rows. Otherwise pass 2 writes q (into the workspace when the caller wants qt
 * only) and transpose_kernel turns it into qt.
 */
#include "hadamard.h"
#include "hadamard_impl.cuh"

namespace halo {
namespace detail {
namespace {

constexpr int kMaxPartials = 1024;
constexpr int kBlockRows = 32;     //!< rows of a transposed block: 32-byte runs of qt
constexpr int kMaxTransN = 2048;   //!< largest n whose transposed output pass 2 writes itself
constexpr size_t kPartialBytes = kMaxPartials * sizeof(float);
/*! \brief Smallest log2(n) the fused power-of-two path is instantiated for (n <= 16 takes the generic kernel). */
constexpr int kMinFusedP = 5;

/*! \brief What a run of the fused kernel does. */
enum class HqMode : int {
  kAmax = 0,        //!< pass 1: partial maxima only
  kQuant = 1,       //!< pass 2: codes to q
  kQuantTrans = 2,  //!< pass 2: codes to q (if any) and, through shared memory, to qt
};

/*! \brief Parameters of the fused epilogue. */
struct HqParams {
  HqMode mode = HqMode::kAmax;
  DType qdtype = DType::kInt8;
  float* partials = nullptr;  //!< kAmax: one float per CTA
  uint8_t* q = nullptr;       //!< [rows, cols] codes, or nullptr
  uint8_t* qt = nullptr;      //!< [cols, rows] codes (kQuantTrans, or the generic kernel), or nullptr
  int64_t rows = 0, cols = 0, n = 0;
  float scale = 1.f;          //!< HadamardArgs::scale
  uint32_t sup_rows = 0;      //!< kQuantTrans: rows of the shared-memory code buffer (a supertile)
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
 * \brief Epilogue of both passes, mode and code dtype chosen at run time (one kernel instantiation per transform
 * configuration instead of seven; the branches are uniform and cost a few instructions per 16-byte packet).
 * It gets u = H x unscaled; y = scale * u. kAmax: running max |u| per thread, CTA maximum times |scale| to
 * partials[blockIdx.x] (exactly max |fl(scale * u)|, rounding being monotonic), so pass 1 spends no multiply per
 * element. kQuant: codes of u * (scale * inv) to q (one multiply per element; within an ulp of y * inv).
 * kQuantTrans: codes also collect in shared memory, [sup_rows][n] bytes then uint32 row and group column per
 * buffer row, for a supertile of sup_rows rows of one group column (kBlockRows-row blocks); they go to qt as
 * 32-byte runs when the supertile is complete.
 */
template <int VEC>
struct HqEpilogue {
  using Params = HqParams;
  struct Group {
    int64_t row, gcol;
    uint8_t* q;          //!< start of the group in q, or nullptr
    const float* signs;  //!< post signs of the group, or nullptr
    uint32_t srow;       //!< row within the supertile buffer
    bool valid;
  };
  Params p;
  float mult = 0.f;  //!< pass 2: scale * inv
  float m = 0.f;     //!< pass 1
  unsigned char* buf;

  /*! \brief Shared memory of kQuantTrans for sup_rows rows of n codes. */
  static size_t trans_smem_bytes(int64_t sup_rows, int64_t n) { return size_t(sup_rows) * (n + 8); }

  __device__ HqEpilogue(const Params& params, unsigned char* smem) : p(params), buf(smem) {}
  __device__ void init() {
    if (p.mode == HqMode::kAmax) return;
    __shared__ float red[32];
    const float amax = p.amax_count > 0 ? reduce_partials(p.amax, p.amax_count, red) : __ldg(p.amax);
    const QuantScale qs(amax, qmax_dev(p.qdtype));
    mult = __fmul_rn(p.scale, qs.inv);
    if (blockIdx.x == 0 && threadIdx.x == 0) *p.scale_out = qs.scale;
  }
  __device__ Group group(int64_t row, int64_t gcol, uint32_t srow, bool valid) const {
    if (p.mode == HqMode::kQuantTrans) {
      uint32_t* info = reinterpret_cast<uint32_t*>(buf + size_t(p.sup_rows) * p.n);
      info[srow] = valid ? static_cast<uint32_t>(row) : ~0u;
      info[p.sup_rows + srow] = static_cast<uint32_t>(gcol);
    }
    return {row, gcol, p.q != nullptr ? p.q + row * p.cols + gcol * p.n : nullptr,
            p.post_signs != nullptr ? p.post_signs + gcol * p.n : nullptr, srow, valid};
  }
  __device__ void put(const Group& g, uint32_t col, float* v) {
    if (!g.valid) return;
    if (p.mode == HqMode::kAmax) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) m = fmaxf(m, fabsf(v[j]));
      return;
    }
    if (g.signs != nullptr) mul_signs<VEC>(g.signs + col, v);
    if constexpr (VEC == 8) {
      const uint2 c = make_uint2(quant4_rt(p.qdtype, v, mult), quant4_rt(p.qdtype, v + 4, mult));
      if (g.q != nullptr) *reinterpret_cast<uint2*>(g.q + col) = c;
      if (p.mode == HqMode::kQuantTrans) *reinterpret_cast<uint2*>(buf + g.srow * p.n + col) = c;
    } else {
      const uint32_t c = quant4_rt(p.qdtype, v, mult);
      if (g.q != nullptr) *reinterpret_cast<uint32_t*>(g.q + col) = c;
      if (p.mode == HqMode::kQuantTrans) *reinterpret_cast<uint32_t*>(buf + g.srow * p.n + col) = c;
    }
  }
  /*! \brief Generic-kernel path: one value; q and qt written directly. */
  __device__ void put1(const Group& g, uint32_t col, float v) {
    if (p.mode == HqMode::kAmax) {
      m = fmaxf(m, fabsf(v));
      return;
    }
    if (g.signs != nullptr) v *= g.signs[col];
    float w[4] = {v, 0.f, 0.f, 0.f};
    const uint8_t c = static_cast<uint8_t>(quant4_rt(p.qdtype, w, mult) & 0xffu);
    if (g.q != nullptr) g.q[col] = c;
    if (p.qt != nullptr) p.qt[(g.gcol * p.n + col) * p.rows + g.row] = c;
  }
  __device__ void tile_done(bool supertile_end) {
    if (p.mode != HqMode::kQuantTrans || !supertile_end) return;
    __syncthreads();
    flush();
    __syncthreads();
  }
  __device__ void finish() {
    if (p.mode != HqMode::kAmax) return;
    __shared__ float red[32];
    const float b = block_max(m, red);
    if (threadIdx.x == 0) p.partials[blockIdx.x] = __fmul_rn(fabsf(p.scale), b);
  }

 private:
  /*!
   * \brief Writes the supertile to qt. A task is 32 buffer rows x 4 columns: 32 conflict-free 4-byte shared loads,
   * a byte transpose (8 byte-permutes per 4x4 block), then two 16-byte stores per qt row (one 32-byte run).
   */
  __device__ void flush() const {
    const uint32_t n = static_cast<uint32_t>(p.n), quads = n / 4;
    const uint32_t* info = reinterpret_cast<const uint32_t*>(buf + size_t(p.sup_rows) * n);
    const uint32_t tasks = (p.sup_rows / kBlockRows) * quads;
    for (uint32_t t = threadIdx.x; t < tasks; t += blockDim.x) {
      const uint32_t r0 = (t / quads) * kBlockRows, c0 = (t % quads) * 4;
      const uint32_t row = info[r0];
      if (row == ~0u) continue;
      const int64_t gcol = info[p.sup_rows + r0];
      uint32_t col[4][kBlockRows / 4];
#pragma unroll
      for (int b = 0; b < kBlockRows / 4; ++b) {
        uint32_t w[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = *reinterpret_cast<const uint32_t*>(buf + (r0 + 4 * b + k) * n + c0);
        const uint32_t lo01 = __byte_perm(w[0], w[1], 0x5140), hi01 = __byte_perm(w[0], w[1], 0x7362);
        const uint32_t lo23 = __byte_perm(w[2], w[3], 0x5140), hi23 = __byte_perm(w[2], w[3], 0x7362);
        col[0][b] = __byte_perm(lo01, lo23, 0x5410);
        col[1][b] = __byte_perm(lo01, lo23, 0x7632);
        col[2][b] = __byte_perm(hi01, hi23, 0x5410);
        col[3][b] = __byte_perm(hi01, hi23, 0x7632);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint8_t* dst = p.qt + (gcol * p.n + c0 + j) * p.rows + row;
        stg16(dst, make_uint4(col[j][0], col[j][1], col[j][2], col[j][3]));
        stg16(dst + 16, make_uint4(col[j][4], col[j][5], col[j][6], col[j][7]));
      }
    }
  }
};

/*!
 * \brief qt = q^T for byte matrices: 256 x 128 tiles through shared memory. VEC (rows % 32 == 0, cols % 16 == 0,
 * 16-byte aligned pointers): 16-byte loads, and per thread a 32-row x 4-column task stored as 32-byte qt runs.
 * Otherwise byte accesses.
 */
template <bool VEC>
__global__ void __launch_bounds__(256) transpose_kernel(const uint8_t* q, uint8_t* qt, int64_t rows, int64_t cols) {
  constexpr int TR = 256, TC = 128;
  __shared__ __align__(16) uint8_t tile[TR * TC];
  const int64_t tiles_c = (cols + TC - 1) / TC, tiles = ((rows + TR - 1) / TR) * tiles_c;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const int64_t r0 = (t / tiles_c) * TR, c0 = (t % tiles_c) * TC;
    if constexpr (VEC) {
      for (int k = threadIdx.x; k < TR * TC / 16; k += blockDim.x) {
        const int r = k / (TC / 16), c = (k % (TC / 16)) * 16;
        if (r0 + r < rows && c0 + c < cols)
          *reinterpret_cast<uint4*>(tile + r * TC + c) = ldg16(q + (r0 + r) * cols + c0 + c);
      }
      __syncthreads();
      const int task_r = (threadIdx.x / (TC / 4)) * 32, task_c = (threadIdx.x % (TC / 4)) * 4;
      if (r0 + task_r < rows && c0 + task_c < cols) {
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
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          uint8_t* dst = qt + (c0 + task_c + j) * rows + r0 + task_r;
          stg16(dst, make_uint4(col[j][0], col[j][1], col[j][2], col[j][3]));
          stg16(dst + 16, make_uint4(col[j][4], col[j][5], col[j][6], col[j][7]));
        }
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
  int dense_nst = 0;       //!< > 0: dense kernel with this many staging buffers
  bool trans = false;      //!< pass 2 writes qt itself from shared memory
  bool transpose = false;  //!< qt by transpose_kernel from q (or from the workspace)
  bool q_in_ws = false;    //!< q lives in the workspace (caller wants qt only)
  uint32_t sub_log = 0;    //!< trans: tiles per supertile = 2^sub_log
  uint32_t sup_rows = 0;   //!< trans: rows per supertile
};

template <typename T>
Route plan_route(const HadamardQuantArgs& a, int log2p) {
  constexpr int V = Vec<T>::kVec, VB = Vec<T>::kVecBits;
  const HadamardArgs& h = a.had;
  Route r;
  const bool q_ok = a.q == nullptr || aligned(a.q, V);
  if (h.dense_m > 1) {
    r.fast = q_ok && dense_fast_ok<T>(h, log2p, &r.dense_nst);
    if (!r.fast) r.dense_nst = 0;
  } else {
    r.fast = q_ok && log2p >= kMinFusedP && pow2_fast_ok(h, sizeof(T));
  }
  if (a.qt == nullptr) return r;
  if (r.fast && r.dense_nst == 0 && log2p >= VB && h.n <= kMaxTransN && h.rows % kBlockRows == 0 && aligned(a.qt, 16)) {
    const uint32_t g = pow2_groups_per_tile_rt<T>(log2p);
    r.sup_rows = g > uint32_t(kBlockRows) ? g : uint32_t(kBlockRows);
    while ((uint32_t(1) << r.sub_log) * g < r.sup_rows) ++r.sub_log;
    int limit = 0;
    const size_t need = pow2_smem_bytes_rt<T>(log2p) + HqEpilogue<V>::trans_smem_bytes(r.sup_rows, h.n);
    r.trans = max_smem_per_cta(&limit) == cudaSuccess && need <= size_t(limit);
  }
  if (r.fast && !r.trans) {
    r.transpose = true;
    r.q_in_ws = a.q == nullptr;
  }
  return r;
}

template <typename T>
cudaError_t hq_typed(const HadamardQuantArgs& a, int log2p, void* workspace, cudaStream_t stream) {
  constexpr int V = Vec<T>::kVec;
  using Epi = HqEpilogue<V>;
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
  auto run = [&](bool col_major, uint32_t sub_log, size_t epi_smem, int max_grid, int* grid) {
    if (!route.fast) return launch_generic<T, Epi>(h, log2p, false, p, 0, max_grid, stream, grid);
    if (route.dense_nst > 0) return launch_dense<T, Epi>(h, log2p, route.dense_nst, p, max_grid, stream, grid);
    return dispatch_log2<kMinFusedP>(log2p, [&](auto P) {
      return launch_pow2<T, decltype(P)::value, Epi>(h, col_major, sub_log, p, epi_smem, max_grid, stream, grid);
    });
  };

  // Pass 1: partial maxima (skipped when the caller has the absmax).
  p.amax = a.amax_in;
  if (a.amax_in == nullptr) {
    p.mode = HqMode::kAmax;
    int grid = 0;
    HALO_RETURN_IF_ERROR(run(false, 0, 0, kMaxPartials, &grid));
    p.amax = p.partials;
    p.amax_count = grid;
  }

  // Pass 2: codes.
  if (!route.fast || route.trans) p.qt = static_cast<uint8_t*>(a.qt);
  p.mode = route.trans ? HqMode::kQuantTrans : HqMode::kQuant;
  p.sup_rows = route.sup_rows;
  HALO_RETURN_IF_ERROR(run(route.trans, route.sub_log, route.trans ? Epi::trans_smem_bytes(route.sup_rows, h.n) : 0,
                           1 << 30, nullptr));
  if (!route.transpose) return cudaSuccess;
  const bool vec = h.rows % 32 == 0 && h.cols % 16 == 0 && aligned(p.q, 16) && aligned(a.qt, 16);
  const int64_t tiles = ((h.rows + 255) / 256) * ((h.cols + 127) / 128);
  int sms = 0;
  HALO_RETURN_IF_ERROR(sm_count(&sms));
  const int grid = static_cast<int>(tiles < int64_t(sms) * 8 ? tiles : int64_t(sms) * 8);
  if (vec) {
    transpose_kernel<true><<<grid, 256, 0, stream>>>(p.q, static_cast<uint8_t*>(a.qt), h.rows, h.cols);
  } else {
    transpose_kernel<false><<<grid, 256, 0, stream>>>(p.q, static_cast<uint8_t*>(a.qt), h.rows, h.cols);
  }
  return cudaPeekAtLastError();
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
