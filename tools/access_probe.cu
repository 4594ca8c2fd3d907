// Read bandwidth of the tile shapes a persistent column-tile kernel (ey_quantize) can use, on E_Y-sized tensors.
//
// ey_quantize's CTA reads a tile of 256 rows x 128 bytes (64 bf16 columns): one 128-byte segment per row, every
// row a different DRAM page. This probe measures how fast the same persistent, register-prefetching loop reads a
// [rows, row_bytes] tensor when the per-row segment is 128, 256 or 512 bytes (same registers: 32 words a thread),
// and when the tile is one contiguous span, with and without writing half as many bytes back in the same layout
// (ey_quantize's pass 2 writes 1 byte per bf16 element). L2 is flushed before each timed call.
// Build and run (no torch): nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a tools/access_probe.cu -o /tmp/ap
//                            /tmp/ap [rows=8192] [row_bytes=28672]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                   \
  do {                                                                          \
    cudaError_t e_ = (x);                                                       \
    if (e_ != cudaSuccess) {                                                    \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                             \
    }                                                                           \
  } while (0)

template <int B> struct VecOf;
template <> struct VecOf<4> { using T = uint32_t; };
template <> struct VecOf<8> { using T = uint2; };
template <> struct VecOf<16> { using T = uint4; };

__device__ __forceinline__ uint32_t fold(uint32_t v) { return v; }
__device__ __forceinline__ uint32_t fold(uint2 v) { return v.x ^ v.y; }
__device__ __forceinline__ uint32_t fold(uint4 v) { return v.x ^ v.y ^ v.z ^ v.w; }

// Tile: 8 warps x RPW rows, 32 lanes x BPL bytes. CONTIG: the tile's rows are consecutive 32*BPL-byte pieces of
// one contiguous span (x viewed as [*, 32*BPL]) instead of row segments of the [rows, row_bytes] tensor.
template <int BPL, int RPW, bool WRITE>
__global__ void __launch_bounds__(256, 2) tile_read(const uint8_t* x, int64_t rows, int64_t row_bytes, uint8_t* out,
                                                    uint32_t* sink) {
  using V = typename VecOf<BPL>::T;
  constexpr int TR = 8 * RPW, TCB = 32 * BPL;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t ncol = row_bytes / TCB, ntiles = (rows / TR) * ncol;
  auto addr = [&](int64_t id, int j) {
    const int64_t r = (id / ncol) * TR + warp * RPW + j, c = (id % ncol) * TCB + lane * BPL;
    return r * row_bytes + c;
  };
  V raw[RPW];
  uint32_t acc = 0;
  int64_t id = blockIdx.x;
  if (id < ntiles)
#pragma unroll
    for (int j = 0; j < RPW; ++j) raw[j] = *reinterpret_cast<const V*>(x + addr(id, j));
  for (; id < ntiles; id += gridDim.x) {
    V cur[RPW];
#pragma unroll
    for (int j = 0; j < RPW; ++j) cur[j] = raw[j];
    if (id + gridDim.x < ntiles)
#pragma unroll
      for (int j = 0; j < RPW; ++j) raw[j] = *reinterpret_cast<const V*>(x + addr(id + gridDim.x, j));
#pragma unroll
    for (int j = 0; j < RPW; ++j) {
      const uint32_t f = fold(cur[j]);
      acc ^= f;
      if constexpr (WRITE) {  // BPL/2 bytes a lane, same layout at half the width
        const int64_t a = addr(id, j) / 2;
        if constexpr (BPL == 4) *reinterpret_cast<uint16_t*>(out + a) = uint16_t(f);
        if constexpr (BPL == 8) *reinterpret_cast<uint32_t*>(out + a) = f;
        if constexpr (BPL == 16) *reinterpret_cast<uint2*>(out + a) = make_uint2(f, f + 1);
      }
    }
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;
}

/*! Median ms of launch() over 20 timed calls after 5 warm-ups, L2 flushed (a 256 MB memset) before each. */
template <class F>
float median_ms(F&& launch, uint8_t* flush, size_t flush_bytes) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<float> ts;
  for (int it = 0; it < 25; ++it) {
    CK(cudaMemsetAsync(flush, it, flush_bytes));
    CK(cudaEventRecord(a));
    launch();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    if (it >= 5) ts.push_back(ms);
  }
  CK(cudaGetLastError());
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  std::sort(ts.begin(), ts.end());
  return ts[ts.size() / 2];
}

