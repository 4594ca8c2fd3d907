# Locates the CUTLASS 3.x headers. Order: -DCUTLASS_DIR=..., the CUTLASS_DIR environment variable, then the
# nvidia-cutlass pip package (cutlass_library.source_path). Sets HALO_CUTLASS_INCLUDE_DIRS.
if(NOT CUTLASS_DIR AND DEFINED ENV{CUTLASS_DIR})
  set(CUTLASS_DIR "$ENV{CUTLASS_DIR}")
endif()
if(NOT CUTLASS_DIR)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c "import cutlass_library; print(cutlass_library.source_path)"
    OUTPUT_VARIABLE CUTLASS_DIR RESULT_VARIABLE _rc OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(NOT _rc EQUAL 0)
    set(CUTLASS_DIR "")
  endif()
endif()
if(NOT CUTLASS_DIR OR NOT EXISTS "${CUTLASS_DIR}/include/cutlass/cutlass.h")
  message(FATAL_ERROR "halo-ext: CUTLASS headers not found (needed for the sm_90a GEMMs). "
                      "pip install nvidia-cutlass, or pass -DCUTLASS_DIR=/path/to/cutlass (or set CUTLASS_DIR), "
                      "or build without sm_90a (HALO_CUDA_ARCHS=80 ...).")
endif()
set(HALO_CUTLASS_INCLUDE_DIRS "${CUTLASS_DIR}/include" "${CUTLASS_DIR}/tools/util/include")
message(STATUS "halo-ext: CUTLASS from ${CUTLASS_DIR}")
