/*!
 * \file qcomm_glue.h
 * \brief Argument checks of the qcomm_* ops (block-quantized collectives), shared by the CPU and CUDA glue.
 */
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "kernels/qcomm.h"
#include "torch/common.h"

namespace halo::glue {

/*! \brief Checks the block size and the 8-bit dtype (int8 or float8_e4m3fn) of a qcomm op. */
inline void qcomm_check_block_dtype(int64_t block, at::ScalarType qdtype, const char* op) {
  TORCH_CHECK_VALUE(qcomm_block_ok(block), "halo.", op, ": block must be a power of two in [32, 1024], got ",
                    S(block));
  TORCH_CHECK_VALUE(qdtype == at::kChar || qdtype == at::kFloat8_e4m3fn, "halo.", op,
                    ": dtype must be int8 or float8_e4m3fn, got ", c10::toString(qdtype));
}

/*! \brief Checks a contiguous uint8 buffer of `bytes` bytes on `device`. */
inline void qcomm_check_bytes(const at::Tensor& t, int64_t bytes, const char* what, const char* op) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kByte, "halo.", op, ": ", what, " must be uint8, got ",
                    c10::toString(t.scalar_type()));
  TORCH_CHECK_VALUE(t.is_contiguous(), "halo.", op, ": ", what, " must be contiguous");
  TORCH_CHECK_VALUE(t.numel() == bytes, "halo.", op, ": ", what, " must hold ", S(bytes), " bytes, got ",
                    S(t.numel()));
}

/*! \brief Checks a contiguous float32/float16/bfloat16 tensor. */
inline void qcomm_check_float(const at::Tensor& t, const char* what, const char* op) {
  const auto st = t.scalar_type();
  TORCH_CHECK_VALUE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, "halo.", op, ": ", what,
                    " must be float32, float16 or bfloat16, got ", c10::toString(st));
  TORCH_CHECK_VALUE(t.is_contiguous(), "halo.", op, ": ", what, " must be contiguous");
}

/*! \brief Checks the skipped chunk index of a pack op: -1 (none) or a chunk in [0, world). */
inline void qcomm_check_skip(int64_t skip, int64_t world, const char* op) {
  TORCH_CHECK_VALUE(skip >= -1 && skip < world, "halo.", op, ": skip must be -1 (none) or a chunk index in [0, ",
                    S(world), "), got ", S(skip));
}

/*!
 * \brief Checks a float slice that stands for (at most) one chunk of a reduce op: float32/float16/bfloat16,
 * contiguous, on the device of the chunks and of `outs_name`, at most nb * block elements.
 */
inline void qcomm_check_chunk_slice(const at::Tensor& t, const char* name, int64_t nb, int64_t block,
                                    const at::Device& device, const char* outs_name, const char* op) {
  qcomm_check_float(t, name, op);
  TORCH_CHECK_VALUE(t.device() == device, "halo.", op, ": ", name, " must be on the device of the chunks and ",
                    outs_name, " (", device.str(), "), got ", t.device().str());
  TORCH_CHECK_VALUE(t.numel() <= nb * block, "halo.", op, ": ", name, " has ", S(t.numel()),
                    " elements, more than a chunk holds (", S(nb * block), ")");
}

/*!
 * \brief Validates the own contribution of a reduce op (own: the owner's flat input slice, float32/float16/bfloat16,
 * contiguous, on `device`, at most nb * block elements; own_index: its position among `count` chunks) and describes
 * it. No own: own_index must stay -1.
 */
inline QCommOwn qcomm_check_own(const std::optional<at::Tensor>& own, int64_t own_index, int count, int64_t nb,
                                int64_t block, const at::Device& device, const char* op) {
  QCommOwn o;
  if (!own.has_value()) {
    TORCH_CHECK_VALUE(own_index == -1, "halo.", op, ": own_index = ", S(own_index),
                      " given without own (pass the owner's input slice as own, or own_index = -1)");
    return o;
  }
  TORCH_CHECK_VALUE(own_index >= 0 && own_index < count, "halo.", op, ": own_index must be in [0, ", S(int64_t(count)),
                    ") (the position of the own contribution among the chunks), got ", S(own_index));
  qcomm_check_chunk_slice(*own, "own", nb, block, device, "out", op);
  o.x = own->numel() > 0 ? own->data_ptr() : nullptr;
  o.t = to_dtype(own->scalar_type());
  o.n = own->numel();
  o.index = static_cast<int>(own_index);
  return o;
}

