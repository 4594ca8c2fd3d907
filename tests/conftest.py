"""Shared fixtures: the device parameter (CUDA cases skip with a reason when no GPU), seeded RNG."""
import os
import sys
import zlib

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests/hadamard_ref.py, tests/refs.py

import halo_ext  # noqa: E402

CUDA_SKIP_REASON = (
    "no CUDA device" if not torch.cuda.is_available() else "halo_ext was built without CUDA kernels"
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not halo_ext.cuda_available(), reason=CUDA_SKIP_REASON)]),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed(request):
    # Fresh random inputs for every test, reproducible from the test id.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
