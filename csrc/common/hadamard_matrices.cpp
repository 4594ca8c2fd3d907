/*!
 * \file hadamard_matrices.cpp
 * \brief Sylvester / Paley I / Paley II / Goethals-Seidel / doubling constructions of dense Hadamard matrices (see
 *        the header for the exact conventions, which tests/hadamard_ref.py reproduces bit for bit).
 */
#include "hadamard_matrices.h"

#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

namespace halo {
namespace {

// ------------------------------------------------------------------------------------------------------------------
// Small integer helpers
// ------------------------------------------------------------------------------------------------------------------

bool is_pow2(int64_t v) { return v >= 1 && (v & (v - 1)) == 0; }

/*! \brief If q = p^k for an odd prime p and k >= 1, sets *p, *k and returns true. */
bool odd_prime_power(int64_t q, int* p, int* k) {
  if (q < 3 || q % 2 == 0) return false;
  // Smallest prime factor of q (q is odd).
  int64_t sp = q;
  for (int64_t d = 3; d * d <= q; d += 2) {
    if (q % d == 0) {
      sp = d;
      break;
    }
  }
  int e = 0;
  while (q % sp == 0) {
    q /= sp;
    ++e;
  }
  if (q != 1) return false;  // a second prime factor
  *p = static_cast<int>(sp);
  *k = e;
  return true;
}

// ------------------------------------------------------------------------------------------------------------------
// GF(p^k): element e in 0..q-1 <-> polynomial with the base-p digits of e as coefficients (digit t = coeff of x^t),
// reduced modulo the monic irreducible polynomial of degree k with the smallest code sum_t c_t p^t.
// ------------------------------------------------------------------------------------------------------------------

class GaloisField {
 public:
  GaloisField(int p, int k) : p_(p), k_(k), q_(1) {
    for (int i = 0; i < k; ++i) q_ *= p;
    digits_.resize(static_cast<size_t>(q_) * k_);
    for (int e = 0; e < q_; ++e) {
      int v = e;
      for (int t = 0; t < k_; ++t) {
        digits_[static_cast<size_t>(e) * k_ + t] = v % p_;
        v /= p_;
      }
    }
    find_modulus();
    build_chi();
  }

  int order() const { return q_; }

  /*! \brief a - b (digit-wise mod p). */
  int sub(int a, int b) const {
    const int* da = digit_ptr(a);
    const int* db = digit_ptr(b);
    int r = 0;
    for (int t = k_ - 1; t >= 0; --t) r = r * p_ + (da[t] - db[t] + p_) % p_;
    return r;
  }

  /*! \brief a * b: polynomial product reduced modulo the field polynomial. */
  int mul(int a, int b) const {
    const int* da = digit_ptr(a);
    const int* db = digit_ptr(b);
    int prod[2 * kMaxDegree];
    for (int t = 0; t < 2 * k_ - 1; ++t) prod[t] = 0;
    for (int i = 0; i < k_; ++i)
      for (int j = 0; j < k_; ++j) prod[i + j] = (prod[i + j] + da[i] * db[j]) % p_;
    // x^k = -(c_{k-1} x^{k-1} + ... + c_0): eliminate degrees 2k-2 .. k from the top.
    for (int d = 2 * k_ - 2; d >= k_; --d) {
      const int c = prod[d];
      if (c == 0) continue;
      for (int t = 0; t < k_; ++t) prod[d - k_ + t] = ((prod[d - k_ + t] - c * modulus_[t]) % p_ + p_) % p_;
      prod[d] = 0;
    }
    int r = 0;
    for (int t = k_ - 1; t >= 0; --t) r = r * p_ + prod[t];
    return r;
  }

  /*! \brief Quadratic character: 0, +1 (nonzero square) or -1. */
  int chi(int a) const { return chi_[a]; }

 private:
  static constexpr int kMaxDegree = 32;  // q <= 2^31 bounds k far below this

  const int* digit_ptr(int e) const { return &digits_[static_cast<size_t>(e) * k_]; }

