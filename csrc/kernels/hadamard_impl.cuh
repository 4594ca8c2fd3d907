/*!
 * \file hadamard_impl.cuh
 * \brief Internal Hadamard transform kernels shared by hadamard.cu and hadamard_quantize.cu. Design, byte counts
 * and H100 numbers: notes/hadamard_kernels.md.
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
 * The kernel is persistent (grid = resident CTAs) and prefetches the next tiles with cp.async while it works on the
 * current one. The epilogue (store, absmax, quantize) is a template policy and applies HadamardArgs::scale.
 *
 * Dense factor, 16-bit inputs: dense_reg_kernel where dense_reg_plan takes the shape (Sylvester order 32..128,
 * larger ones folded into the dense factor as L kron S_{2^(p-7)}): Z = L X on tensor cores with L one bit an entry,
 * the Sylvester butterflies on the MMA accumulators, no float32 round trip through shared memory. Otherwise
 * dense_kernel (32 <= 2^p <= 1024): Z = L X on tensor cores (mma.sync, exact operands, float32 accumulation), then
 * the Sylvester transform along the rows of Z with the same pass plans.
 *
 * Everything else (float32 dense, 2^p < 32, misaligned tensors, >= 2^31 groups): generic_kernel, one CTA per group.
 */
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
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

/*! \brief The fpad layout as a type (the power-of-two kernel's float32 buffer). */
struct FpadLayout {
  __host__ __device__ static constexpr uint32_t at(uint32_t i) { return fpad(i); }
};

/*!
 * \brief Float32 buffer layout of the dense kernel for rows of 2^P elements: 4 floats of pad every 32, every 64 too
 * only where that helps (2^P = 32, 128), and 8 floats per row for 2^P >= 256. Additive over disjoint index bits like
 * fpad. A bank simulation of the dense pass plans (Pow2Plan<P, 5, 3, 13>: 16-byte accesses in quarter-warp phases)
 * and of the tensor-core result stores (8-byte, half-warp phases; 8 rows x 8 floats a warp), wavefronts over the
 * conflict-free minimum, fpad -> this layout: 2^P = 256: A 2 -> 1, M 2 -> 1, stores 2 -> 1; 512: A 2 -> 1, M 2 -> 1,
 * stores 4 -> 1; 1024: A 2 -> 1, stores 4 -> 1; 64: A 2 -> 1, stores 2 -> 1; 32 and 128 unchanged
 * (tools/bank_sim_dense.py).
 */
template <int P>
struct DenseFLayout {
  static constexpr bool kPad64 = !(P == 6 || P >= 8);
  static constexpr uint32_t kRowPad = P >= 8 ? 8u : 0u;
  __host__ __device__ static constexpr uint32_t at(uint32_t i) {
    return i + ((i >> 5) << 2) + (kPad64 ? ((i >> 6) << 2) : 0u) + kRowPad * (i >> P);
  }
};

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

/*! \brief Register index of the last butterfly butterflies<OWN, NEW> does (the highest owned bit in NEW), or -1. */
template <uint32_t OWN, uint32_t NEW>
__host__ __device__ constexpr int last_new_reg_bit() {
  int last = -1;
  for (int j = 0; j < popcount(OWN); ++j)
    if ((NEW >> nth_bit(OWN, j)) & 1u) last = j;
  return last;
}

/*!
 * \brief Whether epilogue Epi only wants max |y| (it declares kAbsPairs = true and put_abs(float)): pow2_kernel
 * then leaves out its last butterfly and hands the epilogue |a| + |b| per pair, which is max(|a + b|, |a - b|) with
 * the same rounding (the exact values of |a + b| and |a - b| are |a| + |b| and ||a| - |b||, and rounding to nearest
 * is monotonic and symmetric). Saves an add and a max per pair.
 */
template <class Epi, class = void>
struct EpiAbsPairs : std::false_type {};
template <class Epi>
struct EpiAbsPairs<Epi, std::void_t<decltype(Epi::kAbsPairs)>> : std::bool_constant<Epi::kAbsPairs> {};

/*! \brief Loads a thread's E values of a pass from the float32 buffer (16-byte accesses when bits 0,1 are owned). */
template <uint32_t OWN, int E, class FL = FpadLayout>
__device__ __forceinline__ void load_fbuf(const float* fb, uint32_t base, float (&v)[E]) {
  if constexpr ((OWN & 3u) == 3u) {
#pragma unroll
    for (int r = 0; r < E; r += 4) {
      const float4 q = *reinterpret_cast<const float4*>(fb + base + FL::at(deposit(r, OWN)));
      v[r] = q.x, v[r + 1] = q.y, v[r + 2] = q.z, v[r + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int r = 0; r < E; ++r) v[r] = fb[base + FL::at(deposit(r, OWN))];
  }
}

/*! \brief Stores a thread's E values of a pass into the float32 buffer. */
template <uint32_t OWN, int E, class FL = FpadLayout>
__device__ __forceinline__ void store_fbuf(float* fb, uint32_t base, const float (&v)[E]) {
  if constexpr ((OWN & 3u) == 3u) {
#pragma unroll
    for (int r = 0; r < E; r += 4)
      *reinterpret_cast<float4*>(fb + base + FL::at(deposit(r, OWN))) = make_float4(v[r], v[r + 1], v[r + 2], v[r + 3]);
  } else {
#pragma unroll
    for (int r = 0; r < E; ++r) fb[base + FL::at(deposit(r, OWN))] = v[r];
  }
}

// ------------------------------------------------------------------------------------------------------------------
// Kernel parameters, group addressing
// ------------------------------------------------------------------------------------------------------------------

/*!
 * \brief Parameters of the power-of-two kernel. Groups are numbered g = row * gpr + gcol (gpr = groups per row).
 */
struct Pow2Params {
  const void* x = nullptr;
  int64_t x_stride = 0;          //!< elements between rows of x
  int64_t n = 0;                 //!< group length 2^P
  const float* pre_signs = nullptr;  //!< [cols] signs applied to x before the transform, or nullptr
  uint32_t num_groups = 0;       //!< rows * cols / n (< 2^31)
  uint32_t num_tiles = 0;        //!< ceil(num_groups / groups per tile)
  FastDivmod gpr;                //!< groups per row
  bool reverse = false;          //!< tiles in descending order (see tile_order)
};

/*!
 * \brief Tile of a persistent CTA's linear step index lin = blockIdx.x + i * gridDim.x: lin itself, or
 * count - 1 - lin when reverse; `count` (out of range) once lin >= count. (pow2_kernel; hadamard_quantize's pass 2
 * sets reverse.)
 *
 * Why reverse: the second pass of a two-pass kernel (absmax, then codes) that runs right after the first one finds
 * in L2 (50 MB on H100) the data the first pass read last. Walking the tiles backwards reads that data first, while
 * it is still there; walking forwards evicts it before getting to it.
 */
__device__ __forceinline__ uint32_t tile_order(uint32_t lin, uint32_t count, bool reverse) {
  if (lin >= count) return count;
  return reverse ? count - 1u - lin : lin;
}

/*! \brief Row and group-column of group g. */
__device__ __forceinline__ void group_coords(const Pow2Params& p, uint32_t g, uint32_t& row, uint32_t& gcol) {
  p.gpr.divmod(g, row, gcol);
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
 * flight ahead of the current one); 1: one staging buffer refilled after pass A (EARLY_COPY: as soon as pass A has
 * read it into registers, before its butterflies); 0: pass A reads global memory directly (used where shared memory
 * is short).
 *
 * A thread's registers hold 16-byte packets of kVec consecutive elements. Packets are grouped in "slots" that share
 * the group (row, group column) of their first element: one slot per thread and pass except in single-pass plans,
 * where a thread owns several groups (and a packet several groups when n < kVec).
 *
 * Epi is the epilogue policy: `Epi(params)`, `init()` (all threads, may synchronize), `group(row, gcol, valid)` ->
 * Group, `put(Group, col, float* v)` for kVec consecutive values starting at column `col` of the group, and
 * `finish()` (all threads, at exit).
 */
template <typename T, class Plan, int NST, class Epi, bool EARLY_COPY = false>
__global__ void __launch_bounds__(Plan::kThreads) pow2_kernel(const __grid_constant__ Pow2Params prm,
                                                          const __grid_constant__ typename Epi::Params ep) {
  static_assert(!(Plan::kSingle && NST == 1), "single-pass plans use thread-private staging: NST 0 or 2");
  constexpr bool kEarly = EARLY_COPY && NST == 1 && !Plan::kSingle;
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
  // An absmax-only epilogue gets |a| + |b| of the last butterfly's pairs instead of the butterfly (EpiAbsPairs):
  // kJ is that butterfly's register bit in the last pass (F, or A in single-pass plans), kDefer its element bit.
  constexpr bool kAbsPairs = EpiAbsPairs<Epi>::value;
  constexpr uint32_t kOwnL = Plan::kSingle ? kOwnA : kOwnF, kNewL = Plan::kSingle ? Plan::kNewA : Plan::kNewF;
  constexpr int kJ = kAbsPairs ? last_new_reg_bit<kOwnL, kNewL>() : -1;
  constexpr uint32_t kDefer = kJ >= 0 ? (1u << nth_bit(kOwnL, kJ)) : 0u;
  static_assert(!kAbsPairs || (kJ >= 0 && kJ < kSlotF), "the deferred pair must lie in one slot");

  extern __shared__ __align__(16) unsigned char smem[];
  float* fbuf = reinterpret_cast<float*>(smem);
  unsigned char* stage = smem + Plan::kFBytes;
  Epi epi(ep);

  const uint32_t tid = threadIdx.x;
  const uint32_t offA = deposit_rt<kThrA>(tid), offF = deposit_rt<kThrF>(tid);
  constexpr uint32_t gpt = Plan::kGroupsPerTile;
  const T* x = static_cast<const T*>(prm.x);

  /*! Global address of the first element of group g (g < num_groups). */
  auto src = [&](uint32_t g) {
    uint32_t row, gcol;
    group_coords(prm, g, row, gcol);
    return x + int64_t(row) * prm.x_stride + int64_t(gcol) * prm.n;
  };
  /*! The tile a CTA processes at its i-th step (num_tiles once it is done). */
  auto tile_of = [&](uint32_t i) { return tile_order(blockIdx.x + i * gridDim.x, prm.num_tiles, prm.reverse); };
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

  // Prologue: the first NST-1 tiles in flight (NST >= 2), or the first tile (NST == 1). The epilogue's init() comes
  // after it: under programmatic dependent launch it waits for the previous kernel, and x is not written by it.
  if constexpr (NST > 0) {
#pragma unroll
    for (int s = 0; s < (NST > 1 ? NST - 1 : 1); ++s) {
      const uint32_t t = tile_of(s);
      if (t < prm.num_tiles) issue_copy(t, s);
      cp_async_commit();
    }
  }
  epi.init();
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

    // ---- pass A: input -> registers, signs, lowest butterflies
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
    if constexpr (kEarly) {
      // Every thread holds its staged values in registers: refill the buffer now, so the copy overlaps pass A's
      // butterflies and store too, not only passes M and F (one more barrier a tile).
      __syncthreads();
      if (next < prm.num_tiles) issue_copy(next, 0);
      cp_async_commit();
    }
    butterflies<kOwnA, Plan::kNewA & ~(Plan::kSingle ? kDefer : 0u)>(v);

    if constexpr (!Plan::kSingle) {
      store_fbuf<kOwnA>(fbuf, fpad(offA), v);
      __syncthreads();
      if constexpr (NST == 1 && !kEarly) {
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
      butterflies<kOwnF, Plan::kNewF & ~kDefer>(v);
    }
    if constexpr (kAbsPairs) {
      // ---- absmax epilogue: |a| + |b| of the deferred butterfly's pairs
#pragma unroll
      for (int s = 0; s < (E >> kSlotF); ++s) {
        const uint32_t o0 = offF + deposit(uint32_t(s) << kSlotF, kOwnF);
        if (tile * gpt + (o0 >> P) >= prm.num_groups) continue;
#pragma unroll
        for (int r = 0; r < (1 << kSlotF); ++r)
          if (!((r >> kJ) & 1)) {
            const int i = (s << kSlotF) + r;
            epi.put_abs(fabsf(v[i]) + fabsf(v[i | (1 << kJ)]));
          }
      }
    } else {
      // ---- epilogue on coalesced 16-byte packets
#pragma unroll
      for (int s = 0; s < (E >> kSlotF); ++s) {
        const uint32_t o0 = offF + deposit(uint32_t(s) << kSlotF, kOwnF);
        const uint32_t g = tile * gpt + (o0 >> P);
        uint32_t row = 0, gcol = 0;
        const bool valid = g < prm.num_groups;
        if (valid) group_coords(prm, g, row, gcol);
        const typename Epi::Group grp = epi.group(row, gcol, valid);
#pragma unroll
        for (int r = 0; r < (1 << kSlotF); r += VEC)
          epi.put(grp, (o0 + deposit(uint32_t(r), kOwnF)) & kMask, &v[(s << kSlotF) + r]);
      }
    }
    if constexpr (NST >= 2) st = st == NST - 1 ? 0 : st + 1;
  }
  if constexpr (NST > 0) cp_async_wait<0>();
  epi.finish();
}

// ------------------------------------------------------------------------------------------------------------------
// Dense-factor kernel (tensor cores)
// ------------------------------------------------------------------------------------------------------------------

/*! \brief mma.sync m16n8k16 with float32 accumulation; T selects bf16 or f16 operands. */
template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

/*!
 * \brief Flips the sign bits of 8 staged 16-bit values (one 16-byte chunk in shared memory) where the float32 signs
 * sg[0..8) are negative (the signs applied before the transform, in place).
 */
__device__ __forceinline__ void flip_signs8(uint4* pk, const float* sg) {
  const float4 s0 = __ldg(reinterpret_cast<const float4*>(sg));
  const float4 s1 = __ldg(reinterpret_cast<const float4*>(sg + 4));
  auto mask = [](float lo, float hi) {
    return ((__float_as_uint(lo) >> 16) & 0x8000u) | (__float_as_uint(hi) & 0x80000000u);
  };
  uint4 u = *pk;
  u.x ^= mask(s0.x, s0.y), u.y ^= mask(s0.z, s0.w), u.z ^= mask(s1.x, s1.y), u.w ^= mask(s1.z, s1.w);
  *pk = u;
}

/*! \brief 32-bit shared-memory load from a shared-window byte address. */
__device__ __forceinline__ uint32_t lds32(uint32_t addr) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(addr));
  return v;
}

