/*!
 * \file qgemm_sm90_e5m2e4m3_f32_128x128_c1x2_coop.cu
 * \brief sm90a kernel configuration "e5m2 x e4m3 -> fp32 128x128x128 cluster 1x2 cooperative, fp32 accum".
 *
 * See gemm_sm90_impl.cuh for the kernel and notes/gemm_configs.md for why this configuration exists.
 */
#ifdef HALO_ENABLE_SM90
#include "gemm_sm90_impl.cuh"

namespace halo {
namespace sm90 {

using QGemmE5m2E4m3F32_128x128_C1x2_Coop =
    QGemmSm90<cutlass::float_e5m2_t, cutlass::float_e4m3_t, float,
              cute::Shape<cute::_128, cute::_128, cute::_128>,  // CTA tile
              cute::Shape<cute::_1, cute::_2, cute::_1>,      // cluster
              schedule::Cooperative>;

const QGemmSm90Kernel kQGemmE5m2E4m3F32_128x128_C1x2_Coop =
    make_qgemm_sm90_kernel<QGemmE5m2E4m3F32_128x128_C1x2_Coop>(
        "e5m2 x e4m3 -> fp32 128x128x128 cluster 1x2 cooperative, fp32 accum");

}  // namespace sm90
}  // namespace halo
#endif  // HALO_ENABLE_SM90
