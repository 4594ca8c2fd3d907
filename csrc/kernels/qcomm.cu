/*!
 * \file qcomm.cu
 * \brief Kernels of the block-quantized two-shot collectives (qcomm.h): pack, fused dequant-sum-requant, unpack.
 *
 * A group of L lanes per quantization block of B = L * E elements (L a power of two <= 32, so a warp handles
 * 32 / L consecutive blocks): lane l of the group owns the E consecutive elements [l*E, (l+1)*E) of the block in
 * registers, the absmax is a shuffle reduction inside the group and each lane writes E contiguous code bytes, so a
 * warp stores 32 * E contiguous bytes. E (elements per lane) is the kernel trait that sets the memory parallelism:
 * E = max(lane_elems, B / 32) with lane_elems 16 (32-byte bf16 loads, 16-byte code stores) for pack and reduce
 * (qcomm_lane_elems(), HALO_QCOMM_LANE_ELEMS=8 selects 8) and 8 (16-byte loads, 8-byte code stores) for unpack,
 * the faster choices measured on 2x H200 (see kUnpackLaneElems). Small blocks (B = 64: L = 4 or 8)
 * therefore move as many bytes per lane as B = 256 does. Inputs of 16-bit types are read as 16-byte packets when
 * the layout allows it (chunk * sizeof(T) a multiple of 16), element by element otherwise (ragged tails, odd chunk
 * sizes). The reduction adds the dequantized chunks in chunk order with
 * explicit round-to-nearest multiply and add (no FMA contraction), so the result does not depend on the grid and
 * matches the CPU reference (csrc/cpu/qcomm.cpp) bit for bit. The owner's own contribution (QCommOwn) enters the
 * same ordered sum unquantized, read from its input like the pack kernel reads x (packets where aligned, zeros
 * past its length); the pack kernels skip the own chunk (warps are mapped onto the other world - 1 chunks only).
 */
#include <algorithm>
#include <type_traits>

#include "qcomm.h"
#include "quant_utils.cuh"

