/*!
 * \file gemm_sm90_impl.cuh
 * \brief CUTLASS 3.x (sm90a: TMA + warp-specialized wgmma) 8-bit GEMM with the scales applied in the epilogue.
 *
 * One template, QGemmSm90, describes a whole kernel configuration; each qgemm_sm90_*.cu instantiates one of them
 * and exposes it to the dispatcher as a QGemmSm90Kernel (make_qgemm_sm90_kernel).
 *
 * Problem (all 8-bit operands K-major, "TN"):
 *   D[M,N] = convert( scale_b[n] * (scale_a[m] * float(acc[m,n])) + bias[n] ),  acc = A[M,K] B[N,K]^T
 * acc is int32 for int8 x int8 and float32 for float8 (e4m3 x e4m3, e5m2 x e4m3).
 *
 * Epilogue visitor tree (EVT), evaluated per accumulator fragment in registers after the mainloop:
 *
 *   Sm90Compute<homogeneous_multiply_add, ElementD, float>          d = sb * t + bias   (one FMA, then convert)
 *   |- Sm90RowBroadcast<float, Stride<_0, bool, int64_t>>           sb = scale_b[n] or scale_b[0]
 *   |- Sm90Compute<multiplies, float, float>                         t = sa * float(acc)
 *   |  |- Sm90ColBroadcast<float, Stride<bool, _0, int64_t>>        sa = scale_a[m] or scale_a[0]
 *   |  `- Sm90AccFetch                                               acc (int32 or float)
 *   `- Sm90RowBroadcast<ElementD, Stride<_0, _1, int64_t>>          bias[n], 0 where the pointer is null
 *
 * The scale broadcasts use CUTLASS's "dynamic broadcast": the bool stride of the broadcast mode selects at run
 * time between a vector (true: one value per row of A / row of B) and a scalar (false: element 0 for all), so one
 * kernel serves per-tensor and per-row scales; the scales are read on the device only (no host sync). The bias
 * broadcast falls back to its null_default (0) when the bias pointer is null. Sm90Compute converts every input to
 * float first, so the int32 accumulator of the int8 kernels is converted to float before it is scaled (exact
 * for |acc| <= 2^24, rounded to 24 significant bits beyond, i.e. a relative error <= 2^-24).
 *
 * Row-Hadamard variant (kRowHadamardLog2 > 0, QGemmArgs::row_hadamard = 2^kRowHadamardLog2): the kernel computes the
 * transposed problem D^T[N,M] = B A^T, so that the rows of D (HALO-2: the tokens) run along the N mode of the CTA
 * tile, where one warp holds all 256 columns of its accumulator rows; ColHadamardEpilogue mixes them with H_b in
 * registers before the EVT above runs, and the TMA store writes D^T column-major, i.e. D row-major. The scales swap
 * roles (scale_b per row of the kernel's output, scale_a per column).
 *
 * The kernel is persistent (PersistentTileSchedulerSm90, grid = #SMs, default rasterization), D is written by TMA
 * stores, C is void (no source read). The launcher calls cudaLaunchKernelEx with the cluster dimension itself
 * rather than GemmUniversalAdapter, which sets function attributes on every call and prints launch errors unless
 * NDEBUG is defined; the only other CUTLASS host code that prints or asserts is the TMA descriptor setup on an
 * invalid tensor, which the dispatcher's argument checks rule out. GemmKernel::can_implement is checked here too.
 */
#pragma once
#ifdef HALO_ENABLE_SM90

#include <atomic>
#include <cstdint>
#include <type_traits>
#include <utility>

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/device_kernel.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_visitor_compute_tma_warpspecialized.hpp>
#include <cutlass/epilogue/fusion/sm90_visitor_load_tma_warpspecialized.hpp>
#include <cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>
#include <cutlass/kernel_hardware_info.h>
#include <cutlass/numeric_types.h>

#include "../gemm.h"
#include "gemm_sm90_kernels.h"

