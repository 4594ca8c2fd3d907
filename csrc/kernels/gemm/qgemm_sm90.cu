/*!
 * \file qgemm_sm90.cu
 * \brief Dispatcher of the sm90a 8-bit GEMMs: argument checks, configuration tables, shape heuristic, launch.
 *
 * No CUTLASS here: the kernels are reached through the QGemmSm90Kernel registry (gemm_sm90_kernels.h), each
 * compiled in its own translation unit.
 */
#ifdef HALO_ENABLE_SM90
#include <atomic>
#include <climits>
#include <cstdint>
#include <cstddef>

#include "../gemm.h"
#include "gemm_sm90_kernels.h"

namespace halo {
namespace {

using sm90::DeviceInfo;
using sm90::QGemmSm90Kernel;

/*!
 * \brief One configuration of a family, with what the shape heuristic knows of it.
 *
 * speed is the configuration's throughput relative to the family's fastest one on problems of many full waves
 * (measured on H100 SXM); 0 keeps the configuration out of the heuristic (it is only run when asked for).
 */
struct Config {
  const QGemmSm90Kernel* kernel;
  float speed;
};

/*! \brief The configurations for one (A, B, D) dtype combination; config indices are positions in this list. */
struct Family {
  DType a, b, out;
  const Config* configs;
  int num_configs;
};

// Order = config index. The large-tile cooperative kernel comes first; the 128x128 pingpong kernel wins where
// 128x256 tiles leave SMs idle (small M*N); the "fp32 accum" float8 kernels are run only when asked for.
const Config kI8Bf16[] = {
    {&sm90::kQGemmI8Bf16_128x256_C2x1_Coop, 1.0f},
    {&sm90::kQGemmI8Bf16_128x128_C1x2_Pingpong, 0.9f},
};
const Config kI8F16[] = {{&sm90::kQGemmI8F16_128x256_C2x1_Coop, 1.0f}};
const Config kI8F32[] = {{&sm90::kQGemmI8F32_128x256_C2x1_Coop, 1.0f}};
const Config kE4m3Bf16[] = {
    {&sm90::kQGemmE4m3Bf16_128x256_C2x1_CoopFastAcc, 1.0f},
    {&sm90::kQGemmE4m3Bf16_128x128_C1x2_PingpongFastAcc, 0.9f},
    {&sm90::kQGemmE4m3Bf16_128x128_C1x2_Coop, 0.0f},
};
const Config kE4m3F16[] = {{&sm90::kQGemmE4m3F16_128x256_C2x1_CoopFastAcc, 1.0f}};
const Config kE4m3F32[] = {{&sm90::kQGemmE4m3F32_128x128_C1x2_Coop, 1.0f}};
const Config kE5m2E4m3Bf16[] = {
    {&sm90::kQGemmE5m2E4m3Bf16_128x256_C2x1_CoopFastAcc, 1.0f},
    {&sm90::kQGemmE5m2E4m3Bf16_128x128_C1x2_PingpongFastAcc, 0.9f},
    {&sm90::kQGemmE5m2E4m3Bf16_128x128_C1x2_Coop, 0.0f},
};
const Config kE5m2E4m3F16[] = {{&sm90::kQGemmE5m2E4m3F16_128x256_C2x1_CoopFastAcc, 1.0f}};
const Config kE5m2E4m3F32[] = {{&sm90::kQGemmE5m2E4m3F32_128x128_C1x2_Coop, 1.0f}};

// QGemmArgs::row_hadamard = 256: one kernel per dtype pair (the transposed problem with ColHadamardEpilogue).
const Config kI8Bf16RowHad[] = {{&sm90::kQGemmI8Bf16_128x256_C2x1_Coop_RowHad256, 1.0f}};
const Config kE4m3Bf16RowHad[] = {{&sm90::kQGemmE4m3Bf16_128x256_C2x1_CoopFastAcc_RowHad256, 1.0f}};
constexpr int64_t kRowHadamardBlock = 256;

template <size_t N>
constexpr Family family(DType a, DType b, DType out, const Config (&configs)[N]) {
  return Family{a, b, out, configs, static_cast<int>(N)};
}

const Family kFamilies[] = {
    family(DType::kInt8, DType::kInt8, DType::kBFloat16, kI8Bf16),
    family(DType::kInt8, DType::kInt8, DType::kFloat16, kI8F16),
    family(DType::kInt8, DType::kInt8, DType::kFloat32, kI8F32),
    family(DType::kFloat8E4M3, DType::kFloat8E4M3, DType::kBFloat16, kE4m3Bf16),
    family(DType::kFloat8E4M3, DType::kFloat8E4M3, DType::kFloat16, kE4m3F16),
    family(DType::kFloat8E4M3, DType::kFloat8E4M3, DType::kFloat32, kE4m3F32),
    family(DType::kFloat8E5M2, DType::kFloat8E4M3, DType::kBFloat16, kE5m2E4m3Bf16),
    family(DType::kFloat8E5M2, DType::kFloat8E4M3, DType::kFloat16, kE5m2E4m3F16),
    family(DType::kFloat8E5M2, DType::kFloat8E4M3, DType::kFloat32, kE5m2E4m3F32),
};

const Family kRowHadFamilies[] = {
    family(DType::kInt8, DType::kInt8, DType::kBFloat16, kI8Bf16RowHad),
    family(DType::kFloat8E4M3, DType::kFloat8E4M3, DType::kBFloat16, kE4m3Bf16RowHad),
};

bool has_row_hadamard(const QGemmArgs& args) { return args.row_hadamard > 1; }

/*! \brief The family of `table` with args' dtypes, nullptr if none. */
template <size_t N>
const Family* match_family(const Family (&table)[N], const QGemmArgs& args) {
  for (const Family& f : table) {
    if (f.a == args.a_dtype && f.b == args.b_dtype && f.out == args.out_dtype) return &f;
  }
  return nullptr;
}

/*! \brief The family of args' dtypes (and row_hadamard variant), nullptr if none. */
const Family* find_family(const QGemmArgs& args) {
  return has_row_hadamard(args) ? match_family(kRowHadFamilies, args) : match_family(kFamilies, args);
}

/*! \brief Bytes of one element of an output dtype (0 for the others). */
int64_t out_bytes(DType t) {
  return t == DType::kFloat32 ? 4 : (t == DType::kBFloat16 || t == DType::kFloat16) ? 2 : 0;
}

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

bool is_8bit_pair(DType a, DType b) {
  return (a == DType::kInt8 && b == DType::kInt8) ||
         ((a == DType::kFloat8E4M3 || a == DType::kFloat8E5M2) && b == DType::kFloat8E4M3);
}

/*! \brief Device and SM count of the current device; the SM count is queried once per device. */
cudaError_t current_device(DeviceInfo* info) {
  constexpr int kMaxCachedDevices = 64;
  static std::atomic<int> sm_counts[kMaxCachedDevices] = {};
  if (cudaError_t err = cudaGetDevice(&info->device); err != cudaSuccess) return err;
  const bool cached = info->device >= 0 && info->device < kMaxCachedDevices;
  info->sm_count = cached ? sm_counts[info->device].load(std::memory_order_relaxed) : 0;
  if (info->sm_count > 0) return cudaSuccess;
  if (cudaError_t err = cudaDeviceGetAttribute(&info->sm_count, cudaDevAttrMultiProcessorCount, info->device);
      err != cudaSuccess) {
    return err;
  }
  if (cached) sm_counts[info->device].store(info->sm_count, std::memory_order_relaxed);
  return cudaSuccess;
}

/*!
 * \brief Configuration for args by a wave model: the persistent kernels run the ceil(M/tm) * ceil(N/tn) output
 * tiles in ceil(tiles / #SMs) rounds; each round costs tm * tn / speed. Ties go to the earlier configuration.
 */
int pick_config(const Family& f, const QGemmArgs& args, int sm_count) {
  int best = 0;
  double best_cost = 0.0;
  for (int i = 0; i < f.num_configs; ++i) {
    const Config& c = f.configs[i];
    if (c.speed <= 0.0f) continue;
    const int64_t tiles = ((args.M + c.kernel->tile_m - 1) / c.kernel->tile_m) *
                          ((args.N + c.kernel->tile_n - 1) / c.kernel->tile_n);
    const int64_t rounds = (tiles + sm_count - 1) / sm_count;
    const double cost = static_cast<double>(rounds) * c.kernel->tile_m * c.kernel->tile_n / c.speed;
    if (best_cost == 0.0 || cost < best_cost) {
      best = i;
      best_cost = cost;
    }
  }
  return best;
}

}  // namespace

const char* qgemm_sm90_unsupported_reason(const QGemmArgs& args) {
  if (!is_8bit_pair(args.a_dtype, args.b_dtype)) {
    return "qgemm_sm90: unsupported operand dtypes (supported A x B: int8 x int8, float8_e4m3fn x float8_e4m3fn, "
           "float8_e5m2 x float8_e4m3fn)";
  }
  if (args.row_hadamard < 0 || (has_row_hadamard(args) && args.row_hadamard != kRowHadamardBlock)) {
    return "qgemm_sm90: row_hadamard must be 0, 1 or 256";
  }
  const Family* family = find_family(args);
  if (family == nullptr && has_row_hadamard(args)) {
    return "qgemm_sm90: row_hadamard = 256 needs int8 x int8 or float8_e4m3fn x float8_e4m3fn with bfloat16 output";
  }
  if (family == nullptr) return "qgemm_sm90: unsupported output dtype (supported: bfloat16, float16, float32)";
  if (has_row_hadamard(args)) {
    if (args.M % kRowHadamardBlock != 0) return "qgemm_sm90: row_hadamard = 256 needs M % 256 == 0";
    if (args.bias != nullptr) return "qgemm_sm90: row_hadamard does not take a bias";
  }
  if (args.config < -1 || args.config >= family->num_configs) {
    return "qgemm_sm90: config out of range (valid: -1 for the heuristic, or 0..qgemm_sm90_num_configs()-1)";
  }
  if (args.M < 0 || args.N < 0 || args.K <= 0) return "qgemm_sm90: need M >= 0, N >= 0 and K > 0";
  if (args.M > INT_MAX || args.N > INT_MAX || args.K > INT_MAX) return "qgemm_sm90: M, N and K must be < 2^31";
  if (args.M == 0 || args.N == 0) return nullptr;  // empty output: nothing to run

  const int64_t d_bytes = out_bytes(args.out_dtype);
  constexpr int64_t kMaxStrideBytes = int64_t(1) << 40;  // TMA descriptor limit
  if (args.K % 16 != 0) return "qgemm_sm90: K must be a multiple of 16 (TMA needs 16-byte rows of A and B)";
  if (args.lda < args.K || args.ldb < args.K) return "qgemm_sm90: need lda >= K and ldb >= K";
  if (args.ldd < args.N) return "qgemm_sm90: need ldd >= N";
  if (args.lda >= kMaxStrideBytes || args.ldb >= kMaxStrideBytes || args.ldd >= kMaxStrideBytes / d_bytes) {
    return "qgemm_sm90: row strides must be < 2^40 bytes";
  }
  if (args.lda % 16 != 0 || args.ldb % 16 != 0) {
    return "qgemm_sm90: lda and ldb must be multiples of 16 (TMA needs 16-byte aligned row strides)";
  }
  if ((args.N * d_bytes) % 16 != 0 || (args.ldd * d_bytes) % 16 != 0) {
    return "qgemm_sm90: N and ldd must be multiples of 16 bytes of the output dtype (8 for bf16/fp16, 4 for fp32)";
  }
  if (args.a == nullptr || args.b == nullptr || args.d == nullptr) return "qgemm_sm90: null A, B or D pointer";
  if (!aligned(args.a, 16) || !aligned(args.b, 16) || !aligned(args.d, 16)) {
    return "qgemm_sm90: A, B and D must be 16-byte aligned (TMA)";
  }
  if (args.scale_a == nullptr || args.scale_b == nullptr) return "qgemm_sm90: null scale_a or scale_b pointer";
  if (!aligned(args.scale_a, sizeof(float)) || !aligned(args.scale_b, sizeof(float))) {
    return "qgemm_sm90: scale_a and scale_b must be 4-byte aligned";
  }
  if (args.bias != nullptr && !aligned(args.bias, static_cast<uintptr_t>(d_bytes))) {
    return "qgemm_sm90: bias must be aligned to its element size";
  }
  return nullptr;
}

size_t qgemm_sm90_workspace_size(const QGemmArgs& args) {
  if (qgemm_sm90_unsupported_reason(args) != nullptr || args.M == 0 || args.N == 0) return 0;
  DeviceInfo dev;
  if (current_device(&dev) != cudaSuccess) return 0;
  const Family& family = *find_family(args);
  const int config = args.config >= 0 ? args.config : pick_config(family, args, dev.sm_count);
  return family.configs[config].kernel->workspace_size(args, dev);
}

int qgemm_sm90_num_configs(const QGemmArgs& args) {
  const Family* family = find_family(args);
  return family != nullptr ? family->num_configs : 0;
}

const char* qgemm_sm90_config_name(const QGemmArgs& args, int config) {
  const Family* family = find_family(args);
  if (family == nullptr || config < 0 || config >= family->num_configs) return nullptr;
  return family->configs[config].kernel->name;
}

int qgemm_sm90_heuristic(const QGemmArgs& args) {
  const Family* family = find_family(args);
  if (family == nullptr) return -1;
  DeviceInfo dev;
  if (current_device(&dev) != cudaSuccess) return 0;  // no device to size the waves for: the first configuration
  return pick_config(*family, args, dev.sm_count);
}

cudaError_t qgemm_sm90(const QGemmArgs& args, void* workspace, cudaStream_t stream) {
  if (qgemm_sm90_unsupported_reason(args) != nullptr) return cudaErrorInvalidValue;
  if (args.M == 0 || args.N == 0) return cudaSuccess;
  DeviceInfo dev;
  if (cudaError_t err = current_device(&dev); err != cudaSuccess) return err;
  const Family& family = *find_family(args);
  const int config = args.config >= 0 ? args.config : pick_config(family, args, dev.sm_count);
  return family.configs[config].kernel->run(args, dev, workspace, stream);
}

}  // namespace halo

#endif  // HALO_ENABLE_SM90
