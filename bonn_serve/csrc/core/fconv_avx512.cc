// AVX-512 dense-conv kernel: output channels in zmm lanes (4 x 16 = 64 per block), 6 output pixels (across
// row ends) per block -> 24 accumulators; per (tap, input channel) 4 weight loads + 6 broadcasts feed 24 FMAs.
// The input is pre-padded, so a kernel row of one output pixel is one contiguous run of K*Ci floats.
#include <immintrin.h>

#include <algorithm>

#include "fops.h"

namespace bonn {
namespace {

template <int P, int V>
void block(const FConvTask& t, int q0, int cb) {
  const int KC = t.K * t.Ci;
  const size_t row_stride = size_t(t.Wp) * t.Ci;
  __m512 acc[P][V];
  for (int v = 0; v < V; ++v) {
    const __m512 b = _mm512_loadu_ps(t.bias + cb + 16 * v);
    for (int p = 0; p < P; ++p) acc[p][v] = b;
  }
  const float* base[P];
  for (int p = 0; p < P; ++p) base[p] = t.origin(q0 + p);
  for (int ky = 0; ky < t.K; ++ky) {
    const size_t x = ky * row_stride;
    const float* w = t.w_hwio + size_t(ky) * KC * t.CoP + cb;
    for (int j = 0; j < KC; ++j, w += t.CoP) {
      __m512 wv[V];
      for (int v = 0; v < V; ++v) wv[v] = _mm512_loadu_ps(w + 16 * v);
      for (int p = 0; p < P; ++p) {
        const __m512 xb = _mm512_set1_ps(base[p][x + j]);
        for (int v = 0; v < V; ++v) acc[p][v] = _mm512_fmadd_ps(xb, wv[v], acc[p][v]);
      }
    }
  }
  const __m512 zero = _mm512_setzero_ps();
  for (int v = 0; v < V; ++v) {
    const int valid = std::min(16, t.co1 - (cb + 16 * v));
    const __mmask16 m = valid >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << valid) - 1);
    for (int p = 0; p < P; ++p) {
      __m512 y = t.relu ? _mm512_max_ps(acc[p][v], zero) : acc[p][v];
      _mm512_mask_storeu_ps(t.out + size_t(q0 + p) * t.Co + cb + 16 * v, m, y);
    }
  }
}

template <int P>
void block_v(const FConvTask& t, int q0, int cb, int V) {
  switch (V) {
    case 1: block<P, 1>(t, q0, cb); break;
    case 2: block<P, 2>(t, q0, cb); break;
    case 3: block<P, 3>(t, q0, cb); break;
    default: block<P, 4>(t, q0, cb); break;
  }
}

}  // namespace

void fconv_avx512(const FConvTask& t) {
  constexpr int P = 6;
  for (int cb = t.co0; cb < t.co1; cb += 64) {
    const int V = (std::min(64, t.co1 - cb) + 15) / 16;
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
