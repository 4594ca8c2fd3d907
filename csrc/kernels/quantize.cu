/*!
 * \file quantize.cu
 * \brief quantize() / dequantize(): absmax 8-bit quantization per tensor, row or block, and its inverse.
 *
 * Per tensor: amax_kernel writes one partial maximum per CTA to the workspace, quant_tensor_kernel reduces them
 * (every CTA redundantly: at most kMaxPartials floats from L2) and quantizes; no memset, no host sync, and the
 * result does not depend on the grid since max is exact. Per row / per block: quant_segment_kernel, a team of
 * 2^k threads per segment (row or block) keeps up to 4 packets a thread in registers between the absmax and the
 * quantization; longer segments are read twice (the second read mostly hits L2).
 * Tensors are read as 16-byte packets when rows, strides and segments allow it, else element by element.
 * Per tensor with a transposed copy (qt): quant_tensor_t_kernel quantizes 64x64 tiles and writes q and qt from one
 * read of x (the layout the weight-gradient GEMM needs), instead of quantize + an 8-bit transpose copy.
 */
#include "hadamard.h"
#include "quant_utils.cuh"

namespace halo {
namespace detail {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxPartials = 1024;
constexpr int kUnroll = 4;  //!< packets a thread keeps in flight / in registers

/*! \brief Loads VEC elements (one 16-byte packet, or one element when VEC == 1) as float. */
template <typename T, int VEC>
__device__ __forceinline__ void load_packet(const T* p, float* v) {
  if constexpr (VEC == 1) {
    v[0] = Vec<T>::load1(p, 0);
  } else {
    Vec<T>::unpack(ldg16(p), v);
  }
}

/*! \brief Stores VEC 8-bit codes of the values v * inv (VEC consecutive bytes, aligned to VEC). */
template <DType Q, int VEC>
__device__ __forceinline__ void store_codes(uint8_t* q, const float* v, float inv) {
  if constexpr (VEC == 1) {
    *q = static_cast<uint8_t>(quant_code<Q>(v[0], inv));
  } else if constexpr (VEC == 4) {
    *reinterpret_cast<uint32_t*>(q) = quant4<Q>(v, inv);
  } else {
    *reinterpret_cast<uint2*>(q) = make_uint2(quant4<Q>(v, inv), quant4<Q>(v + 4, inv));
  }
}

/*! \brief A [rows, cols] tensor with row stride `stride`, walked by packets of VEC elements in row-major order. */
struct PacketMap {
  int64_t stride = 0;      //!< elements between rows
  int64_t per_row = 0;     //!< packets per row
  int64_t total = 0;       //!< packets in the tensor
  bool flat = false;       //!< stride == cols: packet k starts at element k * VEC
  /*! \brief Element offset of packet k in the strided tensor. */
  template <int VEC>
  __device__ __forceinline__ int64_t offset(int64_t k) const {
    if (flat) return k * VEC;
    const int64_t r = k / per_row;
    return r * stride + (k - r * per_row) * VEC;
  }
};

/*! \brief Partial absmax of a tensor: one float per CTA. */
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) amax_kernel(const T* x, const PacketMap pm, float* partials) {
  __shared__ float red[kThreads / 32];
  float m = 0.f;
  const int64_t step = int64_t(gridDim.x) * kThreads;
  for (int64_t k0 = int64_t(blockIdx.x) * kThreads * kUnroll + threadIdx.x; k0 < pm.total; k0 += step * kUnroll) {
    float v[kUnroll][VEC];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = k0 + u * int64_t(kThreads);
      if (k < pm.total) {
        load_packet<T, VEC>(x + pm.offset<VEC>(k), v[u]);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[u][j] = 0.f;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int j = 0; j < VEC; ++j) m = fmaxf(m, fabsf(v[u][j]));
  }
  m = block_max(m, red);
  if (threadIdx.x == 0) partials[blockIdx.x] = m;
}

/*! \brief Per-tensor quantization with the absmax reduced from `count` partial maxima. */
template <typename T, int VEC, DType Q>
__global__ void __launch_bounds__(kThreads)
    quant_tensor_kernel(const T* x, const PacketMap pm, const float* partials, int count, uint8_t* q, float* scale) {
  __shared__ float red[kThreads / 32];
  const QuantScale qs(reduce_partials(partials, count, red), qmax_dev(Q));
  if (blockIdx.x == 0 && threadIdx.x == 0) *scale = qs.scale;
  const int64_t step = int64_t(gridDim.x) * kThreads;
  for (int64_t k0 = int64_t(blockIdx.x) * kThreads * kUnroll + threadIdx.x; k0 < pm.total; k0 += step * kUnroll) {
    float v[kUnroll][VEC];
    // packets in descending order: the ones amax_kernel read last (still in L2) first
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = k0 + u * int64_t(kThreads);
      if (k < pm.total) load_packet<T, VEC>(x + pm.offset<VEC>(pm.total - 1 - k), v[u]);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = k0 + u * int64_t(kThreads);
      if (k < pm.total) store_codes<Q, VEC>(q + (pm.total - 1 - k) * VEC, v[u], qs.inv);
    }
  }
}

