/*!
 * \file ey_quantize.cu
 * \brief ey_quantize (ey_quantize.h): HALO-2's two 8-bit copies of E_Y, the token-rotated per-tensor Q(R E_Y) and
 * the per-column-scaled transpose Q(E_Y)^T, from two reads of E_Y.
 *
 * Tile and thread layout. One CTA (256 threads, 8 warps) owns 256 rows (tokens) x 64 columns of E_Y. Lane l of warp
 * w holds columns 2l, 2l+1 of rows 32w .. 32w+31 in registers (x[j][e], j = row - 32w): a warp reads 128
 * contiguous bytes (bf16) of each of its 32 rows, and a thread's 32 rows of one column are 32 consecutive bytes of
 * one row of qt, staged in shared memory and written out as 256-byte runs of qt rows (pass 2).
 *
 * The rotation along the rows (H_b diag(signs), b = 2^LOGB <= 256) runs in two steps:
 *  - butterflies over bits 0..min(LOGB,5)-1 of the row index inside each thread's registers (no communication);
 *  - for LOGB > 5, butterflies over bits 5..LOGB-1 (the G = b/32 warps of a token block) after one exchange through
 *    shared memory (float32, 256 x 64, row pitch 256 B): thread t then holds 4 consecutive columns (float4,
 *    quarter-warps read 128 contiguous bytes: no bank conflicts) of the G rows 32(gG+k)+j, k = 0..G-1.
 * The stages run from the lowest bit to the highest, as in the CPU reference, and the normalisation is one multiply
 * by 1/sqrt(b) after them, so both give the same bits. The q_rot codes are written from the exchanged layout (4
 * consecutive columns per thread: 4-byte stores, 64 contiguous bytes per row per half-warp).
 *
 * Pass 1 reduces the column absmaxes (over the tile's rows, then one atomic max per column per tile) and the absmax
 * of the rotated tensor (a register maximum over the CTA's tiles, one atomic max per CTA). Pass 2 loads and
 * transforms again and writes both outputs.
 *
 * Both passes are persistent (two CTAs per SM, tiles in column-fastest order; pass 2 walks them backwards, so it
 * starts on the tiles pass 1 read last, which L2 still holds) and keep the next tile's loads in
 * flight while a tile is transformed and stored: for 16-bit inputs a thread's 32 raw words are reloaded for tile
 * i + grid as soon as tile i has been unpacked into floats (up to 64 KB of loads in flight per SM). The first
 * version (one tile per CTA, load -> barrier -> transform -> store) kept loads in flight only at the start of each
 * CTA and ran at 0.33 of its byte bound on an H100.
 */
#include <cuda_runtime.h>

#include <cmath>

#include "ey_quantize.h"
#include "quant_utils.cuh"

