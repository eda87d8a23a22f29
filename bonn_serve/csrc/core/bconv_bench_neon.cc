// Peak loop for the NEON path: eor -> cnt -> uadalp on L1-resident data, 4 inputs x 4 weight vectors.
#include <arm_neon.h>

#include "bconv_bench.h"

namespace bonn {
namespace detail {

double peak_loop_neon(long iters) {
  alignas(64) static uint64_t buf[1024];
  for (int i = 0; i < 1024; ++i) buf[i] = 0x9E3779B97F4A7C15ULL * (i + 1);
  uint16x8_t acc[4][4];
  uint64x2_t total = vdupq_n_u64(0);
  for (auto& r : acc)
    for (auto& a : r) a = vdupq_n_u16(0);
  const int n = 1024 - 12;
  long steps = 0;
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < n; i += 12) {
      uint64x2_t w[4];
      for (int v = 0; v < 4; ++v) w[v] = vld1q_u64(buf + i + 2 * v);
      for (int p = 0; p < 4; ++p) {
        const uint64x2_t x = vdupq_n_u64(buf[i + 8 + p]);
        for (int v = 0; v < 4; ++v) acc[p][v] = vpadalq_u8(acc[p][v], vcntq_u8(vreinterpretq_u8_u64(veorq_u64(x, w[v]))));
      }
      if (++steps == 4000) {
        for (auto& r : acc)
          for (auto& a : r) {
            total = vaddq_u64(total, vpaddlq_u32(vpaddlq_u16(a)));
            a = vdupq_n_u16(0);
          }
        steps = 0;
      }
    }
  for (auto& r : acc)
    for (auto& a : r) total = vaddq_u64(total, vpaddlq_u32(vpaddlq_u16(a)));
  volatile uint64_t sink = vgetq_lane_u64(total, 0) + vgetq_lane_u64(total, 1);
  (void)sink;
  return double(iters) * ((n + 11) / 12) * 16 * 128;
}

}  // namespace detail
}  // namespace bonn
