/*!
 * \file gemm.h
 * \brief 8-bit GEMMs with scales in the epilogue (torch-free C++ API).
 *
 * D[M,N] = (scale_a o A[M,K]) (scale_b o B[N,K])^T (+ bias[N]), A and B both K-major ("TN"), D row-major.
 * With row_hadamard = b > 1 the rows of the product are mixed in blocks of b before the scales:
 * D = diag(scale_a) (I_{M/b} (x) H_b) (A B^T) diag(scale_b), H_b the unnormalized Sylvester (+-1) matrix. HALO-2
 * uses it to undo the token rotation of the input gradient inside the GEMM (the signs and 1/sqrt(b) of the
 * rotation go into scale_a, one value per row).
 * int8 x int8 accumulates in int32; float8 (e4m3 x e4m3, e5m2 x e4m3) accumulates in float32. The scales are
 * float32 device pointers, one value (per-tensor) or one per row of A (length M) / per row of B (length N).
 * Everything stays on the device: no host synchronization.
 *
 * The sm90a (Hopper wgmma/TMA) kernels are compiled only when HALO_ENABLE_SM90 is defined: the build defines it
 * when an sm_90a target is in HALO_CUDA_ARCHS, and the glue calls qgemm_sm90 only under the same macro.
 */
#pragma once
#include "common.h"

namespace halo {

/*! \brief One 8-bit GEMM problem. Strides are in elements; the innermost dim of A, B and D is contiguous. */
struct QGemmArgs {
  const void* a = nullptr;  //!< [M, K], row stride lda
  const void* b = nullptr;  //!< [N, K], row stride ldb
  DType a_dtype = DType::kInt8;  //!< kInt8, kFloat8E4M3 or kFloat8E5M2
  DType b_dtype = DType::kInt8;  //!< kInt8 (with int8 A) or kFloat8E4M3
  int64_t M = 0, N = 0, K = 0;
  int64_t lda = 0, ldb = 0, ldd = 0;
  const float* scale_a = nullptr;  //!< [1] or [M]
  bool scale_a_per_row = false;
  const float* scale_b = nullptr;  //!< [1] or [N]
  bool scale_b_per_row = false;
  const void* bias = nullptr;      //!< optional [N], dtype out_dtype
  DType out_dtype = DType::kBFloat16;  //!< kBFloat16, kFloat16 or kFloat32
  void* d = nullptr;               //!< [M, N], row stride ldd
  int config = -1;                 //!< kernel configuration index, -1 = chosen by problem shape
  /*! \brief 0 or 1: none; b > 1 (a power of two dividing M): (I (x) H_b) applied to the rows of A B^T before the
   *  scales. sm90a kernels: b = 256 with int8 x int8 or e4m3 x e4m3 -> bf16, no bias. */
  int64_t row_hadamard = 0;
};

#if defined(HALO_ENABLE_SM90) && defined(HALO_KERNEL_LAUNCHERS)
/*!
 * \brief Whether the sm90a kernels take this problem (dtypes, alignment: K % 16 == 0, N % (16 / out bytes) == 0,
 * 16-byte aligned pointers and strides; row_hadamard 0, 1, or 256 with the dtypes above and M % 256 == 0).
 * Returns nullptr when supported, else a message saying why not.
 *
 * Also required: K > 0, lda/ldb >= K and multiples of 16, ldd >= N, M, N, K < 2^31, non-null A/B/D/scales,
 * 4-byte aligned scales, bias aligned to its element size, config -1 or in [0, qgemm_sm90_num_configs()).
 * M == 0 or N == 0 is supported (nothing to compute; the pointers are not checked).
 */
const char* qgemm_sm90_unsupported_reason(const QGemmArgs& args);

/*! \brief Workspace bytes the chosen sm90a kernel needs (0 for the current kernels, and for unsupported args). */
size_t qgemm_sm90_workspace_size(const QGemmArgs& args);

/*! \brief Number of kernel configurations for the dtypes of args (valid QGemmArgs::config values are 0..n-1). */
int qgemm_sm90_num_configs(const QGemmArgs& args);

/*!
 * \brief Human-readable name of a configuration ("int8 -> bf16 128x256x128 cluster 2x1 cooperative", "e4m3 x e4m3 ->
 * bf16 128x128x128 cluster 1x2 cooperative, fp32 accum", ...); nullptr for unsupported dtypes or config out of range.
 */
const char* qgemm_sm90_config_name(const QGemmArgs& args, int config);

/*! \brief Configuration the shape heuristic picks for args (what config = -1 runs); -1 for unsupported dtypes. */
int qgemm_sm90_heuristic(const QGemmArgs& args);

/*!
 * \brief Runs D = epilogue(A B^T) with the sm90a CUTLASS kernels on stream. Returns cudaErrorInvalidValue when
 * qgemm_sm90_unsupported_reason(args) is not null, cudaSuccess without a launch when M == 0 or N == 0.
 */
cudaError_t qgemm_sm90(const QGemmArgs& args, void* workspace, cudaStream_t stream);
#endif

}  // namespace halo