namespace halo {
namespace {

using detail::QuantScale;
using detail::qmax_dev;
using detail::quant4;

constexpr int kTileRows = 256;                // rows (tokens) per CTA
constexpr int kTileCols = 64;                 // columns per CTA
constexpr int kThreads = 256;                 // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerThread = kTileRows / kWarps;   // 32 consecutive rows per thread
constexpr int kQuads = kTileCols / 4;         // float4 column groups per tile row (16)
constexpr size_t kExchangeBytes = size_t(kTileRows) * kTileCols * sizeof(float);  // 64 KB
constexpr size_t kQtStageBytes = size_t(kTileRows) * kTileCols;                    // 16 KB of qt codes (pass 2)
static_assert(kRowsPerThread == 32 && kQuads == 16, "the layout below assumes 32 rows per thread, 16 quads");

/*!
 * \brief Two consecutive elements of T as one raw word (4 bytes for 16-bit T, 8 for float32), loaded through the
 * read-only path, and their float values.
 */
template <typename T>
struct Pair;
template <>
struct Pair<float> {
  using Raw = uint2;
  __device__ __forceinline__ static Raw load(const float* p) { return __ldg(reinterpret_cast<const uint2*>(p)); }
  __device__ __forceinline__ static Raw zero() { return make_uint2(0u, 0u); }
  __device__ __forceinline__ static void unpack(const Raw& r, float& a, float& b) {
    a = __uint_as_float(r.x);
    b = __uint_as_float(r.y);
  }
};
template <>
struct Pair<__nv_bfloat16> {
  using Raw = uint32_t;
  __device__ __forceinline__ static Raw load(const __nv_bfloat16* p) {
    return __ldg(reinterpret_cast<const unsigned int*>(p));
  }
  __device__ __forceinline__ static Raw zero() { return 0u; }
  __device__ __forceinline__ static void unpack(const Raw& r, float& a, float& b) {
    a = __uint_as_float(r << 16);
    b = __uint_as_float(r & 0xffff0000u);
  }
};
template <>
struct Pair<__half> {
  using Raw = uint32_t;
  __device__ __forceinline__ static Raw load(const __half* p) { return __ldg(reinterpret_cast<const unsigned int*>(p)); }
  __device__ __forceinline__ static Raw zero() { return 0u; }
  __device__ __forceinline__ static void unpack(const Raw& r, float& a, float& b) {
    __half2 h;
    *reinterpret_cast<uint32_t*>(&h) = r;
    const float2 f = __half22float2(h);
    a = f.x;
    b = f.y;
  }
};

/*!
 * \brief Tile geometry of a launch: column tiles (a fast divisor) and the tile count (< 2^31), computed on the host.
 */
struct EyTiles {
  detail::FastDivmod ncol;  //!< column tiles per row tile
  uint32_t ntiles = 0;      //!< row tiles x column tiles
};

/*!
 * \brief raw[j] = ey[r + j][c, c + 1] for j < 32 (zero for rows >= rows or columns >= cols). cols is a multiple of
 * 16, so a thread's pair of columns is all in or all out.
 *
 * One pointer steps by the row stride (a 64-bit add a row) and one 32-bit compare a row checks the count of valid
 * rows. With a 64-bit multiply and a 64-bit bounds check per row the address arithmetic was ~12 instructions a load,
 * a quarter of pass 1's instructions; without it pass 1 took 102 instead of 131 us at 8192 x 14336 on H100 (pass 2
 * is limited elsewhere: notes/halo_linear.md, eleventh session).
 */
template <typename T>
__device__ __forceinline__ void load_rows(const EyQuantArgs& a, int64_t r, int64_t c,
                                          typename Pair<T>::Raw (&raw)[32]) {
  // The stride goes through an opaque move: otherwise the compiler hoists the 32 row offsets out of the tile loop
  // (64 registers), and pass 2 spills them.
  int64_t ld;
  asm volatile("mov.b64 %0, %1;" : "=l"(ld) : "l"(a.ld));
  const T* p = static_cast<const T*>(a.ey) + r * ld + c;
  const int valid = c < a.cols ? static_cast<int>(a.rows - r < 32 ? a.rows - r : 32) : 0;  // rows to load
#pragma unroll
  for (int j = 0; j < 32; ++j, p += ld) raw[j] = j < valid ? Pair<T>::load(p) : Pair<T>::zero();
}

template <typename T>
__device__ __forceinline__ void unpack_rows(const typename Pair<T>::Raw (&raw)[32], float (&x)[32][2]) {
#pragma unroll
  for (int j = 0; j < 32; ++j) Pair<T>::unpack(raw[j], x[j][0], x[j][1]);
}

/*!
 * \brief The tiles of a persistent CTA (column-fastest order, or its reverse) with the next tile's loads in flight: calls
 * body(r0, c0, x) for each tile, x = the thread's 32 x 2 values. For 16-bit T the loads of tile i + grid are
 * issued right after tile i is unpacked (raw words: 32 registers); float32 loads each tile when it starts (its raw
 * words would need 64 more registers).
 */
template <bool REVERSE, typename T, typename Body>
__device__ __forceinline__ void for_each_tile(const EyQuantArgs& a, const EyTiles& tl, Body&& body) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const uint32_t ntiles = tl.ntiles;
  auto origin = [&](uint32_t id, int64_t& r0, int64_t& c0) {
    if (REVERSE) id = ntiles - 1 - id;
    uint32_t rt, ct;
    tl.ncol.divmod(id, rt, ct);
    r0 = int64_t(rt) * kTileRows;
    c0 = int64_t(ct) * kTileCols;
  };
  constexpr bool kPrefetch = sizeof(T) == 2;
  typename Pair<T>::Raw raw[32];
  uint32_t id = blockIdx.x;
  int64_t r0, c0;
  if (kPrefetch && id < ntiles) {
    origin(id, r0, c0);
    load_rows<T>(a, r0 + warp * 32, c0 + 2 * lane, raw);
  }
  for (; id < ntiles; id += gridDim.x) {
    origin(id, r0, c0);
    if (!kPrefetch) load_rows<T>(a, r0 + warp * 32, c0 + 2 * lane, raw);
    float x[32][2];
    unpack_rows<T>(raw, x);
    if (kPrefetch && id + gridDim.x < ntiles) {
      int64_t nr0, nc0;
      origin(id + gridDim.x, nr0, nc0);
      load_rows<T>(a, nr0 + warp * 32, nc0 + 2 * lane, raw);
    }
    body(r0, c0, x);
  }
}

/*!
 * \brief Signs, then the butterflies over the row bits a thread holds (bits 0 .. min(LOGB, 5) - 1), unnormalised.
 * `sgn` is the block's sign vector in shared memory (nullptr: no signs); rows 32w .. 32w+31 of the tile are rows
 * (32w mod b) + j of their token block.
 */
template <int LOGB>
__device__ __forceinline__ void rotate_local(float (&x)[32][2], const float* sgn, int warp) {
  constexpr int B = 1 << LOGB;
  if (sgn != nullptr) {
    const int base = LOGB > 5 ? (warp * 32) & (B - 1) : 0;
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const float s = sgn[base + (j & (B - 1))];
      x[j][0] = __fmul_rn(x[j][0], s);
      x[j][1] = __fmul_rn(x[j][1], s);
    }
  }
  constexpr int kLocal = LOGB < 5 ? LOGB : 5;
#pragma unroll
  for (int lh = 0; lh < kLocal; ++lh) {
    const int h = 1 << lh;
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      if ((j & h) == 0) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float u = x[j][e], v = x[j + h][e];
          x[j][e] = __fadd_rn(u, v);
          x[j + h][e] = __fsub_rn(u, v);
        }
      }
    }
  }
}

