/*
 * gs_search.c: finds the four circulant +-1 sequences behind the Goethals-Seidel Hadamard matrices of
 * csrc/common/hadamard_matrices.cpp (orders 4t that no Paley construction or doubling reaches: 92, 116, 156, 172,
 * 188). The tables there and in tests/hadamard_ref.py are this program's output, pasted verbatim.
 *
 * Wanted: a_0..a_3 in {+1,-1}^t (t odd) whose periodic autocorrelations add up to zero at every nonzero shift,
 *     sum_k sum_i a_k[i] a_k[(i + s) mod t] = 0  for s = 1 .. (t-1)/2   (the other shifts mirror these),
 * i.e. sum_k A_k A_k^T = 4t I for the circulants A_k; the Goethals-Seidel array then is a Hadamard matrix of
 * order 4t.
 *
 * Method: tabu search on E = sum_s P(s)^2 (P(s) the summed autocorrelation). Each step flips the entry whose flip
 * gives the smallest E among those not tabu (ties broken at random), then makes it tabu for a random
 * t/4 + 1 .. 3t/4 + 1 steps; after `steps` steps without reaching E = 0 it restarts from random sequences. All
 * arithmetic is integer and the generator is xorshift64, so a (t, seed, steps) triple gives the same sequences on
 * any machine. Run times here (one core): t = 23, 29, 39 under a second, t = 43 about 35 s, t = 47 see the table.
 *
 * Build and run:  cc -O2 -o /tmp/gs_search tools/gs_search.c && /tmp/gs_search 43 1 200000
 * Prints "t seed steps restarts" and the four sequences, '+' = +1, '-' = -1.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

enum { kMaxT = 127 };

static uint64_t g_state = 88172645463325252ull;
static uint64_t next_random(void) {
  g_state ^= g_state << 13;
  g_state ^= g_state >> 7;
  g_state ^= g_state << 17;
  return g_state;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s t seed steps   (t odd, 3 <= t <= %d)\n", argv[0], kMaxT);
    return 2;
  }
  const int t = atoi(argv[1]);
  const long long seed = atoll(argv[2]);
  const long steps = atol(argv[3]);
  if (t < 3 || t > kMaxT || t % 2 == 0 || steps < 1) {
    fprintf(stderr, "t must be odd in 3..%d and steps >= 1\n", kMaxT);
    return 2;
  }
  g_state ^= (uint64_t)seed * 0x9E3779B97F4A7C15ull;
  if (g_state == 0) g_state = 1;
  const int half = (t - 1) / 2;
  static int a[4][kMaxT];
  static long P[kMaxT], tabu[4][kMaxT];
  for (int restart = 0;; ++restart) {
    for (int k = 0; k < 4; ++k)
      for (int i = 0; i < t; ++i) a[k][i] = (next_random() & 1) ? 1 : -1, tabu[k][i] = 0;
    for (int s = 1; s <= half; ++s) {
      long v = 0;
      for (int k = 0; k < 4; ++k)
        for (int i = 0; i < t; ++i) v += a[k][i] * a[k][(i + s) % t];
      P[s] = v;
    }
    for (long it = 1; it <= steps; ++it) {
      long best = -1;
      int bk = -1, bi = -1, ties = 0;
      for (int k = 0; k < 4; ++k)
        for (int i = 0; i < t; ++i) {
          if (tabu[k][i] > it) continue;
          long e = 0;  // E after flipping a[k][i]: P(s) changes by -2 a[k][i] (a[k][i+s] + a[k][i-s])
          for (int s = 1; s <= half; ++s) {
            const int up = i + s >= t ? i + s - t : i + s, dn = i - s < 0 ? i - s + t : i - s;
            const long v = P[s] - 2L * a[k][i] * (a[k][up] + a[k][dn]);
            e += v * v;
          }
          if (best < 0 || e < best) {
            best = e, bk = k, bi = i, ties = 1;
          } else if (e == best && next_random() % (uint64_t)(++ties) == 0) {
            bk = k, bi = i;
          }
        }
      for (int s = 1; s <= half; ++s) {
        const int up = bi + s >= t ? bi + s - t : bi + s, dn = bi - s < 0 ? bi - s + t : bi - s;
        P[s] -= 2L * a[bk][bi] * (a[bk][up] + a[bk][dn]);
      }
      a[bk][bi] = -a[bk][bi];
      tabu[bk][bi] = it + 1 + (long)(next_random() % (uint64_t)(t / 2 + 1)) + t / 4;
      if (best == 0) {
        printf("t=%d seed=%lld steps=%ld restarts=%d\n", t, seed, steps, restart);
        for (int k = 0; k < 4; ++k) {
          for (int i = 0; i < t; ++i) putchar(a[k][i] > 0 ? '+' : '-');
          putchar('\n');
        }
        return 0;
      }
    }
  }
}
