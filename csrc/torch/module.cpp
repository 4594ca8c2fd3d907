/*!
 * \file module.cpp
 * \brief The halo_ext._C extension module: importing it registers the torch.ops.halo operators (static
 * initializers of registration.cpp / ops_*.cpp); the few pybind11 functions below report what was built.
 */
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/hadamard_matrices.h"

#ifdef HALO_WITH_CUDA
#include "kernels/gemm.h"
namespace halo::glue {
std::string qgemm_cuda_backend();
#ifdef HALO_ENABLE_SM90
void set_qgemm_sm90_config(int config);
int qgemm_sm90_config();
#endif
}
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "halo-ext compiled core: registers torch.ops.halo.* and reports build capabilities";
  m.def("version", [] { return std::string(HALO_VERSION); }, "halo-ext version the extension was built as");
  m.def("cuda_built", [] {
#ifdef HALO_WITH_CUDA
    return true;
#else
    return false;
#endif
  }, "Whether the CUDA kernels were compiled in");
  m.def("sm90_built", [] {
#ifdef HALO_ENABLE_SM90
    return true;
#else
    return false;
#endif
  }, "Whether the sm_90a CUTLASS GEMMs were compiled in");
  m.def("cuda_archs", [] {
#ifdef HALO_CUDA_ARCHS_STR
    return std::string(HALO_CUDA_ARCHS_STR);
#else
    return std::string();
#endif
  }, "CUDA architectures the kernels were compiled for ('' for a CPU-only build)");
  m.def("cuda_runtime_version", [] {
#ifdef HALO_WITH_CUDA
    return CUDART_VERSION;
#else
    return 0;
#endif
  }, "CUDART_VERSION the kernels were compiled against (0 for a CPU-only build)");
  m.def("hadamard_factor", [](int64_t n) -> std::optional<std::pair<int, int>> {
    halo::HadamardFactor f{};
    if (n < 2 || !halo::hadamard_factor(n, &f)) return std::nullopt;
    return std::make_pair(f.m, f.log2p);
  }, py::arg("n"), "(m, p) with n = m * 2^p for a supported Hadamard size n, else None");
  m.def("hadamard_dense_orders", &halo::hadamard_dense_orders, py::arg("max_m") = 512,
        "Constructible dense Hadamard orders (not counting doublings) up to max_m");
  m.def("hadamard_dense_symmetric", &halo::hadamard_dense_symmetric, py::arg("m"),
        "Whether the dense Hadamard factor of order m is symmetric");
  m.def("qgemm_backend", [] {
#ifdef HALO_WITH_CUDA
    return halo::glue::qgemm_cuda_backend();
#else
    return std::string("cpu_reference");
#endif
  }, "Which qgemm implementation the current CUDA device runs");
#ifdef HALO_ENABLE_SM90
  m.def("qgemm_sm90_configs", [](const std::string& a_dtype) {
    halo::QGemmArgs g;
    g.a_dtype = a_dtype == "int8" ? halo::DType::kInt8 : a_dtype == "e5m2" ? halo::DType::kFloat8E5M2
                                                                           : halo::DType::kFloat8E4M3;
    g.b_dtype = a_dtype == "int8" ? halo::DType::kInt8 : halo::DType::kFloat8E4M3;
    std::vector<std::string> names;
    for (int i = 0; i < halo::qgemm_sm90_num_configs(g); ++i) names.emplace_back(halo::qgemm_sm90_config_name(g, i));
    return names;
  }, py::arg("a_dtype"), "Names of the sm90 GEMM configurations for a dtype ('int8', 'e4m3', 'e5m2')");
  m.def("set_qgemm_sm90_config", &halo::glue::set_qgemm_sm90_config, py::arg("config"),
        "Tuning: run every sm90 qgemm whose dtype family has configuration `config` (an index of qgemm_sm90_configs) "
        "with it, the others with the shape heuristic; -1 restores the heuristic everywhere. Process-wide.");
  m.def("qgemm_sm90_config", &halo::glue::qgemm_sm90_config,
        "The configuration set_qgemm_sm90_config forces (-1: none, the shape heuristic picks)");
#endif
}