/*! \brief ldmatrix_x4_trans from a shared-window byte address. */
__device__ __forceinline__ void ldmatrix_x4_trans_u32(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

/*! \brief ldmatrix x4 with transpose: B fragments (k16 x n16) of a row-major [k][n] 16-bit matrix. */
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  ldmatrix_x4_trans_u32(r, smem_u32(smem_row));
}

/*!
 * \brief Dense-factor kernel configuration for 16-bit T and 2^P columns per dense row (n = m * 2^P, 5 <= P <= 10).
 * The row transform after the dense product uses Pow2Plan<P, 5, 3, 13>: sub-tiles of 2^(13-P) rows, 32 values a
 * thread, 256 threads.
 */
template <typename T, int P>
struct DenseConfig {
  static_assert(P >= 5 && P <= 10, "dense kernel: 32 <= 2^p <= 1024");
  static constexpr int kThreads = 256, kWarps = 8;
  using Plan = Pow2Plan<P, 5, 3, 13>;
  static_assert(Plan::kThreads == kThreads, "row plan must use every thread");
  static constexpr int kSubRows = 1 << (13 - P);   //!< rows of a row-transform sub-tile
  static constexpr int kPitch = (1 << P) * 2 + 16;  //!< staging row pitch in bytes (ldmatrix conflict-free)
  using FL = DenseFLayout<P>;  //!< float32 buffer layout
  /*! \brief Shared memory layout for dense order m and NST staging buffers. */
  struct Layout {
    int m_pad, rows_alloc;  //!< rows of the product (multiple of 16) and of the float32 buffer (whole sub-tiles)
    size_t l_bytes, stage_bytes, f_bytes, total;
    Layout(int m, int nst) {
      m_pad = (m + 15) / 16 * 16;
      const int sub = (m + kSubRows - 1) / kSubRows * kSubRows;
      rows_alloc = sub > m_pad ? sub : m_pad;
      l_bytes = size_t(m_pad) * m_pad;
      stage_bytes = size_t(m_pad) * kPitch;
      f_bytes = ((size_t(FL::at(uint32_t(rows_alloc) << P) - 1) + 4) & ~size_t(3)) * 4 + 16;
      total = l_bytes + nst * stage_bytes + f_bytes;
    }
  };
};

/*! \brief Parameters of dense_kernel. */
struct DenseParams {
  const void* x = nullptr;
  int64_t x_stride = 0, n = 0;
  int m = 0, m_pad = 0;
  const int8_t* dense_left = nullptr;  //!< [m, m] row-major +-1
  const float* pre_signs = nullptr;
  uint32_t num_groups = 0;
  FastDivmod gpr;                      //!< groups per row
  uint32_t l_bytes = 0, stage_bytes = 0;  //!< shared memory layout (see DenseConfig::Layout)
  int nst = 1;                         //!< staging buffers: 2 (next group in flight during the whole tile) or 1
};

/*!
 * \brief Y = L X S for groups viewed as X [m, 2^P], 16-bit input, one group a CTA iteration (persistent):
 *  1. cp.async the group into a staging buffer [m_pad][2^P] (rows >= m are zero, set once); signs applied in place;
 *  2. Z = L X on tensor cores: L is exact in bf16/f16 and so is the input, so one m16n8k16 MMA per 16x8x16 block
 *     with float32 accumulation gives Z to float32 accuracy. L is packed once per CTA in shared memory as int8 in
 *     A-fragment order (8 bytes a lane and 16x16 tile, turned into bf16/f16 +-1 with 2 byte-permutes and 2 ands);
 *     B fragments come from the staging buffer by ldmatrix.trans. Warp tiles of 32 rows x 32 columns go to F;
 *  3. the Sylvester transform along the rows of Z with the pass plan of the power-of-two kernel, then the epilogue
 *     (same interface as pow2_kernel's).
 */
