/*!
 * \file qcomm.cpp
 * \brief CPU reference of the block-quantized two-shot collectives (kernels/qcomm.h): the same packed format,
 * quantization rule and float32 arithmetic order as the CUDA kernels (acc = acc + code * scale in chunk order,
 * separately rounded; the owner's own contribution, when given, added unquantized at its position), so CPU and
 * CUDA results agree bit for bit.
 */
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cpu/cpu_ops.h"
#include "cpu/dtype_utils.h"

namespace halo::cpu {
namespace {

/*! \brief Quantizes v[0..block) into codes at q and its scale at *scale. */
void quantize_block(const float* v, int64_t block, DType qt, uint8_t* q, float* scale) {
  float amax = 0.f;
  for (int64_t i = 0; i < block; ++i) amax = std::max(amax, std::fabs(v[i]));
  const QuantScale qs(amax, qt);
  for (int64_t i = 0; i < block; ++i) store_quant(q, qt, i, v[i], qs.inv);
  std::memcpy(scale, &qs.scale, sizeof(float));
}

float scale_of(const uint8_t* chunk, int64_t nb, int64_t block, int64_t b) {
  float s;
  std::memcpy(&s, chunk + nb * block + 4 * b, sizeof(float));
  return s;
}

}  // namespace

void qcomm_pack(const void* x, DType xt, int64_t n, int world, int64_t chunk, int64_t block, DType qt, uint8_t* out,
                int skip) {
  const int64_t nb = qcomm_blocks(chunk, block), cb = nb * (block + 4);
  std::vector<float> v(block);
  for (int c = 0; c < world; ++c) {
    if (c == skip) continue;  // the own chunk: its bytes stay untouched
    const int64_t valid = std::min(chunk, std::max<int64_t>(n - c * chunk, 0));
    for (int64_t b = 0; b < nb; ++b) {
      for (int64_t i = 0; i < block; ++i) {
        const int64_t j = b * block + i;
        v[i] = j < valid ? load_float(x, xt, c * chunk + j) : 0.f;
      }
      quantize_block(v.data(), block, qt, out + c * cb + b * block,
                     reinterpret_cast<float*>(out + c * cb + nb * block) + b);
    }
  }
}

void qcomm_reduce(const QCommChunks& in, int64_t nb, int64_t block, DType qt, float post_scale, void* out, DType out_t,
                  int64_t out_n, const QCommOwn& own) {
  std::vector<float> acc(block);
  for (int64_t b = 0; b < nb; ++b) {
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int r = 0; r < in.count; ++r) {
      if (r == own.index) {  // the owner's input, unquantized (exact float32 conversion; zeros past own.n)
        for (int64_t i = 0; i < block; ++i) {
          const int64_t j = b * block + i;
          acc[i] = acc[i] + (j < own.n ? load_float(own.x, own.t, j) : 0.f);
        }
        continue;
      }
      const uint8_t* p = in.at(r);
      const float s = scale_of(p, nb, block, b);
      for (int64_t i = 0; i < block; ++i) {
        const float prod = load_float(p + b * block, qt, i) * s;  // rounded product, then rounded sum (no FMA)
        acc[i] = acc[i] + prod;
      }
    }
    if (post_scale != 1.0f)
      for (auto& a : acc) a = a * post_scale;
    if (out_t == qt) {
      uint8_t* o = static_cast<uint8_t*>(out);
      quantize_block(acc.data(), block, qt, o + b * block, reinterpret_cast<float*>(o + nb * block) + b);
    } else {
      for (int64_t i = 0; i < block; ++i)
        if (b * block + i < out_n) store_float(out, out_t, b * block + i, acc[i]);
    }
  }
}

void qcomm_unpack(const QCommChunks& in, int64_t chunk, int64_t block, DType qt, void* out, DType out_t, int64_t n) {
  const int64_t nb = qcomm_blocks(chunk, block);
  for (int c = 0; c < in.count; ++c) {
    const uint8_t* p = in.at(c);
    const int64_t valid = std::min(chunk, std::max<int64_t>(n - c * chunk, 0));
    for (int64_t j = 0; j < valid; ++j) {
      const int64_t b = j / block;
      store_float(out, out_t, c * chunk + j, load_float(p, qt, j) * scale_of(p, nb, block, b));
    }
  }
}

