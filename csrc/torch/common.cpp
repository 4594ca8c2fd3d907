/*! \file common.cpp \brief Argument checks and planning shared by the CPU and CUDA op implementations. */
#include "torch/common.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>
#include <map>
#include <mutex>
#include <vector>

#include "common/hadamard_matrices.h"

namespace halo::glue {

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kChar: return DType::kInt8;
    case at::kFloat8_e4m3fn: return DType::kFloat8E4M3;
    case at::kFloat8_e5m2: return DType::kFloat8E5M2;
    default: TORCH_CHECK_TYPE(false, "halo: unsupported dtype ", t);
  }
}

bool is_8bit(at::ScalarType t) {
  return t == at::kChar || t == at::kFloat8_e4m3fn || t == at::kFloat8_e5m2;
}

void check_8bit(at::ScalarType t, const char* what) {
  TORCH_CHECK_TYPE(is_8bit(t), "halo: ", what, " must be torch.int8, torch.float8_e4m3fn or torch.float8_e5m2, got ", t);
}

void check_float_input(const at::Tensor& x, const char* what) {
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, "halo: ", what,
                   " must be float32, float16 or bfloat16, got ", t);
}

Granularity parse_granularity(const std::string& g) {
  if (g == "tensor") return Granularity::kTensor;
  if (g == "row") return Granularity::kRow;
  if (g == "block") return Granularity::kBlock;
  TORCH_CHECK_VALUE(false, "halo: granularity must be 'tensor', 'row' or 'block', got '", g, "'");
}

at::Tensor as_rows(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() >= 1, "halo: expected a tensor with at least one dimension");
  const int64_t cols = x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  at::Tensor v = x;
  if (x.dim() == 0 || x.stride(-1) != 1) v = x.contiguous();
  // reshape() returns a view whenever the leading dims collapse to one stride, else a copy.
  v = v.reshape({rows, cols});
  if (v.size(1) > 1 && v.stride(1) != 1) v = v.contiguous();
  return v;
}

HadamardPlan plan_hadamard(const at::Tensor& x, std::optional<double> scale, int64_t block,
                           const std::optional<at::Tensor>& signs, bool transpose, bool allow_identity) {
  check_float_input(x, "x");
  TORCH_CHECK_VALUE(x.dim() >= 1, "halo.hadamard: x must have at least one dimension");
  const int64_t cols = x.size(-1);
  TORCH_CHECK_VALUE(block >= 0, "halo.hadamard: block must be >= 0, got ", S(block));
  const int64_t n = block == 0 ? cols : block;
  const bool identity = allow_identity && block == 1;
  if (identity) {
    TORCH_CHECK_VALUE(!signs && (!scale || *scale == 1.0),
                      "halo.hadamard_quantize: block=1 (no rotation) takes no signs and no hadamard_scale other "
                      "than 1");
  } else {
    TORCH_CHECK_VALUE(n >= 2, "halo.hadamard: the transform length must be >= 2, got ", S(n),
                      allow_identity ? " (block=1 means no rotation)" : "");
  }
  TORCH_CHECK_VALUE(cols % n == 0, "halo.hadamard: block ", S(n), " must divide the last dim ", S(cols));
  HadamardFactor f{1, 0};
  TORCH_CHECK_VALUE(identity || hadamard_factor(n, &f), "halo.hadamard: unsupported size ", S(n),
                    ": supported are 2^p (2..32768) and m*2^p for constructible Hadamard orders m "
                    "(halo_ext.hadamard_supported(n) tells; e.g. 12, 20, 28, 36, 44, 52, 60, 108, 140 times 2^p)");
  HadamardPlan p;
  p.x2d = as_rows(x);
  p.transpose = transpose;
  if (signs) {
    const at::Tensor& s = *signs;
    TORCH_CHECK_VALUE(s.dim() == 1 && s.size(0) == cols, "halo.hadamard: signs must have shape [", S(cols), "], got ",
                      S(s.sizes()));
    TORCH_CHECK_TYPE(at::isFloatingType(s.scalar_type()), "halo.hadamard: signs must be a floating tensor, got ",
                     s.scalar_type());
    TORCH_CHECK_VALUE(s.device() == x.device(), "halo.hadamard: signs is on ", s.device(), " but x is on ",
                      x.device());
    p.signs = s.to(at::kFloat).contiguous();
  }
  HadamardArgs& a = p.args;
  a.x = p.x2d.data_ptr();
  a.dtype = to_dtype(x.scalar_type());
  a.rows = p.x2d.size(0);
  a.cols = cols;
  a.x_row_stride = a.rows > 0 ? p.x2d.stride(0) : cols;
  a.n = n;
  a.scale = static_cast<float>(scale ? *scale : 1.0 / std::sqrt(static_cast<double>(n)));
  a.signs = p.signs.defined() ? p.signs.data_ptr<float>() : nullptr;
  a.signs_after = transpose;  // inverse of y = (x o s) H is x = (y H^T) o s
  a.dense_m = f.m;
  a.dense_left = nullptr;
  p.log2p = f.log2p;
  return p;
}