/*! \brief Validates the optional dequantized output of qcomm_reduce_broadcast (contiguous float, at most a chunk). */
inline QCommDeq qcomm_check_deq(const std::optional<at::Tensor>& deq, int64_t nb, int64_t block,
                                const at::Device& device, const char* op) {
  QCommDeq d;
  if (!deq.has_value()) return d;
  qcomm_check_chunk_slice(*deq, "deq", nb, block, device, "outs", op);
  d.out = deq->numel() > 0 ? deq->data_ptr() : nullptr;
  d.t = to_dtype(deq->scalar_type());
  d.n = deq->numel();
  return d;
}

/*! \brief Validates qcomm_pack_into arguments. */
inline void qcomm_check_pack(const at::Tensor& x, const at::Tensor& out, int64_t world, int64_t chunk, int64_t block,
                             at::ScalarType qdtype, int64_t skip) {
  qcomm_check_block_dtype(block, qdtype, "qcomm_pack");
  qcomm_check_float(x, "x", "qcomm_pack");
  TORCH_CHECK_VALUE(world >= 1, "halo.qcomm_pack: world must be >= 1, got ", S(world));
  TORCH_CHECK_VALUE(chunk >= 0, "halo.qcomm_pack: chunk must be >= 0, got ", S(chunk));
  qcomm_check_skip(skip, world, "qcomm_pack");
  TORCH_CHECK_VALUE(x.numel() <= world * chunk, "halo.qcomm_pack: x has ", S(x.numel()),
                    " elements, more than world * chunk = ", S(world * chunk));
  qcomm_check_bytes(out, world * qcomm_chunk_bytes(chunk, block), "out", "qcomm_pack");
  TORCH_CHECK_VALUE(out.device() == x.device(), "halo.qcomm_pack: out and x must be on the same device");
}

/*! \brief Validates qcomm_reduce_into arguments and describes the chunks (host or device addresses). */
inline QCommChunks qcomm_check_reduce(const std::vector<at::Tensor>& chunks, const at::Tensor& out, int64_t block,
                                      at::ScalarType qdtype, int64_t* nb) {
  qcomm_check_block_dtype(block, qdtype, "qcomm_reduce");
  TORCH_CHECK_VALUE(!chunks.empty() && chunks.size() <= size_t(kQCommMaxPtrs), "halo.qcomm_reduce: needs 1 to ",
                    S(kQCommMaxPtrs), " chunks, got ", S(int64_t(chunks.size())));
  const int64_t cb = chunks[0].numel();
  TORCH_CHECK_VALUE(cb % (block + 4) == 0 && (cb / (block + 4)) % 4 == 0, "halo.qcomm_reduce: a packed chunk of ",
                    S(cb), " bytes is not a whole number of 4-block groups of ", S(block + 4), " bytes");
  *nb = cb / (block + 4);
  QCommChunks in;
  in.count = static_cast<int>(chunks.size());
  in.ptrs_used = true;
  for (size_t i = 0; i < chunks.size(); ++i) {
    qcomm_check_bytes(chunks[i], cb, "every chunk", "qcomm_reduce");
    TORCH_CHECK_VALUE(chunks[i].device() == out.device(), "halo.qcomm_reduce: chunks and out must be on one device");
    in.ptrs[i] = static_cast<const uint8_t*>(chunks[i].data_ptr());
  }
  if (out.scalar_type() == at::kByte) {
    qcomm_check_bytes(out, cb, "out", "qcomm_reduce");
  } else {
    qcomm_check_float(out, "out", "qcomm_reduce");
    TORCH_CHECK_VALUE(out.numel() <= *nb * block, "halo.qcomm_reduce: out has ", S(out.numel()),
                      " elements, more than a chunk holds (", S(*nb * block), ")");
  }
  return in;
}

