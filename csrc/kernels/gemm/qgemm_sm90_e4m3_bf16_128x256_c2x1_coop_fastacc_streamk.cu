/*!
 * \file qgemm_sm90_e4m3_bf16_128x256_c2x1_coop_fastacc_streamk.cu
 * \brief sm90a kernel configuration "e4m3 x e4m3 -> bf16 128x256x128 cluster 2x1 cooperative, fast accum, stream-K".
 *
 * The tiles and schedule of qgemm_sm90_e4m3_bf16_128x256_c2x1_coop_fastacc.cu under CUTLASS's stream-K tile
 * scheduler (heuristic decomposition). See gemm_sm90_impl.cuh and notes/gemm_configs.md.
 */
#ifdef HALO_ENABLE_SM90
#include "gemm_sm90_impl.cuh"

namespace halo {
namespace sm90 {

using QGemmE4m3Bf16_128x256_C2x1_CoopFastAccStreamK =
    QGemmSm90<cutlass::float_e4m3_t, cutlass::float_e4m3_t, cutlass::bfloat16_t,
              cute::Shape<cute::_128, cute::_256, cute::_128>,  // CTA tile
              cute::Shape<cute::_2, cute::_1, cute::_1>,      // cluster
              schedule::CooperativeFP8Fast, 0, cutlass::gemm::StreamKScheduler>;

const QGemmSm90Kernel kQGemmE4m3Bf16_128x256_C2x1_CoopFastAccStreamK =
    make_qgemm_sm90_kernel<QGemmE4m3Bf16_128x256_C2x1_CoopFastAccStreamK>(
        "e4m3 x e4m3 -> bf16 128x256x128 cluster 2x1 cooperative, fast accum, stream-K");

}  // namespace sm90
}  // namespace halo
#endif  // HALO_ENABLE_SM90
