#!/usr/bin/env bash
# Compiles every CUDA source (and the CUDA glue) for sm_90a without linking (the GEMMs to PTX, see below): catches compile errors on machines
# without a GPU or a CUDA build of torch. Objects go to a temp dir. Parallel over MAX_JOBS (default: cores).
set -euo pipefail
cd "$(dirname "$0")/.."
CUTLASS=${CUTLASS_DIR:-$(python3 -c "import cutlass_library; print(cutlass_library.source_path)")}
TORCH_INC=$(python3 -c "import torch.utils.cpp_extension as c; print(' '.join('-I'+p for p in c.include_paths()))")
ABI=$(python3 -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
# nvcc knows its include dir (it may be a wrapper script outside the toolkit): ask it.
CUDA_INC=$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ INCLUDES="-I\(.*\)" *$/\1/p' | head -1 | sed 's/"  *"-I/ -I/g; s/"//g')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# A CPU torch wheel lacks the CUDA build's generated c10 macro header: stand it in for the syntax check.
mkdir -p "$tmp/shim/c10/cuda/impl"
echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$tmp/shim/c10/cuda/impl/cuda_cmake_macros.h"
common="-std=c++17 -O3 -Icsrc -Icsrc/kernels -DHALO_ENABLE_SM90 -DHALO_WITH_CUDA -DNDEBUG --expt-relaxed-constexpr"
# The CUTLASS GEMM files stop at PTX by default (C++ front end + NVVM, half the time of ptxas on 2 CI cores; the
# device build runs ptxas); HALO_GEMM_CHECK=full compiles them to sm_90a objects too.
if [ "${HALO_GEMM_CHECK:-ptx}" = full ]; then gemm_mode="-c"; else gemm_mode="-ptx"; fi
jobs=()
for f in csrc/kernels/*.cu; do
  jobs+=("nvcc $common -gencode=arch=compute_90a,code=sm_90a -c $f -o $tmp/$(basename "$f").o")
done
for f in csrc/kernels/gemm/*.cu; do
  [ -e "$f" ] || continue
  jobs+=("nvcc $common -arch=sm_90a $gemm_mode --expt-extended-lambda -isystem $CUTLASS/include -isystem $CUTLASS/tools/util/include $f -o $tmp/gemm_$(basename "$f").o")
done
jobs+=("g++ -std=c++20 -fsyntax-only -Icsrc -I$CUDA_INC $TORCH_INC -I$tmp/shim -D_GLIBCXX_USE_CXX11_ABI=$ABI -DHALO_WITH_CUDA -DHALO_ENABLE_SM90 csrc/torch/ops_cuda.cpp")
printf '%s\n' "${jobs[@]}" > "$tmp/jobs"
start=$(date +%s)
xargs -P "${MAX_JOBS:-$(nproc)}" -I{} -d '\n' bash -c '{} && echo "ok: $(echo {} | grep -o "[^ ]*\.c[up]*p* " | head -1)"' < "$tmp/jobs"
echo "CUDA compile check passed: ${#jobs[@]} sources in $(( $(date +%s) - start )) s"