/*! \brief Validates qcomm_unpack_into arguments and describes the chunks. */
inline QCommChunks qcomm_check_unpack(const std::vector<at::Tensor>& chunks, const at::Tensor& out, int64_t chunk,
                                      int64_t block, at::ScalarType qdtype) {
  qcomm_check_block_dtype(block, qdtype, "qcomm_unpack");
  TORCH_CHECK_VALUE(!chunks.empty() && chunks.size() <= size_t(kQCommMaxPtrs), "halo.qcomm_unpack: needs 1 to ",
                    S(kQCommMaxPtrs), " chunks, got ", S(int64_t(chunks.size())));
  TORCH_CHECK_VALUE(chunk >= 0, "halo.qcomm_unpack: chunk must be >= 0, got ", S(chunk));
  qcomm_check_float(out, "out", "qcomm_unpack");
  TORCH_CHECK_VALUE(out.numel() <= int64_t(chunks.size()) * chunk, "halo.qcomm_unpack: out has ", S(out.numel()),
                    " elements, more than chunks * chunk = ", S(int64_t(chunks.size()) * chunk));
  QCommChunks in;
  in.count = static_cast<int>(chunks.size());
  in.ptrs_used = true;
  for (size_t i = 0; i < chunks.size(); ++i) {
    qcomm_check_bytes(chunks[i], qcomm_chunk_bytes(chunk, block), "every chunk", "qcomm_unpack");
    TORCH_CHECK_VALUE(chunks[i].device() == out.device(), "halo.qcomm_unpack: chunks and out must be on one device");
    in.ptrs[i] = static_cast<const uint8_t*>(chunks[i].data_ptr());
  }
  return in;
}

/*! \brief Validates a list of uint8 output chunks of `bytes` bytes each on `device` and describes them. */
inline QCommOuts qcomm_check_outs(const std::vector<at::Tensor>& outs, int64_t bytes, const at::Device& device,
                                  const char* op) {
  TORCH_CHECK_VALUE(!outs.empty() && outs.size() <= size_t(kQCommMaxPtrs), "halo.", op, ": needs 1 to ",
                    S(kQCommMaxPtrs), " output chunks, got ", S(int64_t(outs.size())));
  QCommOuts o;
  o.count = static_cast<int>(outs.size());
  for (size_t i = 0; i < outs.size(); ++i) {
    qcomm_check_bytes(outs[i], bytes, "every output chunk", op);
    TORCH_CHECK_VALUE(outs[i].device() == device, "halo.", op, ": outputs must be on the input's device");
    o.ptrs[i] = static_cast<uint8_t*>(outs[i].data_ptr());
  }
  return o;
}

/*! \brief Validates qcomm_pack_scatter arguments (world = outs.size()). */
inline QCommOuts qcomm_check_pack_scatter(const at::Tensor& x, const std::vector<at::Tensor>& outs, int64_t chunk,
                                          int64_t block, at::ScalarType qdtype, int64_t skip) {
  qcomm_check_block_dtype(block, qdtype, "qcomm_pack_scatter");
  qcomm_check_float(x, "x", "qcomm_pack_scatter");
  TORCH_CHECK_VALUE(chunk >= 0, "halo.qcomm_pack_scatter: chunk must be >= 0, got ", S(chunk));
  const int64_t world = static_cast<int64_t>(outs.size());
  TORCH_CHECK_VALUE(x.numel() <= world * chunk, "halo.qcomm_pack_scatter: x has ", S(x.numel()),
                    " elements, more than len(outs) * chunk = ", S(world * chunk));
  qcomm_check_skip(skip, world, "qcomm_pack_scatter");
  return qcomm_check_outs(outs, qcomm_chunk_bytes(chunk, block), x.device(), "qcomm_pack_scatter");
}

/*! \brief The described arguments of qcomm_reduce_broadcast_unpack. */
struct QCommReduceUnpackArgs {
  QCommChunks in;
  int64_t nb = 0;
  QCommOuts outs;
  QCommOwn own;
  QCommGather g;
};

/*! \brief Checks an int32 flag array of at least `tiles` flags per row (rows = 0: 1-D). */
inline uint32_t* qcomm_check_flags(const at::Tensor& f, int64_t rows, int64_t tiles, const at::Device& device,
                                   const char* what, const char* op) {
  TORCH_CHECK_VALUE(f.scalar_type() == at::kInt, "halo.", op, ": ", what, " must be int32, got ",
                    c10::toString(f.scalar_type()));
  TORCH_CHECK_VALUE(f.is_contiguous(), "halo.", op, ": ", what, " must be contiguous");
  TORCH_CHECK_VALUE(f.device() == device, "halo.", op, ": ", what, " must be on ", device.str(), ", got ",
                    f.device().str());
  if (rows > 0) {
    TORCH_CHECK_VALUE(f.dim() == 2 && f.size(0) == rows && f.size(1) >= tiles, "halo.", op, ": ", what,
                      " must be [", S(rows), ", >= ", S(tiles), "] (one row of flag tiles per rank), got ",
                      S(f.sizes()));
  } else {
    TORCH_CHECK_VALUE(f.dim() == 1 && f.size(0) >= tiles, "halo.", op, ": ", what, " must be 1-D with >= ",
                      S(tiles), " flags, got ", S(f.sizes()));
  }
  return reinterpret_cast<uint32_t*>(f.data_ptr());
}

