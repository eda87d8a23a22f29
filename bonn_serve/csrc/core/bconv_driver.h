// The tiled direct conv shared by every popcount path. Included by exactly one bconv_<path>.cc each; everything
// here has internal linkage so each file gets its own copy compiled with its own ISA flags (no ODR mixing).
//
// Work unit: a tile of MK::P consecutive output pixels (flattened over N*OH*OW, so batch > 1 just adds tiles).
// For a tile we build an indirection table ptrs[p][tap] -> Cw input words (or a shared all-zero row for padded
// taps: one-padding is free), then run the micro-kernel once per block of MK::OB output channels over the
// repacked weights [Co/OB][K*K][Cw][OB], collecting popcounts for the tile in a small int32 buffer, and finally
// apply the output transform per pixel. No im2col copy is made; tiles are split over the thread pool.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "bconv_internal.h"
#include "bitpack.h"

namespace bonn {
namespace {

// Scratch vectors with an allocator of internal linkage: each ISA's translation unit then instantiates its own
// std::vector code. With std::allocator the instantiations (resize, _M_default_append) are weak symbols shared
// by name across the portable, AVX2 and AVX-512 objects, and the linker may keep an AVX-512-compiled copy for
// the portable path: an illegal instruction on a CPU without AVX-512.
template <class T>
struct TuAllocator {
  using value_type = T;
  TuAllocator() = default;
  template <class U>
  TuAllocator(const TuAllocator<U>&) noexcept {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T))); }
  void deallocate(T* p, size_t) noexcept { ::operator delete(p); }
  template <class U>
  bool operator==(const TuAllocator<U>&) const noexcept { return true; }
  template <class U>
  bool operator!=(const TuAllocator<U>&) const noexcept { return false; }
};
template <class T>
using Scratch = std::vector<T, TuAllocator<T>>;

struct AlignedWords {
  uint64_t* p = nullptr;
  explicit AlignedWords(size_t n) {
    size_t bytes = ((n * sizeof(uint64_t) + 63) / 64) * 64;
    p = static_cast<uint64_t*>(std::aligned_alloc(64, bytes > 0 ? bytes : 64));
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, bytes);
  }
  ~AlignedWords() { std::free(p); }
  AlignedWords(const AlignedWords&) = delete;
  AlignedWords& operator=(const AlignedWords&) = delete;
};

// The output transform for one pixel, one channel at a time; the reference formula, in the same float order.
inline void epilogue_scalar(const int32_t* pc, int Co, int kkc, const OutputTransform& ot, int64_t pix) {
  float* out = ot.out ? ot.out + pix * Co : nullptr;
  const float* res = ot.residual ? ot.residual + pix * Co : nullptr;
  uint64_t* nb = ot.next_packed ? ot.next_packed + pix * words_for(Co) : nullptr;
  uint64_t word = 0;
  for (int o = 0; o < Co; ++o) {
    float y = ot.alpha * static_cast<float>(kkc - 2 * pc[o]);
    if (ot.prelu) y = y >= 0.f ? y : ot.prelu[o] * y;
    if (res) y += res[o];
    if (out) out[o] = y;
    if (nb) {
      float t = y * ot.next_scale[o] + ot.next_shift[o];
      word |= static_cast<uint64_t>(t < 0.f) << (o & 63);
      if ((o & 63) == 63 || o == Co - 1) {
        nb[o >> 6] = word;
        word = 0;
      }
    }
  }
}

template <class MK>
class TiledConv final : public ConvKernel {
 public:
  static constexpr int P = MK::P;
  static constexpr int OB = MK::OB;

