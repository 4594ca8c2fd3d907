"""Checks of the independent numpy Hadamard reference (tests/hadamard_ref.py). Runs in about a second."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hadamard_ref as R  # noqa: E402

# Same expectations as tests/cpp/test_hadamard_matrices.cpp.
# (312, 344, 368 and 464 are constructible but are doublings of 156, 172, 184 and 232, so not dense orders.)
EXPECTED_ORDERS = [
    1, 12, 20, 28, 36, 44, 52, 60, 68, 76, 84, 92, 100, 108, 116, 124, 132, 140, 148, 156, 164, 172, 180, 196, 204,
    212, 220, 228, 244, 252, 276, 284, 300, 308, 316, 332, 340, 348, 364, 380, 388, 396, 420, 444, 460, 468, 484, 492,
    500,
]  # fmt: skip
EXPECTED_NONSYMMETRIC = [44, 68, 92, 116, 132, 140, 156, 172, 212, 284, 308, 332, 380, 420, 444, 492, 500]
GOETHALS_SEIDEL_ORDERS = [92, 116, 156, 172]
NOT_CONSTRUCTIBLE = [0, -4, 3, 5, 6, 10, 14, 18, 22, 188, 236, 376, 428, 507]

# FNV-1a 64 of the int8 bytes of dense_hadamard(m); the C++ harness pins halo::hadamard_dense(m) to the same values.
GOLDEN_HASHES = {
    12: 0x0C8E2F1F248F495D,  # Paley II, q = 5
    20: 0xBB41E7BD71CE49AD,  # Paley II, q = 9 = 3^2
    28: 0x2D056FD79E78A0FD,  # Paley II, q = 13
    52: 0x56426C453BA117ED,  # Paley II, q = 25 = 5^2
    56: 0x1429FDB3EBC97CD5,  # doubling of 28
    100: 0x00E6CB3E096C32CD,  # Paley II, q = 49 = 7^2
    108: 0x769956E603B9B41D,  # Paley II, q = 53
    164: 0xA4820FBA9E354F4D,  # Paley II, q = 81 = 3^4
    244: 0xCE265835773EC06D,  # Paley II, q = 121 = 11^2
    252: 0x5951FB80AB6D09BD,  # Paley II, q = 125 = 5^3
    340: 0xF4E8D0C6F0BA932D,  # Paley II, q = 169 = 13^2
    344: 0xF71284691F0DCD25,  # Paley I, q = 343 = 7^3
    92: 0x6280068AD254BDFD,  # Goethals-Seidel, t = 23
    116: 0x9417B2A248C7FB15,  # Goethals-Seidel, t = 29
    156: 0x195C4B7481B6DF5D,  # Goethals-Seidel, t = 39
    172: 0x249A2374E2000F5D,  # Goethals-Seidel, t = 43
    184: 0xD6739C03D113E5D5,  # doubling of 92
    500: 0x37142A804DB6B7A5,  # Paley I, q = 499
}

MODEL_FACTORS = {
    11008: (172, 6),
    13824: (108, 7),
    14336: (28, 9),
    18944: (148, 7),
    28672: (28, 10),
    5120: (20, 8),
    12288: (12, 10),
    8960: (140, 6),
    4864: (76, 6),
    3584: (28, 7),
}


def assert_hadamard(h, m):
    assert h.shape == (m, m)
    assert np.all(np.abs(h) == 1)
    np.testing.assert_array_equal(h @ h.T, m * np.eye(m))


# ---------------------------------------------------------------------------------------------------------------
# GF(p^k)
# ---------------------------------------------------------------------------------------------------------------


def test_prime_power():
    assert R.prime_power(2) == (2, 1)
    assert R.prime_power(343) == (7, 3)
    assert R.prime_power(243) == (3, 5)
    assert R.prime_power(311) == (311, 1)
    for q in (1, 6, 12, 85, 91, 171, 507):
        assert R.prime_power(q) is None


@pytest.mark.parametrize("q", [9, 25, 27, 49, 81, 125])
def test_gf_is_a_field(q):
    """Full multiplication table: commutative, associative (sampled), unit, every nonzero element invertible."""
    f = R.GF(*R.prime_power(q))
    mul = np.array([[f.mul(a, b) for b in range(q)] for a in range(q)])
    np.testing.assert_array_equal(mul, mul.T)
    np.testing.assert_array_equal(mul[1], np.arange(q))
    np.testing.assert_array_equal(mul[0], 0)
    for a in range(1, q):  # each row of nonzero a is a permutation of the nonzero elements (no zero divisors)
        assert sorted(mul[a, 1:]) == list(range(1, q))
    rng = np.random.default_rng(0)
    for a, b, c in rng.integers(0, q, size=(200, 3)):
        assert mul[mul[a, b], c] == mul[a, mul[b, c]]
        assert mul[a, f.add(b, c)] == f.add(mul[a, b], mul[a, c])  # distributive


@pytest.mark.parametrize("q", [3, 5, 9, 13, 25, 27, 49, 81, 121, 125, 169, 243, 343])
def test_chi_is_euler_criterion(q):
    """chi (found by enumerating squares) equals a^((q-1)/2) computed with the field multiplication."""
    f = R.GF(*R.prime_power(q))
    minus_one = f.p - 1  # code of -1
    for a in range(1, q):
        r, base, e = 1, a, (q - 1) // 2
        while e:
            if e & 1:
                r = f.mul(r, base)
            base = f.mul(base, base)
            e >>= 1
        assert r in (1, minus_one)
        assert f.chi[a] == (1 if r == 1 else -1)
    assert f.chi[0] == 0
    assert int(np.sum(f.chi == 1)) == (q - 1) // 2


def test_irreducible_choice():
    """Lexicographically smallest monic irreducible polynomials, [c_0, ..., c_{k-1}] of x^k + ... ."""
    assert R.GF(3, 2).modulus == [1, 0]  # x^2 + 1
    assert R.GF(5, 2).modulus == [2, 0]  # x^2 + 2 (x^2 + 1 = (x - 2)(x + 2))
    assert R.GF(3, 3).modulus == [1, 2, 0]  # x^3 + 2x + 1
    assert R.GF(7, 3).modulus == [2, 0, 0]  # x^3 + 2
    assert R.GF(3, 5).modulus == [1, 2, 0, 0, 0]  # x^5 + 2x + 1
    assert R.GF(11, 1).modulus == [0]  # x: arithmetic mod 11


def test_jacobsthal_properties():
    for q in (7, 9, 13, 27, 243, 343):
        Q = R.GF(*R.prime_power(q)).jacobsthal()
        np.testing.assert_array_equal(Q @ Q.T, q * np.eye(q, dtype=np.int64) - 1)
        np.testing.assert_array_equal(Q.sum(axis=1), 0)
        np.testing.assert_array_equal(Q.T, Q if q % 4 == 1 else -Q)


# ---------------------------------------------------------------------------------------------------------------
# Constructions
# ---------------------------------------------------------------------------------------------------------------


def test_sylvester():
    for p in range(11):
        n = 1 << p
        h = R.sylvester(n)
        assert_hadamard(h, n)
        i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        bits = np.zeros_like(i)
        for b in range(p):
            bits += ((i & j) >> b) & 1
        np.testing.assert_array_equal(h, np.where(bits % 2 == 1, -1.0, 1.0))
    with pytest.raises(ValueError):
        R.sylvester(12)


@pytest.mark.parametrize("q", [3, 7, 11, 19, 23, 27, 43, 243, 311, 343, 499])
def test_paley1(q):
    h = R.paley1(q)
    assert_hadamard(h, q + 1)
    np.testing.assert_array_equal(h + h.T, 2 * np.eye(q + 1))  # skew-type
    np.testing.assert_array_equal(h[0], 1)
    np.testing.assert_array_equal(h[1:, 0], -1)


@pytest.mark.parametrize("t", [23, 29, 39, 43])
def test_goethals_seidel(t):
    """The stored sequences have zero summed periodic autocorrelation, and the array is a Hadamard matrix."""
    seqs = np.array([[1 if ch == "+" else -1 for ch in s] for s in R.GS_SEQUENCES[t]])
    assert seqs.shape == (4, t)
    for shift in range(1, t):
        assert int(np.sum(seqs * np.roll(seqs, -shift, axis=1))) == 0, shift
    h = R.goethals_seidel(t)
    assert_hadamard(h, 4 * t)
    np.testing.assert_array_equal(h[0], 1)
    assert not np.array_equal(h, h.T)
    with pytest.raises(ValueError):
        R.goethals_seidel(47)


@pytest.mark.parametrize("q", [5, 9, 13, 17, 25, 49, 53, 81, 121, 125, 169, 241])
def test_paley2(q):
    h = R.paley2(q)
    assert_hadamard(h, 2 * (q + 1))
    np.testing.assert_array_equal(h, h.T)
    np.testing.assert_array_equal(h[0], 1)
    np.testing.assert_array_equal(h[:, 0], 1)


def test_paley_argument_checks():
    for bad in (1, 9, 15, 13):  # 9, 13 are 1 mod 4; 1 and 15 are not prime powers
        with pytest.raises(ValueError):
            R.paley1(bad)
    for bad in (3, 7, 15, 21):
        with pytest.raises(ValueError):
            R.paley2(bad)


def test_every_constructible_order_up_to_512():
    count = 0
    for m in range(1, 513):
        if not R.dense_constructible(m):
            continue
        count += 1
        h = R.dense_hadamard(m)
        assert_hadamard(h, m)
        sym = bool(np.array_equal(h, h.T))
        assert R.dense_symmetric(m) == sym, m
        np.testing.assert_array_equal(h[0], 1)
        if sym:
            np.testing.assert_array_equal(h[:, 0], 1)
    assert count == 113


def test_dense_orders_and_symmetry():
    orders = R.dense_orders(512)
    assert orders == EXPECTED_ORDERS
    assert [m for m in orders if not R.dense_symmetric(m)] == EXPECTED_NONSYMMETRIC
    assert R.dense_orders(30) == [1, 12, 20, 28]
    for m in EXPECTED_NONSYMMETRIC:  # non-symmetric dense orders are Paley I (skew-type) or Goethals-Seidel
        h = R.dense_hadamard(m)
        if m in GOETHALS_SEIDEL_ORDERS:
            assert R.dense_construction(m) == ("goethals_seidel", m // 4)
        else:
            assert R.dense_construction(m) == ("paley1", m - 1)
            np.testing.assert_array_equal(h + h.T, 2 * np.eye(m))


def test_choice_rule():
    assert R.dense_construction(4) == ("sylvester", None)  # not Paley I (q = 3)
    assert R.dense_construction(12) == ("paley2", 5)  # not Paley I (q = 11)
    assert R.dense_construction(28) == ("paley2", 13)  # not Paley I (q = 27)
    assert R.dense_construction(244) == ("paley2", 121)  # not Paley I (q = 243)
    assert R.dense_construction(344) == ("paley1", 343)  # not the doubling of Goethals-Seidel 172
    assert R.dense_construction(172) == ("goethals_seidel", 43)
    assert R.dense_construction(184) == ("doubling", None)
    assert R.dense_construction(312) == ("paley1", 311)
    assert R.dense_construction(40) == ("doubling", None)
    assert R.dense_construction(24) == ("paley1", 23)
    assert R.dense_symmetric(56) and not R.dense_symmetric(24) and not R.dense_symmetric(688)
    np.testing.assert_array_equal(R.dense_hadamard(8), R.sylvester(8))
    g = R.dense_hadamard(20)
    np.testing.assert_array_equal(R.dense_hadamard(40), np.block([[g, g], [g, -g]]))
    np.testing.assert_array_equal(R.dense_hadamard(28), R.paley2(13))
    np.testing.assert_array_equal(R.dense_hadamard(344), R.paley1(343))


@pytest.mark.parametrize("m", NOT_CONSTRUCTIBLE)
def test_not_constructible(m):
    assert not R.dense_constructible(m)
    assert not R.dense_symmetric(m)
    with pytest.raises(ValueError):
        R.dense_hadamard(m)


def test_dense_returns_copies():
    h = R.dense_hadamard(12)
    h[:] = 0
    assert_hadamard(R.dense_hadamard(12), 12)


@pytest.mark.parametrize("m", sorted(GOLDEN_HASHES))
def test_golden_hashes_shared_with_cpp(m):
    assert R.fnv1a64(R.dense_hadamard(m)) == GOLDEN_HASHES[m]


# ---------------------------------------------------------------------------------------------------------------
# Factorization and the full matrix
# ---------------------------------------------------------------------------------------------------------------


def test_model_factorizations():
    for n, mp in MODEL_FACTORS.items():
        assert R.factor(n) == mp, n
        m, p = mp
        assert m << p == n


def test_small_factorizations():
    for k in range(11):
        for K in (12, 20, 28, 36, 44, 52, 60, 92, 108, 116, 140, 156, 172):
            assert R.factor(K << k) == (K, k)
        assert R.factor(40 << k) == (20, k + 1)
        assert R.factor(2 << k) == (1, k + 1)
    assert R.factor(32768) == (1, 15)
    assert R.factor(65536) == (2, 15)  # Sylvester part capped at max_pow2
    assert R.factor(12 << 20) == (384, 15)
    assert R.factor(4096, max_pow2=4096) == (1, 12)
    assert R.factor(4096, max_pow2=2048) == (2, 11)
    assert R.factor(11008, max_pow2=16, max_m=1024) == (688, 4)
    assert R.factor(47 << 3) is None  # 376 = 2 * 188 = 8 * 47: no construction
    assert R.factor(36) == (36, 0)
    for n in (1, 0, -8, 3, 105, 39, 43, 86, 188, 236 << 5, 12 << 30):
        assert R.factor(n) is None, n
    assert R.factor(11008, max_m=128) is None  # 172 > 128; 86 and 43 are not Hadamard orders


def test_factor_matches_brute_force():
    """Smallest-m rule against an exhaustive search over all divisors."""
    for n in range(2, 3000):
        cands = [
            (n // (1 << p), p)
            for p in range(16)
            if n % (1 << p) == 0 and n >> p <= 512 and R.dense_constructible(n >> p)
        ]
        assert R.factor(n) == (min(cands) if cands else None), n


@pytest.mark.parametrize("n", [2, 16, 24, 48, 112, 160, 344 * 2, 108 * 8, 1024])
def test_hadamard_matrix(n):
    h = R.hadamard_matrix(n)
    assert h.dtype == np.float64
    assert_hadamard(h, n)
    m, p = R.factor(n)
    np.testing.assert_array_equal(h, np.kron(R.dense_hadamard(m), R.sylvester(1 << p)))


def test_hadamard_matrix_errors():
    with pytest.raises(ValueError):
        R.hadamard_matrix(188)
    with pytest.raises(ValueError):
        R.hadamard_matrix(1)