template <int BPL, int RPW, bool WRITE>
float run(const char* name, const uint8_t* x, int64_t rows, int64_t row_bytes, uint8_t* out, uint32_t* sink,
          uint8_t* flush, size_t flush_bytes, int sms) {
  auto k = tile_read<BPL, RPW, WRITE>;
  int per_sm = 0;
  CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, 256, 0));
  const int64_t tiles = (rows / (8 * RPW)) * (row_bytes / (32 * BPL));
  const int grid = int(std::min<int64_t>(tiles, int64_t(per_sm) * sms));
  const float ms = median_ms([&] { k<<<grid, 256>>>(x, rows, row_bytes, out, sink); }, flush, flush_bytes);
  const double bytes = double(rows) * row_bytes * (WRITE ? 1.5 : 1.0);
  std::printf("%-44s segment %4d B  rows %6lld x %6lld B  grid %5d  %.4f ms  %.3f TB/s\n", name, 32 * BPL,
              (long long)rows, (long long)row_bytes, grid, ms, bytes / ms / 1e9);
  return ms;
}

int main(int argc, char** argv) {
  const int64_t rows = argc > 1 ? std::atoll(argv[1]) : 8192, row_bytes = argc > 2 ? std::atoll(argv[2]) : 28672;
  const size_t n = size_t(rows) * row_bytes, flush_bytes = size_t(256) << 20;
  uint8_t *x, *out, *flush, *cpy;
  uint32_t* sink;
  CK(cudaMalloc(&x, n));
  CK(cudaMalloc(&cpy, n));
  CK(cudaMalloc(&out, n));
  CK(cudaMalloc(&flush, flush_bytes));
  CK(cudaMalloc(&sink, 4));
  CK(cudaMemset(x, 1, n));
  int dev = 0, sms = 0;
  CK(cudaGetDevice(&dev));
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, dev));
  std::printf("device %s, %d SMs\n", prop.name, sms);
  // copy reference: read n + write n
  const float copy_ms =
      median_ms([&] { CK(cudaMemcpyAsync(cpy, x, n, cudaMemcpyDeviceToDevice)); }, flush, flush_bytes);
  std::printf("%-44s %.4f ms  %.3f TB/s (read + write)\n", "cudaMemcpy D2D", copy_ms, 2.0 * n / copy_ms / 1e9);
  for (int rep = 0; rep < 2; ++rep) {
    run<4, 32, false>("read, 256 rows x 128 B (ey_quantize today)",
        x, rows, row_bytes, out, sink, flush, flush_bytes, sms);
    run<8, 16, false>("read, 128 rows x 256 B", x, rows, row_bytes, out, sink, flush, flush_bytes, sms);
    run<16, 8, false>("read, 64 rows x 512 B", x, rows, row_bytes, out, sink, flush, flush_bytes, sms);
    run<16, 8, false>("read, contiguous 32 KB tiles",
        x, rows * (row_bytes / 512), 512, out, sink, flush, flush_bytes, sms);
    run<4, 32, true>("read + write half, 256 rows x 128 B", x, rows, row_bytes, out, sink, flush, flush_bytes, sms);
    run<8, 16, true>("read + write half, 128 rows x 256 B", x, rows, row_bytes, out, sink, flush, flush_bytes, sms);
    run<16, 8, true>("read + write half, 64 rows x 512 B", x, rows, row_bytes, out, sink, flush, flush_bytes, sms);
    run<16, 8, true>("read + write half, contiguous",
        x, rows * (row_bytes / 512), 512, out, sink, flush, flush_bytes, sms);
  }
  return 0;
}
