// Portable pack_bn_sign: bit = (x * scale + shift) < 0, computed in float exactly as written.
#include <cstring>

#include "bitpack.h"

namespace bonn {

void pack_bn_sign_rows_portable(const float* x, int64_t p0, int64_t p1, int C, const float* scale,
                                const float* shift, uint64_t* out) {
  const int Cw = words_for(C);
  for (int64_t p = p0; p < p1; ++p) {
    const float* xp = x + p * C;
    uint64_t* op = out + p * Cw;
    for (int w = 0; w < Cw; ++w) {
      const int c0 = w * 64, c1 = c0 + 64 < C ? c0 + 64 : C;
      uint64_t word = 0;
      for (int c = c0; c < c1; ++c) {
        const float t = xp[c] * scale[c] + shift[c];
        word |= static_cast<uint64_t>(t < 0.f) << (c - c0);
      }
      op[w] = word;
    }
  }
}

}  // namespace bonn