template <typename T, int P, class Epi>
__global__ void __launch_bounds__(256, 1) dense_kernel(const __grid_constant__ DenseParams prm,
                                                    const __grid_constant__ typename Epi::Params ep) {
  using Cfg = DenseConfig<T, P>;
  using Plan = typename Cfg::Plan;
  using FL = typename Cfg::FL;
  constexpr int E = Plan::kE, VEC = Plan::kVec;
  constexpr uint32_t kOwnA = Plan::kOwnA, kOwnF = Plan::kOwnF, kMask = Plan::kGroupMask;
  constexpr int kSlotA = popcount(kOwnA & kMask) > 3 ? popcount(kOwnA & kMask) : 3;
  constexpr int kSlotF = popcount(kOwnF & kMask) > 3 ? popcount(kOwnF & kMask) : 3;
  constexpr int kChunksPerRow = (1 << P) / 8;
  constexpr uint32_t kOne = std::is_same_v<T, __nv_bfloat16> ? 0x3F803F80u : 0x3C003C00u;

  extern __shared__ __align__(16) unsigned char smem[];
  unsigned char* lpack = smem;
  unsigned char* stage = smem + prm.l_bytes;
  float* fbuf = reinterpret_cast<float*>(stage + prm.nst * prm.stage_bytes);
  Epi epi(ep);
  epi.init();

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int m = prm.m, mt_count = prm.m_pad / 16;
  const T* x = static_cast<const T*>(prm.x);

  // ---- once per CTA: L in A-fragment order, zero padding rows of every staging buffer
  for (int e = tid; e < mt_count * mt_count * 32; e += Cfg::kThreads) {
    const int l = e & 31, kt = (e >> 5) % mt_count, mt = (e >> 5) / mt_count;
    const int g = l >> 2, t = l & 3;
    uint8_t b[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int row = mt * 16 + g + ((j >> 1) & 1) * 8, col = kt * 16 + 2 * t + (j & 1) + (j >> 2) * 8;
      b[j] = row < m && col < m ? static_cast<uint8_t>(__ldg(prm.dense_left + row * m + col)) : 0u;
    }
    *reinterpret_cast<uint2*>(lpack + size_t(e) * 8) =
        make_uint2(b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t(b[3]) << 24),
                   b[4] | (b[5] << 8) | (b[6] << 16) | (uint32_t(b[7]) << 24));
  }
  for (int st = 0; st < prm.nst; ++st)
    for (int e = m * (Cfg::kPitch / 16) + tid; e < prm.m_pad * (Cfg::kPitch / 16); e += Cfg::kThreads)
      *reinterpret_cast<uint4*>(stage + st * prm.stage_bytes + size_t(e) * 16) = make_uint4(0u, 0u, 0u, 0u);

  auto src = [&](uint32_t g) {
    uint32_t row, gcol;
    prm.gpr.divmod(g, row, gcol);
    return x + int64_t(row) * prm.x_stride + int64_t(gcol) * prm.n;
  };
  const int chunks = m * kChunksPerRow;
  auto issue_copy = [&](uint32_t g, int st) {
    const T* gp = src(g);
    unsigned char* sb = stage + st * prm.stage_bytes;
    for (int c = tid; c < chunks; c += Cfg::kThreads)
      cp_async16(sb + (c / kChunksPerRow) * Cfg::kPitch + (c % kChunksPerRow) * 16, gp + c * 8);
  };

  if (blockIdx.x < prm.num_groups) issue_copy(blockIdx.x, 0);
  cp_async_commit();
  int st = 0;
  for (uint32_t g = blockIdx.x; g < prm.num_groups; g += gridDim.x) {
    const uint32_t next = g + gridDim.x;
    if (prm.nst == 2) {
      if (next < prm.num_groups) issue_copy(next, st ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    unsigned char* sb = stage + st * prm.stage_bytes;
    uint32_t row, gcol;
    prm.gpr.divmod(g, row, gcol);
    if (prm.pre_signs != nullptr) {  // this thread's own chunks are complete: flip their signs in place
      const float* sg = prm.pre_signs + int64_t(gcol) * prm.n;
      for (int c = tid; c < chunks; c += Cfg::kThreads) {
        flip_signs8(reinterpret_cast<uint4*>(sb + (c / kChunksPerRow) * Cfg::kPitch + (c % kChunksPerRow) * 16),
                    sg + c * 8);
      }
    }
    __syncthreads();  // staged group visible; F free

    // ---- Z = L X: warp tiles of 2 m-tiles x 4 n-tiles
    const int mblocks = (mt_count + 1) / 2, items = mblocks * ((1 << P) / 32);
    for (int it = warp; it < items; it += Cfg::kWarps) {
      const int mb = it % mblocks, nb = it / mblocks;
      const bool two = 2 * mb + 1 < mt_count;
      float acc[2][4][4];
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;
      for (int kt = 0; kt < mt_count; ++kt) {
        uint32_t a[2][4];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const uint2 w = *reinterpret_cast<const uint2*>(
              lpack + (size_t((2 * mb + (two ? i : 0)) * mt_count + kt) * 32 + lane) * 8);
          a[i][0] = (__byte_perm(w.x, 0u, 0x1404) & 0x80008000u) | kOne;
          a[i][1] = (__byte_perm(w.x, 0u, 0x3424) & 0x80008000u) | kOne;
          a[i][2] = (__byte_perm(w.y, 0u, 0x1404) & 0x80008000u) | kOne;
          a[i][3] = (__byte_perm(w.y, 0u, 0x3424) & 0x80008000u) | kOne;
        }
        uint32_t b[2][4];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int q = lane >> 3, r = lane & 7;
          ldmatrix_x4_trans(b[j], sb + (kt * 16 + (q & 1) * 8 + r) * Cfg::kPitch + (nb * 32 + j * 16 + (q >> 1) * 8) * 2);
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          mma16816<T>(acc[0][j], a[0], b[j >> 1][(j & 1) * 2], b[j >> 1][(j & 1) * 2 + 1]);
          if (two) mma16816<T>(acc[1][j], a[1], b[j >> 1][(j & 1) * 2], b[j >> 1][(j & 1) * 2 + 1]);
        }
      }
      const int g8 = lane >> 2, t2 = (lane & 3) * 2;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        if (i == 1 && !two) break;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const uint32_t r0 = (2 * mb + i) * 16 + g8, c = nb * 32 + j * 8 + t2;
          *reinterpret_cast<float2*>(fbuf + FL::at((r0 << P) + c)) = make_float2(acc[i][j][0], acc[i][j][1]);
          *reinterpret_cast<float2*>(fbuf + FL::at(((r0 + 8) << P) + c)) = make_float2(acc[i][j][2], acc[i][j][3]);
        }
      }
    }
    __syncthreads();  // Z complete; the staging buffer is free
    if (prm.nst == 1) {
      if (next < prm.num_groups) issue_copy(next, 0);
      cp_async_commit();
    }

    // ---- Sylvester transform along the rows of Z, sub-tile by sub-tile, then the epilogue
    const uint32_t offA = deposit_rt<Plan::kTileMask & ~kOwnA>(tid), offF = deposit_rt<Plan::kTileMask & ~kOwnF>(tid);
    for (int s0 = 0; s0 < m; s0 += Cfg::kSubRows) {
      const uint32_t fb0 = FL::at(uint32_t(s0) << P);
      float v[E];
      load_fbuf<kOwnA, E, FL>(fbuf, fb0 + FL::at(offA), v);
      butterflies<kOwnA, Plan::kNewA>(v);
      if constexpr (!Plan::kSingle) {
        store_fbuf<kOwnA, E, FL>(fbuf, fb0 + FL::at(offA), v);
        __syncthreads();
        if constexpr (Plan::kHasM) {
          const uint32_t offM = fb0 + FL::at(deposit_rt<Plan::kTileMask & ~Plan::kOwnM>(tid));
          load_fbuf<Plan::kOwnM, E, FL>(fbuf, offM, v);
          butterflies<Plan::kOwnM, Plan::kNewM>(v);
          store_fbuf<Plan::kOwnM, E, FL>(fbuf, offM, v);
          __syncthreads();
        }
        load_fbuf<kOwnF, E, FL>(fbuf, fb0 + FL::at(offF), v);
        butterflies<kOwnF, Plan::kNewF>(v);
      }
#pragma unroll
      for (int sl = 0; sl < (E >> kSlotF); ++sl) {
        const uint32_t o0 = offF + deposit(uint32_t(sl) << kSlotF, kOwnF);
        const int j = s0 + int(o0 >> P);  // row of Z
        const typename Epi::Group grp = epi.group(row, gcol, j < m);
#pragma unroll
        for (int r = 0; r < (1 << kSlotF); r += VEC)
          epi.put(grp, (uint32_t(j) << P) + ((o0 + deposit(uint32_t(r), kOwnF)) & kMask), &v[(sl << kSlotF) + r]);
      }
    }
    if (prm.nst == 2) st ^= 1;
  }
  cp_async_wait<0>();
  epi.finish();
}

// ------------------------------------------------------------------------------------------------------------------
// Dense-factor kernel with the row transform in registers (2^p = 32, 64, 128)
// ------------------------------------------------------------------------------------------------------------------

/*!
 * \brief Configuration of dense_reg_kernel for 16-bit T and 2^P columns per dense row (P = 5, 6, 7). A warp item is
 * up to kMaxMB 16-row m-tiles of Z = L X times every column of one group: kMaxMB * 2^P / 8 MMA tiles, 64 float32
 * accumulators a thread.
 */
