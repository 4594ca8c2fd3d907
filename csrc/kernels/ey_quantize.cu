/*!
 * \file ey_quantize.cu
 * \brief ey_quantize (ey_quantize.h): HALO-2's two 8-bit copies of E_Y, the token-rotated per-tensor Q(R E_Y) and
 * the per-column-scaled transpose Q(E_Y)^T, from two reads of E_Y.
 *
 * One CTA (256 threads) owns a tile of `block` rows (one token block) x kTileCols columns, staged in shared memory
 * as float32 (row pitch kTileCols + 1). Pass 1: column absmax of the tile (atomic max into the workspace), then
 * signs, the Walsh-Hadamard butterflies along the rows (log2(block) stages over shared memory) and the absmax of
 * the rotated tile (atomic max into workspace[cols]). Pass 2: the same load; qt codes from the untransformed tile
 * (4 consecutive tokens of one column per thread: 4-byte stores along qt's rows), then the same rotation and the
 * q_rot codes (4 consecutive columns per thread). The butterflies use only additions and subtractions and the
 * normalisation is one multiply by 1/sqrt(block) after them, as in the CPU reference, so both give the same bits.
 */
#include <cuda_runtime.h>

#include <cmath>

#include "ey_quantize.h"
#include "quant_utils.cuh"

namespace halo {
namespace {

using detail::QuantScale;
using detail::Vec;
using detail::ldg16;
using detail::qmax_dev;
using detail::quant_code;

constexpr int kTileCols = 32;               // columns per CTA tile
constexpr int kPitch = kTileCols + 1;       // shared-memory row pitch (floats)
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

/*! \brief tile[i][c] = ey[r0 + i][c0 + c] as float (0 past cols). */
template <typename T>
__device__ __forceinline__ void load_tile(const EyQuantArgs& a, float* tile, int64_t r0, int64_t c0, int b) {
  constexpr int V = Vec<T>::kVec;
  constexpr int VPR = kTileCols / V;
  const T* ey = static_cast<const T*>(a.ey);
  for (int p = threadIdx.x; p < b * VPR; p += kThreads) {
    const int i = p / VPR, v = p % VPR;
    const int64_t c = c0 + static_cast<int64_t>(v) * V;
    float f[V];
    if (c < a.cols) {
      Vec<T>::unpack(ldg16(ey + (r0 + i) * a.ld + c), f);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) f[k] = 0.0f;
    }
#pragma unroll
    for (int k = 0; k < V; ++k) tile[i * kPitch + v * V + k] = f[k];
  }
}

/*! \brief tile <- H_b (signs o tile) along the rows, unnormalised (additions only). */
__device__ __forceinline__ void rotate_tile(float* tile, const float* signs, int logb) {
  const int b = 1 << logb;
  if (signs != nullptr) {
    for (int p = threadIdx.x; p < b * kTileCols; p += kThreads) {
      const int i = p / kTileCols, c = p % kTileCols;
      tile[i * kPitch + c] *= signs[i];
    }
    __syncthreads();
  }
  for (int lh = 0; lh < logb; ++lh) {
    const int h = 1 << lh;
    for (int p = threadIdx.x; p < (b / 2) * kTileCols; p += kThreads) {
      const int c = p % kTileCols, j = p / kTileCols;
      const int i = ((j >> lh) << (lh + 1)) | (j & (h - 1));
      const float x = tile[i * kPitch + c], y = tile[(i + h) * kPitch + c];
      tile[i * kPitch + c] = __fadd_rn(x, y);
      tile[(i + h) * kPitch + c] = __fsub_rn(x, y);
    }
    __syncthreads();
  }
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/*! \brief Non-negative float atomic max through its bit pattern (ordered like unsigned integers). */
__device__ __forceinline__ void atomic_max_pos(float* p, float v) {
  atomicMax(reinterpret_cast<unsigned int*>(p), __float_as_uint(v));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ey_amax_kernel(EyQuantArgs a, float* ws, int logb, float rs) {
  extern __shared__ float tile[];
  __shared__ float red[kWarps][kTileCols];
  const int b = 1 << logb;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * b, c0 = static_cast<int64_t>(blockIdx.y) * kTileCols;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  load_tile<T>(a, tile, r0, c0, b);
  __syncthreads();
  if (a.qt != nullptr) {  // column absmax: warp w takes rows w, w + 8, ...; lane = column
    float m = 0.0f;
    for (int i = warp; i < b; i += kWarps) m = fmaxf(m, fabsf(tile[i * kPitch + lane]));
    red[warp][lane] = m;
    __syncthreads();
    if (warp == 0) {
#pragma unroll
      for (int w = 1; w < kWarps; ++w) m = fmaxf(m, red[w][lane]);
      if (c0 + lane < a.cols) atomic_max_pos(ws + c0 + lane, m);
    }
    __syncthreads();
  }
  if (a.q_rot != nullptr) {
    rotate_tile(tile, a.signs, logb);
    float m = 0.0f;
    for (int p = threadIdx.x; p < b * kTileCols; p += kThreads)
      m = fmaxf(m, fabsf(__fmul_rn(tile[(p / kTileCols) * kPitch + p % kTileCols], rs)));
    m = warp_max(m);
    if (lane == 0) red[warp][0] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
#pragma unroll
      for (int w = 1; w < kWarps; ++w) m = fmaxf(m, red[w][0]);
      atomic_max_pos(ws + a.cols, m);
    }
  }
}

template <typename T, DType Q>
__global__ void __launch_bounds__(kThreads) ey_quant_kernel(EyQuantArgs a, const float* ws, int logb, float rs) {
  extern __shared__ float tile[];
  const int b = 1 << logb;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * b, c0 = static_cast<int64_t>(blockIdx.y) * kTileCols;
  constexpr float qmax = qmax_dev(Q);
  load_tile<T>(a, tile, r0, c0, b);
  __syncthreads();
  if (a.qt != nullptr) {
    if (blockIdx.x == 0 && threadIdx.x < kTileCols && c0 + threadIdx.x < a.cols)
      a.scale_t[c0 + threadIdx.x] = QuantScale(ws[c0 + threadIdx.x], qmax).scale;
    // thread p: column c = p / (b/4), tokens 4*iq .. 4*iq+3 -> one 4-byte word of qt's row c
    const int quads = b / 4;
    for (int p = threadIdx.x; p < quads * kTileCols; p += kThreads) {
      const int c = p / quads, iq = p % quads;
      if (c0 + c >= a.cols) continue;
      const float inv = QuantScale(ws[c0 + c], qmax).inv;
      uint32_t w = 0;
#pragma unroll
      for (int k = 0; k < 4; ++k) w |= quant_code<Q>(tile[(4 * iq + k) * kPitch + c], inv) << (8 * k);
      *reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(a.qt) + (c0 + c) * a.rows + r0 + 4 * iq) = w;
    }
    __syncthreads();
  }
  if (a.q_rot != nullptr) {
    const QuantScale qs(ws[a.cols], qmax);
    if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) a.scale_rot[0] = qs.scale;
    rotate_tile(tile, a.signs, logb);
    // thread p: row i = p / 8, columns 4*cq .. 4*cq+3 -> one 4-byte word of q_rot's row r0 + i
    for (int p = threadIdx.x; p < b * (kTileCols / 4); p += kThreads) {
      const int i = p / (kTileCols / 4), cq = p % (kTileCols / 4);
      if (c0 + 4 * cq >= a.cols) continue;
      uint32_t w = 0;
#pragma unroll
      for (int k = 0; k < 4; ++k)
        w |= quant_code<Q>(__fmul_rn(tile[i * kPitch + 4 * cq + k], rs), qs.inv) << (8 * k);
      *reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(a.q_rot) + (r0 + i) * a.cols + c0 + 4 * cq) = w;
    }
  }
}

