/*!
 * \file hadamard_impl.cuh
 * \brief Internal Hadamard transform kernels shared by hadamard.cu and hadamard_quantize.cu.
 *
 * Power-of-two transform (pow2_kernel). A CTA owns a tile of 2^TB elements = G = 2^(TB-P) groups of n = 2^P.
 * Tile element index bits [0, P) address the element in its group, bits [P, TB) the group. Each thread holds
 * E = 2^ELOG values in registers. A "pass" gives each thread the elements whose index has fixed thread bits and
 * arbitrary values on a set of ELOG owned bits; the thread does the radix-2 butterflies of the owned bits it is
 * responsible for entirely in registers (log2 n float adds per element overall). Between passes the tile goes
 * through a float32 shared-memory buffer (padded so that every pass is free of bank conflicts). Passes:
 *  - A: owns bits [0, ELOG): reads the staged input (cp.async, raw dtype) and does the ELOG lowest butterflies;
 *  - M: (n >= 1024 for 16-bit types) owns the bits between, either 6 bits with scalar accesses, or bits {0,1} and 4
 *       more with 16-byte accesses;
 *  - F: owns the vector bits [0, VBITS) and the top ELOG-VBITS bits of the group: consecutive threads own
 *       consecutive 16-byte packets, so the epilogue writes coalesced 16-byte vectors.
 *  For n <= E a single pass does everything (no float32 buffer).
 * The kernel is persistent (grid = resident CTAs) and prefetches the next tile with cp.async while it works on the
 * current one. The epilogue (store, absmax, quantize) is a template policy.
 */
#pragma once
#include <cstdint>
#include <type_traits>

#include "hadamard.h"
#include "quant_utils.cuh"

namespace halo::detail {

// ------------------------------------------------------------------------------------------------------------------
// Compile-time bit helpers
// ------------------------------------------------------------------------------------------------------------------

/*! \brief Mask of bits [lo, hi) (lo clamped to 0). */
__host__ __device__ constexpr uint32_t bits(int lo, int hi) {
  return lo < 0 ? bits(0, hi) : hi <= lo ? 0u : (((hi - lo) >= 32 ? ~0u : ((1u << (hi - lo)) - 1u)) << lo);
}
__host__ __device__ constexpr int popcount(uint32_t m) { return m == 0 ? 0 : 1 + popcount(m & (m - 1)); }
/*! \brief Position of the j-th (from 0) set bit of m. */
__host__ __device__ constexpr int nth_bit(uint32_t m, int j) {
  for (int b = 0; b < 32; ++b)
    if ((m >> b) & 1u) {
      if (j == 0) return b;
      --j;
    }
  return -1;
}
/*! \brief Scatters the low bits of x to the set bits of m (like the x86 pdep instruction). */
__host__ __device__ constexpr uint32_t deposit(uint32_t x, uint32_t m) {
  uint32_t r = 0;
  for (int b = 0, j = 0; b < 32; ++b)
    if ((m >> b) & 1u) {
      if ((x >> j) & 1u) r |= 1u << b;
      ++j;
    }
  return r;
}
/*! \brief deposit() of a run-time value into a compile-time mask (done once per kernel). */
template <uint32_t M>
__device__ __forceinline__ uint32_t deposit_rt(uint32_t x) {
  uint32_t r = 0;
#pragma unroll
  for (int j = 0; j < popcount(M); ++j) r |= ((x >> j) & 1u) << nth_bit(M, j);
  return r;
}

/*!
 * \brief Float32 shared-memory buffer layout: element i lives at float index fpad(i), one 16-byte pad every 32
 * floats and another every 64. fpad is additive over bit-disjoint indices, so a thread's address is its own base
 * plus a compile-time immediate per register; the padding makes the A/M/F access patterns conflict-free.
 */
__host__ __device__ constexpr uint32_t fpad(uint32_t i) { return i + ((i >> 5) << 2) + ((i >> 6) << 2); }

// ------------------------------------------------------------------------------------------------------------------
// Pass plan
// ------------------------------------------------------------------------------------------------------------------

/*!
 * \brief Which element bits each pass owns and transforms, for n = 2^P, 2^ELOG values per thread, 16-byte global
 * packets of 2^VBITS elements and tiles of 2^TB elements.
 */
template <int P, int ELOG, int VBITS, int TB>
struct Pow2Plan {
  static constexpr int kP = P, kElog = ELOG, kE = 1 << ELOG, kVBits = VBITS, kVec = 1 << VBITS, kTB = TB;
  static constexpr int kThreads = 1 << (TB - ELOG);
  static constexpr int kGroupsPerTile = 1 << (TB - P);
  static constexpr uint32_t kTileMask = bits(0, TB), kGroupMask = bits(0, P);
  /*! \brief Group bits the F pass owns besides the vector bits. */
  static constexpr int kK = ELOG - VBITS;
  /*! \brief One pass suffices: a thread owns whole groups (and the top group bits of the tile). */
  static constexpr bool kSingle = P <= ELOG;