template <typename T, int P, int W = 8>
struct DenseRegConfig {
  static_assert(P >= 5 && P <= 7, "dense_reg_kernel: 2^p in {32, 64, 128}");
  static_assert(W == 8 || W == 16, "dense_reg_kernel: 8 warps (two CTAs an SM) or 16 (one)");
  static constexpr int kThreads = 32 * W, kWarps = W;
  static constexpr int kMinBlocks = 16 / W;          //!< CTAs an SM the registers are sized for (128 a thread)
  static constexpr int kNT = (1 << P) / 8;          //!< 8-column MMA tiles across a row of Z
  static constexpr int kMaxMB = 16 / kNT;           //!< m-tiles a warp item may hold (64 accumulators)
  static constexpr int kPitch = (1 << P) * 2 + 16;  //!< staging row pitch in bytes (ldmatrix conflict-free)
  static constexpr int kScratchPitch = 40;          //!< floats a row of the per-warp transpose scratch
  static constexpr int kScratchBytes = kWarps * 8 * kScratchPitch * 4;
};

/*! \brief Parameters of dense_reg_kernel (sizes chosen by dense_reg_plan). */
struct DenseRegParams {
  const void* x = nullptr;
  int64_t x_stride = 0, n = 0;
  int m = 0, m_pad = 0, mt_count = 0, kq_count = 0;  //!< dense order, rows of the product, its m-tiles, k-quads
  const uint32_t* lfrag = nullptr;    //!< L in fragment-bit order (hadamard_pack_dense_left)
  const float* pre_signs = nullptr;
  uint32_t num_groups = 0, num_tiles = 0;
  FastDivmod gpr;                     //!< groups per row
  int groups_per_tile = 1;            //!< R: groups staged together
  int stages = 2;                     //!< S: staging buffers (tiles in flight: S - 1)
  int mb = 1, items_per_group = 1;    //!< m-tiles per warp item; items = ceil(mt_count / mb)
  uint32_t l_bytes = 0, group_bytes = 0, stage_bytes = 0;
  FastDivmod fm;                      //!< division by m (row of a tile -> group, row in the group)
  bool contiguous = false;            //!< x_stride == cols: a tile's groups are one contiguous span of x
};

/*! \brief Waits for cp.async groups with a run-time bound n in [0, 3]. */
__device__ __forceinline__ void cp_async_wait_dyn(int n) {
  if (n <= 0) cp_async_wait<0>();
  else if (n == 1) cp_async_wait<1>();
  else if (n == 2) cp_async_wait<2>();
  else cp_async_wait<3>();
}

/*!
 * \brief Y = L X S for groups viewed as X [m, 2^P], 16-bit input, 2^P <= 128: the product and the Sylvester
 * transform both stay in registers, so the only shared-memory traffic is the staged input and L.
 *  - Tiles of R groups stream through S staging buffers (cp.async); persistent CTAs, two per SM where they fit.
 *  - L lives in shared memory as one bit an entry in A-fragment order (hadamard_pack_dense_left): a 32-bit word a
 *    lane holds its 8 entries of four consecutive k-tiles; a fragment register is (w << s) & 0x80008000 | one.
 *  - A warp item is mb m-tiles x all 2^P columns of one group: Z rows in mma accumulators, a thread holding
 *    columns 2t, 2t+1 (mod 8) of every 8-column tile. The butterflies over column bit 0 and bits 3.. run in
 *    registers; a 4x4 transpose of value pairs inside each lane quad (through an 8 x 32 float scratch per warp,
 *    conflict-free) then gives each thread 8 consecutive columns, on which bits 1 and 2 run in registers; the
 *    epilogue gets 8 consecutive values (16-byte stores).
 *  - Scheduling (STREAM = true, the default): no CTA barrier in the loop. Warps take the CTA's items one at a time
 *    from a shared counter, in tile order across tile boundaries, so a tile's items need not divide evenly among
 *    the W warps. Stage s has a `full` mbarrier (32 arrivals: the lanes of the warp that filled it, each once its
 *    own cp.async copies have landed), an `empty` mbarrier (one arrival a thread) and an arrival counter: a warp
 *    arrives on tile j once it takes an item of a later tile (or runs out of items), and the last of the W warps to
 *    arrive refills the stage with tile j + S. Every warp waits on tile j's `full` phase before it arrives on tile
 *    j, so no warp can see a barrier two phases ahead of what it waits for. Deadlock-free: the lowest tile any warp
 *    waits for was refilled once every warp had passed the tile S before it, and a warp between items always takes
 *    another or finishes. W = 16 (512 threads, one CTA an SM) where two CTAs of 8 warps do not fit.
 *    STREAM = false (W = 8): the earlier loop (one CTA barrier a tile, all threads copy, items dealt round-robin
 *    within the tile); for groups of at most 2 m-tiles, and everywhere under HALO_DENSE_STREAM=0 (A/B).
 */
