/*!
 * \file qcomm.h
 * \brief Block-quantized two-shot collectives (EQuARX-style): pack / reduce / unpack of chunk buffers.
 *
 * Packed chunk format (one uint8 buffer per chunk, so each collective phase moves one buffer):
 *   chunk = nb blocks of `block` elements of one logical slice of `chunk` elements (zero padded to nb*block);
 *   bytes [0, nb*block)            : 8-bit codes (int8 or float8_e4m3fn), block-major;
 *   bytes [nb*block, nb*(block+4)) : nb float32 scales, scale[b] = max(absmax_b, 1e-30) / qmax.
 * nb = ceil(chunk / block) rounded up to a multiple of 4, so every chunk is a multiple of 16 bytes and chunk
 * starts stay 16-byte aligned inside a [world, chunk_bytes] buffer. The quantization rule is the one of hadamard.h
 * (q = rne(clamp(x * qmax / a'))).
 *
 * Chunk c of a flat tensor x of n elements is x[c*chunk, min((c+1)*chunk, n)); elements past n are zeros.
 * All launchers take raw pointers, never allocate or synchronize, and take the stream last.
 *
 * Own chunk: the owner of chunk r need not quantize its own contribution. The pack launchers take `skip` (chunk
 * index not quantized nor stored, -1 = none) and the reduce launchers a QCommOwn (the owner's input slice, added
 * in float32 exactly as read at its position of the fixed rank order instead of dequantizing in.at(index)).
 */
#pragma once
#include <cstdlib>

#include "common.h"

