"""Build halo-ext: setuptools drives CMake (CMakeLists.txt), which compiles the extension module halo_ext._C.

Environment variables:
  HALO_CUDA=AUTO|ON|OFF   build the CUDA kernels (AUTO: when torch has CUDA and nvcc is found)
  HALO_CUDA_ARCHS=90a     CUDA architectures, ';' or ',' separated ("90a" enables the CUTLASS sm90a GEMMs)
  CUTLASS_DIR=/path       a CUTLASS checkout instead of the nvidia-cutlass package's headers
  MAX_JOBS=N              parallel compile jobs (default: all cores)
  HALO_BUILD_DIR=path     CMake build directory (default build/cmake-<python tag>; kept between builds)
Build against the torch already installed: pip install --no-build-isolation .
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
VERSION = "0.1.0"


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(os.environ.get("HALO_BUILD_DIR", ROOT / "build" / f"cmake-py{sys.version_info[0]}{sys.version_info[1]}"))
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = [
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('HALO_BUILD_TYPE', 'Release')}",
            f"-DHALO_VERSION={VERSION}",
            f"-DHALO_CUDA={os.environ.get('HALO_CUDA', 'AUTO')}",
            f"-DHALO_CUDA_ARCHS={os.environ.get('HALO_CUDA_ARCHS', '90a')}",
        ]
        if os.environ.get("CUTLASS_DIR"):
            cfg.append(f"-DCUTLASS_DIR={os.environ['CUTLASS_DIR']}")
        try:
            import ninja  # noqa: F401

            cfg.append("-GNinja")
        except ImportError:
            pass
        cache = build_dir / "CMakeCache.txt"
        if cache.exists() and "Ninja" not in cache.read_text() and "-GNinja" in cfg:
            cfg.remove("-GNinja")  # keep the generator an existing build dir was made with
        subprocess.check_call(["cmake", "-S", str(ROOT), "-B", str(build_dir), *cfg])
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", "--build", str(build_dir), "--target", "_C", "-j", jobs])


setup(
    name="halo-ext",
    version=VERSION,
    description="HALO: Hadamard-rotated 8-bit GEMMs and quantized collectives for PyTorch LLM fine-tuning",
    package_dir={"": "python"},
    packages=find_packages(where="python"),
    ext_modules=[CMakeExtension("halo_ext._C")],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.9",
    install_requires=["torch", "numpy"],
    extras_require={"test": ["pytest", "hypothesis"]},
    entry_points={"console_scripts": ["halo-finetune=halo_ext.finetune.cli:main"]},
    zip_safe=False,
)