  TiledConv(const uint64_t* w, int Co, int K, int Ci, int stride, int pad)
      : Co_(Co), K_(K), Ci_(Ci), Cw_(words_for(Ci)), stride_(stride), pad_(pad), nob_((Co + OB - 1) / OB),
        lane_bits_(K * K > 1 && Ci <= 32 ? (Ci <= 8 ? 8 : Ci <= 16 ? 16 : 32) : 0),
        taps_per_word_(lane_bits_ ? 64 / lane_bits_ : 1),
        steps_(lane_bits_ ? (K * K + taps_per_word_ - 1) / taps_per_word_ : K * K * words_for(Ci)),
        weights_(static_cast<size_t>(nob_) * steps_ * OB), zeros_(static_cast<size_t>(Cw_)) {
    const int KK = K * K;
    if (lane_bits_) {
      // Narrow input (Ci <= 32): several taps share one word, tap t in lane t % taps_per_word of word
      // t / taps_per_word. The input is packed the same way per output pixel at run time.
      // [Co][K*K][1]  ->  [Co/OB][steps][OB]
      for (int o = 0; o < Co; ++o)
        for (int t = 0; t < KK; ++t)
          weights_.p[(static_cast<size_t>(o / OB) * steps_ + t / taps_per_word_) * OB + o % OB] |=
              w[static_cast<size_t>(o) * KK + t] << (lane_bits_ * (t % taps_per_word_));
      return;
    }
    // OHWI_bits64 [Co][K*K][Cw]  ->  [Co/OB][K*K][Cw][OB]; missing channels of the last block stay zero.
    for (int o = 0; o < Co; ++o)
      for (int t = 0; t < KK; ++t)
        for (int c = 0; c < Cw_; ++c)
          weights_.p[((static_cast<size_t>(o / OB) * KK + t) * Cw_ + c) * OB + o % OB] =
              w[(static_cast<size_t>(o) * KK + t) * Cw_ + c];
  }

  void run(const uint64_t* in, const ConvShape& s, const OutputTransform& ot, ThreadPool& pool) const override {
    RunCtx c{in, &s, &ot, s.OH(), s.OW(), K_ * K_, nob_ * OB, K_ * K_ * Ci_, 0, 0, 0, nullptr};
    c.npix = static_cast<int64_t>(s.N) * c.OH * c.OW;
    c.mk_taps = lane_bits_ ? 1 : c.KK;  // micro-kernel view: mk_taps pointers per pixel, mk_words words behind each
    c.mk_words = lane_bits_ ? steps_ : Cw_;
    // Word offsets of the taps from the window's top-left input pixel, for windows entirely inside the image.
    // Scratch is thread_local and only grows, so steady-state calls do not allocate.
    static thread_local Scratch<int64_t> tap_off;
    tap_off.resize(static_cast<size_t>(c.KK));
    for (int ky = 0; ky < K_; ++ky)
      for (int kx = 0; kx < K_; ++kx) tap_off[ky * K_ + kx] = (static_cast<int64_t>(ky) * s.W + kx) * Cw_;
    c.tap_off = tap_off.data();
    const int64_t ntiles = (c.npix + P - 1) / P;
    // Don't split below ~4 M bit-ops (a few microseconds) per block: smaller pieces cost more to hand over
    // than they save.
    const int64_t tile_ops = static_cast<int64_t>(P) * c.ldd * steps_ * 64;
    const int64_t grain = std::max<int64_t>(1, (int64_t{4} << 20) / std::max<int64_t>(tile_ops, 1));
    // Capture one pointer only, so std::function stores the callable inline (no allocation).
    const RunCtx* cp = &c;
    pool.parallel_for(ntiles, [this, cp](int64_t t0, int64_t t1) { run_tiles(*cp, t0, t1); }, grain);
  }

 private:
  struct RunCtx {
    const uint64_t* in;
    const ConvShape* s;
    const OutputTransform* ot;
    int OH, OW, KK, ldd, kkc, mk_taps, mk_words;
    int64_t npix;
    const int64_t* tap_off;
  };

