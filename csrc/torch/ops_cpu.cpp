/*! \file ops_cpu.cpp \brief CPU implementations of the halo ops (TORCH_LIBRARY_IMPL(halo, CPU)). */
#include <torch/library.h>

#include "cpu/cpu_ops.h"
#include "torch/common.h"
#include "torch/qcomm_glue.h"

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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ey_quantize_cpu(
    const at::Tensor& ey, at::ScalarType dtype, int64_t block, const std::optional<at::Tensor>& signs, bool want_rot,
    bool want_t) {
  EyQuantArgs a;
  EyQuantPlan p = plan_ey_quantize(ey, dtype, block, signs, want_rot, want_t, &a);
  cpu::ey_quantize(a);
  return {p.q_rot, p.scale_rot, p.qt, p.scale_t};
}

at::Tensor qgemm_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a, const at::Tensor& scale_b,
                     std::optional<at::ScalarType> out_dtype, const std::optional<at::Tensor>& bias,
                     int64_t row_hadamard) {
  QGemmArgs g;
  at::Tensor sa = scale_a.contiguous(), sb = scale_b.contiguous();
  std::optional<at::Tensor> bc = bias ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  at::Tensor d = plan_qgemm(a, b, sa, sb, out_dtype, bc, row_hadamard, &g);
  if (d.numel() > 0) cpu::qgemm(g);
  return d;
}

void qcomm_pack_into_cpu(const at::Tensor& x, const at::Tensor& out, int64_t world, int64_t chunk, int64_t block,
                         at::ScalarType dtype, int64_t skip) {
  qcomm_check_pack(x, out, world, chunk, block, dtype, skip);
  TORCH_CHECK_VALUE(x.device().is_cpu() && out.device().is_cpu(), "halo.qcomm_pack: tensors must be on the CPU");
  cpu::qcomm_pack(x.data_ptr(), to_dtype(x.scalar_type()), x.numel(), static_cast<int>(world), chunk, block,
                  to_dtype(dtype), static_cast<uint8_t*>(out.data_ptr()), static_cast<int>(skip));
}

void qcomm_reduce_into_cpu(at::TensorList chunks, const at::Tensor& out, int64_t block, at::ScalarType dtype,
                           double post_scale, const std::optional<at::Tensor>& own, int64_t own_index) {
  int64_t nb = 0;
  const QCommChunks in = qcomm_check_reduce(chunks.vec(), out, block, dtype, &nb);
  const QCommOwn o = qcomm_check_own(own, own_index, in.count, nb, block, out.device(), "qcomm_reduce");
  const DType out_t = out.scalar_type() == at::kByte ? to_dtype(dtype) : to_dtype(out.scalar_type());
  cpu::qcomm_reduce(in, nb, block, to_dtype(dtype), static_cast<float>(post_scale), out.data_ptr(), out_t,
                    out.numel(), o);
}

void qcomm_unpack_into_cpu(at::TensorList chunks, const at::Tensor& out, int64_t chunk, int64_t block,
                           at::ScalarType dtype) {
  const QCommChunks in = qcomm_check_unpack(chunks.vec(), out, chunk, block, dtype);
  cpu::qcomm_unpack(in, chunk, block, to_dtype(dtype), out.data_ptr(), to_dtype(out.scalar_type()), out.numel());
}

void qcomm_pack_scatter_cpu(const at::Tensor& x, at::TensorList outs, int64_t chunk, int64_t block,
                            at::ScalarType dtype, int64_t skip) {
  const QCommOuts o = qcomm_check_pack_scatter(x, outs.vec(), chunk, block, dtype, skip);
  TORCH_CHECK_VALUE(x.device().is_cpu(), "halo.qcomm_pack_scatter: tensors must be on the CPU");
  cpu::qcomm_pack_scatter(x.data_ptr(), to_dtype(x.scalar_type()), x.numel(), o.count, chunk, block, to_dtype(dtype),
                          o, static_cast<int>(skip));
}

void qcomm_reduce_broadcast_cpu(at::TensorList chunks, at::TensorList outs, int64_t block, at::ScalarType dtype,
                                double post_scale, const std::optional<at::Tensor>& own, int64_t own_index,
                                const std::optional<at::Tensor>& deq) {
  TORCH_CHECK_VALUE(!outs.empty(), "halo.qcomm_reduce_broadcast: needs at least one output chunk");
  int64_t nb = 0;
  const QCommChunks in = qcomm_check_reduce(chunks.vec(), outs[0], block, dtype, &nb);
  const QCommOuts o = qcomm_check_outs(outs.vec(), nb * (block + 4), outs[0].device(), "qcomm_reduce_broadcast");
  const QCommOwn w = qcomm_check_own(own, own_index, in.count, nb, block, outs[0].device(), "qcomm_reduce_broadcast");
  const QCommDeq d = qcomm_check_deq(deq, nb, block, outs[0].device(), "qcomm_reduce_broadcast");
  cpu::qcomm_reduce_broadcast(in, nb, block, to_dtype(dtype), static_cast<float>(post_scale), o, w, d);
}

void qcomm_reduce_broadcast_unpack_cpu(at::TensorList chunks, at::TensorList outs, at::TensorList gathered,
                                       const at::Tensor& flags, at::TensorList peer_flags, int64_t epoch,
                                       const at::Tensor& out, int64_t chunk, int64_t block, at::ScalarType dtype,
                                       double post_scale, const at::Tensor& own, int64_t rank) {
  const QCommReduceUnpackArgs a = qcomm_check_reduce_unpack(chunks.vec(), outs.vec(), gathered.vec(), flags,
                                                            peer_flags.vec(), epoch, out, chunk, block, dtype, own,
                                                            rank);
  TORCH_CHECK_VALUE(out.device().is_cpu(), "halo.qcomm_reduce_broadcast_unpack: tensors must be on the CPU");
  try {
    cpu::qcomm_reduce_broadcast_unpack(a.in, a.nb, block, to_dtype(dtype), static_cast<float>(post_scale), a.outs,
                                       a.own, a.g);
  } catch (const std::runtime_error& e) {
    TORCH_CHECK(false, e.what());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(halo, CPU, m) {
  m.impl("qcomm_pack_scatter", &qcomm_pack_scatter_cpu);
  m.impl("qcomm_reduce_broadcast", &qcomm_reduce_broadcast_cpu);
  m.impl("qcomm_reduce_broadcast_unpack", &qcomm_reduce_broadcast_unpack_cpu);
  m.impl("qcomm_pack_into", &qcomm_pack_into_cpu);
  m.impl("qcomm_reduce_into", &qcomm_reduce_into_cpu);
  m.impl("qcomm_unpack_into", &qcomm_unpack_into_cpu);
  m.impl("hadamard", &hadamard_cpu);
  m.impl("quantize", &quantize_cpu);
  m.impl("dequantize", &dequantize_cpu);
  m.impl("hadamard_quantize", &hadamard_quantize_cpu);
  m.impl("ey_quantize", &ey_quantize_cpu);
  m.impl("qgemm", &qgemm_cpu);
  m.impl("hadamard_qgemm", &hadamard_qgemm_composite);
  m.impl("linear_forward", &linear_forward);
  m.impl("linear_backward", &linear_backward);
}

}  // namespace halo::glue