template <typename T, int P, class Epi, bool STREAM, int W = 8>
__global__ void __launch_bounds__(DenseRegConfig<T, P, W>::kThreads, DenseRegConfig<T, P, W>::kMinBlocks)
    dense_reg_kernel(const __grid_constant__ DenseRegParams prm, const __grid_constant__ typename Epi::Params ep) {
  using Cfg = DenseRegConfig<T, P, W>;
  static_assert(STREAM || W == 8, "the barrier-a-tile loop runs 8 warps");
  constexpr int NT = Cfg::kNT, MB = Cfg::kMaxMB, kChunksPerRow = (1 << P) / 8, SP = Cfg::kScratchPitch;
  constexpr uint32_t kOne = std::is_same_v<T, __nv_bfloat16> ? 0x3F803F80u : 0x3C003C00u;
  static_assert(Vec<T>::kVec == 8, "the epilogue takes 8 consecutive values (16 bytes of T)");

  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ uint64_t full_bar[4], empty_bar[4];
  __shared__ int arrivals[4];
  __shared__ int next_item;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  float* scratch = reinterpret_cast<float*>(smem + prm.l_bytes) + warp * 8 * SP;
  unsigned char* stages = smem + prm.l_bytes + Cfg::kScratchBytes;
  Epi epi(ep);
  epi.init();

  const int m = prm.m, R = prm.groups_per_tile, S = prm.stages;
  const T* x = static_cast<const T*>(prm.x);

  // ---- once per CTA: L; zero padding rows of every group slot
  if constexpr (STREAM) {
    for (int c = tid; c < prm.mt_count * prm.kq_count * 8; c += Cfg::kThreads)
      *reinterpret_cast<uint4*>(smem + size_t(c) * 16) = ldg16(prm.lfrag + size_t(c) * 4);
  } else {
    for (int c = tid; c < prm.mt_count * prm.kq_count * 8; c += Cfg::kThreads)  // part of the first commit group
      cp_async16(smem + size_t(c) * 16, prm.lfrag + size_t(c) * 4);
  }
  {
    const int pad16 = (prm.m_pad - m) * (Cfg::kPitch / 16);
    for (int e = tid; e < S * R * pad16; e += Cfg::kThreads) {
      const int slot = e / pad16, o = e % pad16;
      *reinterpret_cast<uint4*>(stages + size_t(slot) * prm.group_bytes + size_t(m) * Cfg::kPitch + size_t(o) * 16) =
          make_uint4(0u, 0u, 0u, 0u);
    }
  }

  auto tile_groups = [&](uint32_t tile) {
    const uint32_t g0 = tile * uint32_t(R);
    return int(prm.num_groups - g0 < uint32_t(R) ? prm.num_groups - g0 : uint32_t(R));
  };
  // One warp item: NM m-tiles (compile time, so nothing below is predicated) from mt0, all columns of group r of
  // `tile`, staged at sb.
  auto run_item = [&](auto NMc, const unsigned char* sb, uint32_t tile, int r, int mt0) {
    constexpr int NM = decltype(NMc)::value;
    const unsigned char* gsb = sb + size_t(r) * prm.group_bytes;
    float acc[NM][NT][4];
#pragma unroll
    for (int i = 0; i < NM; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.f;

    // Shared-memory byte addresses: this lane's L words of m-tile mt0 (m-tiles kq_count * 128 bytes apart) and
    // its ldmatrix row of the group's staging buffer. The B fragments stream through a ring of D register sets,
    // loaded D column pairs ahead of their MMAs (across k-tiles too), so ldmatrix latency overlaps the MMAs.
    const int g8 = lane >> 2, t4 = lane & 3, q = lane >> 3, r8 = lane & 7;
    const int swz = (g8 & 1) << 2;
    const uint32_t smem_base = smem_u32(smem);
    constexpr int JP = NT / 2, D = JP < 4 ? JP : 4;
    const uint32_t l_addr = smem_base + (uint32_t(mt0 * prm.kq_count) * 32 + lane) * 4, l_step = prm.kq_count * 128;
    const uint32_t b_addr = smem_base + uint32_t(gsb - smem) + ((q & 1) * 8 + r8) * Cfg::kPitch + (q >> 1) * 16;
    const int kts = prm.mt_count;
    uint32_t bq[D][4];
#pragma unroll
    for (int d = 0; d < D; ++d) ldmatrix_x4_trans_u32(bq[d], b_addr + d * 32);
    uint32_t w[NM], wn[NM];
#pragma unroll
    for (int i = 0; i < NM; ++i) wn[i] = lds32(l_addr + i * l_step);
    for (int kq = 0; kq < prm.kq_count; ++kq) {  // k-quads: one L word per m-tile, shifts known at compile time
#pragma unroll
      for (int i = 0; i < NM; ++i) {
        w[i] = wn[i];
        if (kq + 1 < prm.kq_count) wn[i] = lds32(l_addr + i * l_step + (kq + 1) * 128);
      }
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        const int kt = kq * 4 + f;
        if (kt >= kts) break;
        uint32_t a[NM][4];
#pragma unroll
        for (int i = 0; i < NM; ++i)
#pragma unroll
          for (int rr = 0; rr < 4; ++rr) a[i][rr] = ((w[i] << (4 * f + rr)) & 0x80008000u) | kOne;
        const uint32_t bk = b_addr + kt * 16 * Cfg::kPitch;
#pragma unroll
        for (int jp = 0; jp < JP; ++jp) {
          uint32_t (&b)[4] = bq[jp % D];
#pragma unroll
          for (int i = 0; i < NM; ++i) {
            mma16816<T>(acc[i][2 * jp], a[i], b[0], b[1]);
            mma16816<T>(acc[i][2 * jp + 1], a[i], b[2], b[3]);
          }
          if (jp + D < JP) {
            ldmatrix_x4_trans_u32(b, bk + (jp + D) * 32);
          } else if (kt + 1 < kts) {
            ldmatrix_x4_trans_u32(b, bk + 16 * Cfg::kPitch + (jp + D - JP) * 32);
          }
        }
      }
    }

    uint32_t grow, gcol;
    prm.gpr.divmod(tile * uint32_t(R) + r, grow, gcol);
#pragma unroll
    for (int i = 0; i < NM; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int zrow = (mt0 + i) * 16 + g8 + 8 * h;
        float v[NT][2];
#pragma unroll
        for (int j = 0; j < NT; ++j) v[j][0] = acc[i][j][2 * h], v[j][1] = acc[i][j][2 * h + 1];
        // column bit 0 (within the pair) and bits 3.. (the tile index j)
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const float a0 = v[j][0], a1 = v[j][1];
          v[j][0] = a0 + a1, v[j][1] = a0 - a1;
        }
#pragma unroll
        for (int bj = 1; bj < NT; bj <<= 1)
#pragma unroll
          for (int j = 0; j < NT; ++j) {
            if (j & bj) continue;
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float a0 = v[j][e], a1 = v[j | bj][e];
              v[j][e] = a0 + a1, v[j | bj][e] = a0 - a1;
            }
          }
        const typename Epi::Group grp = epi.group(grow, gcol, zrow < m);
#pragma unroll
        for (int jj = 0; jj < NT / 4; ++jj) {
          __syncwarp();
#pragma unroll
          for (int s = 0; s < 4; ++s)
            *reinterpret_cast<float2*>(scratch + g8 * SP + ((8 * s + 2 * t4) ^ swz)) =
                make_float2(v[4 * jj + s][0], v[4 * jj + s][1]);
          __syncwarp();
          float o[8];
          const float4 lo = *reinterpret_cast<const float4*>(scratch + g8 * SP + ((8 * t4) ^ swz));
          const float4 hi = *reinterpret_cast<const float4*>(scratch + g8 * SP + ((8 * t4 + 4) ^ swz));
          o[0] = lo.x, o[1] = lo.y, o[2] = lo.z, o[3] = lo.w, o[4] = hi.x, o[5] = hi.y, o[6] = hi.z, o[7] = hi.w;
          // column bits 1 and 2 (now register index bits 1 and 2)
#pragma unroll
          for (int bk2 = 2; bk2 <= 4; bk2 <<= 1)
#pragma unroll
            for (int k = 0; k < 8; ++k) {
              if (k & bk2) continue;
              const float a0 = o[k], a1 = o[k | bk2];
              o[k] = a0 + a1, o[k | bk2] = a0 - a1;
            }
          epi.put(grp, (uint32_t(zrow) << P) + 32 * jj + 8 * t4, o);
        }
      }
    }
  };
  // Item `it` of a tile: group it / items_per_group, m-tiles from mt0 (mb of them, fewer at the end of the group).
  auto run_tile_item = [&](const unsigned char* sb, uint32_t tile, int it) {
    const int r = it / prm.items_per_group, mt0 = (it % prm.items_per_group) * prm.mb;
    const int mbn = prm.mt_count - mt0 < prm.mb ? prm.mt_count - mt0 : prm.mb;
    if (mbn == MB) {
      run_item(std::integral_constant<int, MB>(), sb, tile, r, mt0);
    } else if (mbn == 1) {
      run_item(std::integral_constant<int, 1>(), sb, tile, r, mt0);
    } else if constexpr (MB > 2) {
      if (mbn == 2) run_item(std::integral_constant<int, (MB > 2 ? 2 : 1)>(), sb, tile, r, mt0);
      else run_item(std::integral_constant<int, (MB > 3 ? 3 : 1)>(), sb, tile, r, mt0);
    }
  };

  if constexpr (STREAM) {
    // Tile j of this CTA is tile blockIdx.x + j * gridDim.x, staged in buffer j % S (grid <= num_tiles: j = 0 exists).
    const uint32_t my_tiles = (prm.num_tiles - blockIdx.x + gridDim.x - 1) / gridDim.x;
    const int ipt = R * prm.items_per_group;
    const int total = int(my_tiles - 1) * ipt +
                      tile_groups(blockIdx.x + (my_tiles - 1) * gridDim.x) * prm.items_per_group;
    // A warp's copies of tile j into buffer s, completing on full_bar[s] (32 arrivals, one a lane): each lane
    // arrives once its own copies have landed, after flipping them where signs come before the transform. A group is
    // n contiguous elements; lane l copies its chunks l, l + 32, ...: it keeps its 16-byte column (32 is a multiple
    // of the chunks a row), and each step moves its pointers by 32 chunks of x and 32 / kChunksPerRow staged rows.
    // (The same loop computing each chunk's row and column from its index ran 2-4 % slower at 8960-28672 on H100:
    // the one warp that refills a buffer issues all of a tile's copies.)
    constexpr int kLaneStep = (32 / kChunksPerRow) * Cfg::kPitch;
    const int lane_dst = (lane / kChunksPerRow) * Cfg::kPitch + (lane % kChunksPerRow) * 16;
    auto fill = [&](uint32_t j, int s) {
      const uint32_t tile = blockIdx.x + j * gridDim.x;
      const int cnt = tile_groups(tile), chunks = m * kChunksPerRow;
      for (int r = 0; r < cnt; ++r) {
        uint32_t row, gcol;
        prm.gpr.divmod(tile * uint32_t(R) + uint32_t(r), row, gcol);
        const T* src = x + int64_t(row) * prm.x_stride + int64_t(gcol) * prm.n;
        unsigned char* dst = stages + size_t(s) * prm.stage_bytes + size_t(r) * prm.group_bytes;
        const T* sp = src + lane * 8;
        unsigned char* dp = dst + lane_dst;
#pragma unroll 4
        for (int c = lane; c < chunks; c += 32, sp += 256, dp += kLaneStep) cp_async16(dp, sp);
      }
      if (prm.pre_signs == nullptr) {
        cp_async_mbar_arrive(&full_bar[s]);
        return;
      }
      cp_async_commit();
      cp_async_wait<0>();
      for (int r = 0; r < cnt; ++r) {
        uint32_t row, gcol;
        prm.gpr.divmod(tile * uint32_t(R) + uint32_t(r), row, gcol);
        const float* sg = prm.pre_signs + int64_t(gcol) * prm.n + lane * 8;
        unsigned char* dp = stages + size_t(s) * prm.stage_bytes + size_t(r) * prm.group_bytes + lane_dst;
#pragma unroll 4
        for (int c = lane; c < chunks; c += 32, sg += 256, dp += kLaneStep)
          flip_signs8(reinterpret_cast<uint4*>(dp), sg);
      }
      mbar_arrive(&full_bar[s]);
    };
    if (tid < S) {
      mbar_init(&full_bar[tid], 32);
      mbar_init(&empty_bar[tid], Cfg::kThreads);
      arrivals[tid] = 0;
    }
    if (tid == 0) next_item = 0;
    __syncthreads();  // L, zero rows, barriers and counters visible
    if (warp < S && uint32_t(warp) < my_tiles) fill(uint32_t(warp), warp);

    uint32_t jw = 0;  // tiles this warp has arrived on
    // Arrival on tile j (its data has landed): every lane on empty_bar[s], which orders its reads of the buffer
    // before the refill, and lane 0 on the counter that names the last of the W warps, which refills the buffer
    // with tile j + S once the empty phase has completed (at once: all W warps have arrived).
    auto arrive = [&](uint32_t j) {
      const int s = int(j % uint32_t(S));
      const uint32_t parity = (j / uint32_t(S)) & 1u;
      mbar_wait(&full_bar[s], parity);
      mbar_arrive(&empty_bar[s]);
      __syncwarp();
      int last = 0;
      if (lane == 0) last = (atomicAdd(&arrivals[s], 1) + 1) % Cfg::kWarps == 0;  // the counter only grows
      last = __shfl_sync(0xffffffffu, last, 0);
      if (last && j + uint32_t(S) < my_tiles) {
        mbar_wait(&empty_bar[s], parity);
        fill(j + uint32_t(S), s);
      }
    };
    for (;;) {
      int f = 0;
      if (lane == 0) f = atomicAdd(&next_item, 1);
      f = __shfl_sync(0xffffffffu, f, 0);
      if (f >= total) break;
      const uint32_t j = uint32_t(f / ipt);
      while (jw < j) arrive(jw++);
      const int s = int(j % uint32_t(S));
      mbar_wait(&full_bar[s], (j / uint32_t(S)) & 1u);
      run_tile_item(stages + size_t(s) * prm.stage_bytes, blockIdx.x + j * gridDim.x, f - int(j) * ipt);
    }
    while (jw < my_tiles) arrive(jw++);
  } else {
    // Chunk fr x ch of a tile: row fr of the tile's cnt * m rows (group r = fr / m, row i = fr % m), 16-byte column ch.
    auto chunk_src = [&](uint32_t tile, uint32_t fr, uint32_t r, uint32_t i, int ch) -> const T* {
      if (prm.contiguous) return x + ((int64_t(tile) * R * m + fr) << P) + ch * 8;
      uint32_t row, gcol;
      prm.gpr.divmod(tile * uint32_t(R) + r, row, gcol);
      return x + int64_t(row) * prm.x_stride + int64_t(gcol) * prm.n + (i << P) + ch * 8;
    };
    auto chunk_dst = [&](unsigned char* sb, uint32_t fr, uint32_t r, int ch) {
      return sb + (fr + r * uint32_t(prm.m_pad - m)) * Cfg::kPitch + ch * 16;
    };
    auto chunk_signs = [&](uint32_t tile, uint32_t r, uint32_t i, int ch) {
      uint32_t row, gcol;
      prm.gpr.divmod(tile * uint32_t(R) + r, row, gcol);
      return prm.pre_signs + int64_t(gcol) * prm.n + (i << P) + ch * 8;
    };
    const int my_ch = tid % kChunksPerRow;
    auto issue_copy = [&](uint32_t tile, int st) {
      const int rows = tile_groups(tile) * m;
      unsigned char* sb = stages + size_t(st) * prm.stage_bytes;
      for (int fr = tid / kChunksPerRow; fr < rows; fr += Cfg::kThreads / kChunksPerRow) {
        const uint32_t r = prm.fm.div(uint32_t(fr)), i = uint32_t(fr) - r * uint32_t(m);
        cp_async16(chunk_dst(sb, uint32_t(fr), r, my_ch), chunk_src(tile, uint32_t(fr), r, i, my_ch));
      }
    };
    for (int s = 0; s < S - 1; ++s) {
      const uint32_t t = blockIdx.x + uint32_t(s) * gridDim.x;
      if (t < prm.num_tiles) issue_copy(t, s);
      cp_async_commit();
    }
    int st = 0;
    for (uint32_t tile = blockIdx.x; tile < prm.num_tiles; tile += gridDim.x) {
      cp_async_wait_dyn(S - 2);  // this thread's chunks of `tile` have landed
      unsigned char* sb = stages + size_t(st) * prm.stage_bytes;
      const int cnt = tile_groups(tile);
      if (prm.pre_signs != nullptr) {  // flip the signs of this thread's own chunks in place
        const int rows = cnt * m;
        for (int fr = tid / kChunksPerRow; fr < rows; fr += Cfg::kThreads / kChunksPerRow) {
          const uint32_t r = prm.fm.div(uint32_t(fr)), i = uint32_t(fr) - r * uint32_t(m);
          flip_signs8(reinterpret_cast<uint4*>(chunk_dst(sb, uint32_t(fr), r, my_ch)), chunk_signs(tile, r, i, my_ch));
        }
      }
      __syncthreads();  // tile staged and visible; every warp is done with the buffer refilled next
      {
        const uint32_t nt = tile + uint32_t(S - 1) * gridDim.x;
        if (nt < prm.num_tiles) issue_copy(nt, st == 0 ? S - 1 : st - 1);
        cp_async_commit();
      }
      const int items = cnt * prm.items_per_group;
      for (int it = warp; it < items; it += Cfg::kWarps) run_tile_item(sb, tile, it);
      st = st + 1 == S ? 0 : st + 1;
    }
    cp_async_wait<0>();
  }
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
  const float* pre_signs = nullptr;
  const int8_t* dense_left = nullptr;  //!< [m, m]
  int64_t num_groups = 0;
};