/*! \brief Writes the thread's registers to the exchange tile (float32 [256][64]). */
__device__ __forceinline__ void store_exchange(float2* tile, const float (&x)[32][2], int warp, int lane) {
#pragma unroll
  for (int j = 0; j < 32; ++j) tile[(warp * 32 + j) * (kTileCols / 2) + lane] = make_float2(x[j][0], x[j][1]);
}

__device__ __forceinline__ float4 f4_add(const float4& u, const float4& v) {
  return make_float4(__fadd_rn(u.x, v.x), __fadd_rn(u.y, v.y), __fadd_rn(u.z, v.z), __fadd_rn(u.w, v.w));
}
__device__ __forceinline__ float4 f4_sub(const float4& u, const float4& v) {
  return make_float4(__fsub_rn(u.x, v.x), __fsub_rn(u.y, v.y), __fsub_rn(u.z, v.z), __fsub_rn(u.w, v.w));
}
__device__ __forceinline__ float4 f4_mul(const float4& u, float s) {
  return make_float4(__fmul_rn(u.x, s), __fmul_rn(u.y, s), __fmul_rn(u.z, s), __fmul_rn(u.w, s));
}
__device__ __forceinline__ float f4_absmax(const float4& u) {
  return fmaxf(fmaxf(fabsf(u.x), fabsf(u.y)), fmaxf(fabsf(u.z), fabsf(u.w)));
}

