// NEON path (aarch64): vectorised over output channels, 2 channels (one 64-bit word each) per q register.
// xor -> vcntq_u8 (per-byte popcount) -> vpadalq_u8 (pairwise add-accumulate into 16-bit lanes), the eor/cnt/
// uadalp sequence; 16-bit lanes gain at most 16 per step, so they are widened before 4096 steps.
#include <arm_neon.h>

#include "bconv_driver.h"

namespace bonn {
namespace {

template <int P_, int V>
struct NeonMK {
  static constexpr int P = P_;
  static constexpr int OB = 2 * V;
  static constexpr int kMaxSteps = 4000;  // 4000 * 16 < 65536

  static void tile(const uint64_t* const* ptrs, int KK, int Cw, const uint64_t* w, int32_t* pc, int ldd) {
    uint16x8_t acc[P][V];
    uint64x2_t wide[P][V];
    for (int p = 0; p < P; ++p)
      for (int v = 0; v < V; ++v) {
        acc[p][v] = vdupq_n_u16(0);
        wide[p][v] = vdupq_n_u64(0);
      }
    int steps = 0;
    for (int t = 0; t < KK; ++t) {
      const uint64_t* xp[P];
      for (int p = 0; p < P; ++p) xp[p] = ptrs[p * KK + t];
      for (int c = 0; c < Cw; ++c, w += OB) {
        uint64x2_t wv[V];
        for (int v = 0; v < V; ++v) wv[v] = vld1q_u64(w + 2 * v);
        for (int p = 0; p < P; ++p) {
          const uint64x2_t x = vdupq_n_u64(xp[p][c]);
          for (int v = 0; v < V; ++v)
            acc[p][v] = vpadalq_u8(acc[p][v], vcntq_u8(vreinterpretq_u8_u64(veorq_u64(x, wv[v]))));
        }
        if (++steps == kMaxSteps) {
          widen(acc, wide);
          steps = 0;
        }
      }
    }
    widen(acc, wide);
    for (int p = 0; p < P; ++p)
      for (int v = 0; v < V; ++v) {
        pc[p * ldd + 2 * v] = static_cast<int32_t>(vgetq_lane_u64(wide[p][v], 0));
        pc[p * ldd + 2 * v + 1] = static_cast<int32_t>(vgetq_lane_u64(wide[p][v], 1));
      }
  }

  static inline void widen(uint16x8_t (&acc)[P][V], uint64x2_t (&wide)[P][V]) {
    for (int p = 0; p < P; ++p)
      for (int v = 0; v < V; ++v) {
        // 8 x u16 (4 per channel) -> 4 x u32 (2 per channel) -> 2 x u64 (1 per channel).
        wide[p][v] = vaddq_u64(wide[p][v], vpaddlq_u32(vpaddlq_u16(acc[p][v])));
        acc[p][v] = vdupq_n_u16(0);
      }
  }

  // Same operations, same order as epilogue_scalar, 4 channels per step; the tail channel by channel.
  static void epilogue(const int32_t* pc, int Co, int kkc, const OutputTransform& ot, int64_t pix) {
    float* out = ot.out ? ot.out + pix * Co : nullptr;
    const float* res = ot.residual ? ot.residual + pix * Co : nullptr;
    uint64_t* nb = ot.next_packed ? ot.next_packed + pix * words_for(Co) : nullptr;
    const int32x4_t vk = vdupq_n_s32(kkc);
    const float32x4_t va = vdupq_n_f32(ot.alpha), zero = vdupq_n_f32(0.f);
    const uint32x4_t lane_bits = {1u, 2u, 4u, 8u};
    uint64_t word = 0;
    int o = 0;
    for (; o + 4 <= Co; o += 4) {
      const int32x4_t d = vsubq_s32(vk, vshlq_n_s32(vld1q_s32(pc + o), 1));
      float32x4_t y = vmulq_f32(va, vcvtq_f32_s32(d));
      if (ot.prelu) y = vbslq_f32(vcgeq_f32(y, zero), y, vmulq_f32(vld1q_f32(ot.prelu + o), y));
      if (res) y = vaddq_f32(y, vld1q_f32(res + o));
      if (out) vst1q_f32(out + o, y);
      if (nb) {
        const float32x4_t t = vaddq_f32(vmulq_f32(y, vld1q_f32(ot.next_scale + o)), vld1q_f32(ot.next_shift + o));
        const uint64_t bits = vaddvq_u32(vandq_u32(vcltq_f32(t, zero), lane_bits));
        word |= bits << (o & 63);
        if ((o & 63) == 60) {
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
  return std::make_unique<TiledConv<NeonMK<P, V>>>(w, Co, K, Ci, stride, pad);
}

}  // namespace

std::unique_ptr<ConvKernel> make_conv_kernel_neon(const uint64_t* w, int Co, int K, int Ci, int stride, int pad) {
  if (Co % 8 == 0 || Co > 8) return make<4, 4>(w, Co, K, Ci, stride, pad);
  return make<6, 2>(w, Co, K, Ci, stride, pad);
}

}  // namespace bonn
