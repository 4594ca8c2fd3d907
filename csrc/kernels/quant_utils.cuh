/*!
 * \file quant_utils.cuh
 * \brief Device helpers shared by the Hadamard and quantization kernels (internal to csrc/kernels/).
 *
 * Vector conversions between 16-byte packets of float32/float16/bfloat16 and float registers, the 8-bit
 * quantization rule of hadamard.h, fast 32-bit division by a run-time constant, cp.async wrappers, block
 * reductions and launch helpers. Everything here compiles for sm_80 and later.
 */
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <utility>
#include <vector>

#include "hadamard.h"

namespace halo::detail {

/*! \brief Checks a CUDA call inside a host function that returns cudaError_t. */
#define HALO_RETURN_IF_ERROR(expr)              \
  do {                                          \
    const cudaError_t halo_err_ = (expr);       \
    if (halo_err_ != cudaSuccess) return halo_err_; \
  } while (0)

// ------------------------------------------------------------------------------------------------------------------
// 16-byte packets of a floating type <-> float registers
// ------------------------------------------------------------------------------------------------------------------

/*! \brief Per-dtype constants and 16-byte packet conversions. kVec elements fill 16 bytes. */
template <typename T>
struct Vec;

template <>
struct Vec<float> {
  static constexpr int kVec = 4, kVecBits = 2;
  __device__ __forceinline__ static void unpack(const uint4& u, float* f) {
    f[0] = __uint_as_float(u.x);
    f[1] = __uint_as_float(u.y);
    f[2] = __uint_as_float(u.z);
    f[3] = __uint_as_float(u.w);
  }
  __device__ __forceinline__ static uint4 pack(const float* f) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
  }
  __device__ __forceinline__ static float load1(const void* p, int64_t i) { return static_cast<const float*>(p)[i]; }
  __device__ __forceinline__ static void store1(void* p, int64_t i, float v) { static_cast<float*>(p)[i] = v; }
};

template <>
struct Vec<__nv_bfloat16> {
  static constexpr int kVec = 8, kVecBits = 3;
  /*! \brief bfloat16 is the upper half of a float32: a shift or a mask per element. */
  __device__ __forceinline__ static void unpack(const uint4& u, float* f) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
  __device__ __forceinline__ static uint32_t pack2(float a, float b) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  __device__ __forceinline__ static uint4 pack(const float* f) {
    return make_uint4(pack2(f[0], f[1]), pack2(f[2], f[3]), pack2(f[4], f[5]), pack2(f[6], f[7]));
  }
  __device__ __forceinline__ static float load1(const void* p, int64_t i) {
    return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  }
  __device__ __forceinline__ static void store1(void* p, int64_t i, float v) {
    static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v);
  }
};

template <>
struct Vec<__half> {
  static constexpr int kVec = 8, kVecBits = 3;
  __device__ __forceinline__ static void unpack(const uint4& u, float* f) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 t = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
      f[2 * i] = t.x;
      f[2 * i + 1] = t.y;
    }
  }
  __device__ __forceinline__ static uint32_t pack2(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  __device__ __forceinline__ static uint4 pack(const float* f) {
    return make_uint4(pack2(f[0], f[1]), pack2(f[2], f[3]), pack2(f[4], f[5]), pack2(f[6], f[7]));
  }
  __device__ __forceinline__ static float load1(const void* p, int64_t i) {
    return __half2float(static_cast<const __half*>(p)[i]);
  }
  __device__ __forceinline__ static void store1(void* p, int64_t i, float v) {
    static_cast<__half*>(p)[i] = __float2half_rn(v);
  }
};

/*! \brief Reads 16 bytes through the read-only (non-coherent) path. */
__device__ __forceinline__ uint4 ldg16(const void* p) { return __ldg(static_cast<const uint4*>(p)); }

/*! \brief Writes 16 bytes to global memory. */
__device__ __forceinline__ void stg16(void* p, const uint4& v) { *static_cast<uint4*>(p) = v; }

