/*!
 * \file ops_cuda.cpp
 * \brief CUDA implementations of the halo ops (TORCH_LIBRARY_IMPL(halo, CUDA)): checks, allocation through the
 * caching allocator, a device guard, and launches on the current stream.
 */
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <atomic>
#include <map>
#include <mutex>

#include "torch/common.h"
#include "torch/qcomm_glue.h"

namespace halo::glue {
namespace {

/*! \brief Whether the current device is an sm_90 (Hopper) GPU, which the sm90a kernels run on. */
bool current_device_is_sm90() {
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return false;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
  return major == 9 && minor == 0;
}

void check_cuda(cudaError_t e, const char* what) {
  TORCH_CHECK(e == cudaSuccess, "halo.", what, ": CUDA error: ", cudaGetErrorString(e));
}

void check_on_cuda(const at::Tensor& t, const char* what) {
  TORCH_CHECK_VALUE(t.is_cuda(), "halo: ", what, " must be a CUDA tensor, got one on ", t.device());
}

/*! \brief The kernels' fast paths load 16-byte vectors: the data pointer must be 16-byte aligned (true of every
 * allocation; a view with an odd storage offset is rejected). Any row pitch works (unaligned pitches take scalar
 * loads). */
void check_aligned(const void* p, const char* what) {
  TORCH_CHECK_VALUE(reinterpret_cast<uintptr_t>(p) % 16 == 0,
                    "halo: ", what, " must be 16-byte aligned (its data pointer is not: a view with an odd storage "
                    "offset?); pass .clone()");
}

/*!
 * \brief Device copies of the dense factor L, cached per (device, m, transpose, e) and never freed: the int8 matrix
 * and, for e >= 0, L kron S_{2^e} packed in fragment-bit order (hadamard_pack_dense_left) for the register-resident
 * tensor-core kernel.
 */
struct DenseLeftDevice {
  const int8_t* left;
  const uint32_t* frag;
};

DenseLeftDevice dense_left_device(int m, bool transpose, int e, c10::DeviceIndex dev) {
  static std::mutex mu;
  static auto* cache = new std::map<std::tuple<int, int, bool, int>, std::pair<at::Tensor, at::Tensor>>();
  std::lock_guard<std::mutex> lock(mu);
  auto key = std::make_tuple(static_cast<int>(dev), m, transpose, e);
  auto it = cache->find(key);
  if (it == cache->end()) {
    const int8_t* h = dense_left_host(m, transpose);
    at::Tensor t = at::empty({m, m}, at::TensorOptions().dtype(at::kChar).device(at::kCUDA, dev));
    check_cuda(cudaMemcpy(t.data_ptr(), h, static_cast<size_t>(m) * m, cudaMemcpyHostToDevice), "hadamard");
    at::Tensor f;
    if (e >= 0) {
      const size_t words = hadamard_dense_left_words(m << e);
      std::vector<uint32_t> packed(words);
      hadamard_pack_dense_left(h, m, e, packed.data());
      f = at::empty({static_cast<int64_t>(words)}, at::TensorOptions().dtype(at::kInt).device(at::kCUDA, dev));
      check_cuda(cudaMemcpy(f.data_ptr(), packed.data(), words * 4, cudaMemcpyHostToDevice), "hadamard");
    }
    it = cache->emplace(key, std::make_pair(t, f)).first;
  }
  const at::Tensor& f = it->second.second;
  return {it->second.first.data_ptr<int8_t>(),
          f.defined() ? reinterpret_cast<const uint32_t*>(f.data_ptr()) : nullptr};
}

void prepare_hadamard(HadamardPlan& p, const at::Tensor& x) {
  check_on_cuda(x, "x");
  check_aligned(p.args.x, "x");
  if (p.args.dense_m > 1) {
    const int e = hadamard_dense_frag_expand(p.args.dense_m, p.log2p);
    const DenseLeftDevice d = dense_left_device(p.args.dense_m, p.transpose, e, x.device().index());
    p.args.dense_left = d.left;
    p.args.dense_left_frag = d.frag;
  }
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

at::Tensor hadamard_cuda(const at::Tensor& x, std::optional<double> scale, int64_t block,
                         const std::optional<at::Tensor>& signs, bool transpose) {
  check_on_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  HadamardPlan p = plan_hadamard(x, scale, block, signs, transpose);
  prepare_hadamard(p, x);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  check_cuda(hadamard_transform(p.args, out.data_ptr(), p.args.cols, c10::cuda::getCurrentCUDAStream()), "hadamard");
  return out;
}

std::tuple<at::Tensor, at::Tensor> quantize_cuda(const at::Tensor& x, at::ScalarType dtype,
                                                 const std::string& granularity, int64_t block) {
  check_on_cuda(x, "x");
  check_float_input(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor x2d = as_rows(x);
  QuantizeArgs a;
  auto [q, s] = plan_quantize(x2d, x.sizes(), dtype, granularity, block, &a);
  check_aligned(a.x, "x");
  at::Tensor ws = workspace(quantize_workspace_size(a), x);
  check_cuda(quantize(a, ws.data_ptr(), c10::cuda::getCurrentCUDAStream()), "quantize");
  return {q, s};
}

at::Tensor dequantize_cuda(const at::Tensor& q, const at::Tensor& scale, std::optional<at::ScalarType> dtype,
                           const std::string& granularity, int64_t block) {
  check_on_cuda(q, "q");
  const c10::cuda::CUDAGuard guard(q.device());
  QuantizeArgs a;
  DequantPlan p = plan_dequantize(q, scale, dtype, granularity, block, &a);
  check_aligned(a.q, "q");
  check_cuda(dequantize(a, p.out.data_ptr(), c10::cuda::getCurrentCUDAStream()), "dequantize");
  return p.out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ey_quantize_cuda(
    const at::Tensor& ey, at::ScalarType dtype, int64_t block, const std::optional<at::Tensor>& signs, bool want_rot,
    bool want_t) {
  check_on_cuda(ey, "ey");
  const c10::cuda::CUDAGuard guard(ey.device());
  EyQuantArgs a;
  EyQuantPlan p = plan_ey_quantize(ey, dtype, block, signs, want_rot, want_t, &a);
  check_aligned(a.ey, "ey");
  if (a.rows == 0 || a.cols == 0) return {p.q_rot, p.scale_rot, p.qt, p.scale_t};  // scales set by the plan
  at::Tensor ws = workspace(ey_quantize_workspace_size(a), ey);
  check_cuda(ey_quantize(a, ws.data_ptr(), c10::cuda::getCurrentCUDAStream()), "ey_quantize");
  return {p.q_rot, p.scale_rot, p.qt, p.scale_t};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> hadamard_quantize_cuda(
    const at::Tensor& x, at::ScalarType dtype, std::optional<double> hadamard_scale, int64_t block,
    const std::optional<at::Tensor>& signs, bool transpose, bool want_q, bool want_qt,
    const std::optional<at::Tensor>& amax) {
  check_on_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  HadamardPlan p = plan_hadamard(x, hadamard_scale, block, signs, transpose, /*allow_identity=*/true);
  if (p.args.n == 1) {  // no rotation: per-tensor quantize, q and/or its transpose from one read of x
    check_aligned(p.args.x, "x");
    HadamardQuantArgs h;
    auto out = plan_hadamard_quantize(p, x, dtype, want_q, want_qt, amax, &h);
    QuantizeArgs a;
    a.x = p.args.x, a.dtype = p.args.dtype, a.rows = p.args.rows, a.cols = p.args.cols;
    a.x_row_stride = p.args.x_row_stride, a.qdtype = h.qdtype, a.granularity = Granularity::kTensor;
    a.q = h.q, a.qt = h.qt, a.scale = h.scale, a.amax_in = h.amax_in;
    at::Tensor ws = workspace(quantize_workspace_size(a), x);
    check_cuda(quantize(a, ws.data_ptr(), c10::cuda::getCurrentCUDAStream()), "hadamard_quantize");
    return out;
  }
  prepare_hadamard(p, x);
  HadamardQuantArgs a;
  auto out = plan_hadamard_quantize(p, x, dtype, want_q, want_qt, amax, &a);
  at::Tensor ws = workspace(hadamard_quantize_workspace_size(a), x);
  check_cuda(hadamard_quantize(a, ws.data_ptr(), c10::cuda::getCurrentCUDAStream()), "hadamard_quantize");
  return out;
}

/*! \brief (I (x) H_rb) acc for acc [M, N] float32 (M % rb == 0): log2(rb) butterfly steps over the row bits. */
at::Tensor row_hadamard_fp32(at::Tensor acc, int64_t rb) {
  const int64_t M = acc.size(0), N = acc.size(1);
  for (int64_t h = 1; h < rb; h <<= 1) {
    const at::Tensor v = acc.view({M / (2 * h), 2, h, N});
    const at::Tensor x = v.select(1, 0), y = v.select(1, 1);
    acc = at::stack({x + y, x - y}, 1).view({M, N});
  }
  return acc;
}

/*! \brief Portable path: dequantize to float32, matmul, row Hadamard, scale, bias (any CUDA GPU; exact for int8
 * while the per-row partial sums stay below 2^24). */
void qgemm_fallback(const at::Tensor& a, const at::Tensor& b, const at::Tensor& sa, const at::Tensor& sb,
                    const std::optional<at::Tensor>& bias, int64_t row_hadamard, at::Tensor& d) {
  at::Tensor acc = at::mm(a.to(at::kFloat), b.to(at::kFloat).t());
  if (row_hadamard > 1) acc = row_hadamard_fp32(acc, row_hadamard);
  acc.mul_(sa.reshape({-1, 1})).mul_(sb.reshape({1, -1}));
  if (bias) acc.add_(bias->to(at::kFloat));
  d.copy_(acc);
}

#ifdef HALO_ENABLE_SM90
// Configuration index forced on every sm90 qgemm whose dtype family has it (-1: the shape heuristic). Set only by
// the tuning helper set_qgemm_sm90_config (benchmarks compare configurations through whole layers with it).
std::atomic<int> g_qgemm_sm90_config{-1};

/*! \brief Runs one sm90 qgemm on the current stream (a clear error for arguments the kernels do not take). */
void run_qgemm_sm90(const QGemmArgs& g, const at::Tensor& like) {
  const char* why = qgemm_sm90_unsupported_reason(g);
  TORCH_CHECK_VALUE(why == nullptr, "halo.qgemm: ", why);
  at::Tensor ws = workspace(qgemm_sm90_workspace_size(g), like);
  check_cuda(qgemm_sm90(g, ws.data_ptr(), c10::cuda::getCurrentCUDAStream()), "qgemm");
}
#endif

at::Tensor qgemm_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& scale_a, const at::Tensor& scale_b,
                      std::optional<at::ScalarType> out_dtype, const std::optional<at::Tensor>& bias,
                      int64_t row_hadamard) {
  check_on_cuda(a, "a");
  const c10::cuda::CUDAGuard guard(a.device());
  QGemmArgs g;
  at::Tensor sa = scale_a.contiguous(), sb = scale_b.contiguous();
  std::optional<at::Tensor> bc = bias ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  at::Tensor d = plan_qgemm(a, b, sa, sb, out_dtype, bc, row_hadamard, &g);
  if (d.numel() == 0) return d;
  if (g.K == 0) {
    d.zero_();
    if (bc) d.add_(*bc);
    return d;
  }
#ifdef HALO_ENABLE_SM90
  if (current_device_is_sm90()) {
    const int forced = g_qgemm_sm90_config.load(std::memory_order_relaxed);
    if (forced >= 0 && forced < qgemm_sm90_num_configs(g)) g.config = forced;
    if (row_hadamard > 1 && qgemm_sm90_unsupported_reason(g) != nullptr) {
      // no fused kernel for this row_hadamard / dtype combination: the plain sm90 GEMM to float32 (with scale_a
      // only when it is per tensor, since then it commutes with the row mix), the row Hadamard, the rest
      QGemmArgs p = g;
      p.row_hadamard = 0;
      p.config = -1;
      p.out_dtype = DType::kFloat32;
      at::Tensor acc = at::empty({g.M, g.N}, a.options().dtype(at::kFloat));
      p.d = acc.data_ptr();
      p.ldd = g.N;
      at::Tensor one;
      if (g.scale_a_per_row) {
        one = at::ones({1}, sa.options());
        p.scale_a = one.data_ptr<float>();
        p.scale_a_per_row = false;
      }
      run_qgemm_sm90(p, a);
      acc = row_hadamard_fp32(acc, row_hadamard);
      if (g.scale_a_per_row) acc.mul_(sa.reshape({-1, 1}));
      d.copy_(acc);
      return d;
    }
    run_qgemm_sm90(g, a);
    return d;
  }
#endif
  qgemm_fallback(a, b, sa, sb, bc, row_hadamard, d);
  return d;
}

void qcomm_pack_into_cuda(const at::Tensor& x, const at::Tensor& out, int64_t world, int64_t chunk, int64_t block,
                          at::ScalarType dtype, int64_t skip) {
  check_on_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  qcomm_check_pack(x, out, world, chunk, block, dtype, skip);
  check_aligned(out.data_ptr(), "out");
  check_cuda(qcomm_pack(x.data_ptr(), to_dtype(x.scalar_type()), x.numel(), static_cast<int>(world), chunk, block,
                        to_dtype(dtype), static_cast<uint8_t*>(out.data_ptr()), static_cast<int>(skip),
                        c10::cuda::getCurrentCUDAStream()),
             "qcomm_pack");
}

void qcomm_reduce_into_cuda(at::TensorList chunks, const at::Tensor& out, int64_t block, at::ScalarType dtype,
                            double post_scale, const std::optional<at::Tensor>& own, int64_t own_index) {
  check_on_cuda(out, "out");
  const c10::cuda::CUDAGuard guard(out.device());
  int64_t nb = 0;
  const QCommChunks in = qcomm_check_reduce(chunks.vec(), out, block, dtype, &nb);
  const QCommOwn o = qcomm_check_own(own, own_index, in.count, nb, block, out.device(), "qcomm_reduce");
  for (int i = 0; i < in.count; ++i)
    if (i != o.index) check_aligned(in.ptrs[i], "every chunk");
  check_aligned(out.data_ptr(), "out");
  const DType out_t = out.scalar_type() == at::kByte ? to_dtype(dtype) : to_dtype(out.scalar_type());
  check_cuda(qcomm_reduce(in, nb, block, to_dtype(dtype), static_cast<float>(post_scale), out.data_ptr(), out_t,
                          out.numel(), o, c10::cuda::getCurrentCUDAStream()),
             "qcomm_reduce");
}

void qcomm_unpack_into_cuda(at::TensorList chunks, const at::Tensor& out, int64_t chunk, int64_t block,
                            at::ScalarType dtype) {
  check_on_cuda(out, "out");
  const c10::cuda::CUDAGuard guard(out.device());
  const QCommChunks in = qcomm_check_unpack(chunks.vec(), out, chunk, block, dtype);
  for (int i = 0; i < in.count; ++i) check_aligned(in.ptrs[i], "every chunk");
  check_cuda(qcomm_unpack(in, chunk, block, to_dtype(dtype), out.data_ptr(), to_dtype(out.scalar_type()),
                          out.numel(), c10::cuda::getCurrentCUDAStream()),
             "qcomm_unpack");
}

void qcomm_pack_scatter_cuda(const at::Tensor& x, at::TensorList outs, int64_t chunk, int64_t block,
                             at::ScalarType dtype, int64_t skip) {
  check_on_cuda(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const QCommOuts o = qcomm_check_pack_scatter(x, outs.vec(), chunk, block, dtype, skip);
  for (int i = 0; i < o.count; ++i)
    if (i != skip) check_aligned(o.ptrs[i], "every output chunk");
  check_cuda(qcomm_pack_scatter(x.data_ptr(), to_dtype(x.scalar_type()), x.numel(), o.count, chunk, block,
                                to_dtype(dtype), o, static_cast<int>(skip), c10::cuda::getCurrentCUDAStream()),
             "qcomm_pack_scatter");
}

void qcomm_reduce_broadcast_cuda(at::TensorList chunks, at::TensorList outs, int64_t block, at::ScalarType dtype,
                                 double post_scale, const std::optional<at::Tensor>& own, int64_t own_index,
                                 const std::optional<at::Tensor>& deq) {
  TORCH_CHECK_VALUE(!outs.empty(), "halo.qcomm_reduce_broadcast: needs at least one output chunk");
  check_on_cuda(outs[0], "outs");
  const c10::cuda::CUDAGuard guard(outs[0].device());
  int64_t nb = 0;
  const QCommChunks in = qcomm_check_reduce(chunks.vec(), outs[0], block, dtype, &nb);
  const QCommOuts o = qcomm_check_outs(outs.vec(), nb * (block + 4), outs[0].device(), "qcomm_reduce_broadcast");
  const QCommOwn w = qcomm_check_own(own, own_index, in.count, nb, block, outs[0].device(), "qcomm_reduce_broadcast");
  for (int i = 0; i < in.count; ++i)
    if (i != w.index) check_aligned(in.ptrs[i], "every chunk");
  for (int i = 0; i < o.count; ++i) check_aligned(o.ptrs[i], "every output chunk");
  const QCommDeq d = qcomm_check_deq(deq, nb, block, outs[0].device(), "qcomm_reduce_broadcast");
  check_cuda(qcomm_reduce_broadcast(in, nb, block, to_dtype(dtype), static_cast<float>(post_scale), o, w, d,
                                    c10::cuda::getCurrentCUDAStream()),
             "qcomm_reduce_broadcast");
}

void qcomm_reduce_broadcast_unpack_cuda(at::TensorList chunks, at::TensorList outs, at::TensorList gathered,
                                        const at::Tensor& flags, at::TensorList peer_flags, int64_t epoch,
                                        const at::Tensor& out, int64_t chunk, int64_t block, at::ScalarType dtype,
                                        double post_scale, const at::Tensor& own, int64_t rank) {
  check_on_cuda(out, "out");
  const c10::cuda::CUDAGuard guard(out.device());
  const QCommReduceUnpackArgs a = qcomm_check_reduce_unpack(chunks.vec(), outs.vec(), gathered.vec(), flags,
                                                            peer_flags.vec(), epoch, out, chunk, block, dtype, own,
                                                            rank);
  for (int i = 0; i < a.in.count; ++i) {
    if (i != a.g.rank) check_aligned(a.in.ptrs[i], "every chunk");
    check_aligned(a.g.chunks.ptrs[i], "every gathered chunk");
  }
  for (int i = 0; i < a.outs.count; ++i) check_aligned(a.outs.ptrs[i], "every output chunk");
  check_cuda(qcomm_reduce_broadcast_unpack(a.in, a.nb, block, to_dtype(dtype), static_cast<float>(post_scale), a.outs,
                                           a.own, a.g, c10::cuda::getCurrentCUDAStream()),
             "qcomm_reduce_broadcast_unpack");
}

}  // namespace

/*! \brief Which implementation qgemm runs on the current CUDA device ("cutlass_sm90" or "fallback_fp32_matmul"). */
std::string qgemm_cuda_backend() {
#ifdef HALO_ENABLE_SM90
  if (current_device_is_sm90()) return "cutlass_sm90";
#endif
  return "fallback_fp32_matmul";
}

#ifdef HALO_ENABLE_SM90
void set_qgemm_sm90_config(int config) { g_qgemm_sm90_config.store(config < 0 ? -1 : config); }
int qgemm_sm90_config() { return g_qgemm_sm90_config.load(); }
#endif

TORCH_LIBRARY_IMPL(halo, CUDA, m) {
  m.impl("hadamard", &hadamard_cuda);
  m.impl("quantize", &quantize_cuda);
  m.impl("dequantize", &dequantize_cuda);
  m.impl("hadamard_quantize", &hadamard_quantize_cuda);
  m.impl("ey_quantize", &ey_quantize_cuda);
  m.impl("qgemm", &qgemm_cuda);
  m.impl("hadamard_qgemm", &hadamard_qgemm_composite);
  m.impl("linear_forward", &linear_forward);
  m.impl("linear_backward", &linear_backward);
  m.impl("qcomm_pack_into", &qcomm_pack_into_cuda);
  m.impl("qcomm_reduce_into", &qcomm_reduce_into_cuda);
  m.impl("qcomm_unpack_into", &qcomm_unpack_into_cuda);
  m.impl("qcomm_pack_scatter", &qcomm_pack_scatter_cuda);
  m.impl("qcomm_reduce_broadcast", &qcomm_reduce_broadcast_cuda);
  m.impl("qcomm_reduce_broadcast_unpack", &qcomm_reduce_broadcast_unpack_cuda);
}

}  // namespace halo::glue