/*!
 * \brief Reads the exchange tile back with thread t holding quad q = t % 16 (columns 4q .. 4q+3) of the G rows
 * 32(gG+k)+j (k = 0..G-1, G = max(b/32, 1)) for its row sets s = t/16 + 16i (g = s/32, j = s%32), runs the
 * butterflies over row bits 5..LOGB-1 and calls f(row, quad, value) for each of its 64 values, unnormalised.
 */
template <int LOGB, typename F>
__device__ __forceinline__ void rotate_exchanged(const float4* tile, F&& f) {
  constexpr int G = LOGB > 5 ? 1 << (LOGB - 5) : 1;
  const int q = threadIdx.x % kQuads, s0 = threadIdx.x / kQuads;
#pragma unroll
  for (int i = 0; i < 16 / G; ++i) {
    const int s = s0 + kQuads * i, g = s / 32, j = s % 32;
    float4 v[G];
#pragma unroll
    for (int k = 0; k < G; ++k) v[k] = tile[(32 * (g * G + k) + j) * kQuads + q];
#pragma unroll
    for (int h = 1; h < G; h <<= 1) {
#pragma unroll
      for (int k = 0; k < G; ++k) {
        if ((k & h) == 0) {
          const float4 u = v[k], w = v[k + h];
          v[k] = f4_add(u, w);
          v[k + h] = f4_sub(u, w);
        }
      }
    }
#pragma unroll
    for (int k = 0; k < G; ++k) f(32 * (g * G + k) + j, q, v[k]);
  }
}

/*! \brief Non-negative float atomic max through its bit pattern (ordered like unsigned integers). */
__device__ __forceinline__ void atomic_max_pos(float* p, float v) {
  atomicMax(reinterpret_cast<unsigned int*>(p), __float_as_uint(v));
}

/*! \brief The block's signs into shared memory (nullptr when there are none). Caller synchronises. */
template <int LOGB>
__device__ __forceinline__ const float* stage_signs(const float* signs, float* sgn) {
  if (signs == nullptr) return nullptr;
  if (threadIdx.x < (1 << LOGB)) sgn[threadIdx.x] = signs[threadIdx.x];
  return sgn;
}

/*!
 * \brief Pass 1: ws[c] = max over rows |ey[:, c]| (if qt), ws[cols] = max |R ey| (if q_rot), as atomic maxima.
 * Two barriers per tile: after the column maxima / exchange tile are written, and after they are read. The maximum
 * of the rotated values is taken before the normalisation and multiplied by 1/sqrt(b) once per thread at the end:
 * rounding is monotonic, so that is the maximum of the normalised values pass 2 quantizes, bit for bit, for one
 * multiply per thread instead of one per element.
 */