const int8_t* dense_left_host(int m, bool transpose) {
  static std::mutex mu;
  static auto* cache = new std::map<std::pair<int, bool>, std::vector<int8_t>>();  // leaked: lives to exit
  std::lock_guard<std::mutex> lock(mu);
  auto key = std::make_pair(m, transpose);
  auto it = cache->find(key);
  if (it == cache->end()) {
    const std::vector<int8_t>& d = hadamard_dense(m);
    std::vector<int8_t> l(d.size());
    // x*H with H = D (x) S is Y = D^T X S, so L = D^T; for x*H^T, L = D.
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < m; ++j) l[i * m + j] = transpose ? d[i * m + j] : d[j * m + i];
    it = cache->emplace(key, std::move(l)).first;
  }
  return it->second.data();
}

std::tuple<at::Tensor, at::Tensor> plan_quantize(const at::Tensor& x2d, at::IntArrayRef shape, at::ScalarType qdtype,
                                                 const std::string& granularity, int64_t block, QuantizeArgs* a) {
  check_float_input(x2d, "x");
  check_8bit(qdtype, "dtype");
  const Granularity g = parse_granularity(granularity);
  const int64_t rows = x2d.size(0), cols = x2d.size(1);
  std::vector<int64_t> sshape;
  if (g == Granularity::kTensor) {
    sshape = {1};
  } else {
    sshape.assign(shape.begin(), shape.end());
    if (sshape.empty()) sshape = {1};
    if (g == Granularity::kRow) {
      sshape.back() = 1;
    } else {
      TORCH_CHECK_VALUE(block > 0 && cols % block == 0, "halo.quantize: block granularity needs block > 0 dividing "
                        "the last dim ", S(cols), ", got block=", S(block));
      sshape.back() = cols / block;
    }
  }
  at::Tensor q = at::empty(shape, x2d.options().dtype(qdtype));
  at::Tensor s = at::empty(sshape, x2d.options().dtype(at::kFloat));
  a->x = x2d.data_ptr();
  a->dtype = to_dtype(x2d.scalar_type());
  a->rows = rows;
  a->cols = cols;
  a->x_row_stride = rows > 0 ? x2d.stride(0) : cols;
  a->qdtype = to_dtype(qdtype);
  a->granularity = g;
  a->block = g == Granularity::kBlock ? block : 0;
  a->q = q.data_ptr();
  a->scale = s.data_ptr<float>();
  return {q, s};
}

