#!/usr/bin/env bash
# One call on the GPU machine: build (all cores), run the test suite (GPU tests included), compute-sanitizer on
# the kernels, and the benchmarks; logs and JSON results go under $OUT (default /tmp/halo_out).
# Usage (repo root, with the wheels of ../shared/tools/gpu-wheels.sh in .whl/):  bash tools/device_run.sh [steps]
# steps: any of build test sanitize bench-hadamard bench-quant bench-gemm (default: all, in that order)
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/halo_out}
mkdir -p "$OUT"
steps=${*:-build test sanitize bench-hadamard bench-quant bench-gemm}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
for step in $steps; do
  echo "=== $step $(date +%T)"
  case $step in
    build)
      MAX_JOBS=$(nproc) HALO_CUDA=ON python3 -m pip install --no-index --no-deps --no-build-isolation -e . \
        >"$OUT/build.log" 2>&1 || { tail -60 "$OUT/build.log"; exit 1; }
      grep -E "halo-ext:|warning" "$OUT/build.log" | grep -v "^Requirement" | head -20
      python3 -c "import halo_ext, json; print(json.dumps(halo_ext.capabilities()))" | tee "$OUT/caps.json" ;;
    test)
      python3 -m pytest tests -q -p no:cacheprovider --maxfail=25 2>&1 | grep -E "^(FAILED|ERROR)|passed|failed|Error|assert" | head -60 | tee "$OUT/pytest.log" ;;
    sanitize)
      python3 tools/sanitize_smoke.py 2>&1 | tail -5
      for tool in memcheck racecheck; do
        compute-sanitizer --tool $tool --error-exitcode 9 python3 tools/sanitize_smoke.py >"$OUT/sanitize_$tool.log" 2>&1
        echo "compute-sanitizer $tool rc=$? $(tail -1 "$OUT/sanitize_$tool.log")"
      done ;;
    bench-hadamard) python3 bench/hadamard_bench.py 2>&1 | tail -24 ;;
    bench-quant) python3 bench/quant_bench.py 2>&1 | tail -34 ;;
    bench-gemm) for d in int8 fp8 bf16; do python3 bench/gemm_bench.py --dtype $d 2>&1 | tail -40; done ;;
  esac
  cp bench/results/*.json "$OUT/" 2>/dev/null
done
cp bench/results/*.json "$OUT/" 2>/dev/null
echo "=== done $(date +%T)"