  /*! \brief Whether the monic polynomial x^k + sum_t c[t] x^t has a monic factor of degree 1..k/2 (trial division). */
  bool reducible(const std::vector<int>& c) const {
    for (int d = 1; d <= k_ / 2; ++d) {
      int count = 1;
      for (int i = 0; i < d; ++i) count *= p_;
      for (int gcode = 0; gcode < count; ++gcode) {
        // Divisor g = x^d + sum_{t<d} g[t] x^t; remainder of f mod g by long division (both monic).
        std::vector<int> g(d);
        for (int t = 0, v = gcode; t < d; ++t, v /= p_) g[t] = v % p_;
        std::vector<int> r(c);
        r.push_back(1);  // r = f, coefficients 0..k
        for (int top = k_; top >= d; --top) {
          const int lead = r[top];
          if (lead == 0) continue;
          for (int t = 0; t < d; ++t) r[top - d + t] = ((r[top - d + t] - lead * g[t]) % p_ + p_) % p_;
          r[top] = 0;
        }
        bool zero = true;
        for (int t = 0; t < d; ++t) zero = zero && r[t] == 0;
        if (zero) return true;
      }
    }
    return false;
  }

  /*! \brief The monic irreducible modulus of degree k with the smallest code sum_t c_t p^t (x itself when k = 1). */
  void find_modulus() {
    if (k_ > kMaxDegree / 2) throw std::invalid_argument("hadamard: GF degree too large");
    for (int code = 0; code < q_; ++code) {
      std::vector<int> c(k_);
      for (int t = 0, v = code; t < k_; ++t, v /= p_) c[t] = v % p_;
      if (!reducible(c)) {
        modulus_ = c;
        return;
      }
    }
    throw std::logic_error("hadamard: no irreducible polynomial found");  // impossible: one always exists
  }

  /*! \brief chi(a) = a^((q-1)/2) by square-and-multiply; the result must be 1 or -1 (= code p-1) for a != 0. */
  void build_chi() {
    chi_.assign(q_, 0);
    const int64_t e = (static_cast<int64_t>(q_) - 1) / 2;
    for (int a = 1; a < q_; ++a) {
      int result = 1, base = a;
      for (int64_t x = e; x > 0; x >>= 1) {
        if (x & 1) result = mul(result, base);
        base = mul(base, base);
      }
      if (result == 1) {
        chi_[a] = 1;
      } else if (result == p_ - 1) {
        chi_[a] = -1;
      } else {
        throw std::logic_error("hadamard: GF(" + std::to_string(q_) + ") modulus is not irreducible");
      }
    }
  }

