// AVX-512 VPOPCNTDQ path. Vectorised over output channels: one zmm holds the same (tap, word) of 8 output
// channels' weights; each output pixel's input word is broadcast and xor -> vpopcntq -> vpaddq accumulates
// 8 channels x 64 bits = 512 binary MACs per three instructions. A tile keeps P pixels x V zmm (8V channels)
// of 64-bit accumulators in registers. Compiled with -mavx512{f,bw,vl,dq,vpopcntdq} (see CMakeLists.txt).
// GCC 12 flags its own _mm512_setzero/undefined intrinsics as maybe-uninitialized (a known false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include "bconv_driver.h"

namespace bonn {
namespace {

template <int P_, int V>
struct Avx512MK {
  static constexpr int P = P_;
  static constexpr int OB = 8 * V;

  static void tile(const uint64_t* const* ptrs, int KK, int Cw, const uint64_t* w, int32_t* pc, int ldd) {
    if (KK <= 0 || Cw <= 0) __builtin_unreachable();  // lets the accumulators stay in registers to the end
    __m512i acc[P][V];
    for (int p = 0; p < P; ++p)
      for (int v = 0; v < V; ++v) acc[p][v] = _mm512_setzero_si512();
    if (Cw == 1) {  // one word per tap (64-channel layers, narrow mode): a flat loop over the taps
      for (int t = 0; t < KK; ++t, w += OB) {
        __m512i wv[V];
        for (int v = 0; v < V; ++v) wv[v] = _mm512_load_si512(w + 8 * v);
        for (int p = 0; p < P; ++p) {
          const __m512i x = _mm512_set1_epi64(static_cast<long long>(*ptrs[p * KK + t]));
          for (int v = 0; v < V; ++v)
            acc[p][v] = _mm512_add_epi64(acc[p][v], _mm512_popcnt_epi64(_mm512_xor_si512(x, wv[v])));
        }
      }
    } else {
    for (int t = 0; t < KK; ++t) {
      const uint64_t* xp[P];
      for (int p = 0; p < P; ++p) xp[p] = ptrs[p * KK + t];
      for (int c = 0; c < Cw; ++c, w += OB) {
        __m512i wv[V];
        for (int v = 0; v < V; ++v) wv[v] = _mm512_load_si512(w + 8 * v);
        for (int p = 0; p < P; ++p) {
          const __m512i x = _mm512_set1_epi64(static_cast<long long>(xp[p][c]));
          for (int v = 0; v < V; ++v)
            acc[p][v] = _mm512_add_epi64(acc[p][v], _mm512_popcnt_epi64(_mm512_xor_si512(x, wv[v])));
        }
      }
    }
    }
    for (int p = 0; p < P; ++p)
      for (int v = 0; v < V; ++v)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(pc + p * ldd + 8 * v), _mm512_cvtepi64_epi32(acc[p][v]));
  }