  /*! \brief Bits a single-pass thread owns inside its first group: the group, or at least one 16-byte packet. */
  static constexpr int kPV = P > VBITS ? P : VBITS;
  static constexpr uint32_t kOwnA = kSingle ? (bits(0, kPV) | bits(TB - (ELOG - kPV), TB)) : bits(0, ELOG);
  static constexpr uint32_t kNewA = kSingle ? bits(0, P) : bits(0, ELOG);
  static constexpr uint32_t kOwnF = kSingle ? kOwnA : (bits(0, VBITS) | bits(P - kK, P));
  static constexpr uint32_t kNewM = kSingle ? 0u : bits(ELOG, P - kK);
  static constexpr uint32_t kNewF = kSingle ? 0u : (kGroupMask & ~kNewA & ~kNewM);
  static constexpr bool kHasM = kNewM != 0u;
  /*! \brief The M pass uses scalar accesses when its 6 bits leave the 5 lowest bits to the lanes. */
  static constexpr bool kScalarM = P - kK - ELOG >= 5;
  static constexpr uint32_t kOwnM = kScalarM ? bits(P - kK - ELOG, P - kK) : (bits(0, 2) | bits(P - kK - (ELOG - 2), P - kK));

  /*! \brief Float32 buffer size in bytes (0 for single-pass plans). */
  static constexpr uint32_t kFBytes = kSingle ? 0u : ((fpad(kTileMask) + 4u) & ~3u) * 4u;