namespace halo {
namespace detail {
namespace {

constexpr int kWarps = 8;  //!< warps per CTA
constexpr int kThreadsQ = kWarps * 32;
constexpr int64_t kMaxCtas = 8192;

/*! \brief Loads E elements of x starting at p (vector path when Vec and the packet size divides E). */
template <typename T, int E>
__device__ __forceinline__ void load_elems(const T* p, bool vec, float* v) {
  constexpr int kV = Vec<T>::kVec;
  if constexpr (E % kV == 0) {
    if (vec) {
#pragma unroll
      for (int i = 0; i < E / kV; ++i) Vec<T>::unpack(ldg16(p + i * kV), v + i * kV);
      return;
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e) v[e] = Vec<T>::load1(p, e);
}

/*!
 * \brief Loads the E elements [j0, j0 + E) of a slice of `valid` elements at x (zeros past valid; packets when vec
 * and the whole group is valid). x is only dereferenced below valid (it may be null when valid == 0).
 */
template <typename T, int E>
__device__ __forceinline__ void load_part(const T* x, int64_t j0, int64_t valid, bool vec, float* v) {
  if (j0 + E <= valid) {
    load_elems<T, E>(x + j0, vec, v);
  } else if (j0 >= valid) {
#pragma unroll
    for (int e = 0; e < E; ++e) v[e] = 0.f;
  } else {
    const T* src = x + j0;
#pragma unroll
    for (int e = 0; e < E; ++e) v[e] = j0 + e < valid ? Vec<T>::load1(src, e) : 0.f;
  }
}

/*! \brief load_part of the own contribution (dtype chosen at run time: a warp-uniform branch). */
template <int E>
__device__ __forceinline__ void load_own(const QCommOwn& own, int64_t j0, bool vec, float* v) {
  if (own.t == DType::kFloat32)
    load_part<float, E>(static_cast<const float*>(own.x), j0, own.n, vec, v);
  else if (own.t == DType::kBFloat16)
    load_part<__nv_bfloat16, E>(static_cast<const __nv_bfloat16*>(own.x), j0, own.n, vec, v);
  else
    load_part<__half, E>(static_cast<const __half*>(own.x), j0, own.n, vec, v);
}

/*! \brief Stores E 8-bit codes of v * inv at q (E bytes, aligned to min(E, 16)). */
template <DType Q, int E>
__device__ __forceinline__ void store_codes(uint8_t* q, const float* v, float inv) {
  if constexpr (E % 4 == 0) {
    uint32_t w[E / 4];
#pragma unroll
    for (int i = 0; i < E / 4; ++i) w[i] = quant4<Q>(v + 4 * i, inv);
    if constexpr (E % 16 == 0) {
#pragma unroll
      for (int i = 0; i < E / 16; ++i)
        reinterpret_cast<uint4*>(q)[i] = make_uint4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
    } else if constexpr (E % 8 == 0) {
#pragma unroll
      for (int i = 0; i < E / 8; ++i) reinterpret_cast<uint2*>(q)[i] = make_uint2(w[2 * i], w[2 * i + 1]);
    } else {
      *reinterpret_cast<uint32_t*>(q) = w[0];
    }
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) q[e] = static_cast<uint8_t>(quant_code<Q>(v[e], inv));
  }
}

/*! \brief 16 / 8 / 4 bytes at p: read-only-cache loads, or L2-only loads (Cg) for bytes a peer may have written
 * during this kernel (the read-only path is not coherent with such writes). */
template <bool Cg>
__device__ __forceinline__ uint4 ld16(const uint8_t* p) {
  if constexpr (Cg) return __ldcg(reinterpret_cast<const uint4*>(p));
  else return __ldg(reinterpret_cast<const uint4*>(p));
}
template <bool Cg>
__device__ __forceinline__ uint2 ld8(const uint8_t* p) {
  if constexpr (Cg) return __ldcg(reinterpret_cast<const uint2*>(p));
  else return __ldg(reinterpret_cast<const uint2*>(p));
}
template <bool Cg>
__device__ __forceinline__ uint32_t ld4(const uint8_t* p) {
  if constexpr (Cg) return __ldcg(reinterpret_cast<const unsigned int*>(p));
  else return __ldg(reinterpret_cast<const unsigned int*>(p));
}
template <bool Cg>
__device__ __forceinline__ float ldf(const float* p) {
  if constexpr (Cg) return __ldcg(p);
  else return __ldg(p);
}

/*! \brief Loads E codes at q (aligned to min(E, 16)) as float values (not yet scaled). */
template <DType Q, int E, bool Cg = false>
__device__ __forceinline__ void load_codes(const uint8_t* q, float* v) {
  if constexpr (E % 4 == 0) {
    uint32_t w[E / 4];
    if constexpr (E % 16 == 0) {
#pragma unroll
      for (int i = 0; i < E / 16; ++i) {
        const uint4 u = ld16<Cg>(q + 16 * i);
        w[4 * i] = u.x, w[4 * i + 1] = u.y, w[4 * i + 2] = u.z, w[4 * i + 3] = u.w;
      }
    } else if constexpr (E % 8 == 0) {
      const uint2 u = ld8<Cg>(q);
      w[0] = u.x, w[1] = u.y;
    } else {
      w[0] = ld4<Cg>(q);
    }
#pragma unroll
    for (int e = 0; e < E; ++e) v[e] = dequant_code<Q>((w[e / 4] >> (8 * (e % 4))) & 0xffu);
  } else {
#pragma unroll
    for (int e = 0; e < E; ++e) {
      uint8_t c;
      if constexpr (Cg) c = static_cast<uint8_t>(__ldcg(reinterpret_cast<const unsigned char*>(q + e)));
      else c = __ldg(q + e);
      v[e] = dequant_code<Q>(c);
    }
  }
}

/*!
 * \brief Absmax over the L-lane group of E values per lane (NaN-free inputs; NaN propagates like the CPU's max).
 * All 32 lanes of the warp must call it (xor shuffles with offsets < L stay inside the aligned group).
 */
template <int E, int L>
__device__ __forceinline__ float group_absmax(const float* v) {
  float m = 0.f;
#pragma unroll
  for (int e = 0; e < E; ++e) m = fmaxf(m, fabsf(v[e]));
  return group_max(m, L);
}

/*! \brief Stores one float as element i of an array of dtype t. */
__device__ __forceinline__ void store_any(void* p, DType t, int64_t i, float v) {
  if (t == DType::kFloat32) Vec<float>::store1(p, i, v);
  else if (t == DType::kBFloat16) Vec<__nv_bfloat16>::store1(p, i, v);
  else Vec<__half>::store1(p, i, v);
}

/*! \brief Stores the E values v as elements [j0, j0 + E) of a T array of n elements (packets when vec and whole). */
template <typename T, int E>
__device__ __forceinline__ void store_part(T* dst, int64_t j0, int64_t n, bool vec, const float* v) {
  constexpr int kV = Vec<T>::kVec;
  if constexpr (E % kV == 0) {
    if (vec && j0 + E <= n) {
#pragma unroll
      for (int i = 0; i < E / kV; ++i) stg16(dst + j0 + i * kV, Vec<T>::pack(v + i * kV));
      return;
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e)
    if (j0 + e < n) Vec<T>::store1(dst + j0, e, v[e]);
}

/*! \brief store_part for a run-time dtype (a warp-uniform branch). */
template <int E>
__device__ __forceinline__ void store_deq(const QCommDeq& d, int64_t j0, bool vec, const float* v) {
  if (d.t == DType::kFloat32) store_part<float, E>(static_cast<float*>(d.out), j0, d.n, vec, v);
  else if (d.t == DType::kBFloat16) store_part<__nv_bfloat16, E>(static_cast<__nv_bfloat16*>(d.out), j0, d.n, vec, v);
  else store_part<__half, E>(static_cast<__half*>(d.out), j0, d.n, vec, v);
}

/*!
 * \brief The L-lane group of this thread: G = 32 / L blocks per warp, `first` = index of the warp's first block in
 * a grid-stride loop over blocks (step = stride), `grp` / `sub` = this thread's group in the warp and lane in it.
 */
template <int L>
struct LaneGroup {
  static constexpr int G = 32 / L;
  const int sub = (threadIdx.x & 31) % L;
  const int grp = (threadIdx.x & 31) / L;
  __device__ __forceinline__ int64_t first() const {
    return (int64_t(blockIdx.x) * kWarps + threadIdx.x / 32) * G;
  }
  __device__ __forceinline__ static int64_t stride() { return int64_t(gridDim.x) * kWarps * G; }
};

template <typename T, DType Q, int E, int L>
__global__ void __launch_bounds__(kThreadsQ)
    pack_kernel(const T* __restrict__ x, int64_t n, int64_t chunk, int64_t nb, int world, int skip, uint8_t* out,
                const QCommOuts outs, bool vec) {
  constexpr int B = L * E;
  const LaneGroup<L> lg;
  // blocks of the chunks other than `skip` (skip < 0: all); out == nullptr: chunk c goes to outs.ptrs[c]
  const int64_t cb = nb * (B + 4), total = int64_t(skip >= 0 ? world - 1 : world) * nb;
  // the loop bound is warp-uniform (group_absmax needs every lane); groups past `total` compute on zeros
  for (int64_t w0 = lg.first(); w0 < total; w0 += lg.stride()) {
    const int64_t w = w0 + lg.grp;
    const bool active = w < total;
    const int64_t cw = w / nb, b = w - cw * nb;
    const int64_t c = skip >= 0 && cw >= skip ? cw + 1 : cw;
    const int64_t j0 = b * B + int64_t(lg.sub) * E;  // offset inside the chunk
    const int64_t valid = active ? min(chunk, max(n - c * chunk, int64_t(0))) : 0;  // real elements of chunk c
    float v[E];
    load_part<T, E>(x + c * chunk, j0, valid, vec, v);
    const QuantScale qs(group_absmax<E, L>(v), qmax_dev(Q));
    if (!active) continue;
    uint8_t* dst = out != nullptr ? out + c * cb : outs.ptrs[c];
    store_codes<Q, E>(dst + b * B + lg.sub * E, v, qs.inv);
    if (lg.sub == 0) reinterpret_cast<float*>(dst + nb * B)[b] = qs.scale;
  }
}

/*!
 * \brief The reduce of the 32 / L blocks [b0, b0 + 32 / L) of one warp (b0 warp-uniform, < nb; groups past nb
 * compute on block nb - 1 and store nothing, since the absmax shuffles need every lane).
 */
template <DType Q, int E, int L>
__device__ __forceinline__ void reduce_group(const LaneGroup<L>& lg, int64_t b0, const QCommChunks& in, int64_t nb,
                                             float post_scale, void* out, DType out_t, int64_t out_n,
                                             const QCommOuts& outs, const QCommOwn& own, bool own_vec,
                                             const QCommDeq& deq, bool deq_vec) {
  constexpr int B = L * E;
  const int64_t b = b0 + lg.grp;
  const bool active = b < nb;
  const int64_t bb = active ? b : nb - 1;  // inactive groups read a valid block, store nothing
  const int64_t j0 = bb * B + int64_t(lg.sub) * E;
  float acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = 0.f;
#pragma unroll 4
  for (int r = 0; r < in.count; ++r) {  // fixed rank order: the sum does not depend on timing
    if (r == own.index) {  // the owner's contribution, unquantized (warp-uniform branch)
      float v[E];
      load_own<E>(own, j0, own_vec, v);
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] = __fadd_rn(acc[e], v[e]);
      continue;
    }
    const uint8_t* p = in.at(r);
    const float s = __ldg(reinterpret_cast<const float*>(p + nb * B) + bb);
    float v[E];
    load_codes<Q, E>(p + j0, v);
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = __fadd_rn(acc[e], __fmul_rn(v[e], s));
  }
  if (post_scale != 1.0f) {
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] = __fmul_rn(acc[e], post_scale);
  }
  if (out_t == Q) {
    const QuantScale qs(group_absmax<E, L>(acc), qmax_dev(Q));
    if (!active) return;
    const int nout = out != nullptr ? 1 : outs.count;  // out == nullptr: the same bytes to every outs.ptrs[i]
    for (int o = 0; o < nout; ++o) {
      uint8_t* dst = out != nullptr ? static_cast<uint8_t*>(out) : outs.ptrs[o];
      store_codes<Q, E>(dst + j0, acc, qs.inv);
      if (lg.sub == 0) reinterpret_cast<float*>(dst + nb * B)[b] = qs.scale;
    }
    if (deq.out != nullptr && j0 < deq.n) {  // what unpack makes of these codes: code value * scale, rounded once
      float v[E];
#pragma unroll
      for (int e = 0; e < E; ++e) v[e] = __fmul_rn(dequant_code<Q>(quant_code<Q>(acc[e], qs.inv)), qs.scale);
      store_deq<E>(deq, j0, deq_vec, v);
    }
  } else if (active) {
#pragma unroll
    for (int e = 0; e < E; ++e)
      if (j0 + e < out_n) store_any(out, out_t, j0 + e, acc[e]);
  }
}

template <DType Q, int E, int L>
__global__ void __launch_bounds__(kThreadsQ)
    reduce_kernel(const QCommChunks in, int64_t nb, float post_scale, void* out, DType out_t, int64_t out_n,
                  const QCommOuts outs, const QCommOwn own, bool own_vec, const QCommDeq deq, bool deq_vec) {
  const LaneGroup<L> lg;
  for (int64_t b0 = lg.first(); b0 < nb; b0 += lg.stride())  // warp-uniform bound (see pack_kernel)
    reduce_group<Q, E, L>(lg, b0, in, nb, post_scale, out, out_t, out_n, outs, own, own_vec, deq, deq_vec);
}

/*! \brief Dequantizes this lane's E elements of block b of packed chunk c into out (chunk c at out + c * chunk). */
template <typename T, DType Q, int E, int L, bool Cg = false>
__device__ __forceinline__ void unpack_block(const LaneGroup<L>& lg, const QCommChunks& in, int64_t c, int64_t b,
                                             int64_t chunk, int64_t nb, T* __restrict__ out, int64_t n, bool vec) {
  constexpr int B = L * E;
  const int64_t j0 = b * B + int64_t(lg.sub) * E;
  const int64_t valid = min(chunk, max(n - c * chunk, int64_t(0)));
  if (j0 >= valid) return;  // padding only
  const uint8_t* p = in.at(static_cast<int>(c));
  const float s = ldf<Cg>(reinterpret_cast<const float*>(p + nb * B) + b);
  float v[E];
  load_codes<Q, E, Cg>(p + j0, v);
#pragma unroll
  for (int e = 0; e < E; ++e) v[e] = __fmul_rn(v[e], s);
  T* dst = out + c * chunk + j0;
  constexpr int kV = Vec<T>::kVec;
  if constexpr (E % kV == 0) {
    if (vec && j0 + E <= valid) {
#pragma unroll
      for (int i = 0; i < E / kV; ++i) stg16(dst + i * kV, Vec<T>::pack(v + i * kV));
      return;
    }
  }
#pragma unroll
  for (int e = 0; e < E; ++e)
    if (j0 + e < valid) Vec<T>::store1(dst, e, v[e]);
}

template <typename T, DType Q, int E, int L>
__global__ void __launch_bounds__(kThreadsQ)
    unpack_kernel(const QCommChunks in, int64_t chunk, int64_t nb, T* __restrict__ out, int64_t n, bool vec) {
  const LaneGroup<L> lg;
  const int64_t total = int64_t(in.count) * nb;
  for (int64_t w0 = lg.first(); w0 < total; w0 += lg.stride()) {
    const int64_t w = w0 + lg.grp;
    if (w >= total) continue;  // no group-collective ops in this kernel
    const int64_t c = w / nb;
    unpack_block<T, Q, E, L>(lg, in, c, w - c * nb, chunk, nb, out, n, vec);
  }
}

/*! \brief Release store / acquire load of a 32-bit flag at system scope (peer memory). */
__device__ __forceinline__ void st_release_sys(uint32_t* p, uint32_t v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ uint32_t ld_acquire_sys(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

/*!
 * \brief qcomm_reduce_broadcast_unpack: a persistent grid over the flag tiles of the chunk (kQCommFlagTileElems
 * elements each, tile t to CTA t mod grid). Step t of a CTA reduces tile t (as reduce_kernel, stores to every peer's
 * gather slot, its own values to out), makes the stores visible system-wide and sets the tile's flag in every
 * peer (one system-scope fence per signalling thread after a CTA barrier, not one per thread); then it dequantizes
 * tile t - grid of every other rank, waiting for that rank's flag first. Measured on one H100 as rank 0 of 2 with
 * local "peer" buffers (tools/qcomm_fused_probe.py): 1.44-1.52x the time of qcomm_reduce_broadcast + qcomm_unpack
 * (1.64-1.87x with a fence in every thread), so it is opt-in (notes/allreduce.md). A CTA never
 * waits before it has signalled all tiles up to the current one, and the peer's CTA of the same index produced the
 * awaited tile one step earlier, so the wait is short and cannot close a cycle. Reduce uses (E, L) lanes, the
 * unpack (EU, LU) (the faster traits of the separate kernels).
 */
template <typename T, DType Q, int E, int L, int EU, int LU>
__global__ void __launch_bounds__(kThreadsQ)
    reduce_unpack_kernel(const QCommChunks in, int64_t nb, float post_scale, const QCommOuts outs,
                         const QCommOwn own, bool own_vec, const QCommDeq deq, bool deq_vec, const QCommGather g,
                         bool out_vec) {
  static_assert(L * E == LU * EU, "one block size");
  const LaneGroup<L> lg;
  const LaneGroup<LU> lgu;
  constexpr int64_t kTile = kQCommFlagTileElems / (L * E);       // blocks per flag tile
  constexpr int64_t kStepR = int64_t(kWarps) * LaneGroup<L>::G;  // blocks per CTA pass of the reduce
  constexpr int64_t kStepU = int64_t(kWarps) * LaneGroup<LU>::G;
  static_assert(kTile % kStepR == 0 && kTile % kStepU == 0, "a flag tile of whole CTA passes");
  const int warp = threadIdx.x / 32;
  const int64_t tiles = qcomm_flag_tiles(nb, L * E);
  T* out = static_cast<T*>(g.out);
  for (int64_t t = blockIdx.x; t < tiles + gridDim.x; t += gridDim.x) {
    if (t < tiles) {
#pragma unroll 1
      for (int64_t s = 0; s < kTile; s += kStepR) {
        const int64_t b0 = t * kTile + s + int64_t(warp) * LaneGroup<L>::G;
        if (b0 < nb)
          reduce_group<Q, E, L>(lg, b0, in, nb, post_scale, nullptr, Q, 0, outs, own, own_vec, deq, deq_vec);
      }
      // every thread's stores of the tile before the flag: the CTA barrier orders them before the signalling threads'
      // system-scope fence (cumulative, the pattern of a cooperative-groups grid sync), which then publishes them
      __syncthreads();
      if (threadIdx.x < g.peer_flags.count) {
        __threadfence_system();
        st_release_sys(g.peer_flags.ptrs[threadIdx.x] + t, g.epoch);
      }
    }
    const int64_t tp = t - int64_t(gridDim.x);
    if (tp >= 0 && tp < tiles) {
      for (int src = 0; src < g.chunks.count; ++src) {
        if (src == g.rank) continue;
        if (threadIdx.x == 0) {
          const uint32_t* f = g.flags + int64_t(src) * g.flag_stride + tp;
          while (ld_acquire_sys(f) != g.epoch) {
          }
        }
        __syncthreads();  // the tile of rank src has arrived
#pragma unroll 1
        for (int64_t s = 0; s < kTile; s += kStepU) {
          const int64_t b = tp * kTile + s + int64_t(warp) * LaneGroup<LU>::G + lgu.grp;
          if (b < nb) unpack_block<T, Q, EU, LU, true>(lgu, g.chunks, src, b, g.chunk, nb, out, g.n, out_vec);
        }
      }
    }
  }
}

/*! \brief CTAs for `blocks` quantization blocks handled by groups of L lanes (32 / L blocks per warp). */
int grid_for(int64_t blocks, int lanes) {
  const int64_t warps = (blocks * lanes + 31) / 32;
  const int64_t g = (warps + kWarps - 1) / kWarps;
  return static_cast<int>(g < 1 ? 1 : g > kMaxCtas ? kMaxCtas : g);
}

/*! \brief Calls f(E, L) as integral constants for block B: E = max(LE, B / 32) elements per lane, L = B / E lanes. */
template <int B, int LE, typename F>
void call_el(F&& f) {
  constexpr int E = B / 32 > LE ? B / 32 : LE;
  f(std::integral_constant<int, E>{}, std::integral_constant<int, B / E>{});
}

/*!
 * \brief Calls f(std::integral_constant<int, E>{}, std::integral_constant<int, L>{}) for the (elements per lane,
 * lanes per block) of `block` at LE elements per lane: E = max(LE, block / 32), L = block / E; false for an
 * unsupported block.
 */
template <int LE, typename F>
bool dispatch_block(int64_t block, F&& f) {
  switch (block) {
    case 32: call_el<32, LE>(f); return true;
    case 64: call_el<64, LE>(f); return true;
    case 128: call_el<128, LE>(f); return true;
    case 256: call_el<256, LE>(f); return true;
    case 512: call_el<512, LE>(f); return true;
    case 1024: call_el<1024, LE>(f); return true;
    default: return false;
  }
}

/*! \brief dispatch_block for a run-time lane_elems (8 or 16; false otherwise). */
template <typename F>
bool dispatch_el(int64_t block, int lane_elems, F&& f) {
  if (lane_elems == 16) return dispatch_block<16>(block, f);
  if (lane_elems == 8) return dispatch_block<8>(block, f);
  return false;
}

/*!
 * \brief Elements per lane of the unpack kernel: always 8. Measured on 2x H200 (tools/ar_trace.py, 256 MB): the
 * unpack with 16 elements per lane (two 16-byte bf16 stores per lane at a 32-byte stride) took 108 us instead of
 * 54 us, while pack and reduce got faster with 16 (196 vs 208 us, 200 vs 226 us).
 */
constexpr int kUnpackLaneElems = 8;

template <typename F>
bool dispatch_q(DType qt, F&& f) {
  if (qt == DType::kInt8) { f(std::integral_constant<DType, DType::kInt8>{}); return true; }
  if (qt == DType::kFloat8E4M3) { f(std::integral_constant<DType, DType::kFloat8E4M3>{}); return true; }
  return false;
}

template <typename F>
bool dispatch_t(DType t, F&& f) {
  if (t == DType::kFloat32) { f(float{}); return true; }
  if (t == DType::kBFloat16) { f(__nv_bfloat16{}); return true; }
  if (t == DType::kFloat16) { f(__half{}); return true; }
  return false;
}

}  // namespace
}  // namespace detail

namespace {
cudaError_t pack_impl(const void* x, DType xt, int64_t n, int world, int64_t chunk, int64_t block, DType qt,
                      uint8_t* out, const QCommOuts& outs, int skip, cudaStream_t stream) {
  using namespace detail;
  const int64_t nb = qcomm_blocks(chunk, block);
  if (world < 1 || n < 0 || n > int64_t(world) * chunk || skip < -1 || skip >= world) return cudaErrorInvalidValue;
  const int64_t blocks = int64_t(skip >= 0 ? world - 1 : world) * nb;
  if (blocks == 0) return cudaSuccess;
  if (out == nullptr && outs.count != world) return cudaErrorInvalidValue;
  bool ok_q = true, ok_e = true;
  const bool ok_t = dispatch_t(xt, [&](auto tv) {
    using T = decltype(tv);
    const bool vec = aligned(x, 16) && (chunk * int64_t(sizeof(T))) % 16 == 0;
    ok_q = dispatch_q(qt, [&](auto qv) {
      ok_e = dispatch_el(block, qcomm_lane_elems(), [&](auto ev, auto lv) {
        constexpr int E = decltype(ev)::value, L = decltype(lv)::value;
        pack_kernel<T, decltype(qv)::value, E, L><<<grid_for(blocks, L), kThreadsQ, 0, stream>>>(
            static_cast<const T*>(x), n, chunk, nb, world, skip, out, outs, vec);
      });
    });
  });
  const bool ok = ok_t && ok_q && ok_e;
  if (!ok) return cudaErrorInvalidValue;
  return cudaGetLastError();
}

cudaError_t reduce_impl(const QCommChunks& in, int64_t nb, int64_t block, DType qt, float post_scale, void* out,
                        DType out_t, int64_t out_n, const QCommOuts& outs, const QCommOwn& own, const QCommDeq& deq,
                        cudaStream_t stream) {
  using namespace detail;
  if (in.count < 1 || nb < 0) return cudaErrorInvalidValue;
  if (own.index >= in.count) return cudaErrorInvalidValue;
  if (own.index >= 0 && (own.n < 0 || own.n > nb * block || (own.n > 0 && own.x == nullptr) ||
                         (own.t != DType::kFloat32 && own.t != DType::kBFloat16 && own.t != DType::kFloat16)))
    return cudaErrorInvalidValue;
  if (nb == 0 || (out_t != qt && out_n == 0)) return cudaSuccess;  // nothing to store
  if (out == nullptr && (out_t != qt || outs.count < 1)) return cudaErrorInvalidValue;
  if (out_t != qt && out_t != DType::kFloat32 && out_t != DType::kBFloat16 && out_t != DType::kFloat16)
    return cudaErrorInvalidValue;
  if (deq.out != nullptr && (out_t != qt || deq.n < 0 || deq.n > nb * block ||
                             (deq.t != DType::kFloat32 && deq.t != DType::kBFloat16 && deq.t != DType::kFloat16)))
    return cudaErrorInvalidValue;
  const bool own_vec = own.index >= 0 && aligned(own.x, 16);
  const bool deq_vec = deq.out != nullptr && aligned(deq.out, 16);
  bool ok_e = true;
  const bool ok_q = dispatch_q(qt, [&](auto qv) {
    ok_e = dispatch_el(block, qcomm_lane_elems(), [&](auto ev, auto lv) {
      constexpr int E = decltype(ev)::value, L = decltype(lv)::value;
      reduce_kernel<decltype(qv)::value, E, L><<<grid_for(nb, L), kThreadsQ, 0, stream>>>(
          in, nb, post_scale, out, out_t, out_n, outs, own, own_vec, deq, deq_vec);
    });
  });
  const bool ok = ok_q && ok_e;
  if (!ok) return cudaErrorInvalidValue;
  return cudaGetLastError();
}

}  // namespace

cudaError_t qcomm_pack(const void* x, DType xt, int64_t n, int world, int64_t chunk, int64_t block, DType qt,
                       uint8_t* out, int skip, cudaStream_t stream) {
  if (out == nullptr && qcomm_blocks(chunk, block) > 0) return cudaErrorInvalidValue;
  return pack_impl(x, xt, n, world, chunk, block, qt, out, QCommOuts{}, skip, stream);
}

cudaError_t qcomm_pack_scatter(const void* x, DType xt, int64_t n, int world, int64_t chunk, int64_t block, DType qt,
                               const QCommOuts& outs, int skip, cudaStream_t stream) {
  return pack_impl(x, xt, n, world, chunk, block, qt, nullptr, outs, skip, stream);
}

cudaError_t qcomm_reduce(const QCommChunks& in, int64_t nb, int64_t block, DType qt, float post_scale, void* out,
                         DType out_t, int64_t out_n, const QCommOwn& own, cudaStream_t stream) {
  if (out == nullptr && nb > 0 && (out_t == qt || out_n > 0)) return cudaErrorInvalidValue;
  return reduce_impl(in, nb, block, qt, post_scale, out, out_t, out_n, QCommOuts{}, own, QCommDeq{}, stream);
}

cudaError_t qcomm_reduce_broadcast(const QCommChunks& in, int64_t nb, int64_t block, DType qt, float post_scale,
                                   const QCommOuts& outs, const QCommOwn& own, const QCommDeq& deq,
                                   cudaStream_t stream) {
  return reduce_impl(in, nb, block, qt, post_scale, nullptr, qt, 0, outs, own, deq, stream);
}

cudaError_t qcomm_reduce_broadcast_unpack(const QCommChunks& in, int64_t nb, int64_t block, DType qt,
                                          float post_scale, const QCommOuts& outs, const QCommOwn& own,
                                          const QCommGather& g, cudaStream_t stream) {
  using namespace detail;
  const int world = g.chunks.count;
  if (in.count < 2 || in.count != world || g.rank < 0 || g.rank >= world || own.index != g.rank || nb < 0 ||
      g.chunk < 0 || g.n < 0 || g.n > int64_t(world) * g.chunk || qcomm_blocks(g.chunk, block) != nb ||
      outs.count != world - 1 || g.peer_flags.count != world - 1 || g.flags == nullptr ||
      g.flag_stride < qcomm_flag_tiles(nb, block))
    return cudaErrorInvalidValue;
  if (own.n < 0 || own.n > nb * block || (own.n > 0 && own.x == nullptr) ||
      (own.t != DType::kFloat32 && own.t != DType::kBFloat16 && own.t != DType::kFloat16))
    return cudaErrorInvalidValue;
  const int64_t tiles = qcomm_flag_tiles(nb, block);
  if (tiles == 0) return cudaSuccess;
  cudaError_t err = cudaSuccess;
  bool ok_q = true, ok_e = true;
  const bool ok_t = dispatch_t(g.t, [&](auto tv) {
    using T = decltype(tv);
    const bool out_vec = aligned(g.out, 16) && (g.chunk * int64_t(sizeof(T))) % 16 == 0;
    QCommDeq deq;  // this rank's own part of the output, written by the reduce
    deq.t = g.t;
    deq.n = std::min(g.chunk, std::max(g.n - int64_t(g.rank) * g.chunk, int64_t(0)));
    deq.out = deq.n > 0 ? static_cast<T*>(g.out) + int64_t(g.rank) * g.chunk : nullptr;
    const bool deq_vec = deq.out != nullptr && aligned(deq.out, 16);
    const bool own_vec = aligned(own.x, 16);
    ok_q = dispatch_q(qt, [&](auto qv) {
      ok_e = dispatch_el(block, qcomm_lane_elems(), [&](auto ev, auto lv) {
        constexpr int E = decltype(ev)::value, L = decltype(lv)::value, B = E * L;
        constexpr int EU = B / 32 > kUnpackLaneElems ? B / 32 : kUnpackLaneElems, LU = B / EU;
        auto kernel = reduce_unpack_kernel<T, decltype(qv)::value, E, L, EU, LU>;
        // a persistent grid: every CTA resident at once (the CTAs wait for each other's peers)
        int grid = 0;
        err = persistent_grid(kernel, kThreadsQ, 0, tiles, &grid);
        if (err == cudaSuccess)
          kernel<<<grid, kThreadsQ, 0, stream>>>(in, nb, post_scale, outs, own, own_vec, deq, deq_vec, g, out_vec);
      });
    });
  });
  if (!(ok_t && ok_q && ok_e)) return cudaErrorInvalidValue;
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

cudaError_t qcomm_unpack(const QCommChunks& in, int64_t chunk, int64_t block, DType qt, void* out, DType out_t,
                         int64_t n, cudaStream_t stream) {
  using namespace detail;
  const int64_t nb = qcomm_blocks(chunk, block);
  if (in.count < 1 || n < 0 || n > int64_t(in.count) * chunk) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  bool ok_q = true, ok_e = true;
  const bool ok_t = dispatch_t(out_t, [&](auto tv) {
    using T = decltype(tv);
    const bool vec = aligned(out, 16) && (chunk * int64_t(sizeof(T))) % 16 == 0;
    ok_q = dispatch_q(qt, [&](auto qv) {
      ok_e = dispatch_block<kUnpackLaneElems>(block, [&](auto ev, auto lv) {
        constexpr int E = decltype(ev)::value, L = decltype(lv)::value;
        unpack_kernel<T, decltype(qv)::value, E, L><<<grid_for(in.count * nb, L), kThreadsQ, 0, stream>>>(
            in, chunk, nb, static_cast<T*>(out), n, vec);
      });
    });
  });
  const bool ok = ok_t && ok_q && ok_e;
  if (!ok) return cudaErrorInvalidValue;
  return cudaGetLastError();
}

}  // namespace halo