  // Same operations, same order as epilogue_scalar, 16 channels at a time (results are bit-identical).
  // Specialised on which parts of the transform are present so the per-channel loop carries no tests.
  template <bool PRELU, bool RES, bool OUT, bool NEXT>
  static void epilogue_impl(const int32_t* pc, int Co, int kkc, const OutputTransform& ot, int64_t pix) {
    float* const out = OUT ? ot.out + pix * Co : nullptr;
    const float* const res = RES ? ot.residual + pix * Co : nullptr;
    uint64_t* const nb = NEXT ? ot.next_packed + pix * words_for(Co) : nullptr;
    const float* const prelu = ot.prelu;
    const float* const nscale = ot.next_scale;
    const float* const nshift = ot.next_shift;
    const __m512i vk = _mm512_set1_epi32(kkc);
    const __m512 va = _mm512_set1_ps(ot.alpha), zero = _mm512_setzero_ps();
    const int words = words_for(Co);
    for (int wd = 0; wd < words; ++wd) {
      uint64_t word = 0;
      for (int k = 0; k < 4; ++k) {
        const int o = wd * 64 + k * 16;
        if (o >= Co) break;
        const __mmask16 m = static_cast<__mmask16>(Co - o >= 16 ? 0xFFFFu : (1u << (Co - o)) - 1u);
        const __m512i d = _mm512_sub_epi32(vk, _mm512_slli_epi32(_mm512_maskz_loadu_epi32(m, pc + o), 1));
        __m512 y = _mm512_mul_ps(va, _mm512_cvtepi32_ps(d));
        if (PRELU) {
          const __mmask16 ge = _mm512_cmp_ps_mask(y, zero, _CMP_GE_OQ);
          y = _mm512_mask_blend_ps(ge, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, prelu + o), y), y);
        }
        if (RES) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, res + o));
        if (OUT) _mm512_mask_storeu_ps(out + o, m, y);
        if (NEXT) {
          const __m512 t = _mm512_add_ps(_mm512_mul_ps(y, _mm512_maskz_loadu_ps(m, nscale + o)),
                                         _mm512_maskz_loadu_ps(m, nshift + o));
          word |= static_cast<uint64_t>(_mm512_mask_cmp_ps_mask(m, t, zero, _CMP_LT_OQ)) << (16 * k);
        }
      }
      if (NEXT) nb[wd] = word;
    }
  }

  template <bool PRELU, bool RES>
  static void epilogue_out_next(const int32_t* pc, int Co, int kkc, const OutputTransform& ot, int64_t pix) {
    if (ot.out && ot.next_packed) epilogue_impl<PRELU, RES, true, true>(pc, Co, kkc, ot, pix);
    else if (ot.out) epilogue_impl<PRELU, RES, true, false>(pc, Co, kkc, ot, pix);
    else epilogue_impl<PRELU, RES, false, true>(pc, Co, kkc, ot, pix);
  }

  static void epilogue(const int32_t* pc, int Co, int kkc, const OutputTransform& ot, int64_t pix) {
    if (ot.prelu) {
      if (ot.residual) epilogue_out_next<true, true>(pc, Co, kkc, ot, pix);
      else epilogue_out_next<true, false>(pc, Co, kkc, ot, pix);
    } else {
      if (ot.residual) epilogue_out_next<false, true>(pc, Co, kkc, ot, pix);
      else epilogue_out_next<false, false>(pc, Co, kkc, ot, pix);
    }
  }
};

template <int P, int V>
std::unique_ptr<ConvKernel> make(const uint64_t* w, int Co, int K, int Ci, int stride, int pad) {
  return std::make_unique<TiledConv<Avx512MK<P, V>>>(w, Co, K, Ci, stride, pad);
}

}  // namespace

std::unique_ptr<ConvKernel> make_conv_kernel_avx512(const uint64_t* w, int Co, int K, int Ci, int stride, int pad) {
  // Channel block of 32, 16 or 8 (whichever wastes least); more pixels per tile when the block is narrow.
  if (Co % 32 == 0 || (Co > 64 && Co % 16 != 0)) return make<5, 4>(w, Co, K, Ci, stride, pad);
  if (Co % 16 == 0 || Co > 8) return make<6, 2>(w, Co, K, Ci, stride, pad);
  return make<8, 1>(w, Co, K, Ci, stride, pad);
}

void pack_bn_sign_rows_avx512(const float* x, int64_t p0, int64_t p1, int C, const float* scale, const float* shift,
                              uint64_t* out) {
  const int Cw = words_for(C);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t p = p0; p < p1; ++p) {
    const float* xp = x + p * C;
    uint64_t* op = out + p * Cw;
    for (int wd = 0; wd < Cw; ++wd) {
      uint64_t word = 0;
      for (int k = 0; k < 4; ++k) {
        const int c = wd * 64 + 16 * k;
        if (c >= C) break;
        const int n = C - c < 16 ? C - c : 16;
        const __mmask16 m = static_cast<__mmask16>(n == 16 ? 0xFFFFu : (1u << n) - 1u);
        const __m512 t = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, xp + c), _mm512_maskz_loadu_ps(m, scale + c)),
                                       _mm512_maskz_loadu_ps(m, shift + c));
        word |= static_cast<uint64_t>(_mm512_mask_cmp_ps_mask(m, t, zero, _CMP_LT_OQ)) << (16 * k);
      }
      op[wd] = word;
    }
  }
}

}  // namespace bonn
