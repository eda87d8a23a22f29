// Float ops of the graph executor (everything that is not a binary conv). All tensors are NHWC float32.
//
// The dense conv is the only heavy one (the ResNet-18 stem is ~118 M MACs, as much as all binary layers at
// their roofline), so it has ISA-specific micro-kernels (fconv_avx512.cc, fconv_avx2.cc) picked at run time,
// plus a plain scalar kernel (fconv_scalar.cc) used on other CPUs. The cheap elementwise ops are written so
// the compiler vectorizes them over channels.
#pragma once
#include <cstdint>
#include <vector>

#include "threadpool.h"

namespace bonn {

enum class FloatIsa { kScalar = 0, kAVX2 = 1, kAVX512 = 2 };
const char* float_isa_name(FloatIsa isa);
// Best ISA this CPU supports, unless BONN_FLOAT_ISA=scalar|avx2|avx512 forces one (forcing an ISA the CPU
// lacks throws std::runtime_error).
FloatIsa select_float_isa();
std::vector<FloatIsa> supported_float_isas();

// Dense KxK conv with zero padding, bias and optional ReLU; weights are repacked at construction.
class FloatConv2d {
 public:
  // weight: OHWI [Co, K, K, Ci]; bias: [Co].
  FloatConv2d(const float* weight, const float* bias, int Co, int K, int Ci, int stride, int pad, bool relu,
              FloatIsa isa);
  int K() const { return K_; }
  int Ci() const { return Ci_; }
  int Co() const { return Co_; }
  int stride() const { return stride_; }
  int pad() const { return pad_; }
  FloatIsa isa() const { return isa_; }
  // in: NHWC [N, Hp, Wp, Ci] that ALREADY carries the zero border (Hp = H + 2*pad); out: [N, OH, OW, Co].
  void run_padded(const float* in, int N, int Hp, int Wp, float* out, ThreadPool& pool) const;

 private:
  int Co_, K_, Ci_, stride_, pad_;
  bool relu_;
  FloatIsa isa_;
  int CoP_;                    // Co rounded up to the vector block (16)
  std::vector<float> w_ohwi_;  // original layout, for the scalar kernel
  std::vector<float> w_hwio_;  // [K, K, Ci, CoP], output channels in vector lanes, zero-padded
  std::vector<float> bias_;    // [CoP], zero-padded
};

// Arguments of one conv micro-kernel call: output pixels [q0, q1) (row-major over OH x OW) of one image,
// channels [co0, co1). Pixels are blocked across row ends, so small maps (7x7) waste no partial blocks.
struct FConvTask {
  const float* in;  // padded image [Hp, Wp, Ci] of this batch element
  int Wp, Ci, K, stride;
  const float* w_hwio;  // [K, K, Ci, CoP]
  int CoP;
  const float* bias;  // [CoP]
  bool relu;
  float* out;  // [OH * OW, Co] of this batch element
  int OW, Co, q0, q1, co0, co1;
  // Top-left tap of output pixel q in the padded input.
  const float* origin(int q) const {
    const int oh = q / OW, ow = q % OW;
    return in + (size_t(oh) * stride * Wp + size_t(ow) * stride) * Ci;
  }
};
void fconv_avx512(const FConvTask& t);
void fconv_avx2(const FConvTask& t);
// Scalar kernel on the original OHWI weights.
void fconv_scalar(const FConvTask& t, const float* w_ohwi, const float* bias);

// Copies NHWC [N, H, W, C] into [N, H+2p, W+2p, C] with a zero border.
void pad_nhwc(const float* in, int N, int H, int W, int C, int p, float* out, ThreadPool& pool);
// NCHW -> NHWC.
void nchw_to_nhwc(const float* in, int N, int C, int H, int W, float* out, ThreadPool& pool);
// Max pool; padded positions never win. Every window must hold at least one real pixel (pad < K).
void maxpool_nhwc(const float* in, int N, int H, int W, int C, int K, int stride, int pad, float* out,
                  ThreadPool& pool, FloatIsa isa = FloatIsa::kScalar);
// y = act(x * scale[c] + shift[c]) over [npix, C].
void batchnorm_nhwc(const float* in, int64_t npix, int C, const float* scale, const float* shift, bool relu,
                    float* out, ThreadPool& pool);
// [N, HW, C] -> [N, C].
void global_avgpool_nhwc(const float* in, int N, int HW, int C, float* out);
// y[N, O] = x[N, I] @ W^T + b with W given as [I, O] (transposed at load for a vectorizable inner loop).
void linear_io(const float* x, int N, int I, int O, const float* w_io, const float* bias, float* out,
               ThreadPool& pool, FloatIsa isa = FloatIsa::kScalar);
// ISA variants of the loop bodies in fops_impl.h.
void maxpool_rows_avx512(const float* in, int H, int W, int C, int K, int stride, int pad, int OH, int OW,
                         int64_t r0, int64_t r1, float* out);
void maxpool_rows_avx2(const float* in, int H, int W, int C, int K, int stride, int pad, int OH, int OW,
                       int64_t r0, int64_t r1, float* out);
void linear_cols_avx512(const float* x, int N, int I, int O, const float* w_io, const float* bias, int o0, int o1,
                        float* out);
void linear_cols_avx2(const float* x, int N, int I, int O, const float* w_io, const float* bias, int o0, int o1,
                      float* out);

// Plain reference conv (zero padding done by bounds checks, OHWI weights): used by the tests only.
void conv2d_reference(const float* in, int N, int H, int W, int Ci, const float* w_ohwi, const float* bias,
                      int Co, int K, int stride, int pad, bool relu, float* out);

}  // namespace bonn