namespace halo {
namespace sm90 {

/*! \brief Mainloop schedules used by the configurations (CUTLASS kernel schedule tags). */
namespace schedule {
using Cooperative = cutlass::gemm::KernelTmaWarpSpecializedCooperative;        //!< 2 consumer warpgroups, one tile
using Pingpong = cutlass::gemm::KernelTmaWarpSpecializedPingpong;              //!< 2 consumer warpgroups, own tiles
using CooperativeFP8Fast = cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum;  //!< fp8, no promotion
using PingpongFP8Fast = cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum;        //!< fp8, no promotion
}  // namespace schedule

/*! \brief The CUDA error reported for a failed CUTLASS status. */
inline cudaError_t to_cuda_error(cutlass::Status status) {
  switch (status) {
    case cutlass::Status::kSuccess:
      return cudaSuccess;
    case cutlass::Status::kErrorNotSupported:
    case cutlass::Status::kErrorArchMismatch:
      return cudaErrorNotSupported;
    case cutlass::Status::kErrorInsufficientDriver:
      return cudaErrorInsufficientDriver;
    case cutlass::Status::kErrorMemoryAllocation:
      return cudaErrorMemoryAllocation;
    case cutlass::Status::kErrorInternal:
      return cudaErrorUnknown;
    default:  // misaligned operand, invalid problem, null workspace, invalid data type / layout
      return cudaErrorInvalidValue;
  }
}

/*!
 * \brief CollectiveEpilogue Base preceded by a column Hadamard of the accumulators: every group of 2^kLog2 columns
 * of the CTA tile is multiplied by the unnormalized Sylvester matrix H (x -> x H), in float32 registers, and Base's
 * epilogue then runs on the float32 result.
 *
 * Needs a warpgroup MMA atom 64 x 256 with the whole tile in one atom per warpgroup (accumulator fragment
 * ((2,2,32),1,1), GMMA::CLayout_64x256): a thread holds rows g and g+8 (g = lane / 4) of its warp's 16 rows and, of
 * each, the columns 8j + 2t + {0, 1} (t = lane % 4, j < 32), value index v0 + 2 v1 + 4 j. Column bit 0 is the
 * register pair v0, bits 1-2 are lane bits 0-1 (one shuffle per value each), bits 3-7 are the bits of j. Cost per
 * thread and tile: 128 conversions, kLog2 x 128 adds, 2 x 128 shuffles.
 */
template <class Base, int kLog2>
struct ColHadamardEpilogue : Base {
  static_assert(kLog2 >= 1 && kLog2 <= 8, "column Hadamard of 2..256 columns");
  using Base::Base;

  template <class ProblemShapeMNKL, class TileShapeMNK, class TileCoordMNKL, class AccEngine, class AccLayout,
            class TiledMma>
  CUTLASS_DEVICE auto store(typename Base::LoadPipeline load_pipeline,
                            typename Base::LoadPipelineState load_pipe_consumer_state,
                            typename Base::StorePipeline store_pipeline,
                            typename Base::StorePipelineState store_pipe_producer_state,
                            ProblemShapeMNKL problem_shape_mnkl, TileShapeMNK tile_shape_MNK,
                            TileCoordMNKL tile_coord_mnkl, cute::Tensor<AccEngine, AccLayout> accumulators,
                            TiledMma tiled_mma, int thread_idx, typename Base::TensorStorage& shared_tensors,
                            int subtile_idx = -1) {
    using namespace cute;
    static_assert(is_static<AccLayout>::value, "static accumulator layout");
    static_assert(std::is_same_v<decltype(shape(AccLayout{})),
                                 decltype(make_shape(make_shape(_2{}, _2{}, _32{}), _1{}, _1{}))>,
                  "ColHadamardEpilogue: expects one 64x256 wgmma accumulator per warpgroup");
    static_assert(size<1>(TileShapeMNK{}) == 256, "ColHadamardEpilogue: expects 256-column tiles");

    Tensor acc = make_fragment_like<float>(accumulators);
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < 128; ++i) acc(i) = static_cast<float>(accumulators(i));
    // column bit 0: the register pair
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < 128; i += 2) {
      const float x = acc(i), y = acc(i + 1);
      acc(i) = x + y;
      acc(i + 1) = x - y;
    }
    // column bits 3 .. kLog2-1: bits 0 .. kLog2-4 of j, value index stride 4 << k
    CUTLASS_PRAGMA_UNROLL
    for (int k = 0; k < kLog2 - 3; ++k) {
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < 128; ++i) {
        if ((i & (4 << k)) == 0) {
          const float x = acc(i), y = acc(i + (4 << k));
          acc(i) = x + y;
          acc(i + (4 << k)) = x - y;
        }
      }
    }
    // column bits 1, 2: lane bits 0, 1 (the lane with the bit clear keeps x + y, the other x - y)
    const int lane = static_cast<int>(threadIdx.x % 32);
    CUTLASS_PRAGMA_UNROLL
    for (int lb = 1; lb <= 2; ++lb) {
      if (lb < kLog2) {
        const float sign = (lane & lb) ? -1.0f : 1.0f;
        CUTLASS_PRAGMA_UNROLL
        for (int i = 0; i < 128; ++i) {
          const float other = __shfl_xor_sync(0xffffffffu, acc(i), lb);
          acc(i) = fmaf(sign, acc(i), other);
        }
      }
    }
    return Base::store(load_pipeline, load_pipe_consumer_state, store_pipeline, store_pipe_producer_state,
                       problem_shape_mnkl, tile_shape_MNK, tile_coord_mnkl, acc, tiled_mma, thread_idx,
                       shared_tensors, subtile_idx);
  }
};