/*! \brief Per-tensor quantization writing q (optional) and its transpose qt: see quant_tensor_t_kernel. */
struct TransposeParams {
  const void* x = nullptr;
  int64_t rows = 0, cols = 0, stride = 0;
  int64_t col_tiles = 0;       //!< tiles along cols
  const float* partials = nullptr;
  int count = 0;               //!< partial maxima (0: use amax_in)
  const float* amax_in = nullptr;
  uint8_t* q = nullptr;        //!< [rows, cols] or nullptr
  uint8_t* qt = nullptr;       //!< [cols, rows] or nullptr
  float* scale = nullptr;
};

constexpr int kTile = 64;                 //!< rows and cols of one tile of quant_tensor_t_kernel
constexpr int kTilePitch = kTile + 4;     //!< bytes per shared-memory row (keeps 4-byte alignment)
constexpr int kTileThreads = 256;         //!< 4 threads a tile row, 16 elements each

/*!
 * \brief One 64x64 tile per CTA: each thread quantizes 16 consecutive elements of one row (16-byte loads when VEC),
 * stores their codes to q (one 16-byte store when VEC) and to a shared tile; then each thread gathers 16 codes of
 * one tile column and stores them as 16 contiguous bytes of qt. Edge tiles fall back to byte accesses.
 * The scale comes from the same partial maxima as quant_tensor_kernel, so q is bit-identical to it.
 */
template <typename T, bool VEC, DType Q>
__global__ void __launch_bounds__(kTileThreads) quant_tensor_t_kernel(const __grid_constant__ TransposeParams p) {
  __shared__ float red[kTileThreads / 32];
  __shared__ __align__(16) uint8_t tile[kTile * kTilePitch];
  const float amax = p.count > 0 ? reduce_partials(p.partials, p.count, red) : *p.amax_in;
  const QuantScale qs(amax, qmax_dev(Q));
  if (blockIdx.x == 0 && threadIdx.x == 0) *p.scale = qs.scale;
  // tiles in descending order (grid = tiles): the rows amax_kernel read last, still in L2, come first
  const int64_t t_id = int64_t(gridDim.x) - 1 - blockIdx.x;
  const int64_t tr = t_id / p.col_tiles, tc = t_id - tr * p.col_tiles;
  const int64_t r0 = tr * kTile, c0 = tc * kTile;
  const int lr = threadIdx.x >> 2, lc = (threadIdx.x & 3) * 16;
  const int64_t r = r0 + lr, c = c0 + lc;
  const T* x = static_cast<const T*>(p.x);
  const bool full = r0 + kTile <= p.rows && c0 + kTile <= p.cols;
  uint32_t w[4];
  if (VEC && full) {
    constexpr int V = Vec<T>::kVec;
    float v[16];
#pragma unroll
    for (int j = 0; j < 16; j += V) Vec<T>::unpack(ldg16(x + r * p.stride + c + j), v + j);
#pragma unroll
    for (int j = 0; j < 4; ++j) w[j] = quant4<Q>(v + 4 * j, qs.inv);
    if (p.q != nullptr) stg16(p.q + r * p.cols + c, make_uint4(w[0], w[1], w[2], w[3]));
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) w[j] = 0;
    if (r < p.rows) {
      for (int j = 0; j < 16 && c + j < p.cols; ++j) {
        const uint32_t code = quant_code<Q>(Vec<T>::load1(x, r * p.stride + c + j), qs.inv);
        w[j >> 2] |= code << (8 * (j & 3));
        if (p.q != nullptr) p.q[r * p.cols + c + j] = static_cast<uint8_t>(code);
      }
    }
  }
  if (p.qt == nullptr) return;  // uniform over the CTA: no barrier is skipped by part of it
  uint32_t* trow = reinterpret_cast<uint32_t*>(tile + lr * kTilePitch + lc);
