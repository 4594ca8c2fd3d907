/*!
 * \file tuning.cu
 * \brief Process-wide tuning knobs of the kernels (common.h).
 */
#include <atomic>
#include <cstdlib>

#include "common.h"

namespace halo {
namespace {
// Default L2 prefetch distance of the persistent memory-bound kernels, in grid strides (notes/hadamard_kernels.md,
// "L2 prefetch"); the environment variable HALO_L2_PREFETCH_TILES overrides it at the first launch.
constexpr int kDefaultL2PrefetchTiles = 1;
std::atomic<int> g_l2_prefetch_tiles{-1};  // -1: not read yet

int clamp_tiles(int t) { return t < 0 ? 0 : t > 8 ? 8 : t; }
}  // namespace

int l2_prefetch_tiles() {
  int t = g_l2_prefetch_tiles.load(std::memory_order_relaxed);
  if (t < 0) {
    const char* env = std::getenv("HALO_L2_PREFETCH_TILES");
    t = env != nullptr && *env != '\0' ? clamp_tiles(std::atoi(env)) : kDefaultL2PrefetchTiles;
    int expected = -1;
    g_l2_prefetch_tiles.compare_exchange_strong(expected, t, std::memory_order_relaxed);
    t = g_l2_prefetch_tiles.load(std::memory_order_relaxed);
  }
  return t;
}

void set_l2_prefetch_tiles(int tiles) { g_l2_prefetch_tiles.store(clamp_tiles(tiles), std::memory_order_relaxed); }

}  // namespace halo
