"""The C++ harness of csrc/common/hadamard_matrices.cpp and the Goethals-Seidel sequence search (tools/gs_search.c),
compiled with the host C/C++ compiler and run; skipped when there is none."""

import os
import shutil
import subprocess

import pytest

import hadamard_ref as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


@pytest.mark.skipif(CXX is None, reason="no C++ compiler on PATH")
def test_cpp_hadamard_matrices_harness(tmp_path):
    """tests/cpp/test_hadamard_matrices.cpp: orders, symmetry, factorizations, golden hashes, thread safety; and
    its `--hashes` output equals the numpy reference's hash of every constructible order <= 512."""
    exe = tmp_path / "test_hadamard_matrices"
    subprocess.run(
        [CXX, "-O2", "-std=c++17", "-pthread", "-I", os.path.join(ROOT, "csrc", "common"),
         os.path.join(ROOT, "tests", "cpp", "test_hadamard_matrices.cpp"),
         os.path.join(ROOT, "csrc", "common", "hadamard_matrices.cpp"), "-o", str(exe)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    out = subprocess.run([str(exe), "--hashes"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:]
    assert " 0 failed" in out.stdout
    cpp = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            cpp[int(parts[0])] = int(parts[1])
    py = {m: R.fnv1a64(R.dense_hadamard(m)) for m in range(1, 513) if R.dense_constructible(m)}
    assert len(py) == 113
    assert cpp == py


@pytest.mark.skipif(CC is None, reason="no C compiler on PATH")
@pytest.mark.parametrize("t,steps", [(23, 20000), (29, 20000), (39, 200000)])
def test_gs_search_reproduces_the_table(tmp_path, t, steps):
    """The stored sequences are the search's output for the recorded arguments (t = 43 takes ~35 s: not run here;
    its sequences are checked for zero periodic autocorrelation in test_hadamard_ref.py)."""
    exe = tmp_path / "gs_search"
    subprocess.run([CC, "-O2", os.path.join(ROOT, "tools", "gs_search.c"), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe), str(t), "1", str(steps)], capture_output=True, text=True, timeout=120, check=True)
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"t={t} ")
    assert tuple(lines[-4:]) == R.GS_SEQUENCES[t]