  int p_, k_, q_;
  std::vector<int> digits_;   // [q, k] base-p digits of every element
  std::vector<int> modulus_;  // c_0 .. c_{k-1} of the monic modulus
  std::vector<int> chi_;      // quadratic character per element
};

/*! \brief Jacobsthal matrix Q[i][j] = chi(x_i - x_j), [q, q] row-major. */
std::vector<int8_t> jacobsthal(int p, int k) {
  const GaloisField f(p, k);
  const int q = f.order();
  std::vector<int8_t> Q(static_cast<size_t>(q) * q);
  for (int i = 0; i < q; ++i)
    for (int j = 0; j < q; ++j) Q[static_cast<size_t>(i) * q + j] = static_cast<int8_t>(f.chi(f.sub(i, j)));
  return Q;
}

// ------------------------------------------------------------------------------------------------------------------
// Constructions
// ------------------------------------------------------------------------------------------------------------------

enum class Construction { kNone, kSylvester, kPaley2, kPaley1, kGoethalsSeidel, kDoubling };

// ------------------------------------------------------------------------------------------------------------------
// Goethals-Seidel: four circulant +-1 sequences of odd length t whose periodic autocorrelations sum to zero at every
// nonzero shift. Found by tools/gs_search.c (tabu search; the arguments that reproduce each row are given), pasted
// verbatim; tests/hadamard_ref.py holds the same table. '+' = +1, '-' = -1.
// ------------------------------------------------------------------------------------------------------------------

struct GsSequences {
  int t;
  const char* a[4];
};

constexpr GsSequences kGsTable[] = {
    {23,  // gs_search 23 1 20000 -> order 92
     {"--+---+-++--+++++--+---", "----+-+++--+----+---+-+", "---++++-+--++---++--+--", "++--+-++++--+-+-+-++-++"}},
    {29,  // gs_search 29 1 20000 -> order 116
     {"--++-+--++----+---------++-++", "+++-----+++--+---+-+----++--+", "+-+-+++-++-+--+-+-++-+----++-",
      "+-----+++-+++-++----+---+-+-+"}},
    {39,  // gs_search 39 1 200000 -> order 156
     {"+---+-+----+-+--+++--+--+--+-+-+-+--+++", "+-------+-++++----++-++--+++-++--++++-+",
      "+-++++--+----+-+---+++-+++++++--+-+++++", "--++-+-+---++++--++--+++++-+-+-++-++-++"}},
    {43,  // gs_search 43 1 200000 -> order 172
     {"+----++--+--+---+-+-+----+++--+----++---+++", "-+-+---++-++-+-+----+--+--+--+---++-----+++",
      "+-+++++++++--+-+---+-++-+-------++-++---++-", "+------+-+++-+-++--++---+---+-++-++++-+---+"}},
};

/*! \brief The Goethals-Seidel sequences of length m / 4, or nullptr. */
const GsSequences* gs_sequences(int64_t m) {
  if (m % 4 != 0) return nullptr;
  for (const GsSequences& g : kGsTable)
    if (g.t == m / 4) return &g;
  return nullptr;
}

/*! \brief Which construction the choice rule (header) picks for order m; *p, *k get q = p^k for the Paley ones. */
Construction plan(int64_t m, int* p = nullptr, int* k = nullptr) {
  int pp = 0, kk = 0;
  Construction c = Construction::kNone;
  if (m < 1) {
    c = Construction::kNone;
  } else if (is_pow2(m)) {
    c = Construction::kSylvester;
  } else if (m % 4 == 0 && odd_prime_power(m / 2 - 1, &pp, &kk) && (m / 2 - 1) % 4 == 1) {
    c = Construction::kPaley2;
  } else if (odd_prime_power(m - 1, &pp, &kk) && (m - 1) % 4 == 3) {
    c = Construction::kPaley1;
  } else if (gs_sequences(m) != nullptr) {
    c = Construction::kGoethalsSeidel;
  } else if (m % 2 == 0 && plan(m / 2) != Construction::kNone) {
    c = Construction::kDoubling;
  }
  if (p) *p = pp;
  if (k) *k = kk;
  return c;
}

/*! \brief Parity of the number of set bits of v. */
int parity(unsigned v) {
  int r = 0;
  for (; v; v &= v - 1) r ^= 1;
  return r;
}

/*! \brief Sylvester S_m[i][j] = (-1)^popcount(i & j), m a power of two. */
std::vector<int8_t> sylvester(int m) {
  std::vector<int8_t> H(static_cast<size_t>(m) * m);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j) H[static_cast<size_t>(i) * m + j] = parity(static_cast<unsigned>(i & j)) ? -1 : 1;
  return H;
}

/*! \brief Paley I, order q + 1: H = I + [[0, 1^T], [-1, Q]] (skew-type). */
std::vector<int8_t> paley1(int p, int k) {
  const std::vector<int8_t> Q = jacobsthal(p, k);
  int q = 1;
  for (int i = 0; i < k; ++i) q *= p;
  const int m = q + 1;
  std::vector<int8_t> H(static_cast<size_t>(m) * m);
  H[0] = 1;
  for (int j = 0; j < q; ++j) H[1 + j] = 1;                          // first row: +1
  for (int i = 0; i < q; ++i) H[static_cast<size_t>(1 + i) * m] = -1;  // first column below the corner: -1
  for (int i = 0; i < q; ++i)
    for (int j = 0; j < q; ++j)
      H[static_cast<size_t>(1 + i) * m + 1 + j] =
          static_cast<int8_t>(Q[static_cast<size_t>(i) * q + j] + (i == j ? 1 : 0));
  return H;
}

/*! \brief Paley II, order 2(q + 1): conference matrix C expanded by A / B 2x2 blocks, then D H D normalized. */
std::vector<int8_t> paley2(int p, int k) {
  const std::vector<int8_t> Q = jacobsthal(p, k);
  int q = 1;
  for (int i = 0; i < k; ++i) q *= p;
  const int c = q + 1, m = 2 * c;
  auto conf = [&](int a, int b) -> int {  // C = [[0, 1^T], [1, Q]]
    if (a == 0 && b == 0) return 0;
    if (a == 0 || b == 0) return 1;
    return Q[static_cast<size_t>(a - 1) * q + (b - 1)];
  };
  static const int A[2][2] = {{1, 1}, {1, -1}};
  static const int B[2][2] = {{1, -1}, {-1, -1}};
  std::vector<int8_t> H(static_cast<size_t>(m) * m);
  for (int a = 0; a < c; ++a)
    for (int b = 0; b < c; ++b) {
      const int cab = conf(a, b);
      for (int s = 0; s < 2; ++s)
        for (int t = 0; t < 2; ++t)
          H[static_cast<size_t>(2 * a + s) * m + 2 * b + t] = static_cast<int8_t>(cab != 0 ? cab * A[s][t] : B[s][t]);
    }
  // Symmetric normalization: d_j = H0[0][j] (H0[0][0] = B[0][0] = 1), H[i][j] = d_i d_j H0[i][j].
  const std::vector<int8_t> d(H.begin(), H.begin() + m);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j) H[static_cast<size_t>(i) * m + j] = static_cast<int8_t>(H[static_cast<size_t>(i) * m + j] * d[i] * d[j]);
  return H;
}

