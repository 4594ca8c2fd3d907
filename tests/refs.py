"""float64 references for the tests, independent of the kernels (numpy/torch float64 only)."""
import math

import numpy as np
import torch

import hadamard_ref as hr

QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}


def fwht_last(x: np.ndarray) -> np.ndarray:
    """Unnormalized Sylvester-order Walsh-Hadamard transform along the last axis (reshape butterflies)."""
    n = x.shape[-1]
    lead = x.shape[:-1]
    h = 1
    y = x.copy()
    while h < n:
        y = y.reshape(*lead, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = np.stack([a + b, a - b], axis=-2)
        h *= 2
    return y.reshape(*lead, n)


def hadamard_ref(x: torch.Tensor, scale=None, block=0, signs=None, transpose=False) -> torch.Tensor:
    """float64 y = scale * (x o s) H_n (transpose: scale * (x H_n^T) o s), H_n = kron(D_m, Sylvester), blockwise."""
    xd = x.detach().double().cpu().numpy()
    cols = xd.shape[-1]
    n = block or cols
    m, p = hr.factor(n)
    D = hr.dense_hadamard(m)
    if transpose:
        D = D.T
    s = None if signs is None else signs.detach().double().cpu().numpy()
    if s is not None and not transpose:
        xd = xd * s
    g = xd.reshape(*xd.shape[:-1], cols // n, m, 1 << p)
    g = fwht_last(g)
    g = np.einsum("ij,...ik->...jk", D, g)  # y = x (D (x) S): mixes the m axis with D^T
    y = g.reshape(xd.shape) * (scale if scale is not None else 1.0 / math.sqrt(n))
    if s is not None and transpose:
        y = y * s
    return torch.from_numpy(y)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out = out.double().cpu()
    ref = ref.double().cpu()
    assert torch.isfinite(out).all(), "non-finite output"
    den = ref.norm().item()
    return (out - ref).norm().item() / (den if den > 0 else 1.0)


def rounding_err(ref: torch.Tensor, dtype: torch.dtype) -> float:
    """Relative error of rounding the exact result once to dtype: the best any implementation can do."""
    return rel_err(ref.to(dtype), ref)


def quant_ref(y: torch.Tensor, dtype: torch.dtype):
    """Per-tensor absmax quantization of float64 y (the rule of csrc/kernels/hadamard.h, in float64)."""
    amax = max(y.abs().max().item() if y.numel() else 0.0, 1e-30)
    scale = amax / QMAX[dtype]
    return (y / scale).clamp(-QMAX[dtype], QMAX[dtype]), scale