  // Tiles [t0, t1): indirection, micro-kernel per channel block, epilogue per pixel.
  void run_tiles(const RunCtx& c, int64_t t0, int64_t t1) const {
    static thread_local Scratch<const uint64_t*> ptrs, mk_ptrs;
    static thread_local Scratch<uint64_t> lanes;
    static thread_local Scratch<int32_t> pc;
    ptrs.resize(static_cast<size_t>(P) * c.KK);
    mk_ptrs.resize(static_cast<size_t>(P));
    lanes.resize(lane_bits_ ? static_cast<size_t>(P) * steps_ : 0);
    pc.resize(static_cast<size_t>(P) * c.ldd);
    const int KK = c.KK;
    // Walk output pixels in order, keeping (n, oy, ox) incrementally instead of dividing per pixel.
    const int64_t q = t0 * P;
    int64_t n = q / (static_cast<int64_t>(c.OH) * c.OW);
    const int rem = static_cast<int>(q - n * c.OH * c.OW);
    int oy = rem / c.OW, ox = rem % c.OW;
    for (int64_t tile = t0; tile < t1; ++tile) {
      const int64_t q0 = tile * P;
      for (int p = 0; p < P; ++p) {
        const uint64_t** taps = &ptrs[static_cast<size_t>(p) * KK];
        if (q0 + p < c.npix) {
          pixel_taps(c.in, *c.s, c.tap_off, n, oy, ox, taps);
          if (++ox == c.OW) {
            ox = 0;
            if (++oy == c.OH) {
              oy = 0;
              ++n;
            }
          }
        } else {
          for (int t = 0; t < KK; ++t) taps[t] = zeros_.p;  // tile overhang: computed, never stored
        }
        if (lane_bits_) {
          mk_ptrs[p] = &lanes[static_cast<size_t>(p) * steps_];
          gather_lanes(taps, &lanes[static_cast<size_t>(p) * steps_]);
        }
      }
      const uint64_t* const* tile_ptrs = lane_bits_ ? mk_ptrs.data() : ptrs.data();
      for (int ob = 0; ob < nob_; ++ob)
        MK::tile(tile_ptrs, c.mk_taps, c.mk_words, weights_.p + static_cast<size_t>(ob) * steps_ * OB,
                 pc.data() + ob * OB, c.ldd);
      const int valid = static_cast<int>(c.npix - q0 < P ? c.npix - q0 : P);
      for (int p = 0; p < valid; ++p)
        MK::epilogue(pc.data() + static_cast<size_t>(p) * c.ldd, Co_, c.kkc, *c.ot, q0 + p);
    }
  }

  // Pointers to the K*K taps of output pixel (n, oy, ox): precomputed offsets for windows inside the image,
  // bounds checks (and the zero row for padded taps) only at the border.
  void pixel_taps(const uint64_t* in, const ConvShape& s, const int64_t* tap_off, int64_t n, int oy, int ox,
                  const uint64_t** taps) const {
    const int iy0 = oy * stride_ - pad_, ix0 = ox * stride_ - pad_;
    if (iy0 >= 0 && ix0 >= 0 && iy0 + K_ <= s.H && ix0 + K_ <= s.W) {
      const uint64_t* base = in + ((n * s.H + iy0) * s.W + ix0) * Cw_;
      for (int t = 0; t < K_ * K_; ++t) taps[t] = base + tap_off[t];
    } else {
      fill_border_taps(in, s, n, iy0, ix0, taps);
    }
  }

  // Narrow mode: packs the taps' single words into lanes, the layout the weights were repacked to.
  void gather_lanes(const uint64_t* const* taps, uint64_t* dst) const {
    const int KK = K_ * K_;
    for (int j = 0, t = 0; j < steps_; ++j) {
      uint64_t word = 0;
      for (int l = 0; l < taps_per_word_ && t < KK; ++l, ++t) word |= *taps[t] << (lane_bits_ * l);
      dst[j] = word;
    }
  }

  // Indirection for a window that touches the border: padded taps point at the zero row (one-padding).
  void fill_border_taps(const uint64_t* in, const ConvShape& s, int64_t n, int iy0, int ix0,
                        const uint64_t** taps) const {
    for (int ky = 0; ky < K_; ++ky) {
      const int iy = iy0 + ky;
      for (int kx = 0; kx < K_; ++kx) {
        const int ix = ix0 + kx;
        const bool inside = iy >= 0 && iy < s.H && ix >= 0 && ix < s.W;
        taps[ky * K_ + kx] = inside ? in + ((n * s.H + iy) * s.W + ix) * Cw_ : zeros_.p;
      }
    }
  }

  int Co_, K_, Ci_, Cw_, stride_, pad_, nob_;
  // Narrow-input mode (Ci <= 32, K > 1): bits per tap lane (8/16/32), else 0; steps_ = words per pixel the
  // micro-kernel walks (K*K*Cw normally, ceil(K*K / taps_per_word) in narrow mode).
  int lane_bits_, taps_per_word_, steps_;
  AlignedWords weights_;
  AlignedWords zeros_;
};

}  // namespace
}  // namespace bonn