EyQuantPlan plan_ey_quantize(const at::Tensor& ey, at::ScalarType qdtype, int64_t block,
                             const std::optional<at::Tensor>& signs, bool want_rot, bool want_t, EyQuantArgs* a) {
  check_float_input(ey, "ey");
  check_8bit(qdtype, "dtype");
  TORCH_CHECK_VALUE(ey.dim() == 2, "halo.ey_quantize: ey must be 2-D [tokens, channels], got shape ", S(ey.sizes()));
  TORCH_CHECK_VALUE(block >= 1 && block <= kEyMaxBlock && (block & (block - 1)) == 0,
                    "halo.ey_quantize: block must be a power of two in [1, ", S(kEyMaxBlock), "], got ", S(block));
  const int64_t rows = ey.size(0), cols = ey.size(1);
  TORCH_CHECK_VALUE(rows % block == 0, "halo.ey_quantize: tokens (", S(rows), ") must be a multiple of block (",
                    S(block), "): pad E_Y with zero rows");
  TORCH_CHECK_VALUE(!want_t || rows % 16 == 0, "halo.ey_quantize: tokens (", S(rows),
                    ") must be a multiple of 16 for the transposed output (the rows of the weight-gradient GEMM's "
                    "operand): pad E_Y with zero rows");
  TORCH_CHECK_VALUE(cols % 16 == 0, "halo.ey_quantize: channels (", S(cols), ") must be a multiple of 16");
  EyQuantPlan p;
  const int64_t esz = ey.element_size();
  const bool rows_ok = ey.stride(1) == 1 && (ey.stride(0) * esz) % 16 == 0 && ey.stride(0) >= cols;
  p.ey = rows_ok ? ey : ey.contiguous();
  if (signs.has_value()) {
    TORCH_CHECK_VALUE(signs->dim() == 1 && signs->size(0) == block, "halo.ey_quantize: signs must have shape [",
                      S(block), "], got ", S(signs->sizes()));
    TORCH_CHECK_VALUE(signs->device() == ey.device(), "halo.ey_quantize: signs must be on ey's device");
    p.signs = signs->to(at::kFloat).contiguous();
  }
  const auto o8 = ey.options().dtype(qdtype), of = ey.options().dtype(at::kFloat);
  p.q_rot = want_rot ? at::empty({rows, cols}, o8) : at::empty({0}, o8);
  p.scale_rot = at::empty({1}, of);
  p.qt = want_t ? at::empty({cols, rows}, o8) : at::empty({0}, o8);
  p.scale_t = at::empty({want_t ? cols : 0}, of);
  a->ey = p.ey.data_ptr();
  a->dtype = to_dtype(p.ey.scalar_type());
  a->rows = rows;
  a->cols = cols;
  a->ld = rows > 0 ? p.ey.stride(0) : cols;
  a->block = static_cast<int>(block);
  a->signs = p.signs.defined() ? p.signs.data_ptr<float>() : nullptr;
  a->qdtype = to_dtype(qdtype);
  a->q_rot = want_rot ? p.q_rot.data_ptr() : nullptr;
  a->scale_rot = p.scale_rot.data_ptr<float>();
  a->qt = want_t ? p.qt.data_ptr() : nullptr;
  a->scale_t = want_t ? p.scale_t.data_ptr<float>() : nullptr;
  if (!want_rot) p.scale_rot.fill_(1.0f);  // not computed: a neutral value
  if (rows == 0 || cols == 0) {           // no elements: absmax 0, the rule's scale
    const double s0 = static_cast<double>(kMinAmax) / qmax_of(a->qdtype);
    if (want_rot) p.scale_rot.fill_(s0);
    if (want_t) p.scale_t.fill_(s0);
  }
  return p;
}

