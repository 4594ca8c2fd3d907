#!/usr/bin/env bash
# One call on the GPU machine: build (all cores), run the test suite (GPU tests included), compute-sanitizer on
# the kernels, the benchmarks and the main job; logs go into $OUT/logs.tgz, bench/results/ into $OUT/results.tgz
# (both refreshed after every step, so a call cut short still returns what it did).
# Usage (repo root, with the wheels of ../shared/tools/gpu-wheels.sh in .whl/):  bash tools/device_run.sh [steps]
# Single-GPU steps: build test test-hadamard test-comm sanitize bench-hadamard bench-hadamard-old bench-hadamard-shfl
#                   bench-hadamard-stream (A/B of the dense-factor kernel's scheduler, transform and hadamard_quantize)
#                   bench-hadamard-wide (A/B of 8 / 16 warps where the dense-factor kernel runs one CTA an SM)
#                   bench-quant bench-hq-pdl hq-pass-probe power-probe
#                   bench-gemm bench-linear bench-linear-1b
#                   bench-linear-fp8ch bench-linear-cfg1
#                   bench-host finetune-bench finetune-acc test-linear test-gemm bench-linear-main gemm-probe
#                   layer-trace (kernel timeline of HALO-2 int8 layer calls, tools/layer_trace.py)
#                   ncu-ey (Nsight Compute on ey_quantize's two passes at 8192 x 14336, tools/ncu_probe.py)
#                   ncu-dense (Nsight Compute on the dense-factor Hadamard kernels, tools/prof_dense.py)
#                   host-profile (host time per layer call and its split by op, tools/host_profile.py)
# Multi-GPU steps (torchrun over all visible GPUs): dist-test bench-allreduce (args: $BENCH_AR_ARGS) bench-fsdp
#                   bench-fsdp-perf (no loss curves) ar-trace (all-reduce time breakdown and kernel timelines,
#                   tools/ar_trace.py; args: $AR_TRACE_ARGS) ar-host-probe (host cost of small all-reduces)
# Default: build test sanitize bench-hadamard bench-quant bench-gemm.
# Each step's log is $LOGS/<step>.log; a failing step is reported and the next one still runs.
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export MPLBACKEND=Agg
OUT=${OUT:-/tmp/halo_out}
LOGS=${LOGS:-/tmp/halo_logs}
mkdir -p "$OUT" "$LOGS"
steps=${*:-build test sanitize bench-hadamard bench-quant bench-gemm}
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$LOGS/gpu.txt"
nvidia-smi topo -m >>"$LOGS/gpu.txt" 2>&1
summary() { echo "$*" | tee -a "$LOGS/summary.txt"; }
run_step() {  # run_step NAME TAIL_LINES CMD...: log to $LOGS/NAME.log, print the tail, record the exit status
  local name=$1 tail_n=$2; shift 2
  local t0=$SECONDS
  "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  tail -n "$tail_n" "$LOGS/$name.log"
  summary "step $name rc=$rc $((SECONDS - t0))s"
  return $rc
}
for step in $steps; do
  echo "=== $step $(date +%T)"
  case $step in
    build)
      run_step build 3 env MAX_JOBS=$(nproc) HALO_CUDA=ON python3 -m pip install --no-index --no-deps \
        --no-build-isolation -e . || { tail -60 "$LOGS/build.log"; break; }
      python3 -c "import halo_ext, json; print(json.dumps(halo_ext.capabilities()))" | tee "$LOGS/caps.json" ;;
    test)
      run_step test 0 python3 -m pytest tests -q -p no:cacheprovider --maxfail=40 --timeout=900
      grep -E "^(FAILED|ERROR)|passed|failed|Error" "$LOGS/test.log" | tail -40 ;;
    test-comm)  # the collective tests only (qcomm kernels, all_reduce / reduce_scatter, FSDP integration)
      run_step test-comm 0 python3 -m pytest tests/test_allreduce.py tests/test_fsdp.py -q -p no:cacheprovider \
        --timeout=900
      grep -E "^(FAILED|ERROR)|passed|failed|Error" "$LOGS/test-comm.log" | tail -20 ;;
    sanitize)
      python3 tools/sanitize_smoke.py 2>&1 | tail -3
      for tool in memcheck racecheck; do
        compute-sanitizer --tool $tool --error-exitcode 9 python3 tools/sanitize_smoke.py >"$LOGS/sanitize_$tool.log" 2>&1
        summary "compute-sanitizer $tool rc=$? $(tail -1 "$LOGS/sanitize_$tool.log")"
      done ;;
    test-hadamard)  # the Hadamard and quantization tests only
      run_step test-hadamard 0 python3 -m pytest tests/test_hadamard.py tests/test_quantize.py -q -p no:cacheprovider \
        --timeout=900
      grep -E "^(FAILED|ERROR)|passed|failed|Error" "$LOGS/test-hadamard.log" | tail -20 ;;
    bench-hadamard-old)  # the non-power-of-two sizes with the older dense kernel (HALO_DENSE_REG=0), for A/B
      run_step bench-hadamard-old 16 env HALO_DENSE_REG=0 python3 bench/hadamard_bench.py \
        --dims 12288 5120 14336 28672 11008 13824 18944 10240 1792 3584 8960 ;;
    bench-hadamard) run_step bench-hadamard 24 python3 bench/hadamard_bench.py ;;
    bench-hadamard-shfl)  # A/B at n = 128, 256 (512 for reference): shuffle kernel off (HALO_HAD_SHFL=0) / on, interleaved
      run_step bench-hadamard-shfl 8 python3 bench/hadamard_bench.py --dims 128 256 512 --ab-env HALO_HAD_SHFL \
        --name hadamard_shfl_ab ;;
    bench-hadamard-stream)  # A/B of the dense-factor kernel's scheduler: barrier a tile (HALO_DENSE_STREAM=0) / streaming
      run_step bench-hadamard-stream 16 python3 bench/hadamard_bench.py \
        --dims 12288 5120 14336 28672 11008 13824 18944 10240 1792 3584 8960 --ab-env HALO_DENSE_STREAM \
        --name hadamard_stream_ab
      run_step bench-hadamard-28672-reg 6 env HALO_DENSE_REG=force python3 bench/hadamard_bench.py --dims 28672 \
        --name hadamard_28672_dense_reg
      run_step bench-hq-stream-off 14 env HALO_DENSE_STREAM=0 python3 bench/quant_bench.py --ops hadamard_quantize \
        --cols 11008 14336 18944 --name quant_hq_dense_stream_off
      run_step bench-hq-stream-on 14 python3 bench/quant_bench.py --ops hadamard_quantize --cols 11008 14336 18944 \
        --name quant_hq_dense_stream_on ;;
    bench-hadamard-wide)  # A/B at 28672 (224 * 128, one CTA an SM): 8 warps (HALO_DENSE_WIDE=0) / 16 warps
      run_step bench-hadamard-wide 6 python3 bench/hadamard_bench.py --dims 28672 --ab-env HALO_DENSE_WIDE \
        --name hadamard_wide_ab ;;
    bench-quant) run_step bench-quant 34 python3 bench/quant_bench.py ;;
    bench-hq-pdl)  # A/B: hadamard_quantize with programmatic dependent launch off (HALO_PDL=0), then on again
      run_step bench-hq-pdl-off 14 env HALO_PDL=0 python3 bench/quant_bench.py --ops hadamard_quantize \
        --name quant_hq_pdl_off
      run_step bench-hq-pdl-on 14 python3 bench/quant_bench.py --ops hadamard_quantize --name quant_hq_pdl_on ;;
    hq-pass-probe)  # hadamard_quantize pass by pass (pass 1, pass 2, transpose) against the 0.8 budget
      run_step hq-pass-probe 20 python3 tools/hq_pass_probe.py --out bench/results/hq_pass_probe.json ;;
    power-probe)  # power, SM clock and TFLOP/s of the 8-bit GEMMs and their cuBLAS peers (tools/power_probe.py)
      run_step power-probe 40 python3 tools/power_probe.py --out bench/results/power_probe.json ;;
    bench-gemm) for d in int8 fp8 bf16; do run_step bench-gemm-$d 40 python3 bench/gemm_bench.py --dtype $d; done ;;
    bench-linear) run_step bench-linear 90 python3 bench/linear_bench.py --breakdown ;;
    bench-linear-fp8ch)  # A/B: fp8 layers with E_Y of the weight gradient scaled per channel (not the default)
      run_step bench-linear-fp8ch 40 python3 bench/linear_bench.py --breakdown --precisions fp8 --no-torchao \
        --wgrad-scale channel --name linear_fp8_wgrad_channel ;;
    bench-linear-cfg1)  # A/B: every GEMM forced to configuration 1 (128x128 pingpong: epilogue overlapped)
      run_step bench-linear-cfg1 40 python3 bench/linear_bench.py --breakdown --levels 0,2 --no-torchao \
        --gemm-config 1 --name linear_gemm_cfg1 ;;
    bench-linear-1b) run_step bench-linear-1b 60 python3 bench/linear_bench.py --breakdown --shape-set 1b ;;
    bench-host) run_step bench-host 20 python3 bench/host_overhead.py ;;
    test-gemm)  # the GEMM tests only
      run_step test-gemm 0 python3 -m pytest tests/test_gemm.py -q -p no:cacheprovider --timeout=900
      grep -E "^(FAILED|ERROR)|passed|failed|Error" "$LOGS/test-gemm.log" | tail -20 ;;
    bench-linear-main)  # the three LLaMA-3-8B layer shapes the issue's targets name, levels 0 and 2
      run_step bench-linear-main 60 python3 bench/linear_bench.py --breakdown --shapes 0,1,2 --levels 0,2 ;;
    layer-trace)
      run_step layer-trace 120 python3 tools/layer_trace.py --shapes 0,1,2 --levels 0,2 \
        --out bench/results/layer_trace.json ;;
    host-profile)
      run_step host-profile 0 python3 tools/host_profile.py 8192 4096 4096
      grep -E "host .* us/call" "$LOGS/host-profile.log"
      run_step host-profile-small 0 python3 tools/host_profile.py 256 1024 1024
      grep -E "host .* us/call" "$LOGS/host-profile-small.log" ;;
    ncu-ey)
      run_step ncu-ey 0 ncu --clock-control none -k regex:'ey_' --launch-skip 2 --launch-count 2 \
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section SchedulerStats --section WarpStateStats \
        --section LaunchStats --section Occupancy python3 tools/ncu_probe.py 8192 4096 14336
      grep -E "ey_|Duration|DRAM Throughput|L2 Cache Throughput|Registers Per|Issued Warp|Achieved Active" \
        "$LOGS/ncu-ey.log" ;;
    ncu-dense)  # Nsight Compute on the dense-factor Hadamard kernels, one launch per size (tools/prof_dense.py)
      run_step ncu-dense 0 ncu --clock-control none -k regex:'dense' \
        --section SpeedOfLight --section ComputeWorkloadAnalysis --section InstructionStats \
        --section MemoryWorkloadAnalysis --section SchedulerStats --section WarpStateStats --section LaunchStats \
        --section Occupancy python3 tools/prof_dense.py 11008 8960 18944 14336 28672
      grep -E "dense_|Duration|Memory Throughput|Executed Ipc A|Issue Slots Busy|Issued Warp|No Eligible|Warp Cycles Per Issued|Registers Per|Achieved Active|Shared Memory|Bank" \
        "$LOGS/ncu-dense.log" ;;
    gemm-probe)  # A/B of sm90 qgemm configurations on one layer's GEMMs (tools/gemm_config_probe.py)
      run_step gemm-probe 60 python3 tools/gemm_config_probe.py ;;
    test-linear)  # the layer and E_Y quantization tests only (a quick check after changing their kernels)
      run_step test-linear 0 python3 -m pytest tests/test_linear.py tests/test_ey_quantize.py -q -p no:cacheprovider \
        --timeout=900
      grep -E "^(FAILED|ERROR)|passed|failed|Error" "$LOGS/test-linear.log" | tail -20 ;;
    finetune-bench) run_step finetune-bench 40 python3 bench/finetune_bench.py ;;
    finetune-acc)
      run_step finetune-acc 30 python3 -m halo_ext.finetune --preset 100m --compare \
        --variants bf16,halo2-int8,halo2-int8-pt,halo0-fp8,halo0-int8 --steps 1000 --device cuda \
        --out /tmp/halo_ft --results bench/results/finetune.json
      cp /tmp/halo_ft/*.png "$OUT/" 2>/dev/null ;;
    dist-test)
      run_step dist-test 40 torchrun --nproc_per_node="$NGPU" tests/dist/allreduce_gpu_check.py ;;
    bench-allreduce) run_step bench-allreduce 50 torchrun --nproc_per_node="$NGPU" bench/allreduce_bench.py \
      ${BENCH_AR_ARGS:-} ;;
    ar-host-probe)  # host cost of the small-message paths (tools/ar_host_probe.py)
      run_step ar-host-probe 40 torchrun --nproc_per_node="$NGPU" tools/ar_host_probe.py ;;
    bench-fsdp) run_step bench-fsdp 40 torchrun --nproc_per_node="$NGPU" bench/fsdp_bench.py ;;
    bench-fsdp-perf) run_step bench-fsdp-perf 20 torchrun --nproc_per_node="$NGPU" bench/fsdp_bench.py --loss-steps 0 ;;
    ar-trace) run_step ar-trace 400 torchrun --nproc_per_node="$NGPU" tools/ar_trace.py --out "$OUT" \
      ${AR_TRACE_ARGS:-} ;;
    *) summary "unknown step $step" ;;
  esac
  tar czf "$OUT/results.tgz" bench/results 2>/dev/null; tar czf "$OUT/logs.tgz" -C "$LOGS" . 2>/dev/null
done
echo "=== summary"; cat "$LOGS/summary.txt" 2>/dev/null
echo "=== done $(date +%T)"
