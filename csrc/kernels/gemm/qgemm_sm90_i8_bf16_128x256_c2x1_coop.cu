/*!
 * \file qgemm_sm90_i8_bf16_128x256_c2x1_coop.cu
 * \brief sm90a kernel configuration "int8 -> bf16 128x256x128 cluster 2x1 cooperative".
 *
 * See gemm_sm90_impl.cuh for the kernel and notes/gemm_configs.md for why this configuration exists.
 */
#ifdef HALO_ENABLE_SM90
#include "gemm_sm90_impl.cuh"

namespace halo {
namespace sm90 {

using QGemmI8Bf16_128x256_C2x1_Coop =
    QGemmSm90<int8_t, int8_t, cutlass::bfloat16_t,
              cute::Shape<cute::_128, cute::_256, cute::_128>,  // CTA tile
              cute::Shape<cute::_2, cute::_1, cute::_1>,      // cluster
              schedule::Cooperative>;

const QGemmSm90Kernel kQGemmI8Bf16_128x256_C2x1_Coop =
    make_qgemm_sm90_kernel<QGemmI8Bf16_128x256_C2x1_Coop>(
        "int8 -> bf16 128x256x128 cluster 2x1 cooperative");

}  // namespace sm90
}  // namespace halo
#endif  // HALO_ENABLE_SM90