#pragma unroll
  for (int j = 0; j < 4; ++j) trow[j] = w[j];
  __syncthreads();
  // Transposed store: thread -> (tile column oc, 16 tile rows starting at orow).
  const int oc = threadIdx.x >> 2, orow = (threadIdx.x & 3) * 16;
  uint32_t o[4] = {0, 0, 0, 0};
#pragma unroll
  for (int i = 0; i < 16; ++i) o[i >> 2] |= uint32_t(tile[(orow + i) * kTilePitch + oc]) << (8 * (i & 3));
  const int64_t gc = c0 + oc, gr = r0 + orow;
  if (gc >= p.cols) return;
  uint8_t* dst = p.qt + gc * p.rows + gr;
  if (full && (p.rows & 15) == 0) {
    stg16(dst, make_uint4(o[0], o[1], o[2], o[3]));
  } else {
    for (int i = 0; i < 16 && gr + i < p.rows; ++i) dst[i] = static_cast<uint8_t>(o[i >> 2] >> (8 * (i & 3)));
  }
}

/*! \brief Per-row / per-block quantization: segments of `len` elements, `per_row` of them in a row. */
struct SegParams {
  const void* x = nullptr;
  int64_t stride = 0, cols = 0, len = 0, per_row = 0, num_segs = 0;
  int team_log = 0;  //!< 2^team_log threads per segment
  bool small = false;  //!< num_segs < 2^31: segment -> (row, index) with `div`
  FastDivmod div;    //!< divides by per_row
  uint8_t* q = nullptr;
  float* scale = nullptr;
};

