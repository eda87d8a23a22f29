// AVX2+FMA dense-conv kernel: 16 output channels in two ymm, 6 output pixels per block -> 12
// accumulators (16 ymm registers in all). Same data layout as the AVX-512 kernel.
#include <immintrin.h>

#include <algorithm>

#include "fops.h"

namespace bonn {
namespace {

inline __m256i tail_mask(int valid) {
  alignas(32) static const int lanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes + 8 - valid));
}

template <int P, int V>
void block(const FConvTask& t, int q0, int cb) {
  const int KC = t.K * t.Ci;
  const size_t row_stride = size_t(t.Wp) * t.Ci;
  __m256 acc[P][V];
  for (int v = 0; v < V; ++v) {
    const __m256 b = _mm256_loadu_ps(t.bias + cb + 8 * v);
    for (int p = 0; p < P; ++p) acc[p][v] = b;
  }
  const float* base[P];
  for (int p = 0; p < P; ++p) base[p] = t.origin(q0 + p);
  for (int ky = 0; ky < t.K; ++ky) {
    const size_t x = ky * row_stride;
    const float* w = t.w_hwio + size_t(ky) * KC * t.CoP + cb;
    for (int j = 0; j < KC; ++j, w += t.CoP) {
      __m256 wv[V];
      for (int v = 0; v < V; ++v) wv[v] = _mm256_loadu_ps(w + 8 * v);
      for (int p = 0; p < P; ++p) {
        const __m256 xb = _mm256_broadcast_ss(base[p] + x + j);
        for (int v = 0; v < V; ++v) acc[p][v] = _mm256_fmadd_ps(xb, wv[v], acc[p][v]);
      }
    }
  }
  const __m256 zero = _mm256_setzero_ps();
  for (int v = 0; v < V; ++v) {
    const int valid = std::min(8, t.co1 - (cb + 8 * v));
    for (int p = 0; p < P; ++p) {
      const __m256 y = t.relu ? _mm256_max_ps(acc[p][v], zero) : acc[p][v];
      float* dst = t.out + size_t(q0 + p) * t.Co + cb + 8 * v;
      if (valid == 8) _mm256_storeu_ps(dst, y);
      else _mm256_maskstore_ps(dst, tail_mask(valid), y);
    }
  }
}

template <int P>
void block_v(const FConvTask& t, int q0, int cb, int V) {
  if (V == 1) block<P, 1>(t, q0, cb);
  else block<P, 2>(t, q0, cb);
}

}  // namespace

void fconv_avx2(const FConvTask& t) {
  constexpr int P = 6;
  for (int cb = t.co0; cb < t.co1; cb += 16) {
    const int V = (std::min(16, t.co1 - cb) + 7) / 8;
    int q = t.q0;
    for (; q + P <= t.q1; q += P) block_v<P>(t, q, cb, V);
    switch (t.q1 - q) {
      case 1: block_v<1>(t, q, cb, V); break;
      case 2: block_v<2>(t, q, cb, V); break;
      case 3: block_v<3>(t, q, cb, V); break;
      case 4: block_v<4>(t, q, cb, V); break;
      case 5: block_v<5>(t, q, cb, V); break;
      default: break;
    }
  }
}

}  // namespace bonn
