/*!
 * \file hadamard.h
 * \brief Fast Hadamard transform, quantization and fused Hadamard+quantize kernels (torch-free C++ API).
 *
 * Conventions shared by every launcher here:
 *  - A tensor is viewed as `rows` rows of `cols` elements; consecutive elements of a row are contiguous and rows
 *    start `row_stride` elements apart (row_stride >= cols).
 *  - The transform of length n is y = scale * x * H_n with H_n = D (x) S_{2^p} the Kronecker product of a dense
 *    m x m +-1 matrix D (m = 1 for powers of two) and the Sylvester matrix S of order 2^p = n / m. Viewing a length-n
 *    vector as an [m, 2^p] row-major matrix X, this is Y = scale * L * X * S where
 *    `L = dense_left` is the m x m matrix the caller passes (L = D^T for x * H_n, L = D for x * H_n^T).
 *  - Rows of `cols` elements are transformed in independent groups of n contiguous elements (n divides cols): this
 *    is the block-diagonal Hadamard when n < cols.
 *  - Quantized values follow one rule, bit-identical to the CPU reference (csrc/cpu/): for a group with absmax a
 *    (float32, over the transformed values), a' = max(a, kMinAmax), scale = a' / qmax, inv = qmax / a',
 *    v = value * inv; int8: q = clamp(rint(v), -127, 127); fp8: q = cvt_rne(clamp(v, -qmax, qmax)).
 *    x is then approximated by q * scale.
 */
#pragma once
#include "common.h"

namespace halo {

/*! \brief Smallest absmax used to form a scale: keeps scale and 1/scale finite for all-zero or tiny groups. */
inline constexpr float kMinAmax = 1e-30f;

/*! \brief Arguments of the Hadamard transform, shared by hadamard_transform and hadamard_quantize. */
struct HadamardArgs {
  const void* x = nullptr;      //!< input, dtype `dtype`
  DType dtype = DType::kBFloat16;  //!< kFloat32, kFloat16 or kBFloat16
  int64_t rows = 0;             //!< number of rows
  int64_t cols = 0;             //!< elements per row
  int64_t x_row_stride = 0;     //!< elements between row starts of x
  int64_t n = 0;                //!< transform length, n = dense_m * 2^p, divides cols; supported: 2 <= 2^p <= 32768
  float scale = 1.0f;           //!< multiplies the result (1/sqrt(n) gives the orthonormal transform)
  const float* signs = nullptr; //!< optional [cols] +-1 vector (randomized Hadamard), device memory
  bool signs_after = false;     //!< false: y = scale * (x o s) H ; true: y = scale * (x H) o s
  int dense_m = 1;              //!< order of the dense factor (1, or 12, 20, 28, ... up to kMaxDenseM)
  const int8_t* dense_left = nullptr;  //!< [dense_m, dense_m] row-major +-1 matrix L applied on the left, device
};

/*! \brief Largest dense factor order the CUDA kernels take. */
inline constexpr int kMaxDenseM = 512;

#ifdef HALO_KERNEL_LAUNCHERS
/*!
 * \brief out = Hadamard transform of x (same dtype as x), written with row stride out_row_stride.
 * \param args transform description
 * \param out output pointer, [rows, cols] with row stride out_row_stride
 * \param out_row_stride elements between row starts of out
 * \param stream CUDA stream to launch on
 */
cudaError_t hadamard_transform(const HadamardArgs& args, void* out, int64_t out_row_stride, cudaStream_t stream);
#endif

/*! \brief Arguments of quantize / dequantize. */
struct QuantizeArgs {
  const void* x = nullptr;      //!< input (float32/float16/bfloat16)
  DType dtype = DType::kBFloat16;
  int64_t rows = 0, cols = 0, x_row_stride = 0;
  DType qdtype = DType::kInt8;  //!< kInt8, kFloat8E4M3 or kFloat8E5M2
  Granularity granularity = Granularity::kTensor;
  int64_t block = 0;            //!< group size for kBlock (divides cols)
  void* q = nullptr;            //!< [rows, cols] contiguous output (may be nullptr per tensor when qt is set)
  float* scale = nullptr;       //!< [1], [rows] or [rows, cols/block] float32 dequantization scales
  void* qt = nullptr;           //!< per tensor only: optional [cols, rows] contiguous transpose of q
  const float* amax_in = nullptr;  //!< per tensor only: optional [1] precomputed absmax (skips the reduction pass)
};

#ifdef HALO_KERNEL_LAUNCHERS
/*! \brief Workspace bytes quantize() needs (per-tensor granularity uses it for partial maxima). */
size_t quantize_workspace_size(const QuantizeArgs& args);

/*!
 * \brief q, scale = quantize(x) by absmax per group; see the file comment for the rule. Per tensor, `qt` (if set)
 * also receives the transposed codes in the same pass (q may then be nullptr), and `amax_in` replaces the absmax
 * reduction.
 */
cudaError_t quantize(const QuantizeArgs& args, void* workspace, cudaStream_t stream);

/*!
 * \brief out = q * scale (float32/float16/bfloat16 out), scale by the same granularity/block as quantize.
 * \param args q, scale, sizes, granularity; x/dtype fields describe the output (x unused)
 * \param out [rows, cols] contiguous output of dtype args.dtype
 */
cudaError_t dequantize(const QuantizeArgs& args, void* out, cudaStream_t stream);
#endif

/*! \brief Arguments of the fused Hadamard + per-tensor quantization. */
struct HadamardQuantArgs {
  HadamardArgs had;             //!< transform of the input
  DType qdtype = DType::kInt8;  //!< kInt8, kFloat8E4M3 or kFloat8E5M2
  void* q = nullptr;            //!< [rows, cols] contiguous quantized transform, may be nullptr when qt is set
  void* qt = nullptr;           //!< optional [cols, rows] contiguous transpose of q
  float* scale = nullptr;       //!< [1] float32 dequantization scale (absmax / qmax)
  const float* amax_in = nullptr;  //!< optional [1] precomputed absmax of the transform: skips the reduction pass
};

#ifdef HALO_KERNEL_LAUNCHERS
/*! \brief Workspace bytes hadamard_quantize() needs. */
size_t hadamard_quantize_workspace_size(const HadamardQuantArgs& args);

/*!
 * \brief Fused y = H(x); scale = absmax(y)/qmax; q = Q(y) (and/or qt = Q(y)^T), per-tensor, no host sync.
 * Two passes over x: the first transforms and reduces the absmax only (writes nothing but partial maxima), the
 * second transforms again and writes the 8-bit output. See notes/hadamard_quantize.md for why.
 */
cudaError_t hadamard_quantize(const HadamardQuantArgs& args, void* workspace, cudaStream_t stream);
#endif

}  // namespace halo