template <typename T, int LOGB>
__global__ void __launch_bounds__(kThreads, 2) ey_amax_kernel(const __grid_constant__ EyQuantArgs a,
                                                              const __grid_constant__ EyTiles tl, float* ws, float rs) {
  extern __shared__ float4 exchange[];
  __shared__ float sgn_s[kEyMaxBlock];
  __shared__ float col_red[kWarps][kTileCols];
  __shared__ float rot_red[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float* sgn = stage_signs<LOGB>(a.signs, sgn_s);
  __syncthreads();  // sgn_s
  float mrot = 0.0f;  // absmax of this thread's rotated values (before the 1/sqrt(b)) over all its tiles
  for_each_tile<false, T>(a, tl, [&](int64_t, int64_t c0, float (&x)[32][2]) {
    if (a.qt != nullptr) {
      float m0 = 0.0f, m1 = 0.0f;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        m0 = fmaxf(m0, fabsf(x[j][0]));
        m1 = fmaxf(m1, fabsf(x[j][1]));
      }
      col_red[warp][2 * lane] = m0;
      col_red[warp][2 * lane + 1] = m1;
    }
    if (a.q_rot != nullptr) {
      rotate_local<LOGB>(x, sgn, warp);
      if constexpr (LOGB <= 5) {
#pragma unroll
        for (int j = 0; j < 32; ++j)
          mrot = fmaxf(mrot, fmaxf(fabsf(x[j][0]), fabsf(x[j][1])));
      } else {
        store_exchange(reinterpret_cast<float2*>(exchange), x, warp, lane);
      }
    }
    __syncthreads();
    if (a.qt != nullptr && threadIdx.x < kTileCols && c0 + threadIdx.x < a.cols) {
      float m = col_red[0][threadIdx.x];
#pragma unroll
      for (int w = 1; w < kWarps; ++w) m = fmaxf(m, col_red[w][threadIdx.x]);
      atomic_max_pos(ws + c0 + threadIdx.x, m);
    }
    if constexpr (LOGB > 5) {
      if (a.q_rot != nullptr)
        rotate_exchanged<LOGB>(exchange, [&](int, int, const float4& v) { mrot = fmaxf(mrot, f4_absmax(v)); });
    }
    __syncthreads();
  });
  if (a.q_rot != nullptr) {
    mrot = detail::group_max(__fmul_rn(mrot, rs), 32);
    if (lane == 0) rot_red[warp] = mrot;
    __syncthreads();
    if (threadIdx.x == 0) {
      float m = rot_red[0];
#pragma unroll
      for (int w = 1; w < kWarps; ++w) m = fmaxf(m, rot_red[w]);
      atomic_max_pos(ws + a.cols, m);
    }
  }
}

/*!
 * \brief Byte offset of the 16-byte chunk `chunk` (0..15) of qt row `row` (0..63) in the qt staging tile (64 rows of
 * 256 bytes: the tile's 256 tokens of one column). The chunk index is XORed with bits 1..3 of the row, so that the
 * 8 lanes of a quarter-warp hit 8 different 16-byte bank groups both when they write (rows 2l + e, one chunk) and
 * when they read (one row, chunks 8p .. 8p + 7).
 */
__device__ __forceinline__ int qt_stage_offset(int row, int chunk) {
  return row * kTileRows + 16 * (chunk ^ ((row >> 1) & 7));
}

/*!
 * \brief Pass 2: per tile, the qt codes from the loaded values, then the rotation and the q_rot codes (and the
 * scales, written by the tiles of the first row tile / the first CTA).
 *
 * The qt codes go through shared memory. A thread's codes are 2 x 32 bytes of two qt rows; stored from registers,
 * a warp's 16-byte stores went to 32 different rows (32 half-sector writes an instruction, ~40 % of the L2 sector
 * operations of the pass). Staged, each warp store writes two 256-byte runs of qt rows.
 */