template <typename T>
cudaError_t launch(const EyQuantArgs& a, float* ws, cudaStream_t stream) {
  int logb = 0;
  while ((1 << logb) < a.block) ++logb;
  const float rs = static_cast<float>(1.0 / std::sqrt(static_cast<double>(a.block)));
  const dim3 grid(static_cast<unsigned>(a.rows / a.block), static_cast<unsigned>((a.cols + kTileCols - 1) / kTileCols));
  const size_t smem = static_cast<size_t>(a.block) * kPitch * sizeof(float);
  ey_amax_kernel<T><<<grid, kThreads, smem, stream>>>(a, ws, logb, rs);
  HALO_RETURN_IF_ERROR(cudaGetLastError());
  switch (a.qdtype) {
    case DType::kInt8: ey_quant_kernel<T, DType::kInt8><<<grid, kThreads, smem, stream>>>(a, ws, logb, rs); break;
    case DType::kFloat8E4M3:
      ey_quant_kernel<T, DType::kFloat8E4M3><<<grid, kThreads, smem, stream>>>(a, ws, logb, rs);
      break;
    case DType::kFloat8E5M2:
      ey_quant_kernel<T, DType::kFloat8E5M2><<<grid, kThreads, smem, stream>>>(a, ws, logb, rs);
      break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace

size_t ey_quantize_workspace_size(const EyQuantArgs& args) { return static_cast<size_t>(args.cols + 1) * sizeof(float); }

cudaError_t ey_quantize(const EyQuantArgs& a, void* workspace, cudaStream_t stream) {
  if (a.rows == 0 || a.cols == 0 || (a.q_rot == nullptr && a.qt == nullptr)) return cudaSuccess;
  if (a.block < 16 || a.block > kEyMaxBlock || (a.block & (a.block - 1)) != 0 || a.rows % a.block != 0 ||
      a.cols % 16 != 0 || a.rows / a.block > 0x7fffffff || (a.cols + kTileCols - 1) / kTileCols > 65535)
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