  static_assert(kSingle || P - kK >= VBITS, "plan needs n >= 2^VBITS * 2^(ELOG-VBITS)");
  static_assert(popcount(kOwnA) == ELOG && popcount(kOwnF) == ELOG, "every pass owns ELOG bits");
  static_assert(!kHasM || (popcount(kOwnM) == ELOG && (kOwnM & kNewM) == kNewM), "M pass must cover its bits");
  static_assert((kNewF & ~kOwnF) == 0u, "F pass must own its bits");
  static_assert((kNewA | kNewM | kNewF) == kGroupMask, "passes must cover every bit of the group");
};

/*! \brief Register butterflies over the owned bits (register index bits) whose element bit is in NEW. */
template <uint32_t OWN, uint32_t NEW, int E>
__device__ __forceinline__ void butterflies(float (&v)[E]) {
#pragma unroll
  for (int j = 0; j < popcount(OWN); ++j) {
    if ((NEW >> nth_bit(OWN, j)) & 1u) {
#pragma unroll
      for (int r = 0; r < E; ++r) {
        if ((r >> j) & 1) continue;
        const float a = v[r], b = v[r | (1 << j)];
        v[r] = a + b;
        v[r | (1 << j)] = a - b;
      }
    }
  }
}

/*! \brief Loads a thread's E values of a pass from the float32 buffer (16-byte accesses when bits 0,1 are owned). */
template <uint32_t OWN, int E>
__device__ __forceinline__ void load_fbuf(const float* fb, uint32_t base, float (&v)[E]) {
  if constexpr ((OWN & 3u) == 3u) {
#pragma unroll
    for (int r = 0; r < E; r += 4) {
      const float4 q = *reinterpret_cast<const float4*>(fb + base + fpad(deposit(r, OWN)));
      v[r] = q.x, v[r + 1] = q.y, v[r + 2] = q.z, v[r + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int r = 0; r < E; ++r) v[r] = fb[base + fpad(deposit(r, OWN))];
  }
}

/*! \brief Stores a thread's E values of a pass into the float32 buffer. */
template <uint32_t OWN, int E>
__device__ __forceinline__ void store_fbuf(float* fb, uint32_t base, const float (&v)[E]) {
  if constexpr ((OWN & 3u) == 3u) {
#pragma unroll
    for (int r = 0; r < E; r += 4)
      *reinterpret_cast<float4*>(fb + base + fpad(deposit(r, OWN))) = make_float4(v[r], v[r + 1], v[r + 2], v[r + 3]);
  } else {
#pragma unroll
    for (int r = 0; r < E; ++r) fb[base + fpad(deposit(r, OWN))] = v[r];
  }
}

// ------------------------------------------------------------------------------------------------------------------
// Kernel parameters, group addressing
// ------------------------------------------------------------------------------------------------------------------

/*!
 * \brief Parameters of the power-of-two kernel. Groups are numbered g = row * gpr + gcol (row-major order) or
 * g = gcol * rows + row (column-major order, used when the epilogue writes a transpose); `order` divides g.
 */
struct Pow2Params {
  const void* x = nullptr;
  int64_t x_stride = 0;          //!< elements between rows of x
  int64_t n = 0;                 //!< group length 2^P
  float scale = 1.f;             //!< multiplies the result
  const float* pre_signs = nullptr;  //!< [cols] signs applied to x before the transform, or nullptr
  uint32_t num_groups = 0;       //!< rows * cols / n (< 2^31)
  uint32_t num_tiles = 0;        //!< ceil(num_groups / groups per tile), rounded up to a multiple of 2^sub_log
  uint32_t sub_log = 0;          //!< consecutive tiles a CTA processes together (2^sub_log, epilogue supertiles)
  bool col_major = false;        //!< group order
  FastDivmod order;              //!< divides g: by gpr (row-major) or by rows (column-major)
};

/*! \brief Row and group-column of group g. */
__device__ __forceinline__ void group_coords(const Pow2Params& p, uint32_t g, uint32_t& row, uint32_t& gcol) {
  uint32_t q, r;
  p.order.divmod(g, q, r);
  if (p.col_major) {
    gcol = q, row = r;
  } else {
    row = q, gcol = r;
  }
}

/*! \brief Chunk swizzle of the staging buffer: keeps the copy and pass-A accesses free of bank conflicts. */
template <int SW>
__device__ __forceinline__ uint32_t stage_swizzle(uint32_t chunk) {
  return chunk ^ ((chunk >> SW) & 7u);
}

// ------------------------------------------------------------------------------------------------------------------
// The kernel
// ------------------------------------------------------------------------------------------------------------------

/*!
 * \brief Persistent power-of-two Hadamard kernel. NST >= 2: ring of NST cp.async staging buffers (NST-1 tiles in
 * flight ahead of the current one); 1: one staging buffer refilled after pass A; 0: pass A reads global memory
 * directly (used where shared memory is short).
 *
 * A thread's registers hold 16-byte packets of kVec consecutive elements. Packets are grouped in "slots" that share
 * the group (row, group column) of their first element: one slot per thread and pass except in single-pass plans,
 * where a thread owns several groups (and a packet several groups when n < kVec).
 *
 * Epi is the epilogue policy: `Epi(params, smem)`, `init()` (all threads, may synchronize), `group(row, gcol,
 * srow, valid)` -> Group (srow: the group's index within the CTA's supertile), `put(Group, col, float* v)` for kVec
 * consecutive values starting at column `col` of the group, `tile_done(supertile_end)` (all threads, after each
 * tile) and `finish()` (all threads, at exit). Its shared memory (size given at launch) follows the staging buffers.
 */
template <typename T, class Plan, int NST, class Epi>
__global__ void __launch_bounds__(Plan::kThreads) pow2_kernel(const __grid_constant__ Pow2Params prm,
                                                          const __grid_constant__ typename Epi::Params ep) {
  static_assert(!(Plan::kSingle && NST == 1), "single-pass plans use thread-private staging: NST 0 or 2");
  constexpr int E = Plan::kE, VEC = Plan::kVec, VB = Plan::kVBits, P = Plan::kP;
  constexpr uint32_t kStageBytes = (1u << Plan::kTB) * sizeof(T);
  constexpr int SW = Plan::kElog - VB;
  constexpr uint32_t kOwnA = Plan::kOwnA, kOwnF = Plan::kOwnF, kMask = Plan::kGroupMask;
  constexpr uint32_t kThrA = Plan::kTileMask & ~kOwnA;
  constexpr uint32_t kThrM = Plan::kTileMask & ~Plan::kOwnM;
  constexpr uint32_t kThrF = Plan::kTileMask & ~kOwnF;
  // Register-index bits of a slot: the owned in-group bits, and at least the packet bits.
  constexpr int kSlotA = popcount(kOwnA & kMask) > VB ? popcount(kOwnA & kMask) : VB;
  constexpr int kSlotF = popcount(kOwnF & kMask) > VB ? popcount(kOwnF & kMask) : VB;

  extern __shared__ __align__(16) unsigned char smem[];
  float* fbuf = reinterpret_cast<float*>(smem);
  unsigned char* stage = smem + Plan::kFBytes;
  Epi epi(ep, stage + NST * kStageBytes);
  epi.init();

  const uint32_t tid = threadIdx.x;
  const uint32_t offA = deposit_rt<kThrA>(tid), offF = deposit_rt<kThrF>(tid);
  constexpr uint32_t gpt = Plan::kGroupsPerTile;
  const T* x = static_cast<const T*>(prm.x);
  const uint32_t sub_mask = (1u << prm.sub_log) - 1u;

  /*! Global address of the first element of group g (g < num_groups). */
  auto src = [&](uint32_t g) {
    uint32_t row, gcol;
    group_coords(prm, g, row, gcol);
    return x + int64_t(row) * prm.x_stride + int64_t(gcol) * prm.n;
  };
  /*! The tile a CTA processes at its i-th step (supertiles of 2^sub_log consecutive tiles). */
  auto tile_of = [&](uint32_t i) {
    return ((blockIdx.x + (i >> prm.sub_log) * gridDim.x) << prm.sub_log) | (i & sub_mask);
  };
  /*! cp.async of a tile into a stage in the F layout (coalesced; in single-pass plans also the read layout). */
  auto issue_copy = [&](uint32_t tile, int st) {
    unsigned char* sb = stage + st * kStageBytes;
#pragma unroll
    for (int s = 0; s < (E >> kSlotF); ++s) {
      const uint32_t o0 = offF + deposit(uint32_t(s) << kSlotF, kOwnF);
      const uint32_t g = tile * gpt + (o0 >> P);
      if (g >= prm.num_groups) continue;
      const T* gp = src(g);
#pragma unroll
      for (int r = 0; r < (1 << kSlotF); r += VEC) {
        const uint32_t o = o0 + deposit(uint32_t(r), kOwnF);
        cp_async16(sb + stage_swizzle<SW>(o >> VB) * 16u, gp + (o & kMask));
      }
    }
  };

  // Prologue: the first NST-1 tiles in flight (NST >= 2), or the first tile (NST == 1).
  if constexpr (NST > 0) {
#pragma unroll
    for (int s = 0; s < (NST > 1 ? NST - 1 : 1); ++s) {
      const uint32_t t = tile_of(s);
      if (t < prm.num_tiles) issue_copy(t, s);
      cp_async_commit();
    }
  }
  int st = 0;  // stage of the current tile
  uint32_t i = 0;
  for (uint32_t tile = tile_of(0); tile < prm.num_tiles; ++i, tile = tile_of(i)) {
    const uint32_t next = tile_of(i + 1);
    if constexpr (NST >= 2) {
      const uint32_t ahead = tile_of(i + NST - 1);
      if (ahead < prm.num_tiles) issue_copy(ahead, st == 0 ? NST - 1 : st - 1);
      cp_async_commit();
      cp_async_wait<NST - 1>();
    } else if constexpr (NST == 1) {
      cp_async_wait<0>();
    }
    if constexpr (!Plan::kSingle) __syncthreads();  // staged tile visible to all; float32 buffer free

    // ---- pass A: input -> registers, pre-multiplier (signs, scale), lowest butterflies
    float v[E];
#pragma unroll
    for (int s = 0; s < (E >> kSlotA); ++s) {
      const uint32_t o0 = offA + deposit(uint32_t(s) << kSlotA, kOwnA);
      const uint32_t g = tile * gpt + (o0 >> P);
      const bool valid = g < prm.num_groups;
      const T* gp = nullptr;
      if constexpr (NST == 0) gp = valid ? src(g) : nullptr;
      const float* sg = nullptr;
      if (prm.pre_signs != nullptr && valid) {
        uint32_t row, gcol;
        group_coords(prm, g, row, gcol);
        sg = prm.pre_signs + int64_t(gcol) * prm.n;
      }
#pragma unroll
      for (int r = 0; r < (1 << kSlotA); r += VEC) {
        const uint32_t o = o0 + deposit(uint32_t(r), kOwnA);
        float* w = &v[(s << kSlotA) + r];
        uint4 u = make_uint4(0u, 0u, 0u, 0u);
        if constexpr (NST == 0) {
          if (valid) u = ldg16(gp + (o & kMask));
        } else {
          u = *reinterpret_cast<const uint4*>(stage + st * kStageBytes + stage_swizzle<SW>(o >> VB) * 16u);
        }
        Vec<T>::unpack(u, w);
        if (sg != nullptr) {
#pragma unroll
          for (int k = 0; k < VEC; k += 4) {
            const float4 sv = __ldg(reinterpret_cast<const float4*>(sg + (o & kMask) + k));
            w[k] *= sv.x, w[k + 1] *= sv.y, w[k + 2] *= sv.z, w[k + 3] *= sv.w;
          }
        }
      }
    }
    if (prm.scale != 1.f) {
#pragma unroll
      for (int r = 0; r < E; ++r) v[r] *= prm.scale;
    }
    butterflies<kOwnA, Plan::kNewA>(v);

    if constexpr (!Plan::kSingle) {
      store_fbuf<kOwnA>(fbuf, fpad(offA), v);
      __syncthreads();
      if constexpr (NST == 1) {
        if (next < prm.num_tiles) issue_copy(next, 0);
        cp_async_commit();
      }
      // ---- pass M: the middle bits
      if constexpr (Plan::kHasM) {
        const uint32_t offM = fpad(deposit_rt<kThrM>(tid));
        load_fbuf<Plan::kOwnM>(fbuf, offM, v);
        butterflies<Plan::kOwnM, Plan::kNewM>(v);
        store_fbuf<Plan::kOwnM>(fbuf, offM, v);
        __syncthreads();
      }
      // ---- pass F: the top bits
      load_fbuf<kOwnF>(fbuf, fpad(offF), v);
      butterflies<kOwnF, Plan::kNewF>(v);
    }
    // ---- epilogue on coalesced 16-byte packets
#pragma unroll
    for (int s = 0; s < (E >> kSlotF); ++s) {
      const uint32_t o0 = offF + deposit(uint32_t(s) << kSlotF, kOwnF);
      const uint32_t g = tile * gpt + (o0 >> P);
      uint32_t row = 0, gcol = 0;
      const bool valid = g < prm.num_groups;
      if (valid) group_coords(prm, g, row, gcol);
      const typename Epi::Group grp = epi.group(row, gcol, (i & sub_mask) * gpt + (o0 >> P), valid);
#pragma unroll
      for (int r = 0; r < (1 << kSlotF); r += VEC)
        epi.put(grp, (o0 + deposit(uint32_t(r), kOwnF)) & kMask, &v[(s << kSlotF) + r]);
    }
    epi.tile_done((i & sub_mask) == sub_mask);
    if constexpr (NST >= 2) st = st == NST - 1 ? 0 : st + 1;
  }
  if constexpr (NST > 0) cp_async_wait<0>();
  epi.finish();
}

// ------------------------------------------------------------------------------------------------------------------
// Generic fallback kernel: any supported n, dense factor, alignment and group count
// ------------------------------------------------------------------------------------------------------------------

/*! \brief Parameters of generic_kernel (64-bit group indices, scalar element accesses). */
struct GenericParams {
  const void* x = nullptr;
  int64_t x_stride = 0, rows = 0, cols = 0, n = 0;
  int m = 1, log2p = 0;              //!< n = m * 2^log2p
  float scale = 1.f;
  const float* pre_signs = nullptr;
  const int8_t* dense_left = nullptr;  //!< [m, m]
  int64_t num_groups = 0;
  bool col_major = false;
};

/*!
 * \brief One CTA per group (grid-stride over groups): the group is staged in shared memory as float32, radix-2
 * butterflies with a barrier per stage, the dense factor as an m-term float32 sum per output. Slow but general:
 * used for misaligned tensors, dense factors with 2^p < 8 and other shapes the fast kernels do not take. The
 * epilogue gets one value at a time through `put1(Group, col, v)`.
 */
template <typename T, class Epi>
__global__ void __launch_bounds__(512) generic_kernel(const __grid_constant__ GenericParams p,
                                                           const __grid_constant__ typename Epi::Params ep) {
  extern __shared__ __align__(16) unsigned char smem[];
  float* buf = reinterpret_cast<float*>(smem);
  float* buf2 = buf + p.n;
  Epi epi(ep, smem + (p.m > 1 ? 2 : 1) * p.n * sizeof(float));
  epi.init();
  const int pw = 1 << p.log2p, n = static_cast<int>(p.n);
  const int64_t gpr = p.cols / p.n;
  for (int64_t g = blockIdx.x; g < p.num_groups; g += gridDim.x) {
    const int64_t row = p.col_major ? g % p.rows : g / gpr, gcol = p.col_major ? g / p.rows : g % gpr;
    const int64_t x0 = row * p.x_stride + gcol * p.n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      float v = Vec<T>::load1(p.x, x0 + i);
      if (p.pre_signs != nullptr) v *= p.pre_signs[gcol * p.n + i];
      buf[i] = v * p.scale;
    }
    __syncthreads();
    for (int h = 1; h < pw; h <<= 1) {
      for (int t = threadIdx.x; t < n / 2; t += blockDim.x) {
        const int chunk = t >> (p.log2p - 1), k = t & (pw / 2 - 1);
        const int j = chunk * pw + (k / h) * 2 * h + k % h;
        const float a = buf[j], b = buf[j + h];
        buf[j] = a + b;
        buf[j + h] = a - b;
      }
      __syncthreads();
    }
    const float* res = buf;
    if (p.m > 1) {
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int oi = i >> p.log2p, k = i & (pw - 1);
        const int8_t* L = p.dense_left + oi * p.m;
        float acc = 0.f;
        for (int j = 0; j < p.m; ++j) acc += static_cast<float>(__ldg(L + j)) * buf[j * pw + k];
        buf2[i] = acc;
      }
      __syncthreads();
      res = buf2;
    }
    const typename Epi::Group grp = epi.group(row, gcol, 0, true);
    for (int i = threadIdx.x; i < n; i += blockDim.x) epi.put1(grp, i, res[i]);
    __syncthreads();
  }
  epi.finish();
}

