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
  /*! \brief Optional: L kron S_{2^e} packed by hadamard_pack_dense_left with e = hadamard_dense_frag_expand(dense_m,
   *  log2(n / dense_m)) (device, 16-byte aligned). The register-resident tensor-core kernel needs it; without it
   *  the older dense kernel (2^p <= 1024) or the generic one runs. */
  const uint32_t* dense_left_frag = nullptr;
};

/*! \brief Largest dense order the register-resident tensor-core kernel takes, after the expansion below. */
inline constexpr int kMaxDenseRegM = 512;

/*!
 * \brief The expansion e of the dense factor the register-resident tensor-core kernel uses for n = m * 2^log2p:
 * it handles Sylvester factors of 2^5..2^7 only, so for 2^p > 128 it runs the same transform as the dense order
 * m * 2^e with Sylvester factor 2^(p-e), e = p - 7, using L kron S_{2^e} (S Sylvester): L kron S_{2^p} =
 * (L kron S_{2^e}) kron S_{2^(p-e)}. Returns -1 where that kernel does not apply (2^p < 32, or m * 2^e above
 * kMaxDenseRegM).
 */
inline int hadamard_dense_frag_expand(int m, int log2p) {
  if (m < 2 || log2p < 5) return -1;
  const int e = log2p > 7 ? log2p - 7 : 0;
  return e < 16 && (int64_t(m) << e) <= kMaxDenseRegM ? e : -1;
}

/*! \brief 32-bit words hadamard_pack_dense_left writes for dense order m_eff (= m * 2^e). */
inline size_t hadamard_dense_left_words(int m_eff) {
  const size_t mt = (static_cast<size_t>(m_eff) + 15) / 16;
  return mt * ((mt + 3) / 4) * 32;
}

/*!
 * \brief Packs the +-1 matrix K = L kron S_{2^e} (L [m, m] row-major int8, S Sylvester; order m_eff = m * 2^e,
 * K[i 2^e + a][k 2^e + b] = L[i][k] (-1)^popcount(a & b)) one bit an entry (set: -1) in the order of mma.sync
 * m16n8k16 A fragments, as the register-resident tensor-core kernel reads it: word ((mt * kq_count + kt / 4) * 32 +
 * lane) holds lane's 8 entries of the 16x16 tile (mt, kt), kq_count = ceil(ceil(m_eff / 16) / 4); entry j of the
 * fragment (register j / 2, half j % 2: row 16 mt + lane / 4 + 8 (j / 2 % 2), column 16 kt + 2 (lane % 4) + j % 2 +
 * 8 (j / 4)) sits at bit (j % 2 ? 31 : 15) - j / 2 - 4 (kt % 4). Entries outside K are +1 (the kernel pairs them
 * with zeros).
 * \param left [m, m] host matrix
 * \param m order of L
 * \param e expansion (hadamard_dense_frag_expand)
 * \param words output, hadamard_dense_left_words(m << e) words
 */
inline void hadamard_pack_dense_left(const int8_t* left, int m, int e, uint32_t* words) {
  const int me = m << e, mt = (me + 15) / 16, kq = (mt + 3) / 4, mask = (1 << e) - 1;
  for (size_t i = 0; i < hadamard_dense_left_words(me); ++i) words[i] = 0;
  for (int a = 0; a < mt; ++a)
    for (int kt = 0; kt < mt; ++kt)
      for (int lane = 0; lane < 32; ++lane)
        for (int j = 0; j < 8; ++j) {
          const int row = a * 16 + lane / 4 + 8 * ((j >> 1) & 1), col = kt * 16 + 2 * (lane % 4) + (j & 1) + 8 * (j >> 2);
          if (row >= me || col >= me) continue;
          int neg = left[(row >> e) * m + (col >> e)] < 0;
          for (int v = row & col & mask; v != 0; v &= v - 1) neg ^= 1;
          if (!neg) continue;
          const int bit = ((j & 1) ? 31 : 15) - (j >> 1) - 4 * (kt & 3);
          words[(size_t(a) * kq + kt / 4) * 32 + lane] |= 1u << bit;
        }
}

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
