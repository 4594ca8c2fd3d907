// Test harness for csrc/common/hadamard_matrices.{h,cpp} (plain C++17, no framework).
//
// Build and run:
//   g++ -O2 -std=c++17 -pthread -I csrc/common tests/cpp/test_hadamard_matrices.cpp
//       csrc/common/hadamard_matrices.cpp -o /tmp/test_hadamard_matrices && /tmp/test_hadamard_matrices
// `--hashes` additionally prints "m fnv1a64" for every constructible order <= 512, to compare with
// tests/hadamard_ref.py (fnv1a64(dense_hadamard(m))).
// Prints "N passed, M failed" and returns nonzero when anything failed.

#include "hadamard_matrices.h"

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using halo::HadamardFactor;

namespace {

int g_passed = 0, g_failed = 0;

void check(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    std::printf("FAILED: %s\n", what.c_str());
  }
}

/*! \brief FNV-1a 64 over the row-major int8 bytes (same as hadamard_ref.fnv1a64). */
uint64_t fnv1a64(const std::vector<int8_t>& h) {
  uint64_t x = 0xCBF29CE484222325ull;
  for (int8_t v : h) {
    x ^= static_cast<uint8_t>(v);
    x *= 0x100000001B3ull;
  }
  return x;
}

bool all_pm1(const std::vector<int8_t>& H) {
  for (int8_t v : H)
    if (v != 1 && v != -1) return false;
  return true;
}

/*! \brief H H^T == m I. */
bool orthogonal(const std::vector<int8_t>& H, int m) {
  for (int i = 0; i < m; ++i)
    for (int j = i; j < m; ++j) {
      int dot = 0;
      for (int t = 0; t < m; ++t) dot += H[static_cast<size_t>(i) * m + t] * H[static_cast<size_t>(j) * m + t];
      if (dot != (i == j ? m : 0)) return false;
    }
  return true;
}

bool is_symmetric(const std::vector<int8_t>& H, int m) {
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < i; ++j)
      if (H[static_cast<size_t>(i) * m + j] != H[static_cast<size_t>(j) * m + i]) return false;
  return true;
}

/*! \brief H + H^T == 2 I (skew-type). */
bool is_skew_type(const std::vector<int8_t>& H, int m) {
  for (int i = 0; i < m; ++i)
    for (int j = 0; j <= i; ++j)
      if (H[static_cast<size_t>(i) * m + j] + H[static_cast<size_t>(j) * m + i] != (i == j ? 2 : 0)) return false;
  return true;
}

void check_factor(int64_t n, int m, int p, int64_t max_pow2 = 32768, int max_m = 512) {
  HadamardFactor f{-7, -7};
  const bool ok = halo::hadamard_factor(n, &f, max_pow2, max_m);
  check(ok && f.m == m && f.log2p == p, "factor(" + std::to_string(n) + ") = " + std::to_string(m) + " * 2^" +
                                            std::to_string(p) + ", got " + (ok ? std::to_string(f.m) + " * 2^" +
                                            std::to_string(f.log2p) : std::string("none")));
}

void check_no_factor(int64_t n, int64_t max_pow2 = 32768, int max_m = 512) {
  HadamardFactor f{-7, -7};
  const bool ok = halo::hadamard_factor(n, &f, max_pow2, max_m);
  check(!ok && f.m == -7 && f.log2p == -7, "factor(" + std::to_string(n) + ") has no factorization, out untouched");
}

}  // namespace

