/*!
 * \file hadamard_matrices.h
 * \brief Dense Hadamard matrices of non-power-of-two orders and the factorization n = m * 2^p used by the transform.
 *
 * Plain C++17 (no torch, no CUDA). A Hadamard transform of length n is done as H_n = D_m (x) S_{2^p}: a dense
 * +-1 matrix D_m of small order m (built here) Kronecker a Sylvester matrix of order 2^p (never materialized by the
 * kernels). tests/hadamard_ref.py is an independent numpy implementation that must produce EXACTLY the same D_m for
 * every m; the conventions below are repeated verbatim at the top of that file.
 *
 * ---------------------------------------------------------------------------------------------------------------
 * CONVENTIONS (identical in csrc/common/hadamard_matrices.cpp and tests/hadamard_ref.py)
 *
 *  Matrices are row-major, entries +1/-1, H H^T = m I. Indices start at 0.
 *
 *  Sylvester S_{2^p}:  S[i][j] = (-1)^popcount(i & j)   (= [[S, S], [S, -S]] doubling from S_1 = [1]).
 *
 *  Finite field GF(q), q = p^k (p an odd prime):
 *   - The modulus is the monic irreducible f(x) = x^k + c_{k-1} x^{k-1} + ... + c_0 over Z_p whose code
 *     sum_t c_t p^t is the smallest (i.e. lexicographically smallest (c_{k-1}, ..., c_0)). For k = 1 this is
 *     f(x) = x, i.e. plain arithmetic mod p.
 *   - Element e in 0..q-1 is the residue polynomial sum_t d_t x^t, where d_t are the base-p digits of e
 *     (e = sum_t d_t p^t, d_0 least significant). Addition/subtraction are digit-wise mod p.
 *   - Quadratic character chi(0) = 0, chi(a) = +1 if a is a nonzero square, -1 otherwise (= a^((q-1)/2)).
 *   - Jacobsthal matrix Q[i][j] = chi(x_i - x_j), i, j in 0..q-1 (x_i = element with code i).
 *
 *  Paley I (q = 3 mod 4), order q + 1, skew-type (H + H^T = 2I), NOT symmetric:
 *     H = I + [[0, 1^T], [-1, Q]]   i.e. H[0][0] = 1, H[0][1+j] = +1, H[1+i][0] = -1,
 *                                        H[1+i][1+j] = Q[i][j] + [i == j].
 *     First row is all +1; the first column cannot also be normalized without losing the skew property.
 *
 *  Paley II (q = 1 mod 4), order 2(q + 1), symmetric:
 *     C = [[0, 1^T], [1, Q]] (symmetric conference matrix, index 0 = "infinity"),
 *     H0[2a+s][2b+t] = C[a][b] * A[s][t] if C[a][b] != 0, else B[s][t];  A = [[1, 1], [1, -1]], B = [[1, -1], [-1, -1]]
 *     then normalized symmetrically: d_j = H0[0][j], H[i][j] = d_i * d_j * H0[i][j]
 *     (first row and first column all +1, still symmetric).
 *
 *  Goethals-Seidel, order 4t (t odd, in the table of hadamard_matrices.cpp: t = 23, 29, 39, 43), NOT symmetric:
 *     four +-1 sequences a_0..a_3 of length t whose periodic autocorrelations sum to zero at every nonzero shift
 *     (found by tools/gs_search.c, stored as '+'/'-' strings), circulants A_k[i][j] = a_k[(j - i) mod t],
 *     R[i][j] = [i + j == t - 1],
 *       H0 = [[ A0,     A1 R,    A2 R,    A3 R  ],
 *             [-A1 R,   A0,      A3^T R, -A2^T R],
 *             [-A2 R,  -A3^T R,  A0,      A1^T R],
 *             [-A3 R,   A2^T R, -A1^T R,  A0    ]]
 *     then H[i][j] = H0[i][j] * H0[0][j] (first row all +1).
 *
 *  Doubling: H_{2m} = [[H_m, H_m], [H_m, -H_m]]   (symmetric iff H_m is).
 *
 *  Choice rule for the dense matrix of order m (first that applies):
 *     1. m a power of two (incl. 1, 2): Sylvester S_m (symmetric);
 *     2. q = m/2 - 1 an odd prime power with q = 1 (mod 4): Paley II (symmetric);
 *     3. q = m - 1 an odd prime power with q = 3 (mod 4): Paley I (not symmetric);
 *     4. m = 4t with t in the Goethals-Seidel table (92, 116, 156, 172): Goethals-Seidel (not symmetric);
 *     5. m even and m/2 constructible: doubling of H_{m/2};
 *     6. otherwise not constructible (e.g. 188 = 4 * 47 and 236 = 4 * 59: no sequences in the table).
 *
 *  Factorization rule (hadamard_factor): among n = m * 2^p with 2^p <= max_pow2, m <= max_m and m constructible,
 *  take the smallest m (the largest p). m = 1 for powers of two n <= max_pow2.
 * ---------------------------------------------------------------------------------------------------------------
 */
#pragma once
#include <cstdint>
#include <vector>

namespace halo {

/*! \brief Decomposition n = m * 2^p of a Hadamard transform length: H_n = H_m (x) Sylvester(2^p). */
struct HadamardFactor {
  int m;      //!< order of the dense factor (1 when n is a power of two <= max_pow2)
  int log2p;  //!< p, so that the Sylvester factor has order 2^p
};

/*!
 * \brief Finds the factorization n = m * 2^p with the smallest constructible dense order m.
 * \param n transform length, must be >= 2 (n < 2 returns false)
 * \param out receives {m, p}; untouched when false is returned
 * \param max_pow2 largest allowed Sylvester order 2^p (default 32768)
 * \param max_m largest allowed dense order m (default 512)
 * \return whether such a factorization exists
 */
bool hadamard_factor(int64_t n, HadamardFactor* out, int64_t max_pow2 = 32768, int max_m = 512);

/*!
 * \brief The dense Hadamard matrix of order m (see the choice rule above), row-major +1/-1, H H^T = m I.
 *
 * Built once and cached for the lifetime of the process (thread-safe); the returned reference stays valid.
 * \throws std::invalid_argument when m is not constructible (m < 1, odd m > 1, or no construction applies).
 */
const std::vector<int8_t>& hadamard_dense(int m);

/*! \brief Whether hadamard_dense(m) succeeds (cheap: does not build the matrix). */
bool hadamard_dense_constructible(int m);

/*!
 * \brief Whether hadamard_dense(m) is a symmetric matrix (then the inverse transform equals the forward one up to
 *        scale): true for powers of two, Paley II and doublings of symmetric matrices; false for Paley I,
 *        Goethals-Seidel (and their doublings) and for non-constructible m.
 */
bool hadamard_dense_symmetric(int m);

/*!
 * \brief All constructible orders <= max_m that are not (a smaller constructible order) * 2, ascending.
 *
 * These are exactly the dense orders hadamard_factor can return (with a large enough max_pow2); 1 is included.
 */
std::vector<int> hadamard_dense_orders(int max_m);

}  // namespace halo
