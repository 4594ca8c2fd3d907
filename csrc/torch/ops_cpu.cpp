/*! \file ops_cpu.cpp \brief CPU implementations of the halo ops (TORCH_LIBRARY_IMPL(halo, CPU)). */
#include <torch/library.h>

#include "cpu/cpu_ops.h"
#include "torch/common.h"

namespace halo::glue {
namespace {

at::Tensor hadamard_cpu(const at::Tensor& x, std::optional<double> scale, int64_t block,
                        const std::optional<at::Tensor>& signs, bool transpose) {
  HadamardPlan p = plan_hadamard(x, scale, block, signs, transpose);
  p.args.dense_left = p.args.dense_m > 1 ? dense_left_host(p.args.dense_m, transpose) : nullptr;
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() > 0) cpu::hadamard_transform(p.args, out.data_ptr(), p.args.cols);
  return out;
}

std::tuple<at::Tensor, at::Tensor> quantize_cpu(const at::Tensor& x, at::ScalarType dtype,
                                                const std::string& granularity, int64_t block) {
  check_float_input(x, "x");
  at::Tensor x2d = as_rows(x);
  QuantizeArgs a;
  auto [q, s] = plan_quantize(x2d, x.sizes(), dtype, granularity, block, &a);
  cpu::quantize(a);
  return {q, s};
}

at::Tensor dequantize_cpu(const at::Tensor& q, const at::Tensor& scale, std::optional<at::ScalarType> dtype,
                          const std::string& granularity, int64_t block) {
  QuantizeArgs a;
  DequantPlan p = plan_dequantize(q, scale, dtype, granularity, block, &a);
  cpu::dequantize(a, p.out.data_ptr());
  return p.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hadamard_quantize_cpu(
    const at::Tensor& x, at::ScalarType dtype, std::optional<double> hadamard_scale, int64_t block,
    const std::optional<at::Tensor>& signs, bool transpose, bool want_q, bool want_qt,
    const std::optional<at::Tensor>& amax) {
  HadamardPlan p = plan_hadamard(x, hadamard_scale, block, signs, transpose, /*allow_identity=*/true);
  p.args.dense_left = p.args.dense_m > 1 ? dense_left_host(p.args.dense_m, transpose) : nullptr;
  HadamardQuantArgs a;
  auto out = plan_hadamard_quantize(p, x, dtype, want_q, want_qt, amax, &a);
  cpu::hadamard_quantize(a);
  return out;
}

at::Tensor qgemm_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a, const at::Tensor& scale_b,
                     std::optional<at::ScalarType> out_dtype, const std::optional<at::Tensor>& bias) {
  QGemmArgs g;
  at::Tensor sa = scale_a.contiguous(), sb = scale_b.contiguous();
  std::optional<at::Tensor> bc = bias ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  at::Tensor d = plan_qgemm(a, b, sa, sb, out_dtype, bc, &g);
  if (d.numel() > 0) cpu::qgemm(g);
  return d;
}

}  // namespace

TORCH_LIBRARY_IMPL(halo, CPU, m) {
  m.impl("hadamard", &hadamard_cpu);
  m.impl("quantize", &quantize_cpu);
  m.impl("dequantize", &dequantize_cpu);
  m.impl("hadamard_quantize", &hadamard_quantize_cpu);
  m.impl("qgemm", &qgemm_cpu);
  m.impl("hadamard_qgemm", &hadamard_qgemm_composite);
}

}  // namespace halo::glue
