// Binary (XNOR/popcount) convolution: the contract between the kernels and the graph executor.
//
// Layouts (all NHWC, batch outermost):
//   packed activations: uint64 [N, H, W, Cw], Cw = ceil(C/64). Bit c%64 of word c/64 is 1 iff the value is
//                       negative (sign(0) = +1). Tail bits (c >= C) are 0.
//   packed weights:     as stored in .bonn, uint64 [Co, K, K, Cw] ("OHWI_bits64"); kernels repack privately.
//   float tensors:      float [N, H, W, C].
// Spatial padding is one-padding: padded taps read as +1 (all-zero words), which is free.
// Dot product over a window: K*K*Ci - 2 * popcount(x XOR w).
//
// Kernel notes (see docs/kernels.md): every path computes the float epilogue with the reference's exact
// operations and order (the library is built with -ffp-contract=off), so all paths agree bit for bit with
// binary_conv2d_reference. BinaryConv2d::run and pack_bn_sign throw std::invalid_argument on bad sizes or
// null pointers. The constructor copies (repacks) the weights; the caller's buffer may be freed afterwards.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "threadpool.h"

namespace bonn {

enum class PopcountPath { kPortable = 0, kAVX2 = 1, kAVX512 = 2, kNEON = 3 };
const char* path_name(PopcountPath p);
// Best path this CPU supports, unless BONN_POPCOUNT=portable|avx2|avx512|neon forces one
// (forcing a path the CPU lacks throws std::runtime_error).
PopcountPath select_path();
std::vector<PopcountPath> supported_paths();

// Per-output-channel float epilogue fused into the conv's output pass:
//   y = alpha * dot;  y = prelu ? (y >= 0 ? y : prelu[o] * y) : y;  y += residual (if any)
// Optionally also binarizes y for the NEXT binary layer (its BN + sign) and writes packed bits:
//   bit = (y * next_scale[o] + next_shift[o]) < 0
struct OutputTransform {
  float alpha = 1.f;
  const float* prelu = nullptr;       // [Co] or null
  const float* residual = nullptr;    // [N, OH, OW, Co] or null; may be the same buffer as `out` (in place)
  float* out = nullptr;               // [N, OH, OW, Co] float output (may be null only if next_packed is set)
  const float* next_scale = nullptr;  // [Co] or null: fuse the next layer's BN+sign
  const float* next_shift = nullptr;  // [Co]
  uint64_t* next_packed = nullptr;    // [N, OH, OW, ceil(Co/64)]
};

struct ConvShape {
  int N = 1, H = 0, W = 0, Ci = 0, Co = 0, K = 3, stride = 1, pad = 1;
  int OH() const { return (H + 2 * pad - K) / stride + 1; }
  int OW() const { return (W + 2 * pad - K) / stride + 1; }
};

// A binary conv layer with weights repacked for the selected path at construction.
class BinaryConv2d {
 public:
  BinaryConv2d(const uint64_t* weight_bits, int Co, int K, int Ci, int stride, int pad,
               PopcountPath path);
  ~BinaryConv2d();
  // in: packed [N,H,W,ceil(Ci/64)]; writes ot.out (and ot.next_packed if set). Splits work over the pool.
  void run(const uint64_t* in, int N, int H, int W, const OutputTransform& ot, ThreadPool& pool) const;
  ConvShape shape(int N, int H, int W) const;
  PopcountPath path() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Binarize float NHWC [npix, C] through a per-channel affine (inference BN) and pack:
//   bit = (x * scale[c] + shift[c]) < 0.   out: [npix, ceil(C/64)]
// `path`: the row packer's instruction set (a model passes its own, so a forced path packs with that path
// and BONN_POPCOUNT is read once, not per layer); the default is select_path().
void pack_bn_sign(const float* x, int64_t npix, int C, const float* scale, const float* shift,
                  uint64_t* out, ThreadPool& pool);
void pack_bn_sign(const float* x, int64_t npix, int C, const float* scale, const float* shift,
                  uint64_t* out, ThreadPool& pool, PopcountPath path);

// Plain reference conv on packed data (no tricks): used by tests.
void binary_conv2d_reference(const uint64_t* in, const uint64_t* weight_bits, const ConvShape& s,
                             const OutputTransform& ot);

}  // namespace bonn