// ------------------------------------------------------------------------------------------------------------------
// Quantization rule (hadamard.h): bit-identical to csrc/cpu/dtype_utils.h
// ------------------------------------------------------------------------------------------------------------------

/*! \brief qmax_of() of common.h, usable in device code. */
__host__ __device__ constexpr float qmax_dev(DType t) {
  return t == DType::kInt8 ? 127.0f : t == DType::kFloat8E4M3 ? 448.0f : t == DType::kFloat8E5M2 ? 57344.0f : 0.0f;
}

/*! \brief Scale and inverse scale of a group with absmax `amax`: a' = max(a, kMinAmax), a'/qmax, qmax/a'. */
struct QuantScale {
  float scale, inv;
  __device__ __forceinline__ QuantScale(float amax, float qmax) {
    const float a = amax < kMinAmax ? kMinAmax : amax;  // std::max(amax, kMinAmax) of the CPU reference
    scale = __fdiv_rn(a, qmax);
    inv = __fdiv_rn(qmax, a);
  }
};

/*!
 * \brief One 8-bit code of x * inv by the rule of hadamard.h, equal to the CPU reference's result:
 *  - int8: s = x * inv (one float32 multiply), rint(s) by cvt.rni (round half to even, saturating, NaN -> 0 like
 *    the x86 conversion the CPU ends with), then clamped to [-127, 127] as an integer: identical to rounding the
 *    clamped value, since the bounds are integers;
 *  - fp8: the satfinite RNE conversion of s: saturating to the largest finite value (= qmax for e4m3fn and e5m2)
 *    is the CPU's clamp followed by its RNE conversion; NaN stays NaN.
 */
template <DType Q>
__device__ __forceinline__ uint32_t quant_code(float x, float inv) {
  const float s = __fmul_rn(x, inv);
  if constexpr (Q == DType::kInt8) {
    const int r = max(min(__float2int_rn(s), 127), -127);
    return static_cast<uint32_t>(r) & 0xffu;
  } else {
    return static_cast<uint32_t>(
        __nv_cvt_float_to_fp8(s, __NV_SATFINITE, Q == DType::kFloat8E4M3 ? __NV_E4M3 : __NV_E5M2));
  }
}

/*! \brief Codes of 4 values as one little-endian word (int8: byte permutes; fp8: paired conversions). */
template <DType Q>
__device__ __forceinline__ uint32_t quant4(const float* v, float inv) {
  if constexpr (Q == DType::kInt8) {
    // The rule of quant_code in 2.5 instructions a value instead of 4.75: max.NaN clamps from below (NaN stays NaN),
    // and cvt.rni.s32 + cvt.pack.sat.s8 (which ptxas fuses into one F2IP.S8.F32 per pair) rounds half to even,
    // saturates at 127 and turns NaN into 0, as __float2int_rn does. The old form (cvt.rni, two integer clamps, three
    // byte permutes) ran on the quarter-rate conversion pipe once per value.
    int r[4];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#pragma unroll
    for (int j = 0; j < 4; ++j) r[j] = max(min(__float2int_rn(__fmul_rn(v[j], inv)), 127), -127);
    return __byte_perm(__byte_perm(r[0], r[1], 0x0040), __byte_perm(r[2], r[3], 0x0040), 0x5410);
#else
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float c;
      asm("max.NaN.f32 %0, %1, 0fC2FE0000;" : "=f"(c) : "f"(__fmul_rn(v[j], inv)));  // max(s, -127)
      asm("cvt.rni.s32.f32 %0, %1;" : "=r"(r[j]) : "f"(c));
    }
    // cvt.pack.sat.s8.s32.b32 d, a, b, c: d = (c << 16) | (sat(a) << 8) | sat(b), bytes as little-endian codes.
    uint32_t hi, w;
    asm("cvt.pack.sat.s8.s32.b32 %0, %1, %2, 0;" : "=r"(hi) : "r"(r[3]), "r"(r[2]));
    asm("cvt.pack.sat.s8.s32.b32 %0, %1, %2, %3;" : "=r"(w) : "r"(r[1]), "r"(r[0]), "r"(hi));
    return w;
#endif
  } else {
    constexpr __nv_fp8_interpretation_t kind = Q == DType::kFloat8E4M3 ? __NV_E4M3 : __NV_E5M2;
    const uint32_t lo =
        __nv_cvt_float2_to_fp8x2(make_float2(__fmul_rn(v[0], inv), __fmul_rn(v[1], inv)), __NV_SATFINITE, kind);
    const uint32_t hi =
        __nv_cvt_float2_to_fp8x2(make_float2(__fmul_rn(v[2], inv), __fmul_rn(v[3], inv)), __NV_SATFINITE, kind);
    return lo | (hi << 16);
  }
}

