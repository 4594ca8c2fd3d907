/*!
 * \file qgemm_sm90_e4m3_bf16_128x256_c2x1_coop_fastacc_rowhad256.cu
 * \brief sm90a kernel configuration "e4m3 x e4m3 -> bf16 128x256x128 cluster 2x1 cooperative, fast accum, row
 * Hadamard 256" (QGemmArgs::row_hadamard = 256: HALO-2's input gradient with the token rotation undone in the
 * epilogue).
 *
 * See gemm_sm90_impl.cuh (ColHadamardEpilogue) and notes/gemm_configs.md.
 */
#ifdef HALO_ENABLE_SM90
#include "gemm_sm90_impl.cuh"

namespace halo {
namespace sm90 {

using QGemmE4m3Bf16_128x256_C2x1_CoopFastAcc_RowHad256 =
    QGemmSm90<cutlass::float_e4m3_t, cutlass::float_e4m3_t, cutlass::bfloat16_t,
              cute::Shape<cute::_128, cute::_256, cute::_128>,  // CTA tile (of the transposed problem)
              cute::Shape<cute::_2, cute::_1, cute::_1>,      // cluster
              schedule::CooperativeFP8Fast, /*kRowHadamardLog2=*/8>;

const QGemmSm90Kernel kQGemmE4m3Bf16_128x256_C2x1_CoopFastAcc_RowHad256 =
    make_qgemm_sm90_kernel<QGemmE4m3Bf16_128x256_C2x1_CoopFastAcc_RowHad256>(
        "e4m3 x e4m3 -> bf16 128x256x128 cluster 2x1 cooperative, fast accum, row Hadamard 256 in the epilogue");

}  // namespace sm90
}  // namespace halo
#endif  // HALO_ENABLE_SM90
