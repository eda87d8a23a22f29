// AVX2 path (no SIMD popcount): vectorised over output channels like the AVX-512 path, 4 channels per ymm,
// with the vpshufb nibble-LUT popcount. Per-byte counts accumulate in 8-bit lanes for up to 31 steps
// (31 * 8 = 248 < 256), then vpsadbw folds them into 64-bit lanes. Compiled with -mavx2 -mfma -mpopcnt.
#include <immintrin.h>

#include "bconv_driver.h"

namespace bonn {
namespace {

template <int P_, int V>
struct Avx2MK {
  static constexpr int P = P_;
  static constexpr int OB = 4 * V;

  static void tile(const uint64_t* const* ptrs, int KK, int Cw, const uint64_t* w, int32_t* pc, int ldd) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256i acc8[P][V], acc64[P][V];
    for (int p = 0; p < P; ++p)
      for (int v = 0; v < V; ++v) acc8[p][v] = acc64[p][v] = _mm256_setzero_si256();
    int steps = 0;
    for (int t = 0; t < KK; ++t) {
      const uint64_t* xp[P];
      for (int p = 0; p < P; ++p) xp[p] = ptrs[p * KK + t];
      for (int c = 0; c < Cw; ++c, w += OB) {
        __m256i wv[V];
        for (int v = 0; v < V; ++v) wv[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 4 * v));
        for (int p = 0; p < P; ++p) {
          const __m256i x = _mm256_set1_epi64x(static_cast<long long>(xp[p][c]));
          for (int v = 0; v < V; ++v) {
            const __m256i d = _mm256_xor_si256(x, wv[v]);
            const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(d, low));
            const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(d, 4), low));
            acc8[p][v] = _mm256_add_epi8(acc8[p][v], _mm256_add_epi8(lo, hi));
          }
        }
        if (++steps == 31) {
          flush(acc8, acc64);
          steps = 0;
        }
      }
    }
    flush(acc8, acc64);
    for (int p = 0; p < P; ++p)
      for (int v = 0; v < V; ++v) {
        // 4 x 64-bit lanes -> 4 x int32 (counts are far below 2^31).
        const __m256i perm = _mm256_permutevar8x32_epi32(acc64[p][v], _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(pc + p * ldd + 4 * v), _mm256_castsi256_si128(perm));
      }
  }

  static inline void flush(__m256i (&acc8)[P][V], __m256i (&acc64)[P][V]) {
    const __m256i zero = _mm256_setzero_si256();
    for (int p = 0; p < P; ++p)
      for (int v = 0; v < V; ++v) {
        acc64[p][v] = _mm256_add_epi64(acc64[p][v], _mm256_sad_epu8(acc8[p][v], zero));
        acc8[p][v] = zero;
      }
  }

  // Same operations, same order as epilogue_scalar: 8 channels per step, the tail channel by channel.
  static void epilogue(const int32_t* pc, int Co, int kkc, const OutputTransform& ot, int64_t pix) {
    float* out = ot.out ? ot.out + pix * Co : nullptr;
    const float* res = ot.residual ? ot.residual + pix * Co : nullptr;
    uint64_t* nb = ot.next_packed ? ot.next_packed + pix * words_for(Co) : nullptr;
    const __m256i vk = _mm256_set1_epi32(kkc);
    const __m256 va = _mm256_set1_ps(ot.alpha), zero = _mm256_setzero_ps();
    uint64_t word = 0;
    int o = 0;
    for (; o + 8 <= Co; o += 8) {
      const __m256i d = _mm256_sub_epi32(
          vk, _mm256_slli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pc + o)), 1));
      __m256 y = _mm256_mul_ps(va, _mm256_cvtepi32_ps(d));
      if (ot.prelu) {
        const __m256 ge = _mm256_cmp_ps(y, zero, _CMP_GE_OQ);
        y = _mm256_blendv_ps(_mm256_mul_ps(_mm256_loadu_ps(ot.prelu + o), y), y, ge);
      }
      if (res) y = _mm256_add_ps(y, _mm256_loadu_ps(res + o));
      if (out) _mm256_storeu_ps(out + o, y);
      if (nb) {
        const __m256 t = _mm256_add_ps(_mm256_mul_ps(y, _mm256_loadu_ps(ot.next_scale + o)),
                                       _mm256_loadu_ps(ot.next_shift + o));
        word |= static_cast<uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(t, zero, _CMP_LT_OQ))) << (o & 63);
        if ((o & 63) == 56) {
          nb[o >> 6] = word;
          word = 0;
        }
      }
    }
    for (; o < Co; ++o) {
      float y = ot.alpha * static_cast<float>(kkc - 2 * pc[o]);
      if (ot.prelu) y = y >= 0.f ? y : ot.prelu[o] * y;
      if (res) y += res[o];
      if (out) out[o] = y;
      if (nb) {
        const float t = y * ot.next_scale[o] + ot.next_shift[o];
        word |= static_cast<uint64_t>(t < 0.f) << (o & 63);
      }
    }
    if (nb && (Co & 63) != 0) nb[(Co - 1) >> 6] = word;
  }
};

template <int P, int V>
std::unique_ptr<ConvKernel> make(const uint64_t* w, int Co, int K, int Ci, int stride, int pad) {
  return std::make_unique<TiledConv<Avx2MK<P, V>>>(w, Co, K, Ci, stride, pad);
}

}  // namespace

std::unique_ptr<ConvKernel> make_conv_kernel_avx2(const uint64_t* w, int Co, int K, int Ci, int stride, int pad) {
  if (Co % 8 == 0 || Co > 8) return make<4, 2>(w, Co, K, Ci, stride, pad);
  return make<6, 1>(w, Co, K, Ci, stride, pad);
}

void pack_bn_sign_rows_avx2(const float* x, int64_t p0, int64_t p1, int C, const float* scale, const float* shift,
                            uint64_t* out) {
  const int Cw = words_for(C);
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t p = p0; p < p1; ++p) {
    const float* xp = x + p * C;
    uint64_t* op = out + p * Cw;
    for (int wd = 0; wd < Cw; ++wd) {
      const int c0 = wd * 64, c1 = c0 + 64 < C ? c0 + 64 : C;
      uint64_t word = 0;
      int c = c0;
      for (; c + 8 <= c1; c += 8) {
        const __m256 t = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(xp + c), _mm256_loadu_ps(scale + c)),
                                       _mm256_loadu_ps(shift + c));
        word |= static_cast<uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(t, zero, _CMP_LT_OQ))) << (c - c0);
      }
      for (; c < c1; ++c) {
        const float t = xp[c] * scale[c] + shift[c];
        word |= static_cast<uint64_t>(t < 0.f) << (c - c0);
      }
      op[wd] = word;
    }
  }
}

}  // namespace bonn