/*! \brief Value of one 8-bit code as float. */
template <DType Q>
__device__ __forceinline__ float dequant_code(uint32_t c) {
  if constexpr (Q == DType::kInt8) {
    return static_cast<float>(static_cast<int8_t>(static_cast<uint8_t>(c)));
  } else {
    const __half_raw h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(c),
                                                 Q == DType::kFloat8E4M3 ? __NV_E4M3 : __NV_E5M2);
    return __half2float(__half(h));
  }
}

// ------------------------------------------------------------------------------------------------------------------
// Integer helpers
// ------------------------------------------------------------------------------------------------------------------

/*!
 * \brief Division of a 32-bit numerator n < 2^31 by a run-time constant d >= 1: q = (umulhi(n, mul) + n) >> shift
 * (the round-up method: mul = floor(2^32 (2^shift - d) / d) + 1, shift = ceil(log2 d)).
 */
struct FastDivmod {
  uint32_t d = 1, mul = 1, shift = 0;
  FastDivmod() = default;
  explicit FastDivmod(uint32_t divisor) : d(divisor) {
    while ((uint64_t(1) << shift) < d) ++shift;
    mul = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - d)) / d + 1);
  }
  __host__ __device__ __forceinline__ uint32_t div(uint32_t n) const {
#ifdef __CUDA_ARCH__
    return (__umulhi(n, mul) + n) >> shift;
#else
    return static_cast<uint32_t>(((uint64_t(n) * mul >> 32) + n) >> shift);
#endif
  }
  /*! \brief q = n / d, r = n - q d. */
  __host__ __device__ __forceinline__ void divmod(uint32_t n, uint32_t& q, uint32_t& r) const {
    q = div(n);
    r = n - q * d;
  }
};

/*! \brief log2 of a power of two, -1 otherwise. */
inline int log2_exact(int64_t v) {
  if (v <= 0 || (v & (v - 1)) != 0) return -1;
  int p = 0;
  while ((int64_t(1) << p) < v) ++p;
  return p;
}

/*! \brief Whether pointer p is aligned to `bytes`. */
inline bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// ------------------------------------------------------------------------------------------------------------------
// cp.async (sm_80+)
// ------------------------------------------------------------------------------------------------------------------

/*! \brief The 32-bit shared-state-space address of a generic pointer into shared memory. */
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

/*! \brief Asynchronous 16-byte global->shared copy, bypassing L1. */
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(smem)), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/*! \brief Waits until at most N of this thread's committed cp.async groups are pending. */
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ------------------------------------------------------------------------------------------------------------------
// mbarrier (sm_80+), CTA scope
// ------------------------------------------------------------------------------------------------------------------

/*! \brief Initializes an mbarrier in shared memory with `count` expected arrivals a phase. */
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
/*! \brief One arrival (release semantics at CTA scope). */
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("{\n .reg .b64 st;\n mbarrier.arrive.shared.b64 st, [%0];\n}\n" ::"r"(smem_u32(bar)) : "memory");
}
/*!
 * \brief One arrival once all cp.async operations this thread has issued so far have completed (the pending count
 * is not incremented: the barrier's expected count includes this arrival).
 */