DequantPlan plan_dequantize(const at::Tensor& q, const at::Tensor& scale, std::optional<at::ScalarType> dtype,
                            const std::string& granularity, int64_t block, QuantizeArgs* a) {
  check_8bit(q.scalar_type(), "q");
  const at::ScalarType out_t = dtype.value_or(at::kFloat);
  TORCH_CHECK_TYPE(out_t == at::kFloat || out_t == at::kHalf || out_t == at::kBFloat16,
                   "halo.dequantize: dtype must be float32, float16 or bfloat16, got ", out_t);
  TORCH_CHECK_TYPE(scale.scalar_type() == at::kFloat, "halo.dequantize: scale must be float32, got ",
                   scale.scalar_type());
  TORCH_CHECK_VALUE(scale.device() == q.device(), "halo.dequantize: scale is on ", scale.device(), ", q on ",
                    q.device());
  TORCH_CHECK_VALUE(q.dim() >= 1, "halo.dequantize: q must have at least one dimension");
  const Granularity g = parse_granularity(granularity);
  const int64_t cols = q.size(-1);
  const int64_t rows = cols == 0 ? 0 : q.numel() / cols;
  int64_t expected = 1;
  if (g == Granularity::kRow) expected = rows;
  if (g == Granularity::kBlock) {
    TORCH_CHECK_VALUE(block > 0 && cols % block == 0, "halo.dequantize: block granularity needs block > 0 dividing ",
                      S(cols), ", got ", S(block));
    expected = rows * (cols / block);
  }
  TORCH_CHECK_VALUE(scale.numel() == expected, "halo.dequantize: scale has ", S(scale.numel()),
                    " elements, expected ", S(expected), " for granularity '", granularity, "'");
  DequantPlan p{at::empty(q.sizes(), q.options().dtype(out_t)), q.contiguous(), scale.contiguous()};
  const at::Tensor& qc = p.q;
  const at::Tensor& sc = p.scale;
  a->q = qc.data_ptr();
  a->qdtype = to_dtype(q.scalar_type());
  a->scale = sc.data_ptr<float>();
  a->rows = rows;
  a->cols = cols;
  a->x_row_stride = cols;
  a->granularity = g;
  a->block = g == Granularity::kBlock ? block : 0;
  a->dtype = to_dtype(out_t);
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> plan_hadamard_quantize(
    const HadamardPlan& plan, const at::Tensor& x, at::ScalarType qdtype, bool want_q, bool want_qt,
    const std::optional<at::Tensor>& amax, HadamardQuantArgs* a) {
  check_8bit(qdtype, "dtype");
  TORCH_CHECK_VALUE(want_q || want_qt, "halo.hadamard_quantize: want_q and want_qt are both False");
  const int64_t rows = plan.args.rows, cols = plan.args.cols;
  auto opts = x.options().dtype(qdtype);
  at::Tensor q = want_q ? at::empty(x.sizes(), opts) : at::empty({0}, opts);
  at::Tensor qt = want_qt ? at::empty({cols, rows}, opts) : at::empty({0}, opts);
  at::Tensor s = at::empty({1}, x.options().dtype(at::kFloat));
  a->had = plan.args;
  a->qdtype = to_dtype(qdtype);
  a->q = want_q ? q.data_ptr() : nullptr;
  a->qt = want_qt ? qt.data_ptr() : nullptr;
  a->scale = s.data_ptr<float>();
  a->amax_in = nullptr;
  if (amax) {
    TORCH_CHECK_VALUE(amax->numel() == 1 && amax->scalar_type() == at::kFloat && amax->device() == x.device(),
                      "halo.hadamard_quantize: amax must be a float32 tensor of one element on ", x.device());
    a->amax_in = amax->data_ptr<float>();
  }
  return {q, qt, s};
}

at::Tensor plan_qgemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a, const at::Tensor& scale_b,
                      std::optional<at::ScalarType> out_dtype, const std::optional<at::Tensor>& bias,
                      int64_t row_hadamard, QGemmArgs* g) {
  TORCH_CHECK_VALUE(a.dim() == 2 && b.dim() == 2, "halo.qgemm: a and b must be 2-D ([M,K] and [N,K]), got ",
                    S(a.sizes()), " and ", S(b.sizes()));
  TORCH_CHECK_VALUE(a.size(1) == b.size(1), "halo.qgemm: K mismatch: a is ", S(a.sizes()), ", b is ", S(b.sizes()),
                    " (b is [N,K], i.e. the weight, not its transpose)");
  check_8bit(a.scalar_type(), "a");
  check_8bit(b.scalar_type(), "b");
  const auto ta = a.scalar_type(), tb = b.scalar_type();
  const bool ok_pair = (ta == at::kChar && tb == at::kChar) ||
                       (ta == at::kFloat8_e4m3fn && tb == at::kFloat8_e4m3fn) ||
                       (ta == at::kFloat8_e5m2 && tb == at::kFloat8_e4m3fn);
  TORCH_CHECK_TYPE(ok_pair, "halo.qgemm: supported (a, b) dtypes are (int8, int8), (float8_e4m3fn, float8_e4m3fn) "
                   "and (float8_e5m2, float8_e4m3fn), got (", ta, ", ", tb, ")");
  for (const at::Tensor* t : {&b, &scale_a, &scale_b})
    TORCH_CHECK_VALUE(t->device() == a.device(), "halo.qgemm: all inputs must be on ", a.device(), ", got one on ",
                      t->device());
  const int64_t M = a.size(0), N = b.size(0), K = a.size(1);
  TORCH_CHECK_VALUE((a.stride(1) == 1 || K <= 1) && (b.stride(1) == 1 || K <= 1),
                    "halo.qgemm: a and b must be K-major (stride(1) == 1, the 'TN' layout); got strides ",
                    S(a.strides()), " and ", S(b.strides()), ": pass .contiguous()");
  TORCH_CHECK_TYPE(scale_a.scalar_type() == at::kFloat && scale_b.scalar_type() == at::kFloat,
                   "halo.qgemm: scales must be float32");
  TORCH_CHECK_VALUE(scale_a.numel() == 1 || scale_a.numel() == M, "halo.qgemm: scale_a must have 1 or M=", S(M),
                    " elements, got ", S(scale_a.numel()));
  TORCH_CHECK_VALUE(scale_b.numel() == 1 || scale_b.numel() == N, "halo.qgemm: scale_b must have 1 or N=", S(N),
                    " elements, got ", S(scale_b.numel()));
  const at::ScalarType ot = out_dtype.value_or(at::kBFloat16);
  TORCH_CHECK_TYPE(ot == at::kBFloat16 || ot == at::kHalf || ot == at::kFloat,
                   "halo.qgemm: out_dtype must be bfloat16, float16 or float32, got ", ot);
  if (bias) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == N, "halo.qgemm: bias must have shape [", S(N), "], got ",
                      S(bias->sizes()));
    TORCH_CHECK_TYPE(bias->scalar_type() == ot, "halo.qgemm: bias dtype ", bias->scalar_type(),
                     " must equal out_dtype ", ot);
    TORCH_CHECK_VALUE(bias->device() == a.device(), "halo.qgemm: bias is on ", bias->device());
  }
  TORCH_CHECK_VALUE(row_hadamard >= 0 && (row_hadamard & (row_hadamard - 1)) == 0,
                    "halo.qgemm: row_hadamard must be 0 or a power of two, got ", S(row_hadamard));
  if (row_hadamard > 1) {
    TORCH_CHECK_VALUE(M % row_hadamard == 0, "halo.qgemm: row_hadamard (", S(row_hadamard),
                      ") must divide the rows of a (M = ", S(M), ")");
    TORCH_CHECK_VALUE(!bias, "halo.qgemm: bias is not supported with row_hadamard");
  }
  at::Tensor d = at::empty({M, N}, a.options().dtype(ot));
  g->a = a.data_ptr();
  g->b = b.data_ptr();
  g->a_dtype = to_dtype(ta);
  g->b_dtype = to_dtype(tb);
  g->M = M;
  g->N = N;
  g->K = K;
  g->lda = M > 1 ? a.stride(0) : K;
  g->ldb = N > 1 ? b.stride(0) : K;
  g->ldd = N;
  g->scale_a = scale_a.data_ptr<float>();
  g->scale_a_per_row = scale_a.numel() == M && M != 1;
  g->scale_b = scale_b.data_ptr<float>();
  g->scale_b_per_row = scale_b.numel() == N && N != 1;
  g->bias = bias ? bias->data_ptr() : nullptr;
  g->out_dtype = to_dtype(ot);
  g->d = d.data_ptr();
  g->row_hadamard = row_hadamard;
  return d;
}

