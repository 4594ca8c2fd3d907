/*!
 * \file gemm_sm90_kernels.h
 * \brief Registry of the compiled sm90a 8-bit GEMM kernel configurations (no CUTLASS in here).
 *
 * Every configuration is one CUTLASS kernel instantiation, compiled in its own translation unit
 * (qgemm_sm90_<dtypes>_<out>_<tile>_<cluster>_<schedule>.cu) and exposed to the dispatcher (qgemm_sm90.cu)
 * as a QGemmSm90Kernel: its name and type-erased entry points. The dispatcher validates the arguments before it
 * calls them, so the entry points may assume a supported problem with M, N, K > 0.
 */
#pragma once
#ifdef HALO_ENABLE_SM90
#include <cstddef>

#include "../gemm.h"

namespace halo {
namespace sm90 {

/*! \brief The device a GEMM runs on, as the launcher needs it. */
struct DeviceInfo {
  int device = 0;    //!< CUDA device ordinal (current device)
  int sm_count = 0;  //!< number of multiprocessors of that device
};

/*! \brief Type-erased entry points of one compiled kernel configuration. */
struct QGemmSm90Kernel {
  const char* name;  //!< human-readable configuration, e.g. "int8 -> bf16 128x256x128 cluster 2x1 cooperative"
  /*! \brief Output tile (rows of A, rows of B) one CTA computes; the heuristic's wave model uses it. */
  int tile_m, tile_n;
  /*! \brief Workspace bytes the kernel needs for args (0 for the current configurations). */
  size_t (*workspace_size)(const QGemmArgs& args, const DeviceInfo& dev);
  /*! \brief Launches the kernel on stream; returns cudaSuccess or the first CUDA error. */
  cudaError_t (*run)(const QGemmArgs& args, const DeviceInfo& dev, void* workspace, cudaStream_t stream);
};

/*!
 * \name Compiled configurations
 * Defined one per translation unit, qgemm_sm90_<a>_<out>_<tile>_<cluster>_<schedule>.cu.
 * \{
 */
// int8 x int8
extern const QGemmSm90Kernel kQGemmI8Bf16_128x256_C2x1_Coop;
extern const QGemmSm90Kernel kQGemmI8Bf16_128x128_C1x2_Pingpong;
extern const QGemmSm90Kernel kQGemmI8F16_128x256_C2x1_Coop;
extern const QGemmSm90Kernel kQGemmI8F32_128x256_C2x1_Coop;
// float8_e4m3 x float8_e4m3
extern const QGemmSm90Kernel kQGemmE4m3Bf16_128x256_C2x1_CoopFastAcc;
extern const QGemmSm90Kernel kQGemmE4m3Bf16_128x128_C1x2_PingpongFastAcc;
extern const QGemmSm90Kernel kQGemmE4m3Bf16_128x128_C1x2_Coop;
extern const QGemmSm90Kernel kQGemmE4m3F16_128x256_C2x1_CoopFastAcc;
extern const QGemmSm90Kernel kQGemmE4m3F32_128x128_C1x2_Coop;
// float8_e5m2 x float8_e4m3
extern const QGemmSm90Kernel kQGemmE5m2E4m3Bf16_128x256_C2x1_CoopFastAcc;
extern const QGemmSm90Kernel kQGemmE5m2E4m3Bf16_128x128_C1x2_PingpongFastAcc;
extern const QGemmSm90Kernel kQGemmE5m2E4m3Bf16_128x128_C1x2_Coop;
extern const QGemmSm90Kernel kQGemmE5m2E4m3F16_128x256_C2x1_CoopFastAcc;
extern const QGemmSm90Kernel kQGemmE5m2E4m3F32_128x128_C1x2_Coop;
// QGemmArgs::row_hadamard = 256 (transposed problem, column Hadamard of the accumulators, column-major D)
extern const QGemmSm90Kernel kQGemmI8Bf16_128x256_C2x1_Coop_RowHad256;
extern const QGemmSm90Kernel kQGemmE4m3Bf16_128x256_C2x1_CoopFastAcc_RowHad256;
/*! \} */

}  // namespace sm90
}  // namespace halo

#endif  // HALO_ENABLE_SM90