template <typename T, int VEC, DType Q>
__global__ void __launch_bounds__(1024) quant_segment_kernel(const __grid_constant__ SegParams p) {
  __shared__ float red[1024 / 32];
  const int ts = 1 << p.team_log, lane = threadIdx.x & (ts - 1);
  const int teams = blockDim.x >> p.team_log, team = threadIdx.x >> p.team_log;
  const int64_t pps = p.len / VEC;  // packets per segment
  const bool fits = pps <= int64_t(ts) * kUnroll;
  const T* x = static_cast<const T*>(p.x);
  for (int64_t base = int64_t(blockIdx.x) * teams; base < p.num_segs; base += int64_t(gridDim.x) * teams) {
    const int64_t seg = base + team;
    const bool valid = seg < p.num_segs;
    int64_t row = 0, s = 0;
    if (valid) {
      if (p.small) {
        uint32_t qq, rr;
        p.div.divmod(static_cast<uint32_t>(seg), qq, rr);
        row = qq, s = rr;
      } else {
        row = seg / p.per_row, s = seg % p.per_row;
      }
    }
    const T* xs = x + row * p.stride + s * p.len;
    uint8_t* qs = p.q + row * p.cols + s * p.len;
    float v[kUnroll][VEC];
    float m = 0.f;
    if (valid) {
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t k = lane + int64_t(u) * ts;
        if (k < pps) {
          load_packet<T, VEC>(xs + k * VEC, v[u]);
#pragma unroll
          for (int j = 0; j < VEC; ++j) m = fmaxf(m, fabsf(v[u][j]));
        }
      }
      if (!fits) {
        for (int64_t k = lane + int64_t(kUnroll) * ts; k < pps; k += ts) {
          float w[VEC];
          load_packet<T, VEC>(xs + k * VEC, w);
#pragma unroll
          for (int j = 0; j < VEC; ++j) m = fmaxf(m, fabsf(w[j]));
        }
      }
    }
    m = ts <= 32 ? group_max(m, ts) : block_max(m, red);
    const QuantScale sc(m, qmax_dev(Q));
    if (!valid) continue;
    if (lane == 0) p.scale[seg] = sc.scale;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = lane + int64_t(u) * ts;
      if (k < pps) store_codes<Q, VEC>(qs + k * VEC, v[u], sc.inv);
    }
    if (!fits) {
      for (int64_t k = lane + int64_t(kUnroll) * ts; k < pps; k += ts) {
        float w[VEC];
        load_packet<T, VEC>(xs + k * VEC, w);
        store_codes<Q, VEC>(qs + k * VEC, w, sc.inv);
      }
    }
  }
}

/*! \brief Writes `count` copies of kMinAmax / qmax (scales of empty groups). */
__global__ void fill_scale_kernel(float* scale, int64_t count, float qmax) {
  const float s = __fdiv_rn(kMinAmax, qmax);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    scale[i] = s;
}

/*! \brief scale = max(amax, kMinAmax) / qmax from a precomputed absmax (empty input with amax_in). */
template <DType Q>
__global__ void scale_from_amax_kernel(const float* amax, float* scale) {
  *scale = QuantScale(*amax, qmax_dev(Q)).scale;
}

/*! \brief out = q * scale over a contiguous [rows, cols] tensor; scale index = element / group (0 per tensor). */
struct DequantParams {
  const uint8_t* q = nullptr;
  void* out = nullptr;
  const float* scale = nullptr;
  int64_t total = 0;      //!< packets
  int64_t group_packets = 0;  //!< packets per scale (0: one scale)
  bool small = false;     //!< total < 2^31: use `div`
  FastDivmod div;         //!< divides by group_packets
};

template <typename T, int VEC, DType Q>
__global__ void __launch_bounds__(kThreads) dequant_kernel(const __grid_constant__ DequantParams p) {
  T* out = static_cast<T*>(p.out);
  for (int64_t k = int64_t(blockIdx.x) * kThreads + threadIdx.x; k < p.total; k += int64_t(gridDim.x) * kThreads) {
    int64_t si = 0;
    if (p.group_packets > 0) si = p.small ? int64_t(p.div.div(static_cast<uint32_t>(k))) : k / p.group_packets;
    const float s = __ldg(p.scale + si);
    uint32_t c[2] = {0u, 0u};
    if constexpr (VEC == 1) {
      c[0] = p.q[k];
    } else if constexpr (VEC == 4) {
      c[0] = *reinterpret_cast<const uint32_t*>(p.q + k * 4);
    } else {
      const uint2 w = *reinterpret_cast<const uint2*>(p.q + k * 8);
      c[0] = w.x, c[1] = w.y;
    }
    float v[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) v[j] = __fmul_rn(dequant_code<Q>((c[j / 4] >> (8 * (j % 4))) & 0xffu), s);
    if constexpr (VEC == 1) {
      Vec<T>::store1(out, k, v[0]);
    } else {
      stg16(out + k * VEC, Vec<T>::pack(v));
    }
  }
}

