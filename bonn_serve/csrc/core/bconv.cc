// Path selection, the BinaryConv2d front end (validation + dispatch), pack_bn_sign dispatch and the reference.
#include "bconv.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "bconv_internal.h"
#include "bitpack.h"
#include "cpu_features.h"

namespace bonn {

const char* path_name(PopcountPath p) {
  switch (p) {
    case PopcountPath::kPortable: return "portable";
    case PopcountPath::kAVX2: return "avx2";
    case PopcountPath::kAVX512: return "avx512";
    case PopcountPath::kNEON: return "neon";
  }
  return "unknown";
}

namespace {

bool path_supported(PopcountPath p) {
  const CpuFeatures& f = cpu_features();
  switch (p) {
    case PopcountPath::kPortable: return true;
#if defined(__x86_64__)
    case PopcountPath::kAVX2: return f.avx2;
    case PopcountPath::kAVX512: return f.avx512_vpopcntdq;
#endif
#if defined(__aarch64__)
    case PopcountPath::kNEON: return f.neon;
#endif
    default: return false;
  }
}

ConvKernelFactory factory_for(PopcountPath p) {
  switch (p) {
#if defined(__x86_64__)
    case PopcountPath::kAVX2: return make_conv_kernel_avx2;
    case PopcountPath::kAVX512: return make_conv_kernel_avx512;
#endif
#if defined(__aarch64__)
    case PopcountPath::kNEON: return make_conv_kernel_neon;
#endif
    default: return make_conv_kernel_portable;
  }
}

PackRowsFn pack_rows_for(PopcountPath p) {
  switch (p) {
#if defined(__x86_64__)
    case PopcountPath::kAVX2: return pack_bn_sign_rows_avx2;
    case PopcountPath::kAVX512: return pack_bn_sign_rows_avx512;
#endif
    default: return pack_bn_sign_rows_portable;
  }
}

}  // namespace

std::vector<PopcountPath> supported_paths() {
  std::vector<PopcountPath> out;
  for (PopcountPath p : {PopcountPath::kPortable, PopcountPath::kAVX2, PopcountPath::kAVX512, PopcountPath::kNEON})
    if (path_supported(p)) out.push_back(p);
  return out;
}

PopcountPath select_path() {
  const char* env = std::getenv("BONN_POPCOUNT");
  if (env && *env) {
    std::string want(env);
    for (PopcountPath p : {PopcountPath::kPortable, PopcountPath::kAVX2, PopcountPath::kAVX512, PopcountPath::kNEON}) {
      if (want == path_name(p)) {
        if (!path_supported(p))
          throw std::runtime_error("BONN_POPCOUNT=" + want + ": this CPU does not support that popcount path");
        return p;
      }
    }
    throw std::runtime_error("BONN_POPCOUNT=" + want + ": unknown path (expected portable, avx2, avx512 or neon)");
  }
  for (PopcountPath p : {PopcountPath::kAVX512, PopcountPath::kNEON, PopcountPath::kAVX2})
    if (path_supported(p)) return p;
  return PopcountPath::kPortable;
}

struct BinaryConv2d::Impl {
  int Co, K, Ci, stride, pad;
  PopcountPath path;
  std::unique_ptr<ConvKernel> kernel;
};

BinaryConv2d::BinaryConv2d(const uint64_t* weight_bits, int Co, int K, int Ci, int stride, int pad,
                           PopcountPath path) {
  if (!weight_bits) throw std::invalid_argument("BinaryConv2d: weight_bits is null");
  if (Co <= 0 || K <= 0 || Ci <= 0 || stride <= 0 || pad < 0)
    throw std::invalid_argument("BinaryConv2d: need Co, K, Ci, stride > 0 and pad >= 0 (got Co=" +
                                std::to_string(Co) + " K=" + std::to_string(K) + " Ci=" + std::to_string(Ci) +
                                " stride=" + std::to_string(stride) + " pad=" + std::to_string(pad) + ")");
  if (static_cast<int64_t>(K) * K * Ci >= (int64_t{1} << 30))  // kkc - 2 * pc stays in int
    throw std::invalid_argument("BinaryConv2d: K*K*Ci too large (" + std::to_string(int64_t(K) * K * Ci) + ")");
  // The layout requires zero tail bits; the kernels rely on it (narrow-input mode shares words between taps).
  if (Ci % 64 != 0) {
    const int Cw = words_for(Ci);
    const uint64_t tail = ~((uint64_t{1} << (Ci % 64)) - 1);
    for (int64_t r = 0; r < int64_t(Co) * K * K; ++r)
      if (weight_bits[r * Cw + Cw - 1] & tail)
        throw std::invalid_argument("BinaryConv2d: weight bits beyond in_channels (" + std::to_string(Ci) +
                                    ") must be zero");
  }
  if (!path_supported(path))
    throw std::runtime_error(std::string("BinaryConv2d: popcount path '") + path_name(path) +
                             "' is not supported on this CPU");
  impl_ = std::make_unique<Impl>(Impl{Co, K, Ci, stride, pad, path, factory_for(path)(weight_bits, Co, K, Ci,
                                                                                      stride, pad)});
}

BinaryConv2d::~BinaryConv2d() = default;

ConvShape BinaryConv2d::shape(int N, int H, int W) const {
  ConvShape s;
  s.N = N;
  s.H = H;
  s.W = W;
  s.Ci = impl_->Ci;
  s.Co = impl_->Co;
  s.K = impl_->K;
  s.stride = impl_->stride;
  s.pad = impl_->pad;
  return s;
}

PopcountPath BinaryConv2d::path() const { return impl_->path; }

void BinaryConv2d::run(const uint64_t* in, int N, int H, int W, const OutputTransform& ot, ThreadPool& pool) const {
  ConvShape s = shape(N, H, W);
  if (!in) throw std::invalid_argument("BinaryConv2d::run: input is null");
  if (N <= 0 || H <= 0 || W <= 0 || H + 2 * s.pad < s.K || W + 2 * s.pad < s.K)
    throw std::invalid_argument("BinaryConv2d::run: bad input size N=" + std::to_string(N) + " H=" +
                                std::to_string(H) + " W=" + std::to_string(W) + " for kernel " +
                                std::to_string(s.K) + " pad " + std::to_string(s.pad));
  if (!ot.out && !ot.next_packed) throw std::invalid_argument("BinaryConv2d::run: no output (out is null)");
  if (ot.next_packed && (!ot.next_scale || !ot.next_shift))
    throw std::invalid_argument("BinaryConv2d::run: next_packed needs next_scale and next_shift");
  impl_->kernel->run(in, s, ot, pool);
}

void pack_bn_sign(const float* x, int64_t npix, int C, const float* scale, const float* shift, uint64_t* out,
                  ThreadPool& pool) {
  pack_bn_sign(x, npix, C, scale, shift, out, pool, select_path());
}

void pack_bn_sign(const float* x, int64_t npix, int C, const float* scale, const float* shift, uint64_t* out,
                  ThreadPool& pool, PopcountPath path) {
  if (npix < 0 || C <= 0) throw std::invalid_argument("pack_bn_sign: need npix >= 0 and C > 0");
  if (npix == 0) return;
  if (!x || !scale || !shift || !out) throw std::invalid_argument("pack_bn_sign: null pointer");
  if (!path_supported(path)) throw std::invalid_argument(std::string("pack_bn_sign: path ") + path_name(path) +
                                                         " is not supported on this CPU");
  PackRowsFn fn = pack_rows_for(path);
  // ~32K floats per chunk: below that the dispatch costs more than it saves.
  const int64_t grain = std::max<int64_t>(1, 32768 / C);
  struct Args {
    PackRowsFn fn;
    const float *x, *scale, *shift;
    int C;
    uint64_t* out;
  } a{fn, x, scale, shift, C, out};
  const Args* ap = &a;  // one captured pointer: std::function stores it inline, no allocation per call
  pool.parallel_for(npix, [ap](int64_t b, int64_t e) { ap->fn(ap->x, b, e, ap->C, ap->scale, ap->shift, ap->out); },
                    grain);
}

void binary_conv2d_reference(const uint64_t* in, const uint64_t* weight_bits, const ConvShape& s,
                             const OutputTransform& ot) {
  const int Cw = words_for(s.Ci), OH = s.OH(), OW = s.OW(), Ow = words_for(s.Co);
  const int kkc = s.K * s.K * s.Ci;
  for (int n = 0; n < s.N; ++n)
    for (int oy = 0; oy < OH; ++oy)
      for (int ox = 0; ox < OW; ++ox) {
        const int64_t pix = (static_cast<int64_t>(n) * OH + oy) * OW + ox;
        if (ot.next_packed) std::memset(ot.next_packed + pix * Ow, 0, sizeof(uint64_t) * Ow);
        for (int o = 0; o < s.Co; ++o) {
          int diff = 0;
          for (int ky = 0; ky < s.K; ++ky)
            for (int kx = 0; kx < s.K; ++kx) {
              const int iy = oy * s.stride - s.pad + ky, ix = ox * s.stride - s.pad + kx;
              const bool inside = iy >= 0 && iy < s.H && ix >= 0 && ix < s.W;
              for (int c = 0; c < Cw; ++c) {
                const uint64_t x = inside ? in[((static_cast<int64_t>(n) * s.H + iy) * s.W + ix) * Cw + c] : 0;
                const uint64_t w = weight_bits[((static_cast<int64_t>(o) * s.K + ky) * s.K + kx) * Cw + c];
                diff += popcount64(x ^ w);
              }
            }
          const int dot = kkc - 2 * diff;
          float y = ot.alpha * static_cast<float>(dot);
          if (ot.prelu) y = y >= 0.f ? y : ot.prelu[o] * y;
          if (ot.residual) y += ot.residual[pix * s.Co + o];
          if (ot.out) ot.out[pix * s.Co + o] = y;
          if (ot.next_packed) {
            const float t = y * ot.next_scale[o] + ot.next_shift[o];
            if (t < 0.f) ot.next_packed[pix * Ow + o / 64] |= uint64_t{1} << (o % 64);
          }
        }
      }
}

}  // namespace bonn
