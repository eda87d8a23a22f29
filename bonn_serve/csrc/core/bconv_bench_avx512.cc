// Peak loop for the AVX-512 VPOPCNTDQ path: the micro-kernel's inner step on L1-resident data.
#include <immintrin.h>

#include "bconv_bench.h"

namespace bonn {
namespace detail {

double peak_loop_avx512(long iters) {
  alignas(64) static uint64_t buf[1024];
  for (int i = 0; i < 1024; ++i) buf[i] = 0x9E3779B97F4A7C15ULL * (i + 1);
  __m512i acc[4][4];
  for (auto& r : acc)
    for (auto& a : r) a = _mm512_setzero_si512();
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < 1024 - 36; i += 36) {  // 4 weight vectors + 4 broadcast words per step
      __m512i w[4];
      for (int v = 0; v < 4; ++v) w[v] = _mm512_load_si512(buf + ((i + 8 * v) & ~7));
      for (int p = 0; p < 4; ++p) {
        const __m512i x = _mm512_set1_epi64(static_cast<long long>(buf[i + 32 + p]));
        for (int v = 0; v < 4; ++v) acc[p][v] = _mm512_add_epi64(acc[p][v], _mm512_popcnt_epi64(_mm512_xor_si512(x, w[v])));
      }
    }
  __m512i s = _mm512_setzero_si512();
  for (auto& r : acc)
    for (auto& a : r) s = _mm512_add_epi64(s, a);
  volatile long long sink = _mm512_reduce_add_epi64(s);
  (void)sink;
  return double(iters) * ((1024 - 36 + 35) / 36) * 16 * 512;
}

}  // namespace detail
}  // namespace bonn