/*! \brief Calls fn(std::integral_constant<DType, Q>{}) for an 8-bit dtype. */
template <typename Fn>
cudaError_t dispatch_qdtype(DType q, Fn&& fn) {
  switch (q) {
    case DType::kInt8: return fn(std::integral_constant<DType, DType::kInt8>{});
    case DType::kFloat8E4M3: return fn(std::integral_constant<DType, DType::kFloat8E4M3>{});
    case DType::kFloat8E5M2: return fn(std::integral_constant<DType, DType::kFloat8E5M2>{});
    default: return cudaErrorInvalidValue;
  }
}

/*! \brief Calls fn(T{}) for a float input dtype. */
template <typename Fn>
cudaError_t dispatch_float(DType t, Fn&& fn) {
  switch (t) {
    case DType::kFloat32: return fn(float{});
    case DType::kFloat16: return fn(__half{});
    case DType::kBFloat16: return fn(__nv_bfloat16{});
    default: return cudaErrorInvalidValue;
  }
}

/*! \brief Grid of a grid-stride kernel: enough CTAs to fill the GPU a few times over, at most `work` and `cap`. */
cudaError_t stride_grid(int64_t work, int64_t cap, int* grid) {
  int sms = 0;
  HALO_RETURN_IF_ERROR(sm_count(&sms));
  int64_t g = int64_t(sms) * 8;
  if (g > cap) g = cap;
  if (g > work) g = work;
  *grid = static_cast<int>(g < 1 ? 1 : g);
  return cudaSuccess;
}

cudaError_t check_quant_args(const QuantizeArgs& a) {
  if (a.rows < 0 || a.cols < 0 || a.scale == nullptr) return cudaErrorInvalidValue;
  if (a.dtype != DType::kFloat32 && a.dtype != DType::kFloat16 && a.dtype != DType::kBFloat16)
    return cudaErrorInvalidValue;
  if (a.qdtype != DType::kInt8 && a.qdtype != DType::kFloat8E4M3 && a.qdtype != DType::kFloat8E5M2)
    return cudaErrorInvalidValue;
  if (a.granularity == Granularity::kBlock && (a.block <= 0 || a.cols % a.block != 0)) return cudaErrorInvalidValue;
  if (a.granularity != Granularity::kTensor && a.granularity != Granularity::kRow &&
      a.granularity != Granularity::kBlock)
    return cudaErrorInvalidValue;
  return cudaSuccess;
}

