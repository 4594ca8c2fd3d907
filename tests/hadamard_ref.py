"""Independent numpy reference for the Hadamard matrices of csrc/common/hadamard_matrices.{h,cpp}.

Tests compare the library's transforms against ``hadamard_matrix(n) = kron(dense_hadamard(m), sylvester(2**p))``
from this file. Nothing here calls the C++ code; the two implementations agree because they follow the same
conventions, repeated verbatim from csrc/common/hadamard_matrices.h:

---------------------------------------------------------------------------------------------------------------
CONVENTIONS (identical in csrc/common/hadamard_matrices.cpp and tests/hadamard_ref.py)

 Matrices are row-major, entries +1/-1, H H^T = m I. Indices start at 0.

 Sylvester S_{2^p}:  S[i][j] = (-1)^popcount(i & j)   (= [[S, S], [S, -S]] doubling from S_1 = [1]).

 Finite field GF(q), q = p^k (p an odd prime):
  - The modulus is the monic irreducible f(x) = x^k + c_{k-1} x^{k-1} + ... + c_0 over Z_p whose code
    sum_t c_t p^t is the smallest (i.e. lexicographically smallest (c_{k-1}, ..., c_0)). For k = 1 this is
    f(x) = x, i.e. plain arithmetic mod p.
  - Element e in 0..q-1 is the residue polynomial sum_t d_t x^t, where d_t are the base-p digits of e
    (e = sum_t d_t p^t, d_0 least significant). Addition/subtraction are digit-wise mod p.
  - Quadratic character chi(0) = 0, chi(a) = +1 if a is a nonzero square, -1 otherwise (= a^((q-1)/2)).
  - Jacobsthal matrix Q[i][j] = chi(x_i - x_j), i, j in 0..q-1 (x_i = element with code i).

 Paley I (q = 3 mod 4), order q + 1, skew-type (H + H^T = 2I), NOT symmetric:
    H = I + [[0, 1^T], [-1, Q]]   i.e. H[0][0] = 1, H[0][1+j] = +1, H[1+i][0] = -1,
                                       H[1+i][1+j] = Q[i][j] + [i == j].
    First row is all +1; the first column cannot also be normalized without losing the skew property.

 Paley II (q = 1 mod 4), order 2(q + 1), symmetric:
    C = [[0, 1^T], [1, Q]] (symmetric conference matrix, index 0 = "infinity"),
    H0[2a+s][2b+t] = C[a][b] * A[s][t] if C[a][b] != 0, else B[s][t];  A = [[1, 1], [1, -1]], B = [[1, -1], [-1, -1]]
    then normalized symmetrically: d_j = H0[0][j], H[i][j] = d_i * d_j * H0[i][j]
    (first row and first column all +1, still symmetric).

 Goethals-Seidel, order 4t (t odd, in the table of hadamard_matrices.cpp: t = 23, 29, 39, 43), NOT symmetric:
    four +-1 sequences a_0..a_3 of length t whose periodic autocorrelations sum to zero at every nonzero shift
    (found by tools/gs_search.c, stored as '+'/'-' strings), circulants A_k[i][j] = a_k[(j - i) mod t],
    R[i][j] = [i + j == t - 1],
      H0 = [[ A0,     A1 R,    A2 R,    A3 R  ],
            [-A1 R,   A0,      A3^T R, -A2^T R],
            [-A2 R,  -A3^T R,  A0,      A1^T R],
            [-A3 R,   A2^T R, -A1^T R,  A0    ]]
    then H[i][j] = H0[i][j] * H0[0][j] (first row all +1).

 Doubling: H_{2m} = [[H_m, H_m], [H_m, -H_m]]   (symmetric iff H_m is).

 Choice rule for the dense matrix of order m (first that applies):
    1. m a power of two (incl. 1, 2): Sylvester S_m (symmetric);
    2. q = m/2 - 1 an odd prime power with q = 1 (mod 4): Paley II (symmetric);
    3. q = m - 1 an odd prime power with q = 3 (mod 4): Paley I (not symmetric);
    4. m = 4t with t in the Goethals-Seidel table (92, 116, 156, 172): Goethals-Seidel (not symmetric);
    5. m even and m/2 constructible: doubling of H_{m/2};
    6. otherwise not constructible (e.g. 188 = 4 * 47 and 236 = 4 * 59: no sequences in the table).

 Factorization rule (hadamard_factor): among n = m * 2^p with 2^p <= max_pow2, m <= max_m and m constructible,
 take the smallest m (the largest p). m = 1 for powers of two n <= max_pow2.
---------------------------------------------------------------------------------------------------------------

Implementation notes (deliberately different algorithms from the C++ where the result is fixed by the conventions):
irreducible polynomials are found by sieving out all products of lower-degree monic polynomials (C++: trial
division), chi by enumerating squares (C++: Euler's criterion), Paley II via np.kron (C++: explicit loops),
Goethals-Seidel from circulant matrices and np.block (C++: closed-form indices per block). The Goethals-Seidel
sequences are data (the output of tools/gs_search.c), so both files hold the same table.

All matrices are returned as float64 arrays of +-1 (fresh copies; the cache below is internal).
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

__all__ = [
    "sylvester",
    "paley1",
    "paley2",
    "goethals_seidel",
    "GS_SEQUENCES",
    "dense_hadamard",
    "dense_construction",
    "dense_constructible",
    "dense_symmetric",
    "dense_orders",
    "factor",
    "hadamard_matrix",
    "GF",
    "prime_power",
    "fnv1a64",
]


# ----------------------------------------------------------------------------------------------------------------
# Integer helpers
# ----------------------------------------------------------------------------------------------------------------


def _is_pow2(v: int) -> bool:
    return v >= 1 and v & (v - 1) == 0


def prime_power(q: int):
    """(p, k) with q = p**k for a prime p and k >= 1, else None."""
    if q < 2:
        return None
    p = next(d for d in itertools.count(2) if q % d == 0 or d * d > q)
    if q % p != 0:  # no divisor <= sqrt(q): q is prime
        return q, 1
    k = 0
    while q % p == 0:
        q //= p
        k += 1
    return (p, k) if q == 1 else None


def _odd_prime_power(q: int):
    pk = prime_power(q)
    return pk if pk is not None and pk[0] != 2 else None


# ----------------------------------------------------------------------------------------------------------------
# GF(p^k)
# ----------------------------------------------------------------------------------------------------------------


def _poly_mul(a, b, p):
    """Product of coefficient lists (index = degree) over Z_p."""
    out = [0] * (len(a) + len(b) - 1)
    for i, ai in enumerate(a):
        for j, bj in enumerate(b):
            out[i + j] = (out[i + j] + ai * bj) % p
    return out


def _smallest_irreducible(p: int, k: int):
    """Low coefficients [c_0, ..., c_{k-1}] of the monic irreducible degree-k polynomial with the smallest code.

    Sieve: every reducible monic polynomial of degree k is g * h with g, h monic of degrees d and k - d,
    1 <= d <= k // 2; collect their codes and return the first code not among them.
    """

    def monic(deg):
        for low in itertools.product(range(p), repeat=deg):
            yield list(low) + [1]

    reducible = set()
    for d in range(1, k // 2 + 1):
        for g in monic(d):
            for h in monic(k - d):
                f = _poly_mul(g, h, p)
                reducible.add(sum(c * p**t for t, c in enumerate(f[:k])))
    code = next(c for c in range(p**k) if c not in reducible)
    return [(code // p**t) % p for t in range(k)]


class GF:
    """GF(p^k) with elements encoded as integers 0..q-1 (base-p digits = polynomial coefficients)."""

    def __init__(self, p: int, k: int):
        self.p, self.k, self.q = p, k, p**k
        self.modulus = _smallest_irreducible(p, k)  # c_0 .. c_{k-1}; f = x^k + sum c_t x^t
        self.powers = p ** np.arange(k, dtype=np.int64)
        self.digits = (np.arange(self.q, dtype=np.int64)[:, None] // self.powers[None, :]) % p  # [q, k]
        # chi: -1 everywhere, +1 on the nonzero squares, 0 at 0.
        self.chi = -np.ones(self.q, dtype=np.int64)
        for y in range(1, self.q):
            self.chi[self.mul(y, y)] = 1
        self.chi[0] = 0

    def encode(self, coeffs) -> int:
        return int(sum(int(c) * self.p**t for t, c in enumerate(coeffs)))

    def mul(self, a: int, b: int) -> int:
        p, k = self.p, self.k
        prod = _poly_mul([int(d) for d in self.digits[a]], [int(d) for d in self.digits[b]], p)
        # Reduce: x^k == -sum_t c_t x^t, eliminating the highest degree first.
        for deg in range(len(prod) - 1, k - 1, -1):
            lead = prod[deg]
            if lead:
                for t, c in enumerate(self.modulus):
                    prod[deg - k + t] = (prod[deg - k + t] - lead * c) % p
                prod[deg] = 0
        return self.encode(prod[:k])

    def add(self, a: int, b: int) -> int:
        return self.encode((self.digits[a] + self.digits[b]) % self.p)

    def sub_table(self) -> np.ndarray:
        """[q, q] codes of x_i - x_j."""
        diff = (self.digits[:, None, :] - self.digits[None, :, :]) % self.p
        return diff @ self.powers

    def jacobsthal(self) -> np.ndarray:
        """Q[i][j] = chi(x_i - x_j) as int64 [q, q]."""
        return self.chi[self.sub_table()]


@functools.lru_cache(maxsize=None)
def _gf(q: int) -> GF:
    pk = _odd_prime_power(q)
    if pk is None:
        raise ValueError(f"{q} is not an odd prime power")
    return GF(*pk)


# ----------------------------------------------------------------------------------------------------------------
# Constructions
# ----------------------------------------------------------------------------------------------------------------


def sylvester(n: int) -> np.ndarray:
    """Sylvester Hadamard matrix of order n (a power of two), S[i][j] = (-1)^popcount(i & j)."""
    if not _is_pow2(n):
        raise ValueError(f"sylvester: {n} is not a power of two")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def paley1(q: int) -> np.ndarray:
    """Paley I Hadamard matrix of order q + 1 (q = 3 mod 4 an odd prime power): I + [[0, 1^T], [-1, Q]]."""
    if _odd_prime_power(q) is None or q % 4 != 3:
        raise ValueError(f"paley1: q = {q} must be an odd prime power = 3 mod 4")
    Q = _gf(q).jacobsthal().astype(np.float64)
    one = np.ones((q, 1))
    S = np.block([[np.zeros((1, 1)), one.T], [-one, Q]])
    return np.eye(q + 1) + S


def paley2(q: int) -> np.ndarray:
    """Paley II Hadamard matrix of order 2(q + 1) (q = 1 mod 4 an odd prime power), symmetric and normalized."""
    if _odd_prime_power(q) is None or q % 4 != 1:
        raise ValueError(f"paley2: q = {q} must be an odd prime power = 1 mod 4")
    Q = _gf(q).jacobsthal().astype(np.float64)
    one = np.ones((q, 1))
    C = np.block([[np.zeros((1, 1)), one.T], [one, Q]])  # zero exactly on the diagonal
    A = np.array([[1.0, 1.0], [1.0, -1.0]])
    B = np.array([[1.0, -1.0], [-1.0, -1.0]])
    H0 = np.kron(C, A) + np.kron(np.eye(q + 1), B)
    d = H0[0].copy()
    return d[:, None] * H0 * d[None, :]


# Output of tools/gs_search.c (t seed steps in the comment), the same table as kGsTable in hadamard_matrices.cpp.
GS_SEQUENCES = {
    23: (  # gs_search 23 1 20000 -> order 92
        "--+---+-++--+++++--+---", "----+-+++--+----+---+-+", "---++++-+--++---++--+--", "++--+-++++--+-+-+-++-++",
    ),
    29: (  # gs_search 29 1 20000 -> order 116
        "--++-+--++----+---------++-++", "+++-----+++--+---+-+----++--+", "+-+-+++-++-+--+-+-++-+----++-",
        "+-----+++-+++-++----+---+-+-+",
    ),
    39: (  # gs_search 39 1 200000 -> order 156
        "+---+-+----+-+--+++--+--+--+-+-+-+--+++", "+-------+-++++----++-++--+++-++--++++-+",
        "+-++++--+----+-+---+++-+++++++--+-+++++", "--++-+-+---++++--++--+++++-+-+-++-++-++",
    ),
    43: (  # gs_search 43 1 200000 -> order 172
        "+----++--+--+---+-+-+----+++--+----++---+++", "-+-+---++-++-+-+----+--+--+--+---++-----+++",
        "+-+++++++++--+-+---+-++-+-------++-++---++-", "+------+-+++-+-++--++---+---+-++-++++-+---+",
    ),
}  # fmt: skip


def goethals_seidel(t: int) -> np.ndarray:
    """Goethals-Seidel Hadamard matrix of order 4t from GS_SEQUENCES[t], columns normalized (first row all +1)."""
    if t not in GS_SEQUENCES:
        raise ValueError(f"goethals_seidel: no sequences of length {t} (have {sorted(GS_SEQUENCES)})")
    seqs = [np.array([1.0 if ch == "+" else -1.0 for ch in s]) for s in GS_SEQUENCES[t]]
    idx = (np.arange(t)[None, :] - np.arange(t)[:, None]) % t
    A0, A1, A2, A3 = (a[idx] for a in seqs)  # circulants A[i][j] = a[(j - i) mod t]
    R = np.fliplr(np.eye(t))
    H0 = np.block(
        [
            [A0, A1 @ R, A2 @ R, A3 @ R],
            [-A1 @ R, A0, A3.T @ R, -A2.T @ R],
            [-A2 @ R, -A3.T @ R, A0, A1.T @ R],
            [-A3 @ R, A2.T @ R, -A1.T @ R, A0],
        ]
    )
    return H0 * H0[0][None, :]


def dense_construction(m: int):
    """Which construction the choice rule picks for order m:
    ('sylvester', None) | ('paley2', q) | ('paley1', q) | ('goethals_seidel', t) | ('doubling', None) | None."""
    if m < 1:
        return None
    if _is_pow2(m):
        return ("sylvester", None)
    if m % 4 == 0 and (m // 2 - 1) % 4 == 1 and _odd_prime_power(m // 2 - 1):
        return ("paley2", m // 2 - 1)
    if (m - 1) % 4 == 3 and _odd_prime_power(m - 1):
        return ("paley1", m - 1)
    if m % 4 == 0 and m // 4 in GS_SEQUENCES:
        return ("goethals_seidel", m // 4)
    if m % 2 == 0 and dense_construction(m // 2) is not None:
        return ("doubling", None)
    return None


def dense_constructible(m: int) -> bool:
    return dense_construction(m) is not None


def dense_symmetric(m: int) -> bool:
    """Whether dense_hadamard(m) is symmetric (False when not constructible)."""
    c = dense_construction(m)
    if c is None:
        return False
    if c[0] == "doubling":
        return dense_symmetric(m // 2)
    return c[0] in ("sylvester", "paley2")


@functools.lru_cache(maxsize=None)
def _dense_cached(m: int) -> np.ndarray:
    c = dense_construction(m)
    if c is None:
        raise ValueError(f"dense_hadamard: no Hadamard matrix construction for order {m}")
    kind, q = c
    if kind == "sylvester":
        h = sylvester(m)
    elif kind == "paley2":
        h = paley2(q)
    elif kind == "paley1":
        h = paley1(q)
    elif kind == "goethals_seidel":
        h = goethals_seidel(q)
    else:
        g = _dense_cached(m // 2)
        h = np.block([[g, g], [g, -g]])
    h.setflags(write=False)
    return h


def dense_hadamard(m: int) -> np.ndarray:
    """Dense Hadamard matrix of order m following the choice rule (float64 +-1, a fresh copy)."""
    return _dense_cached(m).copy()


def dense_orders(max_m: int):
    """Constructible orders <= max_m that are not (a smaller constructible order) * 2, ascending (1 included)."""
    return [
        m
        for m in range(1, max_m + 1)
        if dense_constructible(m) and not (m % 2 == 0 and dense_constructible(m // 2))
    ]


def factor(n: int, max_pow2: int = 32768, max_m: int = 512):
    """(m, log2p) with n = m * 2**log2p, 2**log2p <= max_pow2, m <= max_m, m constructible and smallest; or None.

    n must be >= 2 (smaller n gives None), mirroring halo::hadamard_factor.
    """
    if n < 2 or max_pow2 < 1 or max_m < 1:
        return None
    best = None
    p = 0
    while n % (1 << p) == 0 and (1 << p) <= max_pow2:
        m = n >> p
        if m <= max_m and dense_constructible(m):
            best = (m, p)  # later (larger) p gives a smaller m
        p += 1
    return best


def hadamard_matrix(n: int, max_pow2: int = 32768, max_m: int = 512) -> np.ndarray:
    """Unnormalized +-1 Hadamard matrix of order n used by the library: kron(dense_hadamard(m), sylvester(2**p))."""
    f = factor(n, max_pow2=max_pow2, max_m=max_m)
    if f is None:
        raise ValueError(f"hadamard_matrix: no factorization n = m * 2^p for n = {n}")
    m, p = f
    return np.kron(_dense_cached(m), sylvester(1 << p))


def fnv1a64(h: np.ndarray) -> int:
    """FNV-1a 64-bit hash of the row-major int8 bytes of a +-1 matrix (+1 -> 0x01, -1 -> 0xFF).

    The C++ test harness computes the same hash of halo::hadamard_dense(m), pinning both implementations to the
    same golden values.
    """
    data = np.ascontiguousarray(h, dtype=np.float64).astype(np.int8).tobytes()
    x = 0xCBF29CE484222325
    for b in data:
        x = ((x ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return x
