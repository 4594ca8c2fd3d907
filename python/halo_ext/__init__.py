"""halo-ext: Hadamard-rotated 8-bit GEMMs (HALO) and quantized collectives for PyTorch LLM fine-tuning.

Importing the package loads the compiled extension, which registers the ``torch.ops.halo`` operators.
"""
from __future__ import annotations

import torch  # noqa: F401  (the extension links against torch's libraries: load them first)

from . import _C
from . import _meta  # noqa: F401  (fake impls for torch.compile)
from .ops import dequantize, hadamard, hadamard_qgemm, hadamard_quantize, qgemm, quantize
from .linear import (HaloLinear, HaloLoraLinear, QuantizedWeight, convert, halo_linear, linear_supported,
                     prepare_peft, quantize_weight, rotation_block)

__version__ = _C.version()

__all__ = [
    "hadamard", "quantize", "dequantize", "hadamard_quantize", "qgemm", "hadamard_qgemm",
    "cuda_built", "cuda_available", "sm90_available", "capabilities", "hadamard_supported", "hadamard_factor",
    "HaloLinear", "HaloLoraLinear", "QuantizedWeight", "convert", "prepare_peft", "halo_linear", "linear_supported",
    "quantize_weight", "rotation_block",
]


def cuda_built() -> bool:
    """Whether the CUDA kernels were compiled into this build."""
    return _C.cuda_built()


def cuda_available() -> bool:
    """Whether the CUDA kernels were built and a CUDA device is visible."""
    return _C.cuda_built() and torch.cuda.is_available()


def sm90_available() -> bool:
    """Whether the sm_90a CUTLASS GEMMs were built and the current device is an sm_90 (Hopper) GPU."""
    return cuda_available() and _C.sm90_built() and torch.cuda.get_device_capability() == (9, 0)


def hadamard_factor(n: int):
    """``(m, p)`` with ``n = m * 2**p`` (dense Hadamard factor of order m, Sylvester 2**p) or None if unsupported."""
    return _C.hadamard_factor(n)


def hadamard_supported(n: int) -> bool:
    """Whether :func:`hadamard` supports a transform of length n."""
    return _C.hadamard_factor(n) is not None


def capabilities() -> dict:
    """What this build and machine can do (for bug reports and benchmark records)."""
    caps = {
        "version": __version__,
        "torch": torch.__version__,
        "cuda_built": _C.cuda_built(),
        "sm90_built": _C.sm90_built(),
        "cuda_archs": _C.cuda_archs(),
        "cuda_runtime_built": _C.cuda_runtime_version(),
        "cuda_available": cuda_available(),
        "hadamard_dense_orders": _C.hadamard_dense_orders(512),
    }
    if cuda_available():
        caps["device"] = torch.cuda.get_device_name()
        caps["capability"] = torch.cuda.get_device_capability()
        caps["qgemm_backend"] = _C.qgemm_backend()
    return caps