// ------------------------------------------------------------------------------------------------------------------
// Host helpers
// ------------------------------------------------------------------------------------------------------------------

/*!
 * \brief Validates the transform description (hadamard.h) and returns p = log2(n / dense_m) in *log2p.
 * cudaErrorInvalidValue for anything the kernels do not take.
 */
inline cudaError_t check_hadamard_args(const HadamardArgs& a, int* log2p) {
  if (a.rows < 0 || a.cols < 0 || a.n < 1 || a.dense_m < 1 || a.dense_m > kMaxDenseM) return cudaErrorInvalidValue;
  if (a.dtype != DType::kFloat32 && a.dtype != DType::kFloat16 && a.dtype != DType::kBFloat16)
    return cudaErrorInvalidValue;
  if (a.cols % a.n != 0 || a.n % a.dense_m != 0 || a.x_row_stride < a.cols) return cudaErrorInvalidValue;
  *log2p = log2_exact(a.n / a.dense_m);
  if (*log2p < 0 || *log2p > 15 || (a.dense_m == 1 && *log2p < 1)) return cudaErrorInvalidValue;
  if (a.dense_m > 1 && a.dense_left == nullptr) return cudaErrorInvalidValue;
  if (a.rows > 0 && a.cols > 0 && a.x == nullptr) return cudaErrorInvalidValue;
  return cudaSuccess;
}

