/*!
 * \file ey_quantize.h
 * \brief The two 8-bit copies of an output gradient E_Y that HALO-2's backward needs, from two reads of E_Y
 * (torch-free C++ API).
 *
 * For E_Y [rows = tokens, cols = output channels] (row-major, row stride ld):
 *  - q_rot [rows, cols] = Q(R E_Y), one scale for the tensor (scale_rot [1]): R = I (x) (H_b diag(signs)) rotates
 *    each block of `block` consecutive rows (tokens), H_b the orthonormal Sylvester matrix (1/sqrt(b) * +-1),
 *    `signs` a +-1 vector of length b (nullptr: all +1). Input of the input-gradient GEMM (E_X). block = 1 (no
 *    rotation) gives the plain per-tensor Q(E_Y) of HALO levels 0/1.
 *  - qt [cols, rows] = Q(E_Y)^T, one scale per column of E_Y = per row of qt (scale_t [cols]). A operand of the
 *    weight-gradient GEMM G = E_Y^T X with per-row scales.
 * Quantization follows the rule of hadamard.h (absmax, kMinAmax, round to nearest even, int8 clamped to +-127).
 * Pass 1 reduces the column absmaxes and the absmax of R E_Y (atomic maxima into a workspace); pass 2 transforms
 * again and writes both outputs. Either output may be skipped (nullptr).
 */
#pragma once
#include "common.h"

namespace halo {

/*! \brief Arguments of ey_quantize. */
struct EyQuantArgs {
  const void* ey = nullptr;         //!< [rows, cols] float32 / float16 / bfloat16, 16-byte aligned
  DType dtype = DType::kBFloat16;   //!< dtype of ey
  int64_t rows = 0;                 //!< tokens; a multiple of block, and of 16 when qt is written
  int64_t cols = 0;                 //!< output channels; a multiple of 16
  int64_t ld = 0;                   //!< elements between row starts of ey; a multiple of 16 bytes / element size
  int block = 0;                    //!< token block b of the rotation: a power of two, 1..256 (1: no rotation)
  const float* signs = nullptr;     //!< [block] +-1 or nullptr (device memory)
  DType qdtype = DType::kInt8;      //!< kInt8, kFloat8E4M3 or kFloat8E5M2
  void* q_rot = nullptr;            //!< [rows, cols] contiguous, or nullptr
  float* scale_rot = nullptr;       //!< [1] (needed when q_rot is set)
  void* qt = nullptr;               //!< [cols, rows] contiguous, or nullptr
  float* scale_t = nullptr;         //!< [cols] (needed when qt is set)
};

/*! \brief Largest token block ey_quantize takes (one CTA holds block rows of a column tile). */
inline constexpr int kEyMaxBlock = 256;

#ifdef HALO_KERNEL_LAUNCHERS
/*! \brief Workspace bytes ey_quantize needs: cols + 1 float32 maxima. */
size_t ey_quantize_workspace_size(const EyQuantArgs& args);

/*!
 * \brief Writes q_rot/scale_rot and qt/scale_t (see the file comment).
 * \param args shapes, pointers and dtypes
 * \param workspace ey_quantize_workspace_size(args) bytes of device memory (zeroed here)
 * \param stream CUDA stream to launch on
 */
cudaError_t ey_quantize(const EyQuantArgs& args, void* workspace, cudaStream_t stream);
#endif

}  // namespace halo
