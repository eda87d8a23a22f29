// Portable popcount path: scalar 64-bit xor + popcount, 4 output pixels x 4 output channels in registers.
#include "bconv_driver.h"

namespace bonn {
namespace {

struct PortableMK {
  static constexpr int P = 4;
  static constexpr int OB = 4;

  static void tile(const uint64_t* const* ptrs, int KK, int Cw, const uint64_t* w, int32_t* pc, int ldd) {
    uint64_t acc[P][OB] = {};
    for (int t = 0; t < KK; ++t) {
      const uint64_t* x0 = ptrs[0 * KK + t];
      const uint64_t* x1 = ptrs[1 * KK + t];
      const uint64_t* x2 = ptrs[2 * KK + t];
      const uint64_t* x3 = ptrs[3 * KK + t];
      for (int c = 0; c < Cw; ++c, w += OB) {
        const uint64_t xs[P] = {x0[c], x1[c], x2[c], x3[c]};
        for (int p = 0; p < P; ++p)
          for (int j = 0; j < OB; ++j) acc[p][j] += static_cast<uint64_t>(popcount64(xs[p] ^ w[j]));
      }
    }
    for (int p = 0; p < P; ++p)
      for (int j = 0; j < OB; ++j) pc[p * ldd + j] = static_cast<int32_t>(acc[p][j]);
  }

  static void epilogue(const int32_t* pc, int Co, int kkc, const OutputTransform& ot, int64_t pix) {
    epilogue_scalar(pc, Co, kkc, ot, pix);
  }
};

}  // namespace

std::unique_ptr<ConvKernel> make_conv_kernel_portable(const uint64_t* w, int Co, int K, int Ci, int stride, int pad) {
  return std::make_unique<TiledConv<PortableMK>>(w, Co, K, Ci, stride, pad);
}

}  // namespace bonn