/*! \brief Bytes of element type `t` (float types only). */
inline int dtype_bytes(DType t) { return t == DType::kFloat32 ? 4 : 2; }

/*! \brief Largest shared memory a CTA may use on the current device (opt-in limit). */
inline cudaError_t max_smem_per_cta(int* bytes) {
  int dev = 0;
  HALO_RETURN_IF_ERROR(cudaGetDevice(&dev));
  return cudaDeviceGetAttribute(bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
}

/*!
 * \brief Launches generic_kernel<T, Epi> over all groups of `a` (column-major group order if col_major).
 * \param extra_smem epilogue shared memory bytes
 * \param max_grid upper bound on the grid (e.g. the number of partial-maximum slots)
 */
template <typename T, class Epi>
cudaError_t launch_generic(const HadamardArgs& a, int log2p, bool col_major, const typename Epi::Params& ep,
                           size_t extra_smem, int max_grid, cudaStream_t stream, int* grid_out = nullptr) {
  GenericParams p;
  p.x = a.x, p.x_stride = a.x_row_stride, p.rows = a.rows, p.cols = a.cols, p.n = a.n;
  p.m = a.dense_m, p.log2p = log2p, p.scale = a.scale;
  p.pre_signs = a.signs_after ? nullptr : a.signs;
  p.dense_left = a.dense_left;
  p.num_groups = a.rows * (a.cols / a.n);
  p.col_major = col_major;
  const size_t smem = size_t(a.n) * sizeof(float) * (a.dense_m > 1 ? 2 : 1) + extra_smem;
  int limit = 0;
  HALO_RETURN_IF_ERROR(max_smem_per_cta(&limit));
  if (smem > size_t(limit)) return cudaErrorInvalidValue;
  auto kernel = generic_kernel<T, Epi>;
  int grid = 0;
  HALO_RETURN_IF_ERROR(persistent_grid(kernel, 512, smem, p.num_groups, &grid));
  if (grid > max_grid) grid = max_grid;
  if (grid_out != nullptr) *grid_out = grid;
  kernel<<<grid, 512, smem, stream>>>(p, ep);
  return cudaPeekAtLastError();
}

/*!
 * \brief Tile configuration of the power-of-two kernel for element type T and n = 2^P (tuned on H100, see
 * notes/hadamard_kernels.md): 16K-element tiles (32 KB of bf16), one CTA of 256 threads per SM with two staging
 * buffers; 64 values a thread except n = 128 (32 values: the final pass then writes 64-byte runs instead of 32);
 * n = 32K uses 32K-element tiles with one staging buffer (float32: none, shared memory is short).
 */
template <typename T, int P>
struct Pow2Config {
  static constexpr int kVBits = Vec<T>::kVecBits;
  static constexpr int kElog = P == 7 ? 5 : 6;
  static constexpr int kTB = P > 14 ? P : 14;
  static constexpr int kNst = P <= 14 ? 2 : (sizeof(T) == 4 ? 0 : 1);
  using Plan = Pow2Plan<P, kElog, kVBits, kTB>;
};

/*! \brief Shared memory of pow2_kernel<T, P> without the epilogue's. */
template <typename T, int P>
constexpr size_t pow2_smem_bytes() {
  using Cfg = Pow2Config<T, P>;
  return Cfg::Plan::kFBytes + size_t(Cfg::kNst) * (size_t(1) << Cfg::Plan::kTB) * sizeof(T);
}

/*!
 * \brief Whether the power-of-two kernel takes these tensors: 16-byte aligned rows and packets, and fewer than
 * 2^31 groups (group indices are 32-bit).
 */
inline bool pow2_fast_ok(const HadamardArgs& a, int elem_bytes) {
  const int vec = 16 / elem_bytes;
  const int64_t groups = a.rows * (a.cols / a.n);
  return a.dense_m == 1 && aligned(a.x, 16) && a.x_row_stride % vec == 0 && a.cols % vec == 0 &&
         (a.signs == nullptr || aligned(a.signs, 16)) && groups < (int64_t(1) << 31) - (int64_t(1) << 16);
}

/*!
 * \brief Launches pow2_kernel<T, P> over all groups of `a`.
 * \param col_major column-major group order (the transposed-output epilogue)
 * \param sub_log tiles per supertile = 2^sub_log
 * \param epi_smem epilogue shared memory bytes (after the staging buffers)
 * \param max_grid upper bound on the grid
 */
template <typename T, int P, class Epi>
cudaError_t launch_pow2(const HadamardArgs& a, bool col_major, uint32_t sub_log, const typename Epi::Params& ep,
                        size_t epi_smem, int max_grid, cudaStream_t stream, int* grid_out = nullptr) {
  using Cfg = Pow2Config<T, P>;
  using Plan = typename Cfg::Plan;
  Pow2Params p;
  p.x = a.x, p.x_stride = a.x_row_stride, p.n = a.n, p.scale = a.scale;
  p.pre_signs = a.signs_after ? nullptr : a.signs;
  p.num_groups = static_cast<uint32_t>(a.rows * (a.cols / a.n));
  const uint32_t tiles = (p.num_groups + Plan::kGroupsPerTile - 1) / Plan::kGroupsPerTile;
  p.sub_log = sub_log;
  p.num_tiles = ((tiles + (1u << sub_log) - 1) >> sub_log) << sub_log;
  p.col_major = col_major;
  p.order = FastDivmod(static_cast<uint32_t>(col_major ? a.rows : a.cols / a.n));
  const size_t smem = pow2_smem_bytes<T, P>() + epi_smem;
  auto kernel = pow2_kernel<T, Plan, Cfg::kNst, Epi>;
  int grid = 0;
  HALO_RETURN_IF_ERROR(persistent_grid(kernel, Plan::kThreads, smem, p.num_tiles >> sub_log, &grid));
  if (grid > max_grid) grid = max_grid;
  if (grid_out != nullptr) *grid_out = grid;
  kernel<<<grid, Plan::kThreads, smem, stream>>>(p, ep);
  return cudaPeekAtLastError();
}

/*!
 * \brief Calls fn(std::integral_constant<int, P>{}) for the run-time P in [1, 15] (one instantiation each).
 */
template <typename Fn>
cudaError_t dispatch_log2(int log2n, Fn&& fn) {
  switch (log2n) {
#define HALO_CASE(P) \
  case P: return fn(std::integral_constant<int, P>{});
    HALO_CASE(1) HALO_CASE(2) HALO_CASE(3) HALO_CASE(4) HALO_CASE(5) HALO_CASE(6) HALO_CASE(7) HALO_CASE(8)
    HALO_CASE(9) HALO_CASE(10) HALO_CASE(11) HALO_CASE(12) HALO_CASE(13) HALO_CASE(14) HALO_CASE(15)
#undef HALO_CASE
    default: return cudaErrorInvalidValue;
  }
}

/*! \brief pow2_smem_bytes<T, P>() for a run-time P in [1, 15]. */
template <typename T>
size_t pow2_smem_bytes_rt(int log2n) {
  size_t r = 0;
  dispatch_log2(log2n, [&](auto P) {
    r = pow2_smem_bytes<T, decltype(P)::value>();
    return cudaSuccess;
  });
  return r;
}

/*! \brief Calls fn(T{}) with T the element type of dtype (float32, float16, bfloat16). */
template <typename Fn>
cudaError_t dispatch_float_type(DType t, Fn&& fn) {
  switch (t) {
    case DType::kFloat32: return fn(float{});
    case DType::kFloat16: return fn(__half{});
    case DType::kBFloat16: return fn(__nv_bfloat16{});
    default: return cudaErrorInvalidValue;
  }
}

/*! \brief Multiplies kVec values by the signs s[0..kVec) (16-byte aligned). */
template <int VEC>
__device__ __forceinline__ void mul_signs(const float* s, float* v) {
#pragma unroll
  for (int k = 0; k < VEC; k += 4) {
    const float4 sv = __ldg(reinterpret_cast<const float4*>(s + k));
    v[k] *= sv.x, v[k + 1] *= sv.y, v[k + 2] *= sv.z, v[k + 3] *= sv.w;
  }
}

}  // namespace halo::detail
