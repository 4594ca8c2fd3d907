/*!
 * \file common.h
 * \brief Torch glue shared by the CPU and CUDA implementations: argument checks with clear messages, dtype
 * mapping, output allocation, and the translation of op arguments into the kernels' argument structs.
 */
#pragma once
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Optional.h>

#include <optional>
#include <string>
#include <tuple>

#include "kernels/ey_quantize.h"
#include "kernels/gemm.h"
#include "kernels/hadamard.h"

namespace halo::glue {

/*!
 * \brief Numbers and shapes for error messages, formatted with std::to_string. Messages never stream integers:
 * on the GPU machine's toolchain an `ostream << int64_t` instantiated inside this extension crashed (SIGSEGV in
 * std::ostream::_M_insert<long>, seen 2026-11-23), turning a clear error into a segfault.
 */
inline std::string S(int64_t v) { return std::to_string(v); }
inline std::string S(at::IntArrayRef v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

/*! \brief Kernel dtype of a tensor dtype; throws a clear error for unsupported ones. */
DType to_dtype(at::ScalarType t);
/*! \brief Whether t is one of int8 / float8_e4m3fn / float8_e5m2. */
bool is_8bit(at::ScalarType t);
/*! \brief Checks that t is one of the 8-bit quantized dtypes (what names the argument in messages). */
void check_8bit(at::ScalarType t, const char* what);
/*! \brief Checks that x is float32/float16/bfloat16. */
void check_float_input(const at::Tensor& x, const char* what);
/*! \brief Parses "tensor" / "row" / "block". */
Granularity parse_granularity(const std::string& g);

/*! \brief x as [rows, cols] (cols = last dim) with a contiguous last dim: a view when one exists, else a copy. */
at::Tensor as_rows(const at::Tensor& x);

/*! \brief A Hadamard transform planned from op arguments (sizes checked, factorization chosen). */
struct HadamardPlan {
  at::Tensor x2d;      //!< x viewed as [rows, cols] (last dim contiguous; a copy only when no such view exists)
  at::Tensor signs;    //!< float32 contiguous [cols] or undefined
  HadamardArgs args;   //!< all fields set except dense_left, dense_left_frag (host or device, set by the backend)
  bool transpose = false;
  int log2p = 0;       //!< n = args.dense_m * 2^log2p
};

/*!
 * \brief Validates x/scale/block/signs and plans the transform along x's last dim. `allow_identity` (the fused
 * hadamard_quantize only) accepts block == 1, the order-1 transform (identity), without signs or a scale != 1.
 */
HadamardPlan plan_hadamard(const at::Tensor& x, std::optional<double> scale, int64_t block,
                           const std::optional<at::Tensor>& signs, bool transpose, bool allow_identity = false);

/*! \brief Host copy of the dense factor L for (m, transpose): D^T for x*H, D for x*H^T (row-major, cached). */
const int8_t* dense_left_host(int m, bool transpose);

/*! \brief Shapes of quantize() outputs; fills args (pointers unset). Returns {q, scale} allocated like x. */
std::tuple<at::Tensor, at::Tensor> plan_quantize(const at::Tensor& x2d, at::IntArrayRef shape, at::ScalarType qdtype,
                                                 const std::string& granularity, int64_t block, QuantizeArgs* args);

/*! \brief dequantize() output and the contiguous inputs its args point into (keep them alive while it runs). */
struct DequantPlan {
  at::Tensor out, q, scale;
};

/*! \brief Validates dequantize() arguments and fills args. */
DequantPlan plan_dequantize(const at::Tensor& q, const at::Tensor& scale, std::optional<at::ScalarType> dtype,
                            const std::string& granularity, int64_t block, QuantizeArgs* args);

/*! \brief Validates hadamard_quantize() arguments; returns {q, qt, scale} and fills args (except dense_left). */
std::tuple<at::Tensor, at::Tensor, at::Tensor> plan_hadamard_quantize(
    const HadamardPlan& plan, const at::Tensor& x, at::ScalarType qdtype, bool want_q, bool want_qt,
    const std::optional<at::Tensor>& amax, HadamardQuantArgs* args);

/*! \brief Validates qgemm() arguments; returns the output and fills args. */
at::Tensor plan_qgemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a, const at::Tensor& scale_b,
                      std::optional<at::ScalarType> out_dtype, const std::optional<at::Tensor>& bias,
                      int64_t row_hadamard, QGemmArgs* args);

/*! \brief ey_quantize() outputs and the contiguous inputs its args point into (keep them alive while it runs). */
struct EyQuantPlan {
  at::Tensor ey, signs, q_rot, scale_rot, qt, scale_t;
};

/*! \brief Validates ey_quantize() arguments, allocates its outputs and fills args. */
EyQuantPlan plan_ey_quantize(const at::Tensor& ey, at::ScalarType qdtype, int64_t block,
                             const std::optional<at::Tensor>& signs, bool want_rot, bool want_t, EyQuantArgs* args);

/*! \brief hadamard_qgemm composed from the dispatcher ops (the same code for every backend). */
at::Tensor hadamard_qgemm_composite(const at::Tensor& x, const at::Tensor& w, at::ScalarType dtype,
                                    const std::optional<at::Tensor>& w_scale, const std::optional<at::Tensor>& bias,
                                    std::optional<at::ScalarType> out_dtype, int64_t block,
                                    const std::optional<at::Tensor>& signs);

/*!
 * \brief Typed dispatcher handles of the ops the C++ composites call (hadamard_qgemm, linear_forward/backward),
 * looked up once: a call through them dispatches to the CPU or CUDA kernel like a call from Python.
 */
struct Ops {
  using OptT = std::optional<at::Tensor>;
  using T3 = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
  using T4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
  c10::TypedOperatorHandle<T3(const at::Tensor&, at::ScalarType, std::optional<double>, int64_t, const OptT&, bool,
                              bool, bool, const OptT&)>
      hq;  //!< halo::hadamard_quantize
  c10::TypedOperatorHandle<T4(const at::Tensor&, at::ScalarType, int64_t, const OptT&, bool, bool)> eyq;  //!< ey_quantize
  c10::TypedOperatorHandle<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::ScalarType, const std::string&,
                                                              int64_t)>
      quant;  //!< halo::quantize
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      std::optional<at::ScalarType>, const OptT&, int64_t)>
      mm;  //!< halo::qgemm
  c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, std::optional<double>, int64_t, const OptT&, bool)>
      had;  //!< halo::hadamard

  static const Ops& get();
};

/*! \brief halo.linear_forward: one HaloLinear forward composed from the dispatcher ops (csrc/torch/linear.cpp). */
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_forward(
    const at::Tensor& x2, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& wq, const std::optional<at::Tensor>& ws, const std::optional<at::Tensor>& qx,
    const std::optional<at::Tensor>& sx, int64_t level, at::ScalarType qdtype, int64_t padded_tokens, int64_t rotation_block, bool want_wqt,
    bool want_xqt);

/*! \brief halo.linear_backward: one HaloLinear backward composed from the dispatcher ops (csrc/torch/linear.cpp). */
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward(
    const at::Tensor& ey, const std::optional<at::Tensor>& qxt, const std::optional<at::Tensor>& sx,
    const std::optional<at::Tensor>& wqt, const std::optional<at::Tensor>& ws,
    const std::optional<at::Tensor>& token_rot, const std::optional<at::Tensor>& token_signs, int64_t level,
    at::ScalarType gdtype, int64_t token_block, int64_t padded_tokens, int64_t rotation_block,
    bool wgrad_per_channel, bool need_gx, bool need_gw, std::optional<at::ScalarType> gw_dtype,
    std::optional<at::ScalarType> gb_dtype);

}  // namespace halo::glue