template <typename T, int LOGB, DType Q>
__global__ void __launch_bounds__(kThreads, 2) ey_quant_kernel(const __grid_constant__ EyQuantArgs a,
                                                               const __grid_constant__ EyTiles tl, const float* ws,
                                                               float rs) {
  extern __shared__ float4 exchange[];
  __shared__ float sgn_s[kEyMaxBlock];
  constexpr float qmax = qmax_dev(Q);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float* sgn = stage_signs<LOGB>(a.signs, sgn_s);
  __syncthreads();  // sgn_s
  const float rot_inv = a.q_rot != nullptr ? QuantScale(ws[a.cols], qmax).inv : 0.0f;
  if (a.q_rot != nullptr && blockIdx.x == 0 && threadIdx.x == 0) a.scale_rot[0] = QuantScale(ws[a.cols], qmax).scale;
  uint8_t* q_rot = static_cast<uint8_t*>(a.q_rot);
  // qt staging tile after the exchange tile (at the start of shared memory without q_rot)
  uint8_t* stage = reinterpret_cast<uint8_t*>(exchange) + (a.q_rot != nullptr ? kExchangeBytes : 0);
  for_each_tile<true, T>(a, tl, [&](int64_t r0, int64_t c0, float (&x)[32][2]) {
    const int64_t c = c0 + 2 * lane;
    // The thread index through an opaque move: the staging offsets derived from it are loop-invariant, and hoisted
    // out of the tile loop (with the copy-out offsets below) they spill.
    int tid;
    asm volatile("mov.u32 %0, %%tid.x;" : "=r"(tid));
    if (a.qt != nullptr && c < a.cols) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const QuantScale qs(ws[c + e], qmax);
        if (r0 == 0 && warp == 0) a.scale_t[c + e] = qs.scale;
#pragma unroll
        for (int h = 0; h < 2; ++h) {  // tile rows 32 warp + 16h .. + 15 = chunk 2 warp + h of qt row 2 lane + e
          uint32_t w[4];
#pragma unroll
          for (int k = 0; k < 4; ++k) {
            const float v[4] = {x[16 * h + 4 * k][e], x[16 * h + 4 * k + 1][e], x[16 * h + 4 * k + 2][e],
                                x[16 * h + 4 * k + 3][e]};
            w[k] = quant4<Q>(v, qs.inv);
          }
          *reinterpret_cast<uint4*>(stage + qt_stage_offset(2 * (tid % 32) + e, 2 * (tid / 32) + h)) =
              make_uint4(w[0], w[1], w[2], w[3]);
        }
      }
    }
    if (a.q_rot != nullptr) {
      rotate_local<LOGB>(x, sgn, warp);
      store_exchange(reinterpret_cast<float2*>(exchange), x, warp, lane);
    }
    __syncthreads();
    if (a.q_rot != nullptr) {
      // Row offsets from the tile's origin, with the row pitch through an opaque move: otherwise the compiler
      // hoists the 16 64-bit row offsets of a thread out of the tile loop, and they spill.
      int64_t pitch;
      asm volatile("mov.b64 %0, %1;" : "=l"(pitch) : "l"(a.cols));
      uint8_t* tile_q = q_rot + r0 * pitch + c0;
      const int64_t rows_left = a.rows - r0, cols_left = a.cols - c0;
      rotate_exchanged<LOGB>(exchange, [&](int row, int quad, const float4& v) {
        if (row < rows_left && 4 * quad < cols_left) {
          const float4 sv = f4_mul(v, rs);
          const float f[4] = {sv.x, sv.y, sv.z, sv.w};
          *reinterpret_cast<uint32_t*>(tile_q + row * pitch + 4 * quad) = quant4<Q>(f, rot_inv);
        }
      });
    }
    if (a.qt != nullptr) {
      // thread t copies chunks t + 256 i (qt row = chunk / 16, 16-byte chunk = chunk % 16); rows is a multiple of 16.
      // The qt row pitch through an opaque move too.
      int64_t qld;
      asm volatile("mov.b64 %0, %1;" : "=l"(qld) : "l"(a.rows));
      uint8_t* tile_qt = static_cast<uint8_t*>(a.qt) + c0 * qld + r0;
#pragma unroll
      for (int i = 0; i < kTileCols * kTileRows / 16 / kThreads; ++i) {
        const int idx = tid + kThreads * i, row = idx / 16, chunk = idx % 16;
        if (c0 + row < a.cols && r0 + 16 * chunk < a.rows)
          *reinterpret_cast<uint4*>(tile_qt + row * qld + 16 * chunk) =
              *reinterpret_cast<const uint4*>(stage + qt_stage_offset(row, chunk));
      }
    }
    __syncthreads();  // exchange and staging reads done before the next tile writes them
  });
}