template <typename T, DType Q>
cudaError_t quantize_typed(const QuantizeArgs& a, float* partials, cudaStream_t stream) {
  constexpr int V = Vec<T>::kVec;
  const T* x = static_cast<const T*>(a.x);
  uint8_t* q = static_cast<uint8_t*>(a.q);
  const int64_t len = a.granularity == Granularity::kBlock ? a.block : a.cols;
  const bool vec = aligned(x, 16) && aligned(q, V) && a.x_row_stride % V == 0 && len % V == 0;
  if (a.granularity == Granularity::kTensor && (a.qt != nullptr || a.amax_in != nullptr)) {
    // Pass 1 (unless amax_in): partial maxima; pass 2: 64x64 tiles, q and/or qt from one read.
    PacketMap pm;
    pm.stride = a.x_row_stride, pm.flat = a.x_row_stride == a.cols;
    const int width = vec ? V : 1;
    pm.per_row = a.cols / width, pm.total = a.rows * pm.per_row;
    TransposeParams tp;
    tp.x = x, tp.rows = a.rows, tp.cols = a.cols, tp.stride = a.x_row_stride;
    tp.col_tiles = (a.cols + kTile - 1) / kTile;
    const int64_t tiles = tp.col_tiles * ((a.rows + kTile - 1) / kTile);
    if (tiles >= (int64_t(1) << 31)) return cudaErrorInvalidValue;
    tp.q = q, tp.qt = static_cast<uint8_t*>(a.qt), tp.scale = a.scale, tp.amax_in = a.amax_in;
    if (a.amax_in == nullptr) {
      int grid = 0;
      HALO_RETURN_IF_ERROR(
          stride_grid((pm.total + kThreads * kUnroll - 1) / (kThreads * kUnroll), kMaxPartials, &grid));
      if (vec) {
        amax_kernel<T, V><<<grid, kThreads, 0, stream>>>(x, pm, partials);
      } else {
        amax_kernel<T, 1><<<grid, kThreads, 0, stream>>>(x, pm, partials);
      }
      HALO_RETURN_IF_ERROR(cudaPeekAtLastError());
      tp.partials = partials, tp.count = grid;
    }
    // The vector path also needs 16-byte aligned q rows (q row starts are multiples of cols bytes).
    const bool tvec = vec && (q == nullptr || (aligned(q, 16) && a.cols % 16 == 0));
    if (tvec) {
      quant_tensor_t_kernel<T, true, Q><<<static_cast<unsigned>(tiles), kTileThreads, 0, stream>>>(tp);
    } else {
      quant_tensor_t_kernel<T, false, Q><<<static_cast<unsigned>(tiles), kTileThreads, 0, stream>>>(tp);
    }
    return cudaPeekAtLastError();
  }
  if (a.granularity == Granularity::kTensor) {
    PacketMap pm;
    pm.stride = a.x_row_stride, pm.flat = a.x_row_stride == a.cols;
    const int width = vec ? V : 1;
    pm.per_row = a.cols / width, pm.total = a.rows * pm.per_row;
    int grid = 0;
    HALO_RETURN_IF_ERROR(stride_grid((pm.total + kThreads * kUnroll - 1) / (kThreads * kUnroll), kMaxPartials, &grid));
    if (vec) {
      amax_kernel<T, V><<<grid, kThreads, 0, stream>>>(x, pm, partials);
      HALO_RETURN_IF_ERROR(cudaPeekAtLastError());
      quant_tensor_kernel<T, V, Q><<<grid, kThreads, 0, stream>>>(x, pm, partials, grid, q, a.scale);
    } else {
      amax_kernel<T, 1><<<grid, kThreads, 0, stream>>>(x, pm, partials);
      HALO_RETURN_IF_ERROR(cudaPeekAtLastError());
      quant_tensor_kernel<T, 1, Q><<<grid, kThreads, 0, stream>>>(x, pm, partials, grid, q, a.scale);
    }
    return cudaPeekAtLastError();
  }
  SegParams p;
  p.x = x, p.stride = a.x_row_stride, p.cols = a.cols, p.len = len, p.per_row = a.cols / len;
  p.num_segs = a.rows * p.per_row;
  p.small = p.num_segs < (int64_t(1) << 31);
  p.div = FastDivmod(static_cast<uint32_t>(p.per_row));
  p.q = q, p.scale = a.scale;
  const int64_t pps = len / (vec ? V : 1);
  // Team size: one packet a lane for short segments (coalesced), up to kUnroll packets a lane, at most 1024 lanes.
  int64_t ts = 1;
  while (ts < 1024 && ((ts < pps && ts < 32) || ts * kUnroll < pps)) ts *= 2;
  while ((int64_t(1) << p.team_log) < ts) ++p.team_log;
  const int threads = ts > kThreads ? static_cast<int>(ts) : kThreads;
  int grid = 0;
  HALO_RETURN_IF_ERROR(stride_grid((p.num_segs * ts + threads - 1) / threads, int64_t(1) << 30, &grid));
  if (vec) {
    quant_segment_kernel<T, V, Q><<<grid, threads, 0, stream>>>(p);
  } else {
    quant_segment_kernel<T, 1, Q><<<grid, threads, 0, stream>>>(p);
  }
  return cudaPeekAtLastError();
}