int main(int argc, char** argv) {
  const bool print_hashes = argc > 1 && std::strcmp(argv[1], "--hashes") == 0;

  // ---- Cold build time of every constructible order <= 512 (doublings included) -------------------------------
  {
    const auto t0 = std::chrono::steady_clock::now();
    int built = 0;
    for (int m = 1; m <= 512; ++m)
      if (halo::hadamard_dense_constructible(m)) {
        (void)halo::hadamard_dense(m);
        ++built;
      }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("built %d dense matrices (all constructible orders <= 512) in %.1f ms\n", built, ms);
    check(ms < 1000.0, "building all matrices <= 512 takes well under a second");
  }

  // ---- The list of dense orders --------------------------------------------------------------------------------
  // 312, 344, 368 and 464 are constructible but are doublings of 156, 172, 184 and 232, so not dense orders.
  const std::vector<int> expected_orders = {1,   12,  20,  28,  36,  44,  52,  60,  68,  76,  84,  92,  100,
                                            108, 116, 124, 132, 140, 148, 156, 164, 172, 180, 196, 204, 212,
                                            220, 228, 244, 252, 276, 284, 300, 308, 316, 332, 340, 348, 364,
                                            380, 388, 396, 420, 444, 460, 468, 484, 492, 500};
  const std::vector<int> expected_nonsymmetric = {44,  68,  92,  116, 132, 140, 156, 172, 212,
                                                  284, 308, 332, 380, 420, 444, 492, 500};
  const std::vector<int> goethals_seidel = {92, 116, 156, 172};
  const std::vector<int> orders = halo::hadamard_dense_orders(512);
  check(orders == expected_orders, "hadamard_dense_orders(512) matches the expected list");
  check(halo::hadamard_dense_orders(30) == std::vector<int>({1, 12, 20, 28}), "hadamard_dense_orders(30)");

  // ---- Every constructible order <= 512: +-1, orthogonal, symmetry flag, normalization, skew-type Paley I ------
  for (int m = 1; m <= 512; ++m) {
    if (!halo::hadamard_dense_constructible(m)) continue;
    const std::vector<int8_t>& H = halo::hadamard_dense(m);
    const std::string tag = "m = " + std::to_string(m);
    check(H.size() == static_cast<size_t>(m) * m, tag + ": size");
    check(all_pm1(H), tag + ": entries +-1");
    check(orthogonal(H, m), tag + ": H H^T = m I");
    const bool sym = halo::hadamard_dense_symmetric(m);
    check(sym == is_symmetric(H, m), tag + ": hadamard_dense_symmetric matches the matrix");
    bool row0 = true, col0 = true;
    for (int j = 0; j < m; ++j) row0 = row0 && H[j] == 1;
    for (int i = 0; i < m; ++i) col0 = col0 && H[static_cast<size_t>(i) * m] == 1;
    check(row0, tag + ": first row all +1");
    if (sym) check(col0, tag + ": symmetric -> first column all +1");
    check(&H == &halo::hadamard_dense(m), tag + ": cached (same reference)");
  }
  for (int m : orders) {
    const bool nonsym = std::find(expected_nonsymmetric.begin(), expected_nonsymmetric.end(), m) !=
                        expected_nonsymmetric.end();
    check(halo::hadamard_dense_symmetric(m) == !nonsym, "symmetry flag of dense order " + std::to_string(m));
    // A non-symmetric dense order is Goethals-Seidel or Paley I; Paley I is skew-type.
    const bool gs = std::find(goethals_seidel.begin(), goethals_seidel.end(), m) != goethals_seidel.end();
    if (nonsym && !gs)
      check(is_skew_type(halo::hadamard_dense(m), m), "Paley I order " + std::to_string(m) + " skew-type");
  }
  // Specific constructions.
  check(halo::hadamard_dense_symmetric(56), "56 = doubling of symmetric 28 is symmetric");
  check(!halo::hadamard_dense_symmetric(24), "24 = Paley I (q = 23) is not symmetric");
  check(halo::hadamard_dense_symmetric(4) && halo::hadamard_dense_symmetric(256), "powers of two are Sylvester");
  check(!halo::hadamard_dense_symmetric(688), "688 = doubling of Paley I 344 is not symmetric");

  // ---- Non-constructible orders -------------------------------------------------------------------------------
  for (int m : {0, -4, 3, 5, 6, 10, 14, 18, 22, 188, 236, 376, 428, 507}) {
    const std::string tag = "m = " + std::to_string(m);
    check(!halo::hadamard_dense_constructible(m), tag + ": not constructible");
    check(!halo::hadamard_dense_symmetric(m), tag + ": not symmetric");
    bool threw = false;
    try {
      (void)halo::hadamard_dense(m);
    } catch (const std::invalid_argument& e) {
      threw = std::strstr(e.what(), std::to_string(m).c_str()) != nullptr;
    }
    check(threw, tag + ": hadamard_dense throws std::invalid_argument naming the order");
  }

  // ---- Factorizations -----------------------------------------------------------------------------------------
  check_factor(11008, 172, 6);
  check_factor(13824, 108, 7);
  check_factor(14336, 28, 9);
  check_factor(18944, 148, 7);
  check_factor(28672, 28, 10);
  check_factor(5120, 20, 8);
  check_factor(12288, 12, 10);
  check_factor(8960, 140, 6);
  check_factor(4864, 76, 6);
  check_factor(3584, 28, 7);
  for (int k = 0; k <= 10; ++k) {
    for (int K : {12, 20, 28, 36, 44, 52, 60, 92, 108, 116, 140, 156, 172})
      check_factor(static_cast<int64_t>(K) << k, K, k);
    check_factor(int64_t{40} << k, 20, k + 1);
    check_factor(int64_t{2} << k, 1, k + 1);
  }
  check_factor(32768, 1, 15);
  check_factor(65536, 2, 15);                  // Sylvester part capped at max_pow2
  check_factor(int64_t{12} << 20, 384, 15);    // 384 = doubling chain of 12 / Paley I (q = 383)
  check_factor(4096, 1, 12, 4096);
  check_factor(4096, 2, 11, 2048);
  check_factor(11008, 688, 4, 16, 1024);
  check_no_factor(11008, 32768, 128);          // 172 > max_m; 86 and 43 are not Hadamard orders
  check_no_factor(int64_t{12} << 30);          // m would exceed max_m
  check_no_factor(1);
  check_no_factor(0);
  check_no_factor(-8);
  check_no_factor(3);
  check_no_factor(39);
  check_no_factor(86);
  check_no_factor(188);
  check_no_factor(47 << 3);       // 376 = 2 * 188 = 8 * 47: no construction
  check_factor(92 << 3, 92, 3);   // Goethals-Seidel 92 (368 = Paley I, q = 367, is larger)
  check_no_factor(236 << 5);
  check_factor(36, 36, 0);
  check_no_factor(3 * 5 * 7);

  // ---- Golden hashes, shared with tests/test_hadamard_ref.py (independent numpy construction) -------------------
  // Together they cover every construction and every extension field GF(p^k), k > 1, that the choice rule uses.
  {
    const struct {
      int m;
      uint64_t hash;
    } golden[] = {
        {12, 0x0c8e2f1f248f495dull},   // Paley II, q = 5
        {20, 0xbb41e7bd71ce49adull},   // Paley II, q = 9 = 3^2
        {28, 0x2d056fd79e78a0fdull},   // Paley II, q = 13
        {52, 0x56426c453ba117edull},   // Paley II, q = 25 = 5^2
        {56, 0x1429fdb3ebc97cd5ull},   // doubling of 28
        {100, 0x00e6cb3e096c32cdull},  // Paley II, q = 49 = 7^2
        {108, 0x769956e603b9b41dull},  // Paley II, q = 53
        {164, 0xa4820fba9e354f4dull},  // Paley II, q = 81 = 3^4
        {244, 0xce265835773ec06dull},  // Paley II, q = 121 = 11^2
        {252, 0x5951fb80ab6d09bdull},  // Paley II, q = 125 = 5^3
        {340, 0xf4e8d0c6f0ba932dull},  // Paley II, q = 169 = 13^2
        {344, 0xf71284691f0dcd25ull},  // Paley I, q = 343 = 7^3
        {92, 0x6280068ad254bdfdull},   // Goethals-Seidel, t = 23
        {116, 0x9417b2a248c7fb15ull},  // Goethals-Seidel, t = 29
        {156, 0x195c4b7481b6df5dull},  // Goethals-Seidel, t = 39
        {172, 0x249a2374e2000f5dull},  // Goethals-Seidel, t = 43
        {184, 0xd6739c03d113e5d5ull},  // doubling of 92
        {500, 0x37142a804db6b7a5ull},  // Paley I, q = 499
    };
    for (const auto& g : golden)
      check(fnv1a64(halo::hadamard_dense(g.m)) == g.hash, "m = " + std::to_string(g.m) + ": golden hash");
  }

  // ---- Thread safety: concurrent first builds of the same large orders ---------------------------------------
  {
    const int big[] = {1000, 1020, 1032};  // doubling of 500, Paley II q = 509, Paley I q = 1031  // not built above (> 512)
    std::vector<const std::vector<int8_t>*> seen(8 * 3, nullptr);
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t)
      threads.emplace_back([&, t] {
        for (int i = 0; i < 3; ++i) seen[t * 3 + i] = &halo::hadamard_dense(big[i]);
      });
    for (auto& th : threads) th.join();
    bool same = true;
    for (int t = 0; t < 8; ++t)
      for (int i = 0; i < 3; ++i) same = same && seen[t * 3 + i] == seen[i];
    check(same, "concurrent hadamard_dense calls return one cached matrix per order");
    for (int i = 0; i < 3; ++i) check(orthogonal(*seen[i], big[i]), "m = " + std::to_string(big[i]) + ": H H^T = m I");
  }

  if (print_hashes)
    for (int m = 1; m <= 512; ++m)
      if (halo::hadamard_dense_constructible(m))
        std::printf("%d %" PRIu64 "\n", m, fnv1a64(halo::hadamard_dense(m)));

  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed == 0 ? 0 : 1;
}