__device__ __forceinline__ void cp_async_mbar_arrive(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared.b64 [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
/*!
 * \brief Waits (acquire at CTA scope) until the phase with parity `parity` of the barrier has completed: try_wait
 * (which may suspend the thread for a while) on sm_90+, a test_wait poll before.
 */
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  const uint32_t addr = smem_u32(bar);
  uint32_t done = 0;
  do {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
#else
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.test_wait.parity.shared.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
#endif
  } while (done == 0);
}

// ------------------------------------------------------------------------------------------------------------------
// Reductions
// ------------------------------------------------------------------------------------------------------------------

/*! \brief Max over the `width` lanes of aligned lane groups (width a power of two <= 32). */
__device__ __forceinline__ float group_max(float v, int width) {
  for (int o = width / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

/*!
 * \brief Max over the whole CTA (every thread gets it). `red` holds blockDim.x / 32 floats. Contains two
 * __syncthreads(); all threads must call it.
 */
__device__ __forceinline__ float block_max(float v, float* red) {
  v = group_max(v, 32);
  const int warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
  if ((threadIdx.x & 31) == 0) red[warp] = v;
  __syncthreads();
  float r = 0.f;
  for (int w = 0; w < nwarps; ++w) r = fmaxf(r, red[w]);
  __syncthreads();
  return r;
}

/*!
 * \brief Max of `count` partial maxima in global memory (every thread gets it). Same barrier rules as block_max.
 */
__device__ __forceinline__ float reduce_partials(const float* partials, int count, float* red) {
  float v = 0.f;
  for (int i = threadIdx.x; i < count; i += blockDim.x) v = fmaxf(v, partials[i]);
  return block_max(v, red);
}

// ------------------------------------------------------------------------------------------------------------------
// Launch helpers
// ------------------------------------------------------------------------------------------------------------------

/*! \brief Number of multiprocessors of the current device. */
inline cudaError_t sm_count(int* sms) {
  int dev = 0;
  HALO_RETURN_IF_ERROR(cudaGetDevice(&dev));
  return cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, dev);
}

// ------------------------------------------------------------------------------------------------------------------
// Programmatic dependent launch (sm_90): a kernel launched with it may start while the previous kernel of the stream
// still runs; it must call griddep_wait() before it reads anything that kernel writes. The previous kernel calls
// griddep_launch_dependents() to let it start before its own last CTAs are done. Both are no-ops below sm_90 and in
// kernels launched without the attribute.
// ------------------------------------------------------------------------------------------------------------------

/*! \brief Waits until the grids this one depends on have completed and their writes are visible. */
__device__ __forceinline__ void griddep_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/*! \brief Lets the next kernel of the stream, if launched with programmatic serialization, start early. */
__device__ __forceinline__ void griddep_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

/*!
 * \brief kernel<<<grid, block, smem, stream>>>(args...), with programmatic stream serialization when `pdl` (the
 * kernel must then griddep_wait() before it touches what the previous kernel writes).
 */
template <typename... KArgs, typename... Args>
cudaError_t launch_kernel(void (*kernel)(KArgs...), unsigned grid, unsigned block, size_t smem, cudaStream_t stream,
                          bool pdl, Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(grid);
  cfg.blockDim = dim3(block);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = pdl ? attr : nullptr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

/*!
 * \brief Host-side launch facts of one kernel, cached per process: the occupancy query and the shared-memory
 * attribute cost more host time than the launch itself (they were made on every call), and the layers of a ~1B
 * model are bound by host time. Entries: (kernel, device, threads, dynamic smem) -> resident CTAs per SM, SM count;
 * (kernel, device) -> the largest dynamic shared memory limit set so far (only ever raised, so a launch with less
 * shared memory never lowers what another configuration of the same kernel needs).
 */
class LaunchCache {
 public:
  static LaunchCache& get() {
    static LaunchCache c;
    return c;
  }
  /*! \brief Raises `fn`'s dynamic shared memory limit on `device` to at least `smem` (cudaFuncSetAttribute). */
  cudaError_t ensure_smem(const void* fn, int device, size_t smem) {
    if (smem <= 48 * 1024) return cudaSuccess;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& e : smem_)
      if (e.fn == fn && e.device == device) {
        if (e.smem >= smem) return cudaSuccess;
        HALO_RETURN_IF_ERROR(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
        e.smem = smem;
        return cudaSuccess;
      }
    HALO_RETURN_IF_ERROR(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    smem_.push_back({fn, device, smem});
    return cudaSuccess;
  }
  /*! \brief Resident CTAs per SM of `fn` with `threads` and `smem`, and the SM count of `device`. */
  cudaError_t occupancy(const void* fn, int device, int threads, size_t smem, int* per_sm, int* sms) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& e : occ_)
        if (e.fn == fn && e.device == device && e.threads == threads && e.smem == smem) {
          *per_sm = e.per_sm;
          *sms = e.sms;
          return cudaSuccess;
        }
    }
    HALO_RETURN_IF_ERROR(ensure_smem(fn, device, smem));
    HALO_RETURN_IF_ERROR(cudaOccupancyMaxActiveBlocksPerMultiprocessor(per_sm, fn, threads, smem));
    HALO_RETURN_IF_ERROR(cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device));
    std::lock_guard<std::mutex> lock(mu_);
    occ_.push_back({fn, device, threads, smem, *per_sm, *sms});
    return cudaSuccess;
  }

  /*!
   * \brief Whether `fn`'s loaded image on `device` was built for sm_90 or newer and the device is sm_90 or newer
   * (pdl_ok).
   */
  bool pdl_capable(const void* fn, int device) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& e : pdl_)
      if (e.fn == fn && e.device == device) return e.ok;
    cudaFuncAttributes fa{};
    int major = 0;
    const bool ok = cudaFuncGetAttributes(&fa, fn) == cudaSuccess && fa.binaryVersion >= 90 &&
                    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
                    major >= 9;
    pdl_.push_back({fn, device, ok});
    return ok;
  }

 private:
  struct Pdl {
    const void* fn;
    int device;
    bool ok;
  };
  struct Smem {
    const void* fn;
    int device;
    size_t smem;
  };
  struct Occ {
    const void* fn;
    int device, threads;
    size_t smem;
    int per_sm, sms;
  };
  std::mutex mu_;
  std::vector<Smem> smem_;
  std::vector<Occ> occ_;
  std::vector<Pdl> pdl_;
};

