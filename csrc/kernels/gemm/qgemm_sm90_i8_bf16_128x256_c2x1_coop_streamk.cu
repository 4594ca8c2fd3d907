/*!
 * \file qgemm_sm90_i8_bf16_128x256_c2x1_coop_streamk.cu
 * \brief sm90a kernel configuration "int8 -> bf16 128x256x128 cluster 2x1 cooperative stream-K".
 *
 * The tiles and schedule of qgemm_sm90_i8_bf16_128x256_c2x1_coop.cu under CUTLASS's stream-K tile scheduler
 * (heuristic decomposition), for outputs whose tile count leaves the last wave of 132 SMs partly idle. See
 * gemm_sm90_impl.cuh for the kernel and notes/gemm_configs.md for the measurements.
 */
#ifdef HALO_ENABLE_SM90
#include "gemm_sm90_impl.cuh"

namespace halo {
namespace sm90 {

using QGemmI8Bf16_128x256_C2x1_CoopStreamK =
    QGemmSm90<int8_t, int8_t, cutlass::bfloat16_t,
              cute::Shape<cute::_128, cute::_256, cute::_128>,  // CTA tile
              cute::Shape<cute::_2, cute::_1, cute::_1>,      // cluster
              schedule::Cooperative, 0, cutlass::gemm::StreamKScheduler>;

const QGemmSm90Kernel kQGemmI8Bf16_128x256_C2x1_CoopStreamK =
    make_qgemm_sm90_kernel<QGemmI8Bf16_128x256_C2x1_CoopStreamK>(
        "int8 -> bf16 128x256x128 cluster 2x1 cooperative stream-K");

}  // namespace sm90
}  // namespace halo
#endif  // HALO_ENABLE_SM90