const Ops& Ops::get() {
  static const Ops ops = [] {
    auto& d = c10::Dispatcher::singleton();
    Ops o{d.findSchemaOrThrow("halo::hadamard_quantize", "").typed<T3(const at::Tensor&, at::ScalarType,
                                                                     std::optional<double>, int64_t, const OptT&,
                                                                     bool, bool, bool, const OptT&)>(),
          d.findSchemaOrThrow("halo::ey_quantize", "")
              .typed<T4(const at::Tensor&, at::ScalarType, int64_t, const OptT&, bool, bool)>(),
          d.findSchemaOrThrow("halo::quantize", "")
              .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, at::ScalarType, const std::string&,
                                                        int64_t)>(),
          d.findSchemaOrThrow("halo::qgemm", "")
              .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                std::optional<at::ScalarType>, const OptT&, int64_t)>(),
          d.findSchemaOrThrow("halo::hadamard", "")
              .typed<at::Tensor(const at::Tensor&, std::optional<double>, int64_t, const OptT&, bool)>()};
    return o;
  }();
  return ops;
}

at::Tensor hadamard_qgemm_composite(const at::Tensor& x, const at::Tensor& w, at::ScalarType dtype,
                                    const std::optional<at::Tensor>& w_scale, const std::optional<at::Tensor>& bias,
                                    std::optional<at::ScalarType> out_dtype, int64_t block,
                                    const std::optional<at::Tensor>& signs) {
  check_float_input(x, "x");
  check_8bit(dtype, "dtype");
  TORCH_CHECK_VALUE(w.dim() == 2 && x.dim() >= 1 && w.size(1) == x.size(-1), "halo.hadamard_qgemm: w must be [N, K] "
                    "with K = x.size(-1); got x ", S(x.sizes()), ", w ", S(w.sizes()));
  const Ops& ops = Ops::get();
  at::Tensor qw, sw;
  if (is_8bit(w.scalar_type())) {
    TORCH_CHECK_VALUE(w_scale.has_value(), "halo.hadamard_qgemm: a pre-quantized w (", w.scalar_type(),
                      ") needs w_scale");
    qw = w;
    sw = *w_scale;
  } else {
    check_float_input(w, "w");
    TORCH_CHECK_VALUE(!w_scale.has_value(), "halo.hadamard_qgemm: w_scale is only for a pre-quantized 8-bit w");
    const at::ScalarType wq = dtype == at::kFloat8_e5m2 ? at::kFloat8_e4m3fn : dtype;
    auto r = ops.hq.call(w, wq, std::nullopt, block, signs, false, true, false, std::nullopt);
    qw = std::get<0>(r);
    sw = std::get<2>(r);
  }
  auto rx = ops.hq.call(x, dtype, std::nullopt, block, signs, false, true, false, std::nullopt);
  const int64_t K = x.size(-1);
  at::Tensor qx = std::get<0>(rx).reshape({-1, K});
  at::Tensor out = ops.mm.call(qx, qw, std::get<2>(rx), sw, out_dtype.value_or(x.scalar_type()), bias, 0);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = w.size(0);
  return out.view(shape);
}

}  // namespace halo::glue