/*!
 * \brief One sm90a 8-bit GEMM kernel configuration.
 *
 * \tparam ElementA_       int8_t, cutlass::float_e4m3_t or cutlass::float_e5m2_t (row-major [M, K])
 * \tparam ElementB_       int8_t or cutlass::float_e4m3_t (row-major [N, K], i.e. column-major K x N)
 * \tparam ElementD_       cutlass::bfloat16_t, cutlass::half_t or float (row-major [M, N])
 * \tparam TileShape_      CTA tile (cute::Shape<_M, _N, _K>); K = 128 bytes = one 128B-swizzled smem row
 * \tparam ClusterShape_   thread block cluster (cute::Shape<_CM, _CN, _1>); TMA multicasts along the cluster
 * \tparam KernelSchedule_ one of the schedule:: tags. For float8, Cooperative / Pingpong accumulate with the
 *                         "promotion" mainloop (wgmma partial sums added into float32 registers every 128 of K);
 *                         the FP8Fast ones accumulate in the tensor core for the whole K (faster, less exact).
 * \tparam kRowHadamardLog2 0: plain; k > 0: QGemmArgs::row_hadamard = 2^k (transposed problem, ColHadamardEpilogue,
 *                         column-major D; see the file comment). ElementA_/ElementB_ are then the dtypes of the
 *                         kernel's operands, i.e. of args.b and args.a.
 */
template <class ElementA_, class ElementB_, class ElementD_, class TileShape_, class ClusterShape_,
          class KernelSchedule_, int kRowHadamardLog2 = 0>
struct QGemmSm90 {
  using ElementA = ElementA_;
  using ElementB = ElementB_;
  using ElementD = ElementD_;
  using TileShape = TileShape_;
  using ClusterShape = ClusterShape_;
  using KernelSchedule = KernelSchedule_;

  static constexpr bool kIsInt8 = std::is_same_v<ElementA, int8_t>;
  static_assert(kIsInt8 == std::is_same_v<ElementB, int8_t>, "int8 A needs int8 B");
  static_assert(sizeof(ElementA) == 1 && sizeof(ElementB) == 1, "8-bit operands only");

  using ElementAccumulator = std::conditional_t<kIsInt8, int32_t, float>;
  using ElementCompute = float;
  using ElementScale = float;
  using ElementBias = ElementD;

  static constexpr bool kCooperative = std::is_base_of_v<schedule::Cooperative, KernelSchedule>;
  using EpilogueSchedule = std::conditional_t<kCooperative, cutlass::epilogue::TmaWarpSpecializedCooperative,
                                              cutlass::epilogue::TmaWarpSpecialized>;

  static constexpr int kAlignmentAB = 16;                    // elements = bytes: TMA needs 16-byte rows
  static constexpr int kAlignmentD = 16 / sizeof(ElementD);  // 16-byte rows of D for the TMA store
  static constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

  // --- Epilogue visitor tree (see the file comment) ---
  using ScaleA = cutlass::epilogue::fusion::Sm90ColBroadcast<0, TileShape, ElementScale, ElementCompute,
                                                             cute::Stride<bool, cute::_0, int64_t>>;
  using ScaleB = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, ElementScale, ElementCompute,
                                                             cute::Stride<cute::_0, bool, int64_t>>;
  using Bias = cutlass::epilogue::fusion::Sm90RowBroadcast<0, TileShape, ElementBias, ElementCompute,
                                                           cute::Stride<cute::_0, cute::_1, int64_t>>;
  using ScaledAcc = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<cutlass::multiplies, ElementCompute, ElementCompute, kRound>,
      ScaleA, cutlass::epilogue::fusion::Sm90AccFetch>;
  using EpilogueEVT = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<cutlass::homogeneous_multiply_add, ElementD, ElementCompute, kRound>,
      ScaleB, ScaledAcc, Bias>;