/*!
 * \brief One CTA per group (grid-stride over groups): the group is staged in shared memory as float32, radix-2
 * butterflies with a barrier per stage, the dense factor as an m-term float32 sum per output. Slow but general:
 * used for misaligned tensors, dense factors with 2^p < 8 and other shapes the fast kernels do not take. The
 * epilogue gets one unscaled value at a time through `put1(Group, col, v)`.
 */
template <typename T, class Epi>
__global__ void __launch_bounds__(512) generic_kernel(const __grid_constant__ GenericParams p,
                                                           const __grid_constant__ typename Epi::Params ep) {
  extern __shared__ __align__(16) unsigned char smem[];
  float* buf = reinterpret_cast<float*>(smem);
  float* buf2 = buf + p.n;
  Epi epi(ep);
  epi.init();
  const int pw = 1 << p.log2p, n = static_cast<int>(p.n);
  const int64_t gpr = p.cols / p.n;
  for (int64_t g = blockIdx.x; g < p.num_groups; g += gridDim.x) {
    const int64_t row = g / gpr, gcol = g % gpr;
    const int64_t x0 = row * p.x_stride + gcol * p.n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      float v = Vec<T>::load1(p.x, x0 + i);
      if (p.pre_signs != nullptr) v *= p.pre_signs[gcol * p.n + i];
      buf[i] = v;
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
    const typename Epi::Group grp = epi.group(row, gcol, true);
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
 * \brief Launches generic_kernel<T, Epi> over all groups of `a`.
 * \param max_grid upper bound on the grid (e.g. the number of partial-maximum slots)
 */
template <typename T, class Epi>
cudaError_t launch_generic(const HadamardArgs& a, int log2p, const typename Epi::Params& ep, int max_grid,
                           cudaStream_t stream, int* grid_out = nullptr) {
  GenericParams p;
  p.x = a.x, p.x_stride = a.x_row_stride, p.rows = a.rows, p.cols = a.cols, p.n = a.n;
  p.m = a.dense_m, p.log2p = log2p;
  p.pre_signs = a.signs_after ? nullptr : a.signs;
  p.dense_left = a.dense_left;
  p.num_groups = a.rows * (a.cols / a.n);
  const size_t smem = size_t(a.n) * sizeof(float) * (a.dense_m > 1 ? 2 : 1);
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
 * \brief Tile configuration of the power-of-two kernel for element type T and n = 2^P: tiles of 2^max(P, MIN_TB)
 * elements, 64 values a thread except n = 128 (32 values: the final pass then writes 64-byte runs instead of 32), two
 * staging buffers up to 16K-element tiles, one beyond (float32: none, shared memory is short). NST >= 0 sets the
 * number of staging buffers instead (single-pass plans keep the default: they cannot run with one). EARLY: with one
 * staging buffer, refill it right after pass A has read it (pow2_kernel's EARLY_COPY).
 */
template <typename T, int P, int MIN_TB, int NST = -1, bool EARLY = false>
struct Pow2TileConfig {
  static constexpr int kVBits = Vec<T>::kVecBits;
  static constexpr int kElog = P == 7 ? 5 : 6;
  static constexpr int kTB = P > MIN_TB ? P : MIN_TB;
  using Plan = Pow2Plan<P, kElog, kVBits, kTB>;
  static constexpr int kNst =
      (NST >= 0 && !(Plan::kSingle && NST == 1)) ? NST : (P <= 14 ? 2 : (sizeof(T) == 4 ? 0 : 1));
  static constexpr bool kEarlyCopy = EARLY && kNst == 1;
};

/*!
 * \brief The transform's configuration (tuned on H100, see notes/hadamard_kernels.md): 16K-element tiles (32 KB of
 * bf16), one CTA of 256 threads per SM; n = 32K uses 32K-element tiles with one staging buffer.
 */
template <typename T, int P>
using Pow2Config = Pow2TileConfig<T, P, 14>;

/*!
 * \brief Tile configuration of the fused hadamard_quantize passes. Those are bound by issue, not by bandwidth (pass 1
 * reads 2 B/element and writes nothing, so it must transform twice as many elements per second as the 4 B/element
 * transform), so they want many resident warps rather than big tiles: 4K-element tiles (TB = 12: 64 threads, up
 * to 6 CTAs/SM by shared memory) where the group fits, else one group a tile. Measured on H100, bf16 -> int8,
 * n = 1024/4096, fraction of the two-pass byte bound: TB14 (1 CTA/SM) 0.65, TB13 (3 CTAs/SM) 0.78-0.81, TB12
 * 0.84 (notes/hadamard_kernels.md, section 5).
 * n = 16K with 16-bit input takes one staging buffer instead of two (76 + 32 KB, so 2 CTAs/SM instead of 1): 0.62 ->
 * 0.74 of the two-pass bound (q; q + qt 0.57 -> 0.66) in an interleaved A/B on H100 (eighteenth session). One buffer
 * elsewhere measured -4 % (n = 1024) to +2 % (n = 128), so the others keep two.
 * n = 32K (one CTA an SM) refills its one staging buffer right after pass A's reads (EARLY): 0.662 -> 0.683 (q) in
 * an interleaved A/B on H100, 0.661 -> 0.668 across two separate runs; at n = 16K (two CTAs an SM, which already
 * overlap each other) the extra barrier cost 4 %, and the plain transform at n = 32K did not change (0.910 / 0.907),
 * so only these take it.
 */
template <typename T, int P>
using Pow2FusedConfig = Pow2TileConfig<T, P, 12, (P == 14 && sizeof(T) == 2) ? 1 : -1, P == 15>;

/*! \brief Shared memory of pow2_kernel<T, P> with tile configuration Cfg (float32 buffer and staging buffers). */
template <typename T, int P, template <typename, int> class Cfg = Pow2Config>
constexpr size_t pow2_smem_bytes() {
  using C = Cfg<T, P>;
  return C::Plan::kFBytes + size_t(C::kNst) * (size_t(1) << C::Plan::kTB) * sizeof(T);
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
 * \brief Launches pow2_kernel<T, P> (tile configuration CfgT<T, P>) over all groups of `a`.
 * \param max_grid upper bound on the grid
 * \param reverse walk the tiles backwards (tile_order)
 * \param pdl launch with programmatic stream serialization where pdl_ok() allows (Epi::init() must griddep_wait()
 *        before reading what the previous kernel writes)
 */
template <typename T, int P, class Epi, template <typename, int> class CfgT = Pow2Config>
cudaError_t launch_pow2(const HadamardArgs& a, const typename Epi::Params& ep, int max_grid, cudaStream_t stream,
                        int* grid_out = nullptr, bool reverse = false, bool pdl = false) {
  using Cfg = CfgT<T, P>;
  using Plan = typename Cfg::Plan;
  Pow2Params p;
  p.x = a.x, p.x_stride = a.x_row_stride, p.n = a.n;
  p.pre_signs = a.signs_after ? nullptr : a.signs;
  p.num_groups = static_cast<uint32_t>(a.rows * (a.cols / a.n));
  p.num_tiles = (p.num_groups + Plan::kGroupsPerTile - 1) / Plan::kGroupsPerTile;
  p.gpr = FastDivmod(static_cast<uint32_t>(a.cols / a.n));
  p.reverse = reverse;
  const size_t smem = pow2_smem_bytes<T, P, CfgT>();
  auto kernel = pow2_kernel<T, Plan, Cfg::kNst, Epi, Cfg::kEarlyCopy>;
  int grid = 0;
  HALO_RETURN_IF_ERROR(persistent_grid(kernel, Plan::kThreads, smem, p.num_tiles, &grid));
  if (grid > max_grid) grid = max_grid;
  if (grid_out != nullptr) *grid_out = grid;
  if (pdl && pdl_ok(reinterpret_cast<const void*>(kernel)))
    return launch_kernel(kernel, grid, Plan::kThreads, smem, stream, true, p, ep);
  kernel<<<grid, Plan::kThreads, smem, stream>>>(p, ep);
  return cudaPeekAtLastError();
}

/*!
 * \brief Calls fn(std::integral_constant<int, P>{}) for the run-time P in [kMinP, 15] (one instantiation each);
 * cudaErrorInvalidValue for other P.
 */
template <int kMinP = 1, typename Fn>
cudaError_t dispatch_log2(int log2n, Fn&& fn) {
  switch (log2n) {
#define HALO_CASE(P) \
  case P:            \
    if constexpr (P >= kMinP) return fn(std::integral_constant<int, P>{}); \
    return cudaErrorInvalidValue;
    HALO_CASE(1) HALO_CASE(2) HALO_CASE(3) HALO_CASE(4) HALO_CASE(5) HALO_CASE(6) HALO_CASE(7) HALO_CASE(8)
    HALO_CASE(9) HALO_CASE(10) HALO_CASE(11) HALO_CASE(12) HALO_CASE(13) HALO_CASE(14) HALO_CASE(15)
#undef HALO_CASE
    default: return cudaErrorInvalidValue;
  }
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

/*! \brief Sizes of a dense_reg_kernel launch (dense_reg_plan). */
struct DenseRegPlan {
  int e = 0;  //!< expansion of the dense factor (hadamard_dense_frag_expand): order m * 2^e, Sylvester 2^(p - e)
  int groups_per_tile = 1, stages = 2, mb = 1, items_per_group = 1;
  bool stream = true;  //!< dense_reg_kernel<..., STREAM>: warps take items across tiles, no CTA barrier a tile
  int warps = 8;       //!< 8 (two CTAs an SM) or 16 (one CTA an SM, streaming, 2^p = 128)
  size_t l_bytes = 0, group_bytes = 0, stage_bytes = 0, total = 0;
};

/*!
 * \brief Whether dense_reg_kernel takes these tensors (16-bit, aligned, L kron S_{2^e} packed, e =
 * hadamard_dense_frag_expand: the kernel sees dense order m 2^e and Sylvester order 2^(p - e) in {32, 64, 128}),
 * and its sizes: tiles of R groups (about 24 KB of input), as many staging buffers (2..4) as let two CTAs share an SM
 * (else one CTA an SM), and the m-tiles a warp item holds: as many as the accumulators allow (B fragments reused
 * across them), since the streaming scheduler deals items across tiles. Where a group has at most 2 m-tiles, or with
 * HALO_DENSE_STREAM=0 (A/B measurements), the barrier-a-tile loop runs, and R and the m-tiles an item are chosen so
 * that a tile's items spread evenly over the 8 warps. HALO_DENSE_REG=0 turns the kernel off (the older dense_kernel
 * runs instead).
 */
template <typename T>
bool dense_reg_plan(const HadamardArgs& a, int log2p_in, DenseRegPlan* out) {
  const int e = hadamard_dense_frag_expand(a.dense_m, log2p_in);
  if (e < 0 || sizeof(T) != 2 || a.dense_left_frag == nullptr || !aligned(a.dense_left_frag, 16)) return false;
  if (!aligned(a.x, 16) || a.x_row_stride % 8 != 0 || (a.signs != nullptr && !aligned(a.signs, 16))) return false;
  if (a.rows * (a.cols / a.n) >= (int64_t(1) << 31)) return false;
  const int log2p = log2p_in - e;  // 5, 6 or 7
  const char* env = std::getenv("HALO_DENSE_REG");
  if (env != nullptr && env[0] == '0') return false;
  const char* stream_env = std::getenv("HALO_DENSE_STREAM");
  const bool stream_on = stream_env == nullptr || stream_env[0] != '0';
  // An expanded order above 192 cost more than dense_kernel's float32 passes under the barrier-a-tile loop (H100,
  // 28672 = 28 * 1024: m 2^e = 224 at 0.53 of clone, dense_kernel 0.56); under the streaming scheduler 224 ran at
  // 0.605 against dense_kernel's 0.559 (same run). Above 256 dense_kernel stays (not measured).
  // HALO_DENSE_REG=force takes this kernel anyway (A/B measurements).
  const bool force = env != nullptr && std::strcmp(env, "force") == 0;
  const int m_eff = a.dense_m << e;
  if (e > 0 && log2p_in <= 10 && !force && (m_eff > 256 || (m_eff > 192 && !stream_on))) return false;
  int limit = 0, per_sm = 0, dev = 0;
  if (max_smem_per_cta(&limit) != cudaSuccess || cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev) != cudaSuccess)
    return false;
  const int m = a.dense_m << e, m_pad = (m + 15) / 16 * 16, mt = m_pad / 16, kq = (mt + 3) / 4;
  const int pitch = (1 << log2p) * 2 + 16, nt = (1 << log2p) / 8, max_mb = 16 / nt;
  DenseRegPlan p;
  p.e = e;
  p.l_bytes = size_t(mt) * kq * 32 * 4;
  p.group_bytes = size_t(m_pad) * pitch;
  // reserve: what the runtime keeps a CTA (1 KB) plus the kernel's static shared memory (barriers, reductions)
  const size_t fixed = p.l_bytes + DenseRegConfig<T, 5>::kScratchBytes, reserve = 1024 + 256;
  const size_t two_per_sm = size_t(per_sm) / 2 - reserve, one_per_sm = std::min<size_t>(limit, per_sm - reserve);
  const size_t group_in = size_t(m) << (log2p + 1);
  const int r0 = static_cast<int>(std::max<size_t>(1, std::min<size_t>(64, 24576 / group_in)));
  // Busiest warp's m-tiles per group for R groups a tile and the best m-tiles per item (ties: more m-tiles, i.e.
  // more B reuse).
  auto balance = [&](int r, int* mb_out, int* ipg_out) {
    double best = 1e30;
    for (int mb = 1; mb <= max_mb; ++mb) {
      const int ipg = (mt + mb - 1) / mb;
      const double cost = double((r * ipg + 7) / 8) * mb / r;
      if (cost <= best) best = cost, *mb_out = mb, *ipg_out = ipg;
    }
    return best;
  };
  // R: about 24 KB of input a tile (r0), or up to twice r0 where that spreads the items better over the 8 warps
  // (140 * 64: 2 groups of 9 one-m-tile items in 3 rounds, against 5 two-m-tile items per group); as many
  // staging buffers (2..4) as let two CTAs share an SM, else one CTA an SM.
  // The streaming scheduler, except where a group has at most 2 m-tiles: items that small pay its per-item
  // costs (a shared atomic, a barrier poll) for little work, and the barrier loop measured 3 % faster there (H100,
  // 1792 = 28 * 64 and 3584 = 28 * 128).
  p.stream = stream_on && mt > 2;
  bool found = false;
  if (p.stream) {
    p.mb = std::min(max_mb, mt), p.items_per_group = (mt + p.mb - 1) / p.mb;
    for (int r = r0; r >= 1 && !found; --r)
      for (int s = 4; s >= 2 && !found; --s)
        if (fixed + size_t(s) * r * p.group_bytes <= two_per_sm) p.groups_per_tile = r, p.stages = s, found = true;
    // One CTA an SM: with 16 warps at 2^p = 128 (the register budget is the same 128 a thread), so that an SM
    // keeps 16 warps in flight (H100, 28672 = 224 * 128: see notes/hadamard_kernels.md, sixteenth session);
    // HALO_DENSE_WIDE=0 keeps 8 (A/B measurements).
    const char* wide_env = std::getenv("HALO_DENSE_WIDE");
    const int w1 = log2p == 7 && (wide_env == nullptr || wide_env[0] != '0') ? 16 : 8;
    const size_t fixed1 = p.l_bytes + size_t(w1) * 8 * DenseRegConfig<T, 5>::kScratchPitch * 4;
    for (int s = 4; s >= 2 && !found; --s)
      if (fixed1 + size_t(s) * p.group_bytes <= one_per_sm)
        p.groups_per_tile = 1, p.stages = s, p.warps = w1, found = true;
    if (!found) return false;
    const size_t fixed_used = p.warps == 8 ? fixed : fixed1;
    p.stage_bytes = size_t(p.groups_per_tile) * p.group_bytes;
    p.total = fixed_used + size_t(p.stages) * p.stage_bytes;
    *out = p;
    return true;
  }
  double best = 1e30;
  for (int r = 1; r <= std::max(2, r0); ++r)
    for (int s = 4; s >= 2; --s) {
      if (fixed + size_t(s) * r * p.group_bytes > two_per_sm) continue;
      int mb = 1, ipg = 1;
      const double cost = balance(r, &mb, &ipg);
      const bool better = cost < best - 1e-9 || (cost < best + 1e-9 && std::abs(r - r0) < std::abs(p.groups_per_tile - r0));
      if (!found || better) best = cost, p.groups_per_tile = r, p.stages = s, p.mb = mb, p.items_per_group = ipg;
      found = true;
      break;  // the most stages that fit for this r
    }
  for (int s = 4; s >= 2 && !found; --s)
    if (fixed + size_t(s) * p.group_bytes <= one_per_sm) {
      p.groups_per_tile = 1, p.stages = s, found = true;
      balance(1, &p.mb, &p.items_per_group);
    }
  if (!found) return false;
  p.stage_bytes = size_t(p.groups_per_tile) * p.group_bytes;
  p.total = fixed + size_t(p.stages) * p.stage_bytes;
  *out = p;
  return true;
}

/*! \brief Launches dense_reg_kernel<T, P> over all groups of `a` with the sizes of dense_reg_plan. */
template <typename T, class Epi>
cudaError_t launch_dense_reg(const HadamardArgs& a, int log2p, const DenseRegPlan& plan,
                             const typename Epi::Params& ep, int max_grid, cudaStream_t stream, int* grid_out) {
  const int m = a.dense_m << plan.e;
  return dispatch_log2(log2p - plan.e, [&](auto Pc) -> cudaError_t {
    constexpr int P = decltype(Pc)::value;
    if constexpr (P < 5 || P > 7 || sizeof(T) != 2) {
      return cudaErrorInvalidValue;
    } else {
      DenseRegParams p;
      p.x = a.x, p.x_stride = a.x_row_stride, p.n = a.n, p.m = m;
      p.m_pad = (m + 15) / 16 * 16, p.mt_count = p.m_pad / 16, p.kq_count = (p.mt_count + 3) / 4;
      p.lfrag = a.dense_left_frag;
      p.pre_signs = a.signs_after ? nullptr : a.signs;
      p.num_groups = static_cast<uint32_t>(a.rows * (a.cols / a.n));
      p.gpr = FastDivmod(static_cast<uint32_t>(a.cols / a.n));
      p.groups_per_tile = plan.groups_per_tile, p.stages = plan.stages;
      p.num_tiles = (p.num_groups + uint32_t(plan.groups_per_tile) - 1) / uint32_t(plan.groups_per_tile);
      p.mb = plan.mb, p.items_per_group = plan.items_per_group;
      p.l_bytes = static_cast<uint32_t>(plan.l_bytes), p.group_bytes = static_cast<uint32_t>(plan.group_bytes);
      p.stage_bytes = static_cast<uint32_t>(plan.stage_bytes);
      p.fm = FastDivmod(static_cast<uint32_t>(m));
      p.contiguous = a.x_row_stride == a.cols;
      auto kernel = plan.stream ? dense_reg_kernel<T, P, Epi, true> : dense_reg_kernel<T, P, Epi, false>;
      int threads = DenseRegConfig<T, P>::kThreads;
      if constexpr (P == 7) {
        if (plan.warps == 16) kernel = dense_reg_kernel<T, P, Epi, true, 16>, threads = DenseRegConfig<T, P, 16>::kThreads;
      }
      if (plan.warps != 8 && threads == DenseRegConfig<T, P>::kThreads) return cudaErrorInvalidValue;
      int grid = 0;
      HALO_RETURN_IF_ERROR(persistent_grid(kernel, threads, plan.total, p.num_tiles, &grid));
      if (grid > max_grid) grid = max_grid;
      if (grid_out != nullptr) *grid_out = grid;
      kernel<<<grid, threads, plan.total, stream>>>(p, ep);
      return cudaPeekAtLastError();
    }
  });
}

/*! \brief Which dense-factor kernel runs (dense_fast_ok) and its sizes. */
struct DenseRoute {
  bool reg = false;   //!< dense_reg_kernel with `plan`, else dense_kernel with `nst` staging buffers
  DenseRegPlan plan;
  int nst = 1;
};

/*!
 * \brief Whether a dense-factor tensor-core kernel takes these tensors, and which (*route, for launch_dense):
 * dense_reg_kernel with the sizes of dense_reg_plan, else dense_kernel (16-bit dtype, 32 <= 2^p <= 1024, aligned,
 * fits on chip) with its staging depth: two buffers unless one buffer lets more CTAs share an SM (the kernel's phases are serialized,
 * so a second resident CTA hides more than a prefetched group does). Registers (78-96 a thread) cap residency at
 * two CTAs of 256 threads.
 */
template <typename T>
bool dense_fast_ok(const HadamardArgs& a, int log2p, DenseRoute* route) {
  *route = DenseRoute();
  if (dense_reg_plan<T>(a, log2p, &route->plan)) {
    route->reg = true;
    return true;
  }
  if (a.dense_m < 2 || log2p < 5 || log2p > 10 || sizeof(T) != 2) return false;
  if (!aligned(a.x, 16) || a.x_row_stride % 8 != 0 || (a.signs != nullptr && !aligned(a.signs, 16))) return false;
  if (a.rows * (a.cols / a.n) >= (int64_t(1) << 31)) return false;
  int limit = 0, per_sm = 0, dev = 0;
  if (max_smem_per_cta(&limit) != cudaSuccess || cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev) != cudaSuccess)
    return false;
  bool ok = false;
  dispatch_log2(log2p, [&](auto P) {
    if constexpr (decltype(P)::value >= 5 && decltype(P)::value <= 10) {
      using Layout = typename DenseConfig<T, decltype(P)::value>::Layout;
      const size_t one = Layout(a.dense_m, 1).total, two = Layout(a.dense_m, 2).total;
      const size_t reserve = 1024;  // per-CTA shared memory the runtime keeps
      auto ctas = [&](size_t bytes) { return std::min<size_t>(2, size_t(per_sm) / (bytes + reserve)); };
      ok = one <= size_t(limit);
      route->nst = two <= size_t(limit) && ctas(two) >= ctas(one) ? 2 : 1;
    }
    return cudaSuccess;
  });
  return ok;
}

/*!
 * \brief Launches the dense-factor kernel dense_fast_ok chose over all groups of `a`: dense_reg_kernel, or
 * dense_kernel<T, P> (P = log2p in [5, 10]).
 */
template <typename T, class Epi>
cudaError_t launch_dense(const HadamardArgs& a, int log2p, const DenseRoute& route, const typename Epi::Params& ep,
                         int max_grid, cudaStream_t stream, int* grid_out = nullptr) {
  if (route.reg) return launch_dense_reg<T, Epi>(a, log2p, route.plan, ep, max_grid, stream, grid_out);
  const int nst = route.nst;
  return dispatch_log2(log2p, [&](auto Pc) -> cudaError_t {
    constexpr int P = decltype(Pc)::value;
    if constexpr (P < 5 || P > 10 || sizeof(T) != 2) {
      return cudaErrorInvalidValue;
    } else {
      using Cfg = DenseConfig<T, P>;
      const typename Cfg::Layout lay(a.dense_m, nst);
      DenseParams p;
      p.x = a.x, p.x_stride = a.x_row_stride, p.n = a.n, p.m = a.dense_m, p.m_pad = lay.m_pad;
      p.dense_left = a.dense_left;
      p.pre_signs = a.signs_after ? nullptr : a.signs;
      p.num_groups = static_cast<uint32_t>(a.rows * (a.cols / a.n));
      p.gpr = FastDivmod(static_cast<uint32_t>(a.cols / a.n));
      p.l_bytes = static_cast<uint32_t>(lay.l_bytes), p.stage_bytes = static_cast<uint32_t>(lay.stage_bytes);
      p.nst = nst;
      auto kernel = dense_kernel<T, P, Epi>;
      int grid = 0;
      HALO_RETURN_IF_ERROR(persistent_grid(kernel, Cfg::kThreads, lay.total, p.num_groups, &grid));
      if (grid > max_grid) grid = max_grid;
      if (grid_out != nullptr) *grid_out = grid;
      kernel<<<grid, Cfg::kThreads, lay.total, stream>>>(p, ep);
      return cudaPeekAtLastError();
    }
  });
}

}  // namespace halo::detail