template <typename T, DType Q>
cudaError_t dequantize_typed(const QuantizeArgs& a, void* out, cudaStream_t stream) {
  constexpr int V = Vec<T>::kVec;
  const int64_t len = a.granularity == Granularity::kTensor ? 0
                      : a.granularity == Granularity::kBlock ? a.block
                                                               : a.cols;
  const bool vec = aligned(out, 16) && aligned(a.q, V) && a.cols % V == 0 && len % V == 0;
  const int width = vec ? V : 1;
  DequantParams p;
  p.q = static_cast<const uint8_t*>(a.q), p.out = out, p.scale = a.scale;
  p.total = a.rows * a.cols / width;
  p.group_packets = len / width;
  p.small = p.total < (int64_t(1) << 31);
  p.div = FastDivmod(static_cast<uint32_t>(p.group_packets > 0 ? p.group_packets : 1));
  int grid = 0;
  HALO_RETURN_IF_ERROR(stride_grid((p.total + kThreads - 1) / kThreads, int64_t(1) << 30, &grid));
  if (vec) {
    dequant_kernel<T, V, Q><<<grid, kThreads, 0, stream>>>(p);
  } else {
    dequant_kernel<T, 1, Q><<<grid, kThreads, 0, stream>>>(p);
  }
  return cudaPeekAtLastError();
}

}  // namespace
}  // namespace detail

size_t quantize_workspace_size(const QuantizeArgs& args) {
  return args.granularity == Granularity::kTensor ? detail::kMaxPartials * sizeof(float) : 0;
}

cudaError_t quantize(const QuantizeArgs& args, void* workspace, cudaStream_t stream) {
  HALO_RETURN_IF_ERROR(detail::check_quant_args(args));
  const int64_t total = args.rows * args.cols;
  if (total == 0) {
    // Empty groups still get a scale: per tensor [1], per row [rows]; per block has no group.
    const int64_t count = args.granularity == Granularity::kTensor ? 1
                          : args.granularity == Granularity::kRow  ? args.rows
                                                                   : 0;
    if (count == 0) return cudaSuccess;
    if (args.granularity == Granularity::kTensor && args.amax_in != nullptr) {
      return detail::dispatch_qdtype(args.qdtype, [&](auto q) {
        detail::scale_from_amax_kernel<decltype(q)::value><<<1, 1, 0, stream>>>(args.amax_in, args.scale);
        return cudaPeekAtLastError();
      });
    }
    detail::fill_scale_kernel<<<1, 256, 0, stream>>>(args.scale, count, qmax_of(args.qdtype));
    return cudaPeekAtLastError();
  }
  if (args.granularity != Granularity::kTensor && (args.qt != nullptr || args.amax_in != nullptr))
    return cudaErrorInvalidValue;  // qt and amax_in are per tensor only
  if (args.x == nullptr || (args.q == nullptr && args.qt == nullptr) || args.x_row_stride < args.cols)
    return cudaErrorInvalidValue;
  if (args.granularity == Granularity::kTensor && workspace == nullptr) return cudaErrorInvalidValue;
  return detail::dispatch_float(args.dtype, [&](auto t) {
    return detail::dispatch_qdtype(args.qdtype, [&](auto q) {
      return detail::quantize_typed<decltype(t), decltype(q)::value>(args, static_cast<float*>(workspace), stream);
    });
  });
}

cudaError_t dequantize(const QuantizeArgs& args, void* out, cudaStream_t stream) {
  HALO_RETURN_IF_ERROR(detail::check_quant_args(args));
  if (args.rows * args.cols == 0) return cudaSuccess;
  if (out == nullptr || args.q == nullptr) return cudaErrorInvalidValue;
  return detail::dispatch_float(args.dtype, [&](auto t) {
    return detail::dispatch_qdtype(args.qdtype, [&](auto q) {
      return detail::dequantize_typed<decltype(t), decltype(q)::value>(args, out, stream);
    });
  });
}

}  // namespace halo