  static constexpr bool kRowHadamard = kRowHadamardLog2 > 0;
  using LayoutD = std::conditional_t<kRowHadamard, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  using BuiltEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, ElementAccumulator, ElementCompute,
      void, LayoutD, kAlignmentD,       // no C operand
      ElementD, LayoutD, kAlignmentD,  // D
      EpilogueSchedule, EpilogueEVT>::CollectiveOp;
  using CollectiveEpilogue = std::conditional_t<kRowHadamard, ColHadamardEpilogue<BuiltEpilogue, kRowHadamardLog2>,
                                                BuiltEpilogue>;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,
      ElementA, cutlass::layout::RowMajor, kAlignmentAB,
      ElementB, cutlass::layout::ColumnMajor, kAlignmentAB,
      ElementAccumulator, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using GemmKernel = cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, CollectiveMainloop,
                                                          CollectiveEpilogue, cutlass::gemm::PersistentScheduler>;
  using Arguments = typename GemmKernel::Arguments;
  using Params = typename GemmKernel::Params;

  /*!
   * \brief Tile-scheduler swizzle for an M x N output: the largest of 8, 4, 2 whose padding of the tile grid adds
   * at most 1/32 more tiles, else 1.
   *
   * The persistent scheduler walks the tiles in bands of 2^log_swizzle tiles (CUTLASS picks log_swizzle from
   * max_swizzle_size and the grid), so the tiles in flight at a time share fewer rows of A and columns of B: on
   * H100 a swizzle of 8 (or 4) gave +5-15% on outputs whose operands exceed L2 (e.g. 8192 x 14336, K = 4096) and
   * nothing either way on 4096^3. The grid is padded to a multiple of 2^log_swizzle * cluster along both modes and
   * the padding tiles are computed (out of bounds, not stored), hence the cap on padding.
   */
  static int swizzle_size(int64_t m, int64_t n) {
    using SchedulerParams = cutlass::gemm::kernel::detail::PersistentTileSchedulerSm90Params;
    constexpr int64_t kTileM = cute::size<0>(TileShape{}), kTileN = cute::size<1>(TileShape{});
    constexpr int64_t kClusterM = cute::size<0>(ClusterShape{}), kClusterN = cute::size<1>(ClusterShape{});
    const int64_t tiles_m = (m + kTileM - 1) / kTileM, tiles_n = (n + kTileN - 1) / kTileN;
    const auto padded_tiles = [&](int64_t log_swizzle) {
      const int64_t align_m = (int64_t(1) << log_swizzle) * kClusterM;
      const int64_t align_n = (int64_t(1) << log_swizzle) * kClusterN;
      return ((tiles_m + align_m - 1) / align_m * align_m) * ((tiles_n + align_n - 1) / align_n * align_n);
    };
    const int64_t base = padded_tiles(0);
    for (int swizzle : {8, 4, 2}) {
      const int64_t log_swizzle = SchedulerParams::get_log_swizzle_size(static_cast<int>(tiles_m),
                                                                         static_cast<int>(tiles_n), swizzle);
      if (padded_tiles(log_swizzle) * 32 <= base * 33) return swizzle;
    }
    return 1;
  }

  /*! \brief The problem the kernel computes: args itself, or for the row-Hadamard variant its transpose. */
  static QGemmArgs kernel_problem(const QGemmArgs& args) {
    if constexpr (!kRowHadamard) {
      return args;
    } else {
      QGemmArgs t = args;  // every A field trades places with its B twin
      std::swap(t.a, t.b);
      std::swap(t.a_dtype, t.b_dtype);
      std::swap(t.M, t.N);
      std::swap(t.lda, t.ldb);
      std::swap(t.scale_a, t.scale_b);
      std::swap(t.scale_a_per_row, t.scale_b_per_row);
      return t;  // ldd: the column stride of the column-major D^T = the row stride of D
    }
  }

