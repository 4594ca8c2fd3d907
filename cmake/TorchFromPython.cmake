# Finds PyTorch by asking the Python interpreter that will import the extension (the torch you build against is
# the torch that loads it: no ABI mismatch). Sets:
#   HALO_TORCH_VERSION, HALO_TORCH_INCLUDE_DIRS, HALO_TORCH_LIBRARY_DIR, HALO_TORCH_CXX11_ABI (0/1),
#   HALO_TORCH_CUDA_VERSION (empty for a CPU-only torch), and the imported target halo::torch.
# We deliberately avoid find_package(Torch): its CUDA setup (Caffe2's cuda.cmake) second-guesses the toolkit and
# the arch flags, while all we need are headers and four libraries.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "
import torch, torch.utils.cpp_extension as ce, os
print(torch.__version__)
print(','.join(ce.include_paths()))
print(os.path.join(os.path.dirname(torch.__file__), 'lib'))
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(torch.version.cuda or '')
"
  OUTPUT_VARIABLE _halo_torch_out
  RESULT_VARIABLE _halo_torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _halo_torch_rc EQUAL 0)
  message(FATAL_ERROR "halo-ext: could not import torch with ${Python_EXECUTABLE}; install torch first "
                      "and build with --no-build-isolation")
endif()
string(REPLACE "\n" ";" _halo_torch_lines "${_halo_torch_out}")
list(GET _halo_torch_lines 0 HALO_TORCH_VERSION)
list(GET _halo_torch_lines 1 _halo_inc)
list(GET _halo_torch_lines 2 HALO_TORCH_LIBRARY_DIR)
list(GET _halo_torch_lines 3 HALO_TORCH_CXX11_ABI)
list(LENGTH _halo_torch_lines _n)
set(HALO_TORCH_CUDA_VERSION "")
if(_n GREATER 4)
  list(GET _halo_torch_lines 4 HALO_TORCH_CUDA_VERSION)
endif()
string(REPLACE "," ";" HALO_TORCH_INCLUDE_DIRS "${_halo_inc}")
message(STATUS "halo-ext: torch ${HALO_TORCH_VERSION} (CUDA '${HALO_TORCH_CUDA_VERSION}') in ${HALO_TORCH_LIBRARY_DIR}")

add_library(halo_torch INTERFACE)
add_library(halo::torch ALIAS halo_torch)
target_include_directories(halo_torch SYSTEM INTERFACE ${HALO_TORCH_INCLUDE_DIRS})
target_compile_definitions(halo_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${HALO_TORCH_CXX11_ABI}
                                                TORCH_EXTENSION_NAME=_C TORCH_API_INCLUDE_EXTENSION_H)
target_link_directories(halo_torch INTERFACE ${HALO_TORCH_LIBRARY_DIR})
target_link_libraries(halo_torch INTERFACE c10 torch torch_cpu)
