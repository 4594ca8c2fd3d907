/*!
 * \file cpu_ops.h
 * \brief CPU implementations of every halo op. They take the same argument structs as the CUDA launchers
 * (csrc/kernels/*.h) with host pointers, compute in float64 (Hadamard) / exact integers (int8 GEMM), and double as
 * the numerical reference for the CUDA kernels. Quantization follows the rule in csrc/kernels/hadamard.h bit for bit.
 */
#pragma once
#include "kernels/ey_quantize.h"
#include "kernels/gemm.h"
#include "kernels/hadamard.h"
#include "kernels/qcomm.h"

namespace halo::cpu {

/*! \brief out = Hadamard transform of x (see HadamardArgs); dense_left is a host pointer here. */
void hadamard_transform(const HadamardArgs& args, void* out, int64_t out_row_stride);

/*! \brief q, scale = absmax quantization of x by args.granularity. */
void quantize(const QuantizeArgs& args);

/*! \brief out = q * scale, out dtype args.dtype. */
void dequantize(const QuantizeArgs& args, void* out);

/*! \brief Fused Hadamard + per-tensor quantization (q and/or qt, scale). */
void hadamard_quantize(const HadamardQuantArgs& args);

/*! \brief q_rot = Q(R E_Y) per tensor and qt = Q(E_Y)^T per column (kernels/ey_quantize.h), host pointers. */
void ey_quantize(const EyQuantArgs& args);

/*! \brief D = (scale_a o A)(scale_b o B)^T (+ bias); int8 accumulates exactly in int32, float8 in float64. */
void qgemm(const QGemmArgs& args);

/*! \brief Packs the world chunks of x (n elements) but chunk skip (-1: none), as qcomm_pack of kernels/qcomm.h. */
void qcomm_pack(const void* x, DType xt, int64_t n, int world, int64_t chunk, int64_t block, DType qt, uint8_t* out,
                int skip);

/*! \brief Dequantize-sum-(requantize) of packed chunks (+ own, unquantized), as qcomm_reduce of kernels/qcomm.h. */
void qcomm_reduce(const QCommChunks& in, int64_t nb, int64_t block, DType qt, float post_scale, void* out, DType out_t,
                  int64_t out_n, const QCommOwn& own);

/*! \brief Dequantizes packed chunks into a flat output, as qcomm_unpack of kernels/qcomm.h. */
void qcomm_unpack(const QCommChunks& in, int64_t chunk, int64_t block, DType qt, void* out, DType out_t, int64_t n);

/*! \brief qcomm_pack storing chunk c (c != skip) at outs.ptrs[c]. */
void qcomm_pack_scatter(const void* x, DType xt, int64_t n, int world, int64_t chunk, int64_t block, DType qt,
                        const QCommOuts& outs, int skip);

/*! \brief Packed qcomm_reduce stored to every outs.ptrs[i]; its dequantized values to deq (as qcomm_unpack). */
void qcomm_reduce_broadcast(const QCommChunks& in, int64_t nb, int64_t block, DType qt, float post_scale,
                            const QCommOuts& outs, const QCommOwn& own, const QCommDeq& deq);

/*!
 * \brief qcomm_reduce_broadcast_unpack of kernels/qcomm.h: the reduce, broadcast and own dequantized part, then every
 * flag of this rank set in the peers (release stores), then each other rank's chunk dequantized once all its flags
 * hold g.epoch (acquire loads; the peers are other processes sharing the memory). Throws std::runtime_error after
 * timeout_s seconds without the flags.
 */
void qcomm_reduce_broadcast_unpack(const QCommChunks& in, int64_t nb, int64_t block, DType qt, float post_scale,
                                   const QCommOuts& outs, const QCommOwn& own, const QCommGather& g,
                                   double timeout_s = 300.0);

}  // namespace halo::cpu