/*! \brief Validates qcomm_reduce_broadcast_unpack arguments (world = len(chunks)) and describes them. */
inline QCommReduceUnpackArgs qcomm_check_reduce_unpack(const std::vector<at::Tensor>& chunks,
                                                       const std::vector<at::Tensor>& outs,
                                                       const std::vector<at::Tensor>& gathered, const at::Tensor& flags,
                                                       const std::vector<at::Tensor>& peer_flags, int64_t epoch,
                                                       const at::Tensor& out, int64_t chunk, int64_t block,
                                                       at::ScalarType qdtype, const at::Tensor& own, int64_t rank) {
  constexpr const char* op = "qcomm_reduce_broadcast_unpack";
  qcomm_check_block_dtype(block, qdtype, op);
  const int64_t world = static_cast<int64_t>(chunks.size());
  TORCH_CHECK_VALUE(world >= 2 && world <= kQCommMaxPtrs, "halo.", op, ": needs 2 to ", S(kQCommMaxPtrs),
                    " chunks (one per rank), got ", S(world));
  TORCH_CHECK_VALUE(int64_t(gathered.size()) == world && int64_t(outs.size()) == world - 1 &&
                        int64_t(peer_flags.size()) == world - 1,
                    "halo.", op, ": needs len(gathered) = world and len(outs) = len(peer_flags) = world - 1 (world = ",
                    S(world), "), got ", S(int64_t(gathered.size())), ", ", S(int64_t(outs.size())), ", ",
                    S(int64_t(peer_flags.size())));
  TORCH_CHECK_VALUE(rank >= 0 && rank < world, "halo.", op, ": rank must be in [0, ", S(world), "), got ", S(rank));
  TORCH_CHECK_VALUE(chunk >= 0, "halo.", op, ": chunk must be >= 0, got ", S(chunk));
  TORCH_CHECK_VALUE(epoch >= 1 && epoch <= 0xffffffffLL, "halo.", op, ": epoch must be in [1, 2^32), got ", S(epoch));
  qcomm_check_float(out, "out", op);
  TORCH_CHECK_VALUE(out.numel() <= world * chunk, "halo.", op, ": out has ", S(out.numel()),
                    " elements, more than world * chunk = ", S(world * chunk));
  const at::Device device = out.device();
  QCommReduceUnpackArgs a;
  a.nb = qcomm_blocks(chunk, block);
  const int64_t cb = qcomm_chunk_bytes(chunk, block);
  a.in.count = a.g.chunks.count = static_cast<int>(world);
  a.in.ptrs_used = a.g.chunks.ptrs_used = true;
  for (int64_t i = 0; i < world; ++i) {
    qcomm_check_bytes(chunks[i], cb, "every chunk", op);
    qcomm_check_bytes(gathered[i], cb, "every gathered chunk", op);
    TORCH_CHECK_VALUE(chunks[i].device() == device && gathered[i].device() == device, "halo.", op,
                      ": chunks, gathered and out must be on one device");
    a.in.ptrs[i] = static_cast<const uint8_t*>(chunks[i].data_ptr());
    a.g.chunks.ptrs[i] = static_cast<const uint8_t*>(gathered[i].data_ptr());
  }
  a.outs = qcomm_check_outs(outs, cb, device, op);
  a.own = qcomm_check_own(own, rank, static_cast<int>(world), a.nb, block, device, op);
  const int64_t own_n = std::min(chunk, std::max<int64_t>(out.numel() - rank * chunk, 0));
  TORCH_CHECK_VALUE(own.numel() == own_n, "halo.", op, ": own must be this rank's slice of the input (", S(own_n),
                    " elements), got ", S(own.numel()));
  const int64_t tiles = qcomm_flag_tiles(a.nb, block);
  a.g.flags = qcomm_check_flags(flags, world, tiles, device, "flags", op);
  a.g.flag_stride = flags.size(1);
  a.g.peer_flags.count = static_cast<int>(world - 1);
  for (int64_t i = 0; i < world - 1; ++i)
    a.g.peer_flags.ptrs[i] = qcomm_check_flags(peer_flags[i], 0, tiles, device, "every peer flag row", op);
  a.g.chunk = chunk;
  a.g.out = out.numel() > 0 ? out.data_ptr() : nullptr;
  a.g.t = to_dtype(out.scalar_type());
  a.g.n = out.numel();
  a.g.epoch = static_cast<uint32_t>(epoch);
  a.g.rank = static_cast<int>(rank);
  return a;
}

}  // namespace halo::glue
