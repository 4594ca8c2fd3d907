/*!
 * \file common.h
 * \brief Shared definitions of the torch-free halo kernel API.
 *
 * Every launcher in csrc/kernels/ takes raw device pointers, sizes and strides (in elements), and the
 * cudaStream_t last. Launchers never allocate, never synchronize and never read device memory from the host.
 * They return cudaSuccess or the first CUDA error met (cudaErrorInvalidValue for arguments they do not support;
 * the torch glue checks arguments first and gives a clear message).
 */
#pragma once
#include <cstddef>
#include <cstdint>

// The argument structs below are plain data shared with the CPU implementations (csrc/cpu/), which build without
// the CUDA toolkit; the launchers themselves are declared only where CUDA is available.
#if defined(__CUDACC__) || defined(HALO_WITH_CUDA)
#include <cuda_runtime.h>
#define HALO_KERNEL_LAUNCHERS 1
#endif

namespace halo {

/*! \brief Element types understood by the kernels. */
enum class DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kInt8 = 3,
  kFloat8E4M3 = 4,  //!< float8_e4m3fn: max 448, no inf
  kFloat8E5M2 = 5,  //!< float8_e5m2: max 57344
};

/*! \brief Largest representable magnitude of an 8-bit type (127 for int8, as the grid is symmetric). */
inline constexpr float qmax_of(DType t) {
  return t == DType::kInt8 ? 127.0f : t == DType::kFloat8E4M3 ? 448.0f : t == DType::kFloat8E5M2 ? 57344.0f : 0.0f;
}

/*! \brief Granularity of quantization scales. */
enum class Granularity : int {
  kTensor = 0,  //!< one scale for the whole tensor, shape [1]
  kRow = 1,     //!< one scale per row (all dims but the last), shape [rows]
  kBlock = 2,   //!< one scale per contiguous group of `block` elements of a row, shape [rows, cols/block]
};

}  // namespace halo
