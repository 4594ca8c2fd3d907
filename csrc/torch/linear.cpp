/*!
 * \file linear.cpp
 * \brief halo.linear_forward / halo.linear_backward: the whole tensor work of one HaloLinear call (forward, and
 * backward for levels 0/1/2) composed in C++ from the dispatcher ops, so a layer costs two host calls from Python
 * instead of ~10 (each Python -> dispatcher crossing and each Python wrapper line costs host time; at the shapes of
 * a ~1B model the layers were bound by it: notes/halo_linear.md, "host time"). The same code runs for every
 * backend: the sub-ops dispatch to their CPU or CUDA kernels (current stream, device guard) as usual.
 */
#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cmath>
#include <optional>
#include <tuple>

#include "common.h"

namespace halo::glue {
namespace {

using OptT = Ops::OptT;

at::Tensor none_like(const at::Tensor& t) { return at::empty({0}, t.options()); }

// t [m, C] with zero rows appended up to `rows` (t itself when it has them already).
at::Tensor pad_rows(const at::Tensor& t, int64_t rows) {
  return t.size(0) == rows ? t : at::constant_pad_nd(t, {0, 0, 0, rows - t.size(0)}, 0);
}

// (I (x) R_b) y, or (I (x) R_b^T) y with transpose, for y [rows, C] (rows % b == 0): one batched GEMM over the
// token blocks (the same computation as HaloLinear's Python _rotate_tokens).
at::Tensor rotate_tokens(const at::Tensor& y, const at::Tensor& r, bool transpose) {
  const int64_t b = r.size(0), c = y.size(1);
  const at::Tensor rr = transpose ? r.t() : r;
  return at::bmm(rr.expand({y.size(0) / b, b, b}), y.view({-1, b, c})).view(y.sizes());
}

// An 8-bit operand of the forward: codes q and scale s for the GEMM, and what linear_forward returns of it (the codes,
// transposed codes and scale it computed; empty tensors when the caller gave them).
struct Quantized {
  at::Tensor q, s, q_out, qt_out, s_out;
};

Quantized given(const at::Tensor& q, const at::Tensor& s) { return {q, s, none_like(q), none_like(q), none_like(s)}; }

// Q(src H_m) per tensor (H_m of block blk; 1: no rotation) and, when want_t, its transpose: one hadamard_quantize.
Quantized quantize(const Ops& ops, const at::Tensor& src, at::ScalarType qdtype, int64_t blk, bool want_t) {
  auto r = ops.hq.call(src, qdtype, std::nullopt, blk, std::nullopt, false, true, want_t, std::nullopt);
  return {std::get<0>(r), std::get<2>(r), std::get<0>(r), std::get<1>(r), std::get<2>(r)};
}

// Whether HALO-2's token undo H_T runs as qgemm's row_hadamard (the configurations with a fused sm90 kernel: token
// block 256, int8 or e4m3 operands, bfloat16 gradients) rather than as a batched GEMM over the bf16 product. The
// same choice on every backend, so CPU and CUDA compute the same algebra.
bool token_undo_in_gemm(int64_t b, bool fused_rot, at::ScalarType out, at::ScalarType a, at::ScalarType w) {
  const bool pair = (a == at::kChar && w == at::kChar) || (a == at::kFloat8_e4m3fn && w == at::kFloat8_e4m3fn);
  return fused_rot && b == 256 && out == at::kBFloat16 && pair;
}

const at::Tensor& need(const OptT& t, const char* what) {
  TORCH_CHECK_VALUE(t.has_value() && t->defined(), "halo.linear_backward: ", what, " is required for this call");
  return *t;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_forward(
    const at::Tensor& x2, const OptT& weight, const OptT& bias, const OptT& wq_in, const OptT& ws_in,
    const OptT& qx_in, const OptT& sx_in, int64_t level,
    at::ScalarType qdtype, int64_t padded_tokens, int64_t rotation_block, bool want_wqt, bool want_xqt) {
  const Ops& ops = Ops::get();
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // the sub-ops: straight to their kernels
  TORCH_CHECK_VALUE(level >= 0 && level <= 2, "halo.linear_forward: level must be 0, 1 or 2, got ", S(level));
  TORCH_CHECK_VALUE(x2.dim() == 2, "halo.linear_forward: x must be 2-D [tokens, in_features], got ",
                    S(x2.sizes()));
  const int64_t m = x2.size(0);
  TORCH_CHECK_VALUE(padded_tokens >= m, "halo.linear_forward: padded_tokens (", S(padded_tokens),
                    ") < tokens (", S(m), ")");
  const int64_t blk = level == 0 ? 1 : rotation_block;
  // the weight: Q(W H_m) (and its transpose for the input gradient) unless given pre-quantized
  if (wq_in.has_value()) {
    TORCH_CHECK_VALUE(ws_in.has_value(), "halo.linear_forward: a pre-quantized weight needs its scale");
  } else {
    TORCH_CHECK_VALUE(weight.has_value() && weight->defined(), "halo.linear_forward: needs weight or wq");
  }
  const Quantized w = wq_in.has_value() ? given(*wq_in, *ws_in) : quantize(ops, *weight, qdtype, blk, want_wqt);
  // the input, padded to padded_tokens rows: Q(X H_m) and, for the weight gradient, Q(X H_m)^T (unless given)
  if (qx_in.has_value()) {
    TORCH_CHECK_VALUE(sx_in.has_value(), "halo.linear_forward: a pre-quantized input needs its scale");
    TORCH_CHECK_VALUE(qx_in->dim() == 2 && qx_in->size(0) == padded_tokens && qx_in->size(1) == x2.size(1),
                      "halo.linear_forward: a pre-quantized input must be [padded_tokens, in_features] = [",
                      S(padded_tokens), ", ", S(x2.size(1)), "], got ", S(qx_in->sizes()));
  }
  const Quantized x = qx_in.has_value() ? given(*qx_in, *sx_in)
                                        : quantize(ops, pad_rows(x2, padded_tokens), qdtype, blk, want_xqt);
  OptT b;
  if (bias.has_value() && bias->defined())
    b = bias->scalar_type() == x2.scalar_type() ? *bias : bias->to(x2.scalar_type());
  at::Tensor y = ops.mm.call(x.q, w.q, x.s, w.s, x2.scalar_type(), b, 0);
  if (y.size(0) != m) y = y.narrow(0, 0, m);  // the padded rows are dropped (a view of the op's own result)
  return {y, w.q_out, w.s_out, w.qt_out, x.q_out, x.qt_out, x.s_out};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward(
    const at::Tensor& ey_in, const OptT& qxt, const OptT& sx, const OptT& wqt, const OptT& ws, const OptT& token_rot,
    const OptT& token_signs, int64_t level, at::ScalarType gdtype, int64_t token_block, int64_t padded_tokens,
    int64_t rotation_block, bool wgrad_per_channel, bool need_gx, bool need_gw, std::optional<at::ScalarType> gw_dtype,
    std::optional<at::ScalarType> gb_dtype) {
  const Ops& ops = Ops::get();
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // the sub-ops: straight to their kernels
  TORCH_CHECK_VALUE(level >= 0 && level <= 2, "halo.linear_backward: level must be 0, 1 or 2, got ", S(level));
  TORCH_CHECK_VALUE(ey_in.dim() == 2, "halo.linear_backward: grad_output must be 2-D [tokens, out_features], got ",
                    S(ey_in.sizes()));
  check_float_input(ey_in, "grad_output");
  const at::Tensor ey = ey_in.contiguous();  // e.g. the expanded gradient of a .sum()
  const int64_t m = ey.size(0);
  const int64_t b = token_block;
  TORCH_CHECK_VALUE(padded_tokens >= m && (level != 2 || (b > 0 && padded_tokens % b == 0)),
                    "halo.linear_backward: padded_tokens (", S(padded_tokens), ") must be >= tokens (", S(m),
                    ") and, at level 2, a multiple of token_block (", S(b), ")");
  const at::Tensor eyp = pad_rows(ey, padded_tokens);
  // The 8-bit copies of E_Y, each op reading E_Y twice (absmax pass, then codes) and writing all it is asked:
  //  - qe/se: Q(E_Y) per tensor, A operand of the input-gradient GEMM at levels 0/1;
  //  - qr/sr: Q(H_T^T E_Y) per tensor, the same at level 2 (token rotation fused when b <= kEyMaxBlock);
  //  - qet/set: Q(E_Y)^T [N, Mp], A operand of the weight-gradient GEMM, one scale per output channel or per tensor.
  // ey_quantize writes the rotated (block b) or plain (block 1) per-tensor copy and the per-channel transpose;
  // hadamard_quantize(block=1) the per-tensor copy and the per-tensor transpose.
  const bool want_q = need_gx && level != 2;
  const bool want_qt = need_gw && !wgrad_per_channel;
  const bool want_ct = need_gw && wgrad_per_channel;
  const bool fused_rot = level == 2 && need_gx && b <= kEyMaxBlock;
  at::Tensor qe, se, qr, sr, qet, set;
  if (want_ct || fused_rot) {
    const int64_t bb = fused_rot ? b : 1;
    OptT signs;
    if (fused_rot) signs = need(token_signs, "token_signs");
    auto r = ops.eyq.call(eyp, gdtype, bb, signs, want_q || fused_rot, want_ct);
    if (fused_rot) {
      qr = std::get<0>(r);
      sr = std::get<1>(r);
    } else if (want_q) {
      qe = std::get<0>(r);
      se = std::get<1>(r);
    }
    if (want_ct) {
      qet = std::get<2>(r);
      set = std::get<3>(r);
    }
  }
  const bool hq_q = want_q && !qe.defined();
  if (hq_q || want_qt) {
    auto r = ops.hq.call(eyp, gdtype, std::nullopt, 1, std::nullopt, false, hq_q, want_qt, std::nullopt);
    if (hq_q) {
      qe = std::get<0>(r);
      se = std::get<2>(r);
    }
    if (want_qt) {
      qet = std::get<1>(r);
      set = std::get<2>(r);
    }
  }
  at::Tensor gx, gw, gb;
  if (need_gx) {
    const at::Tensor& wt = need(wqt, "wqt (Q(W H_m)^T)");
    const at::Tensor& wsc = need(ws, "ws (the weight scale)");
    at::Tensor z;
    if (level == 2) {
      const at::Tensor& r = need(token_rot, "token_rot");
      if (!fused_rot) {  // token block > kEyMaxBlock: batched GEMM + quantize
        static const std::string kTensor = "tensor";
        auto q = ops.quant.call(rotate_tokens(eyp, r, false), gdtype, kTensor, 0);
        qr = std::get<0>(q);
        sr = std::get<1>(q);
      }
      if (token_undo_in_gemm(b, fused_rot, ey.scalar_type(), qr.scalar_type(), wt.scalar_type())) {
        // H_T Z = (I (x) diag(d) H_b / sqrt(b)) Z with Z = Q(H_T^T E_Y) Q(W H_m): the GEMM mixes the rows of its
        // product with H_b (qgemm's row_hadamard; in the epilogue on sm90), the signs d, 1/sqrt(b) and the scale
        // of Q(H_T^T E_Y) are its per-row scale_a
        const at::Tensor& d = need(token_signs, "token_signs");
        // rs[t] = d[t mod b] sr / sqrt(b): a broadcast product (d = +-1, so d sr is exact and then the same bits as
        // d (sr / sqrt(b))). Two small kernels; repeat() cost ~100 us of host time per call (H100 host profile).
        const at::Tensor rs = at::mul(d.to(at::kFloat).view({1, b}).expand({padded_tokens / b, b}), sr)
                                  .view({padded_tokens})
                                  .mul_(1.0 / std::sqrt(double(b)));
        z = ops.mm.call(qr, wt, rs, wsc, ey.scalar_type(), std::nullopt, b);  // H_T Q(H_T^T E_Y) Q(W H_m)  [Mp, K]
      } else {
        z = ops.mm.call(qr, wt, sr, wsc, ey.scalar_type(), std::nullopt, 0);  // Q(H_T^T E_Y) Q(W H_m)  [Mp, K]
        z = rotate_tokens(z, r, true);                                         // H_T (...)
      }
      z = ops.had.call(z, std::nullopt, rotation_block, std::nullopt, true);  // (...) H_m^T
    } else {
      z = ops.mm.call(qe, wt, se, wsc, ey.scalar_type(), std::nullopt, 0);  // [Mp, K]
      if (level == 1) z = ops.had.call(z, std::nullopt, rotation_block, std::nullopt, true);
    }
    gx = z.size(0) == m ? z : z.narrow(0, 0, m);
  } else {
    gx = none_like(ey);
  }
  if (need_gw) {
    const at::ScalarType wdt = gw_dtype.value_or(ey.scalar_type());
    const bool float_w = wdt == at::kBFloat16 || wdt == at::kHalf || wdt == at::kFloat;
    at::Tensor g = ops.mm.call(qet, need(qxt, "qxt (Q(X H_m)^T)"), set, need(sx, "sx (the input scale)"),
                               float_w ? wdt : at::kFloat, std::nullopt, 0);  // [N, K]
    if (level != 0) g = ops.had.call(g, std::nullopt, rotation_block, std::nullopt, true);
    gw = g.scalar_type() == wdt ? g : g.to(wdt);
  } else {
    gw = none_like(ey);
  }
  if (gb_dtype.has_value()) {
    gb = ey.sum(0, /*keepdim=*/false, at::kFloat);
    if (*gb_dtype != at::kFloat) gb = gb.to(*gb_dtype);
  } else {
    gb = none_like(ey);
  }
  return {gx, gw, gb};
}

}  // namespace halo::glue
