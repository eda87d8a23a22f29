// Peak loop for the AVX2 path: vpshufb nibble-LUT popcount, byte accumulators folded by vpsadbw.
#include <immintrin.h>

#include "bconv_bench.h"

namespace bonn {
namespace detail {

double peak_loop_avx2(long iters) {
  alignas(64) static uint64_t buf[1024];
  for (int i = 0; i < 1024; ++i) buf[i] = 0x9E3779B97F4A7C15ULL * (i + 1);
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                       2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0F), zero = _mm256_setzero_si256();
  __m256i acc8[4][2], acc64 = zero;
  for (auto& r : acc8)
    for (auto& a : r) a = zero;
  long steps = 0;
  const int n = 1024 - 12;
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < n; i += 12) {  // 2 weight vectors + 4 broadcast words per step
      const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(buf + (i & ~3)));
      const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(buf + ((i + 4) & ~3)));
      for (int p = 0; p < 4; ++p) {
        const __m256i x = _mm256_set1_epi64x(static_cast<long long>(buf[i + 8 + p]));
        const __m256i ws[2] = {w0, w1};
        for (int v = 0; v < 2; ++v) {
          const __m256i d = _mm256_xor_si256(x, ws[v]);
          const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(d, low));
          const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(d, 4), low));
          acc8[p][v] = _mm256_add_epi8(acc8[p][v], _mm256_add_epi8(lo, hi));
        }
      }
      if (++steps == 31) {
        for (auto& r : acc8)
          for (auto& a : r) {
            acc64 = _mm256_add_epi64(acc64, _mm256_sad_epu8(a, zero));
            a = zero;
          }
        steps = 0;
      }
    }
  for (auto& r : acc8)
    for (auto& a : r) acc64 = _mm256_add_epi64(acc64, _mm256_sad_epu8(a, zero));
  alignas(32) long long out[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(out), acc64);
  volatile long long sink = out[0] + out[1] + out[2] + out[3];
  (void)sink;
  return double(iters) * ((n + 11) / 12) * 8 * 256;
}

}  // namespace detail
}  // namespace bonn