void qcomm_pack_scatter(const void* x, DType xt, int64_t n, int world, int64_t chunk, int64_t block, DType qt,
                        const QCommOuts& outs, int skip) {
  const int64_t cb = qcomm_chunk_bytes(chunk, block);
  std::vector<uint8_t> tmp(static_cast<size_t>(world * cb));
  qcomm_pack(x, xt, n, world, chunk, block, qt, tmp.data(), skip);
  for (int c = 0; c < world; ++c)
    if (cb && c != skip) std::memcpy(outs.ptrs[c], tmp.data() + c * cb, static_cast<size_t>(cb));
}

void qcomm_reduce_broadcast(const QCommChunks& in, int64_t nb, int64_t block, DType qt, float post_scale,
                            const QCommOuts& outs, const QCommOwn& own, const QCommDeq& deq) {
  const int64_t cb = nb * (block + 4);
  std::vector<uint8_t> tmp(static_cast<size_t>(cb));
  qcomm_reduce(in, nb, block, qt, post_scale, tmp.data(), qt, 0, own);  // reads own before deq may overwrite it
  for (int o = 0; o < outs.count; ++o)
    if (cb) std::memcpy(outs.ptrs[o], tmp.data(), static_cast<size_t>(cb));
  if (deq.out != nullptr && deq.n > 0) {
    QCommChunks one;
    one.base = tmp.data();
    one.stride = cb;
    one.count = 1;
    qcomm_unpack(one, nb * block, block, qt, deq.out, deq.t, deq.n);
  }
}

void qcomm_reduce_broadcast_unpack(const QCommChunks& in, int64_t nb, int64_t block, DType qt, float post_scale,
                                   const QCommOuts& outs, const QCommOwn& own, const QCommGather& g,
                                   double timeout_s) {
  const int world = g.chunks.count;
  const int64_t tiles = qcomm_flag_tiles(nb, block);
  const int64_t es = g.t == DType::kFloat32 ? 4 : 2;  // bytes per output element (float32 / float16 / bfloat16)
  QCommDeq deq;
  deq.t = g.t;
  deq.n = std::min(g.chunk, std::max<int64_t>(g.n - int64_t(g.rank) * g.chunk, 0));
  deq.out = deq.n > 0 ? static_cast<uint8_t*>(g.out) + int64_t(g.rank) * g.chunk * es : nullptr;
  qcomm_reduce_broadcast(in, nb, block, qt, post_scale, outs, own, deq);
  for (int o = 0; o < g.peer_flags.count; ++o)
    for (int64_t t = 0; t < tiles; ++t) __atomic_store_n(g.peer_flags.ptrs[o] + t, g.epoch, __ATOMIC_RELEASE);
  const auto start = std::chrono::steady_clock::now();
  for (int s = 0; s < world; ++s) {
    if (s == g.rank) continue;
    for (int64_t t = 0; t < tiles; ++t) {
      const uint32_t* f = g.flags + int64_t(s) * g.flag_stride + t;
      while (__atomic_load_n(f, __ATOMIC_ACQUIRE) != g.epoch) {
        if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > timeout_s)
          throw std::runtime_error("halo.qcomm_reduce_broadcast_unpack: rank " + std::to_string(s) +
                                   " did not signal its reduced chunk (flag tile " + std::to_string(t) + ")");
        std::this_thread::yield();
      }
    }
    QCommChunks one;
    one.base = g.chunks.at(s);
    one.stride = 0;
    one.count = 1;
    const int64_t valid = std::min(g.chunk, std::max<int64_t>(g.n - int64_t(s) * g.chunk, 0));
    if (valid > 0)
      qcomm_unpack(one, g.chunk, block, qt, static_cast<uint8_t*>(g.out) + int64_t(s) * g.chunk * es, g.t,
                   valid);
  }
}

}  // namespace halo::cpu