/*!
 * \brief Goethals-Seidel array of the circulants A_k[i][j] = a_k[(j - i) mod t] and the back-diagonal R, order 4t:
 *   [[ A0,     A1 R,    A2 R,    A3 R  ],
 *    [-A1 R,   A0,      A3^T R, -A2^T R],
 *    [-A2 R,  -A3^T R,  A0,      A1^T R],
 *    [-A3 R,   A2^T R, -A1^T R,  A0    ]]
 * then every column multiplied by its first-row entry (first row all +1). (A R)[i][j] = a[(t - 1 - i - j) mod t],
 * (A^T R)[i][j] = a[(i + j + 1) mod t].
 */
std::vector<int8_t> goethals_seidel(const GsSequences& g) {
  const int t = g.t, m = 4 * t;
  auto at = [&](int k, int64_t idx) -> int {
    const int64_t r = ((idx % t) + t) % t;
    return g.a[k][r] == '+' ? 1 : -1;
  };
  // Block (R, C): which sequence, sign, and form (0 = circulant, 1 = A R, 2 = A^T R).
  static const int kSeq[4][4] = {{0, 1, 2, 3}, {1, 0, 3, 2}, {2, 3, 0, 1}, {3, 2, 1, 0}};
  static const int kSign[4][4] = {{1, 1, 1, 1}, {-1, 1, 1, -1}, {-1, -1, 1, 1}, {-1, 1, -1, 1}};
  static const int kForm[4][4] = {{0, 1, 1, 1}, {1, 0, 2, 2}, {1, 2, 0, 2}, {1, 2, 2, 0}};
  std::vector<int8_t> H(static_cast<size_t>(m) * m);
  for (int br = 0; br < 4; ++br)
    for (int bc = 0; bc < 4; ++bc)
      for (int i = 0; i < t; ++i)
        for (int j = 0; j < t; ++j) {
          const int k = kSeq[br][bc], f = kForm[br][bc];
          const int v = f == 0 ? at(k, j - i) : f == 1 ? at(k, t - 1 - i - j) : at(k, i + j + 1);
          H[static_cast<size_t>(br * t + i) * m + bc * t + j] = static_cast<int8_t>(kSign[br][bc] * v);
        }
  for (int j = 0; j < m; ++j)
    if (H[j] < 0)
      for (int i = 0; i < m; ++i) {
        int8_t& v = H[static_cast<size_t>(i) * m + j];
        v = static_cast<int8_t>(-v);
      }
  return H;
}