namespace halo {

/*! \brief Most chunk pointers a reduce/unpack launch takes by value (more: pass a contiguous base and stride). */
inline constexpr int kQCommMaxPtrs = 32;

/*! \brief Blocks per packed chunk for a chunk of `chunk` elements (0 for an empty chunk). */
inline constexpr int64_t qcomm_blocks(int64_t chunk, int64_t block) {
  return chunk <= 0 ? 0 : ((chunk + block - 1) / block + 3) / 4 * 4;
}

/*! \brief Bytes of one packed chunk. */
inline constexpr int64_t qcomm_chunk_bytes(int64_t chunk, int64_t block) {
  return qcomm_blocks(chunk, block) * (block + 4);
}

/*! \brief Whether `block` is a supported block size (a power of two in [32, 1024]). */
inline constexpr bool qcomm_block_ok(int64_t block) {
  return block >= 32 && block <= 1024 && (block & (block - 1)) == 0;
}

/*!
 * \brief A list of packed chunks: chunk i at ptrs[i] when `ptrs_used`, else at base + i * stride (bytes).
 * Pointers may be peer (NVLink-mapped) addresses.
 */
struct QCommChunks {
  const uint8_t* base = nullptr;
  int64_t stride = 0;
  int count = 0;
  bool ptrs_used = false;
  const uint8_t* ptrs[kQCommMaxPtrs] = {};
#if defined(__CUDACC__)
  __host__ __device__
#endif
  const uint8_t* at(int i) const { return ptrs_used ? ptrs[i] : base + static_cast<int64_t>(i) * stride; }
};

/*!
 * \brief The owner's own contribution to a reduce: x holds n elements of dtype t (float32/float16/bfloat16; the
 * slice of its input that forms the reduced chunk, n <= nb * block, elements past n count as zeros), converted to
 * float32 (exactly) and added unquantized at position `index` of the rank order; in.at(index) is then never read.
 * index < 0: no own contribution (every chunk of `in` is dequantized).
 */
struct QCommOwn {
  const void* x = nullptr;
  DType t = DType::kFloat32;
  int64_t n = 0;
  int index = -1;
};

/*!
 * \brief Optional dequantized copy of a reduce's requantized result: the first n elements, as every rank's
 * qcomm_unpack of that packed chunk would produce them (bit for bit), stored as dtype t (float32/float16/bfloat16)
 * at out. Lets the owner write its own part of the all-reduce output in the reduce kernel instead of unpacking its
 * own gathered copy afterwards (one HBM pass less). out == nullptr: none. out may alias the QCommOwn input: each
 * element is read before it is written, by the same thread.
 */
struct QCommDeq {
  void* out = nullptr;
  DType t = DType::kFloat32;
  int64_t n = 0;
};

/*! \brief Output chunk pointers (peer buffers of the peer-memory path): chunk i goes to ptrs[i]. */
struct QCommOuts {
  int count = 0;
  uint8_t* ptrs[kQCommMaxPtrs] = {};
};

/*!
 * \brief Elements per flag tile of qcomm_reduce_broadcast_unpack (kQCommFlagTileElems / block blocks): each rank
 * signals every flag tile of its reduced chunk separately, so a peer can dequantize tile t as soon as it arrived.
 */
inline constexpr int64_t kQCommFlagTileElems = 8192;

/*! \brief Flag tiles of a packed chunk of nb blocks of `block` elements (the flags a source rank sets per call). */
inline constexpr int64_t qcomm_flag_tiles(int64_t nb, int64_t block) {
  return (nb * block + kQCommFlagTileElems - 1) / kQCommFlagTileElems;
}

/*! \brief Flag arrays of other ranks (peer-memory addresses) that a reduce signals: flag tile t -> ptrs[i][t]. */
struct QCommFlagOuts {
  int count = 0;
  uint32_t* ptrs[kQCommMaxPtrs] = {};
};

/*!
 * \brief The unpack half of qcomm_reduce_broadcast_unpack: the reduced chunks of the other ranks arrive in
 * `chunks` (chunks.at(s): rank s's chunk, written by rank s over peer memory; chunks.at(rank) is not read) and are
 * dequantized into the flat output `out` (n elements of dtype t, chunk c at out + c * chunk) tile by tile, each
 * tile once its flag is set: flags[s * flag_stride + tile] == epoch, stored by rank s after the tile's bytes
 * (release / acquire at system scope). This rank's own reduced chunk is written to out in the reduce itself (as
 * qcomm_reduce_broadcast's deq), and this rank signals each of its tiles into peer_flags.ptrs[i][tile].
 * epoch must grow by one with every call on the same flag arrays (all ranks alike), which start zeroed.
 */
struct QCommGather {
  QCommChunks chunks;
  int64_t chunk = 0;
  void* out = nullptr;
  DType t = DType::kFloat32;
  int64_t n = 0;
  const uint32_t* flags = nullptr;
  int64_t flag_stride = 0;
  QCommFlagOuts peer_flags;
  uint32_t epoch = 0;
  int rank = -1;
};

/*!
 * \brief Elements per lane of the CUDA pack and reduce kernels (the kernel trait that sets the bytes each lane
 * moves; the results do not depend on it): 16 (32-byte bf16 loads, 16-byte code stores; the default) or 8 (16-byte
 * loads, 8-byte code stores), from the environment variable HALO_QCOMM_LANE_ELEMS (read at every launch). Blocks
 * larger than 32 * lane_elems use B / 32. The unpack kernel always uses 8 (measured faster, see qcomm.cu).
 */
inline int qcomm_lane_elems() {
  const char* e = std::getenv("HALO_QCOMM_LANE_ELEMS");
  return e != nullptr && std::atoi(e) == 8 ? 8 : 16;
}

#ifdef HALO_KERNEL_LAUNCHERS

/*!
 * \brief Quantizes the `world` chunks of x (n elements of dtype xt, 16-byte aligned) into out
 * ([world, qcomm_chunk_bytes(chunk, block)] bytes), except chunk `skip` (-1: none), whose bytes stay untouched.
 * \param qt kInt8 or kFloat8E4M3
 */
cudaError_t qcomm_pack(const void* x, DType xt, int64_t n, int world, int64_t chunk, int64_t block, DType qt,
                       uint8_t* out, int skip, cudaStream_t stream);

/*!
 * \brief qcomm_pack that stores chunk c at outs.ptrs[c] (outs.count == world; e.g. the owners' peer buffers, so
 * the quantized chunks travel over NVLink as stores straight from the kernel); outs.ptrs[skip] is not written.
 */
cudaError_t qcomm_pack_scatter(const void* x, DType xt, int64_t n, int world, int64_t chunk, int64_t block, DType qt,
                               const QCommOuts& outs, int skip, cudaStream_t stream);

/*!
 * \brief qcomm_reduce with a packed result stored to every pointer of outs (e.g. every peer's gather slot), and
 * optionally its dequantized values (deq).
 */
cudaError_t qcomm_reduce_broadcast(const QCommChunks& in, int64_t nb, int64_t block, DType qt, float post_scale,
                                   const QCommOuts& outs, const QCommOwn& own, const QCommDeq& deq,
                                   cudaStream_t stream);

/*!
 * \brief qcomm_reduce_broadcast of this rank's chunk (own.index == g.rank; its dequantized values go to
 * g.out + g.rank * g.chunk) fused with the unpack of the other ranks' reduced chunks (QCommGather), without a
 * barrier in between: one persistent kernel whose CTAs alternate between reducing (and signalling) a flag tile
 * and dequantizing an earlier tile of every peer once its flag is set. Every rank of the group must launch it
 * (the CTAs wait for the peers' flags); its grid never exceeds what the device holds at once.
 */
cudaError_t qcomm_reduce_broadcast_unpack(const QCommChunks& in, int64_t nb, int64_t block, DType qt,
                                          float post_scale, const QCommOuts& outs, const QCommOwn& own,
                                          const QCommGather& g, cudaStream_t stream);

/*!
 * \brief Dequantizes in.count packed chunks of nb blocks each, sums them in float32 in chunk order (acc = acc +
 * code * scale, no FMA; at position own.index the own elements are added instead: acc = acc + own), multiplies by
 * post_scale, and either requantizes into a packed chunk (out_t == qt; out holds qcomm_chunk_bytes bytes) or
 * stores the first out_n sums as float32/float16/bfloat16 (out_t).
 */
cudaError_t qcomm_reduce(const QCommChunks& in, int64_t nb, int64_t block, DType qt, float post_scale, void* out,
                         DType out_t, int64_t out_n, const QCommOwn& own, cudaStream_t stream);

/*!
 * \brief Dequantizes in.count packed chunks (each of `chunk` logical elements, nb = qcomm_blocks(chunk, block)) into
 * the flat output (n <= count * chunk elements of dtype out_t, 16-byte aligned).
 */
cudaError_t qcomm_unpack(const QCommChunks& in, int64_t chunk, int64_t block, DType qt, void* out, DType out_t,
                         int64_t n, cudaStream_t stream);

#endif

}  // namespace halo