/*!
 * \brief Whether `kernel` may be launched with programmatic stream serialization on the current device: the device
 * is sm_90 or newer, the kernel's loaded image was built for sm_90 or newer (so its griddep_wait() is compiled in;
 * an sm_80 image running on an H100 would race), and HALO_PDL is not "0" (read once). The answer is cached per
 * kernel and device (LaunchCache), so a launch makes no attribute query.
 */
inline bool pdl_ok(const void* kernel) {
  static const bool env_off = [] {
    const char* e = std::getenv("HALO_PDL");
    return e != nullptr && e[0] == '0';
  }();
  if (env_off) return false;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  return LaunchCache::get().pdl_capable(kernel, dev);
}

/*!
 * \brief Persistent-grid size for `kernel`: resident CTAs per SM times SMs, at most `work` CTAs. Raises the
 * kernel's dynamic shared memory limit first when `smem` exceeds 48 KB. Both are cached (LaunchCache).
 */
template <typename Kernel>
cudaError_t persistent_grid(Kernel kernel, int threads, size_t smem, int64_t work, int* grid) {
  int dev = 0, per_sm = 0, sms = 0;
  HALO_RETURN_IF_ERROR(cudaGetDevice(&dev));
  HALO_RETURN_IF_ERROR(
      LaunchCache::get().occupancy(reinterpret_cast<const void*>(kernel), dev, threads, smem, &per_sm, &sms));
  if (per_sm < 1) return cudaErrorInvalidConfiguration;
  const int64_t g = int64_t(per_sm) * sms;
  *grid = static_cast<int>(work < g ? (work < 1 ? 1 : work) : g);
  return cudaSuccess;
}

}  // namespace halo::detail