/*! \brief [[H, H], [H, -H]]. */
std::vector<int8_t> doubling(const std::vector<int8_t>& h, int m) {
  const int n = 2 * m;
  std::vector<int8_t> H(static_cast<size_t>(n) * n);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j) {
      const int8_t v = h[static_cast<size_t>(i) * m + j];
      H[static_cast<size_t>(i) * n + j] = v;
      H[static_cast<size_t>(i) * n + m + j] = v;
      H[static_cast<size_t>(m + i) * n + j] = v;
      H[static_cast<size_t>(m + i) * n + m + j] = static_cast<int8_t>(-v);
    }
  return H;
}

std::vector<int8_t> build_dense(int m) {
  int p = 0, k = 0;
  switch (plan(m, &p, &k)) {
    case Construction::kSylvester: return sylvester(m);
    case Construction::kPaley2: return paley2(p, k);
    case Construction::kPaley1: return paley1(p, k);
    case Construction::kGoethalsSeidel: return goethals_seidel(*gs_sequences(m));
    case Construction::kDoubling: return doubling(hadamard_dense(m / 2), m / 2);
    case Construction::kNone: break;
  }
  throw std::invalid_argument("hadamard_dense: no Hadamard matrix construction for order " + std::to_string(m) +
                              " (supported: powers of two, Paley I q+1 with q = 3 mod 4, Paley II 2(q+1) with q = 1 "
                              "mod 4, q an odd prime power, Goethals-Seidel 4t for t in {23, 29, 39, 43}, and their "
                              "doublings)");
}

}  // namespace

// --------------------------------------------------------------------------------------------------------------------
// Public API
// --------------------------------------------------------------------------------------------------------------------

bool hadamard_dense_constructible(int m) { return plan(m) != Construction::kNone; }

bool hadamard_dense_symmetric(int m) {
  for (;;) {
    switch (plan(m)) {
      case Construction::kSylvester:
      case Construction::kPaley2: return true;
      case Construction::kDoubling: m /= 2; continue;  // [[H, H], [H, -H]] is symmetric iff H is
      case Construction::kPaley1:
      case Construction::kGoethalsSeidel:
      case Construction::kNone: return false;
    }
  }
}

const std::vector<int8_t>& hadamard_dense(int m) {
  static std::mutex mu;
  static std::map<int, std::unique_ptr<const std::vector<int8_t>>> cache;  // nodes never move: references stay valid
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(m);
    if (it != cache.end()) return *it->second;
  }
  // Build without holding the lock (doubling recurses into hadamard_dense); a concurrent builder of the same order
  // produces the identical matrix, and the first one inserted wins.
  auto built = std::make_unique<const std::vector<int8_t>>(build_dense(m));
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.try_emplace(m, std::move(built)).first;
  return *it->second;
}

bool hadamard_factor(int64_t n, HadamardFactor* out, int64_t max_pow2, int max_m) {
  if (n < 2 || max_pow2 < 1 || max_m < 1) return false;
  int v2 = 0;  // 2-adic valuation of n
  while (((n >> v2) & 1) == 0) ++v2;
  int pcap = 0;  // floor(log2(max_pow2))
  while (pcap < 62 && (int64_t{1} << (pcap + 1)) <= max_pow2) ++pcap;
  // The smallest m is reached with the largest p; m only grows as p decreases.
  for (int p = v2 < pcap ? v2 : pcap; p >= 0; --p) {
    const int64_t m = n >> p;
    if (m > max_m) return false;
    if (hadamard_dense_constructible(static_cast<int>(m))) {
      if (out) *out = HadamardFactor{static_cast<int>(m), p};
      return true;
    }
  }
  return false;
}

std::vector<int> hadamard_dense_orders(int max_m) {
  std::vector<int> orders;
  for (int m = 1; m <= max_m; ++m) {
    if (!hadamard_dense_constructible(m)) continue;
    if (m % 2 == 0 && hadamard_dense_constructible(m / 2)) continue;
    orders.push_back(m);
  }
  return orders;
}

}  // namespace halo