  /*! \brief CUTLASS arguments for a (validated) problem. */
  static Arguments make_arguments(const QGemmArgs& op_args, const DeviceInfo& dev) {
    const QGemmArgs args = kernel_problem(op_args);
    using StrideA = typename GemmKernel::StrideA;
    using StrideB = typename GemmKernel::StrideB;
    using StrideD = typename GemmKernel::StrideD;

    Arguments out{};
    out.mode = cutlass::gemm::GemmUniversalMode::kGemm;
    out.problem_shape = {static_cast<int>(args.M), static_cast<int>(args.N), static_cast<int>(args.K), 1};

    out.mainloop.ptr_A = static_cast<const ElementA*>(args.a);
    out.mainloop.dA = StrideA{args.lda, cute::_1{}, int64_t(0)};
    out.mainloop.ptr_B = static_cast<const ElementB*>(args.b);
    out.mainloop.dB = StrideB{args.ldb, cute::_1{}, int64_t(0)};

    // Argument structure of an EVT node: {child 0, ..., child n-1, node's own arguments}.
    out.epilogue.thread = {
        {args.scale_b, ElementScale(0), {cute::_0{}, args.scale_b_per_row, int64_t(0)}},  // sb
        {
            {args.scale_a, ElementScale(0), {args.scale_a_per_row, cute::_0{}, int64_t(0)}},  // sa
            {},                                                                                // acc
            {}                                                                                 // multiplies
        },
        {static_cast<const ElementBias*>(args.bias), ElementBias(0), {}},  // bias (null -> 0)
        {}                                                                 // multiply_add
    };
    out.epilogue.ptr_C = nullptr;
    out.epilogue.ptr_D = static_cast<ElementD*>(args.d);
    if constexpr (kRowHadamard) {
      out.epilogue.dD = StrideD{cute::_1{}, args.ldd, int64_t(0)};
    } else {
      out.epilogue.dD = StrideD{args.ldd, cute::_1{}, int64_t(0)};
    }

    out.scheduler.max_swizzle_size = swizzle_size(args.M, args.N);
    out.hw_info.device_id = dev.device;
    out.hw_info.sm_count = dev.sm_count;
    return out;
  }

  /*! \brief Workspace bytes (the persistent scheduler and this epilogue need none, but ask CUTLASS). */
  static size_t workspace_size(const QGemmArgs& args, const DeviceInfo& dev) {
    return GemmKernel::get_workspace_size(make_arguments(args, dev));
  }

  /*! \brief Raises the kernel's dynamic shared memory limit, once per device. */
  static cudaError_t prepare_device(int device) {
    constexpr int kMaxCachedDevices = 64;
    static std::atomic<bool> prepared[kMaxCachedDevices] = {};
    const bool cached = device >= 0 && device < kMaxCachedDevices;
    if (cached && prepared[device].load(std::memory_order_acquire)) return cudaSuccess;
    const cudaError_t err = cudaFuncSetAttribute(cutlass::device_kernel<GemmKernel>,
                                                 cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 GemmKernel::SharedStorageSize);
    if (err == cudaSuccess && cached) prepared[device].store(true, std::memory_order_release);
    return err;
  }

  /*! \brief Runs the GEMM on stream (no host synchronization, no allocation). */
  static cudaError_t run(const QGemmArgs& args, const DeviceInfo& dev, void* workspace, cudaStream_t stream) {
    const Arguments arguments = make_arguments(args, dev);
    if (!GemmKernel::can_implement(arguments)) return cudaErrorInvalidValue;
    if (GemmKernel::get_workspace_size(arguments) > 0 && workspace == nullptr) return cudaErrorInvalidValue;

    if (cudaError_t err = prepare_device(dev.device); err != cudaSuccess) return err;
    if (const cutlass::Status status = GemmKernel::initialize_workspace(arguments, workspace, stream);
        status != cutlass::Status::kSuccess) {
      return to_cuda_error(status);
    }
    Params params = GemmKernel::to_underlying_arguments(arguments, workspace);

    cudaLaunchAttribute cluster{};
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = cute::size<0>(ClusterShape{});
    cluster.val.clusterDim.y = cute::size<1>(ClusterShape{});
    cluster.val.clusterDim.z = cute::size<2>(ClusterShape{});

    cudaLaunchConfig_t config{};
    config.gridDim = GemmKernel::get_grid_shape(params);
    config.blockDim = GemmKernel::get_block_shape();
    config.dynamicSmemBytes = GemmKernel::SharedStorageSize;
    config.stream = stream;
    config.attrs = &cluster;
    config.numAttrs = 1;
    return cudaLaunchKernelEx(&config, cutlass::device_kernel<GemmKernel>, params);
  }
};

/*! \brief The registry entry of configuration Config (a QGemmSm90 instantiation). */
template <class Config>
constexpr QGemmSm90Kernel make_qgemm_sm90_kernel(const char* name) {
  return QGemmSm90Kernel{name, cute::size<0>(typename Config::TileShape{}), cute::size<1>(typename Config::TileShape{}),
                         &Config::workspace_size, &Config::run};
}

}  // namespace sm90
}  // namespace halo

#endif  // HALO_ENABLE_SM90
