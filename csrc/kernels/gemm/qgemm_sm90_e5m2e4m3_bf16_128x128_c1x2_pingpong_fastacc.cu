/*!
 * \file qgemm_sm90_e5m2e4m3_bf16_128x128_c1x2_pingpong_fastacc.cu
 * \brief sm90a kernel configuration "e5m2 x e4m3 -> bf16 128x128x128 cluster 1x2 pingpong, fast accum".
 *
 * See gemm_sm90_impl.cuh for the kernel and notes/gemm_configs.md for why this configuration exists.
 */
#ifdef HALO_ENABLE_SM90
#include "gemm_sm90_impl.cuh"

namespace halo {
namespace sm90 {

using QGemmE5m2E4m3Bf16_128x128_C1x2_PingpongFastAcc =
    QGemmSm90<cutlass::float_e5m2_t, cutlass::float_e4m3_t, cutlass::bfloat16_t,
              cute::Shape<cute::_128, cute::_128, cute::_128>,  // CTA tile
              cute::Shape<cute::_1, cute::_2, cute::_1>,      // cluster
              schedule::PingpongFP8Fast>;

const QGemmSm90Kernel kQGemmE5m2E4m3Bf16_128x128_C1x2_PingpongFastAcc =
    make_qgemm_sm90_kernel<QGemmE5m2E4m3Bf16_128x128_C1x2_PingpongFastAcc>(
        "e5m2 x e4m3 -> bf16 128x128x128 cluster 1x2 pingpong, fast accum");

}  // namespace sm90
}  // namespace halo
#endif  // HALO_ENABLE_SM90