template <typename T, int LOGB>
cudaError_t launch_block(const EyQuantArgs& a, float* ws, cudaStream_t stream) {
  const float rs = static_cast<float>(1.0 / std::sqrt(static_cast<double>(1 << LOGB)));
  const int64_t ncol = (a.cols + kTileCols - 1) / kTileCols;
  const int64_t ntiles = ncol * ((a.rows + kTileRows - 1) / kTileRows);
  if (ntiles >= (int64_t(1) << 31)) return cudaErrorInvalidValue;  // tile indices are 32-bit
  EyTiles tl;
  tl.ncol = detail::FastDivmod(static_cast<uint32_t>(ncol));
  tl.ntiles = static_cast<uint32_t>(ntiles);
  // pass 1 needs the exchange tile only for the cross-warp stages; pass 2 always writes q_rot through it, and qt
  // through its staging tile
  const size_t smem1 = (a.q_rot != nullptr && LOGB > 5) ? kExchangeBytes : 0;
  const size_t smem2 = (a.q_rot != nullptr ? kExchangeBytes : 0) + (a.qt != nullptr ? kQtStageBytes : 0);
  int grid = 0;
  auto k1 = ey_amax_kernel<T, LOGB>;
  HALO_RETURN_IF_ERROR(detail::persistent_grid(k1, kThreads, smem1, ntiles, &grid));
  k1<<<grid, kThreads, smem1, stream>>>(a, tl, ws, rs);
  HALO_RETURN_IF_ERROR(cudaGetLastError());
  auto run2 = [&](auto k2) -> cudaError_t {
    HALO_RETURN_IF_ERROR(detail::persistent_grid(k2, kThreads, smem2, ntiles, &grid));
    k2<<<grid, kThreads, smem2, stream>>>(a, tl, ws, rs);
    return cudaGetLastError();
  };
  switch (a.qdtype) {
    case DType::kInt8: return run2(ey_quant_kernel<T, LOGB, DType::kInt8>);
    case DType::kFloat8E4M3: return run2(ey_quant_kernel<T, LOGB, DType::kFloat8E4M3>);
    case DType::kFloat8E5M2: return run2(ey_quant_kernel<T, LOGB, DType::kFloat8E5M2>);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t launch(const EyQuantArgs& a, float* ws, cudaStream_t stream) {
  switch (a.block) {
    case 1: return launch_block<T, 0>(a, ws, stream);  // no rotation: per-tensor Q(E_Y) (+ per-column Q(E_Y)^T)
    case 2: return launch_block<T, 1>(a, ws, stream);
    case 4: return launch_block<T, 2>(a, ws, stream);
    case 8: return launch_block<T, 3>(a, ws, stream);
    case 16: return launch_block<T, 4>(a, ws, stream);
    case 32: return launch_block<T, 5>(a, ws, stream);
    case 64: return launch_block<T, 6>(a, ws, stream);
    case 128: return launch_block<T, 7>(a, ws, stream);
    case 256: return launch_block<T, 8>(a, ws, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

size_t ey_quantize_workspace_size(const EyQuantArgs& args) { return static_cast<size_t>(args.cols + 1) * sizeof(float); }

cudaError_t ey_quantize(const EyQuantArgs& a, void* workspace, cudaStream_t stream) {
  if (a.rows == 0 || a.cols == 0 || (a.q_rot == nullptr && a.qt == nullptr)) return cudaSuccess;
  if (a.block < 1 || a.block > kEyMaxBlock || (a.block & (a.block - 1)) != 0 || a.rows % a.block != 0 ||
      a.cols % 16 != 0 || (a.qt != nullptr && a.rows % 16 != 0))
    return cudaErrorInvalidValue;
  float* ws = static_cast<float*>(workspace);
  HALO_RETURN_IF_ERROR(cudaMemsetAsync(ws, 0, ey_quantize_workspace_size(a), stream));
  switch (a.dtype) {
    case DType::kFloat32: return launch<float>(a, ws, stream);
    case DType::kFloat16: return launch<__half>(a, ws, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(a, ws, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace halo
