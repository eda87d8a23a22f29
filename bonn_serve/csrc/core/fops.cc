// Float ops: ISA dispatch, the conv driver (weight repacking + work split) and the cheap elementwise ops.
#define FOPS_ISA_NS baseline
#include "fops_impl.h"
#include "fops.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>

namespace bonn {

namespace {
constexpr int kVec = 16;       // output channels per packed weight block (one zmm, two ymm)
constexpr int kCoChunk = 64;   // output channels per parallel task
constexpr int kPixGroup = 48;  // output pixels per parallel task (8 blocks of 6)
constexpr int64_t kMinMacsPerThread = 1 << 20;  // ~12 us of FMA work on one core

bool cpu_has(FloatIsa isa) {
  switch (isa) {
    case FloatIsa::kScalar:
      return true;
#if defined(__x86_64__) || defined(_M_X64)
    case FloatIsa::kAVX2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case FloatIsa::kAVX512:
      // what fconv_avx512/fops_avx512 are compiled with (-mavx512f/bw/vl/dq): AVX512F alone is not enough
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
#endif
    default:
      return false;
  }
}
}  // namespace

const char* float_isa_name(FloatIsa isa) {
  switch (isa) {
    case FloatIsa::kScalar: return "scalar";
    case FloatIsa::kAVX2: return "avx2";
    case FloatIsa::kAVX512: return "avx512";
  }
  return "?";
}

std::vector<FloatIsa> supported_float_isas() {
  std::vector<FloatIsa> out;
  for (FloatIsa isa : {FloatIsa::kScalar, FloatIsa::kAVX2, FloatIsa::kAVX512})
    if (cpu_has(isa)) out.push_back(isa);
  return out;
}

FloatIsa select_float_isa() {
  const char* env = std::getenv("BONN_FLOAT_ISA");
  if (env && *env) {
    for (FloatIsa isa : {FloatIsa::kScalar, FloatIsa::kAVX2, FloatIsa::kAVX512}) {
      if (std::string(env) == float_isa_name(isa)) {
        if (!cpu_has(isa)) throw std::runtime_error(std::string("BONN_FLOAT_ISA=") + env + ": not supported by this CPU");
        return isa;
      }
    }
    throw std::runtime_error(std::string("BONN_FLOAT_ISA=") + env + ": unknown (use scalar, avx2 or avx512)");
  }
  return supported_float_isas().back();
}

// ------------------------------------------------------------------------------------------------- conv
FloatConv2d::FloatConv2d(const float* weight, const float* bias, int Co, int K, int Ci, int stride, int pad,
                         bool relu, FloatIsa isa)
    : Co_(Co), K_(K), Ci_(Ci), stride_(stride), pad_(pad), relu_(relu), isa_(isa) {
  if (Co < 1 || K < 1 || Ci < 1 || stride < 1 || pad < 0)
    throw std::invalid_argument("FloatConv2d: invalid geometry");
  if (!cpu_has(isa)) throw std::runtime_error(std::string("FloatConv2d: ISA ") + float_isa_name(isa) + " not supported");
  CoP_ = (Co + kVec - 1) / kVec * kVec;
  const size_t taps = size_t(K) * K * Ci;
  w_ohwi_.assign(weight, weight + taps * Co);
  w_hwio_.assign(taps * CoP_, 0.f);
  for (int o = 0; o < Co; ++o)
    for (size_t t = 0; t < taps; ++t) w_hwio_[t * CoP_ + o] = weight[size_t(o) * taps + t];
  bias_.assign(CoP_, 0.f);
  std::copy(bias, bias + Co, bias_.begin());
}

void FloatConv2d::run_padded(const float* in, int N, int Hp, int Wp, float* out, ThreadPool& pool) const {
  const int OH = (Hp - K_) / stride_ + 1, OW = (Wp - K_) / stride_ + 1;
  if (Hp < K_ || Wp < K_) throw std::invalid_argument("FloatConv2d: input smaller than the kernel");
  const int chunks = (Co_ + kCoChunk - 1) / kCoChunk;
  // Tasks are whole output rows on wide maps; on narrow ones (7x7, 8x8) they span rows so blocks stay full.
  const int group = OW >= kPixGroup / 2 ? OW : kPixGroup;
  const int npix = OH * OW, groups = (npix + group - 1) / group;
  const int64_t tasks = int64_t(N) * groups * chunks;
  const size_t img_in = size_t(Hp) * Wp * Ci_, img_out = size_t(npix) * Co_;
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int chunk = int(i % chunks);
      const int64_t rest = i / chunks;
      const int n = int(rest / groups), g = int(rest % groups);
      FConvTask t;
      t.in = in + n * img_in;
      t.Wp = Wp; t.Ci = Ci_; t.K = K_; t.stride = stride_;
      t.w_hwio = w_hwio_.data(); t.CoP = CoP_; t.bias = bias_.data(); t.relu = relu_;
      t.out = out + n * img_out;
      t.OW = OW; t.Co = Co_;
      t.q0 = g * group; t.q1 = std::min(npix, t.q0 + group);
      t.co0 = chunk * kCoChunk; t.co1 = std::min(Co_, t.co0 + kCoChunk);
      switch (isa_) {
#if defined(__x86_64__) || defined(_M_X64)
        case FloatIsa::kAVX512: fconv_avx512(t); break;
        case FloatIsa::kAVX2: fconv_avx2(t); break;
#endif
        default: fconv_scalar(t, w_ohwi_.data(), bias_.data()); break;
      }
    }
  };
  // Small convs (WRN at batch 1) stay on one thread: splitting ~10 us of work costs more in cross-core sync,
  // and far more when the machine is busy and a worker waits for a core.
  const int64_t task_macs = int64_t(std::min(group, npix)) * std::min(Co_, kCoChunk) * K_ * K_ * Ci_;
  const int64_t grain = std::max<int64_t>(1, kMinMacsPerThread / std::max<int64_t>(1, task_macs));
  // std::cref: std::function keeps a reference_wrapper inline, so dispatch allocates nothing.
  pool.parallel_for(tasks, std::cref(body), grain);
}

void conv2d_reference(const float* in, int N, int H, int W, int Ci, const float* w, const float* bias, int Co,
                      int K, int stride, int pad, bool relu, float* out) {
  const int OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
  for (int n = 0; n < N; ++n)
    for (int oh = 0; oh < OH; ++oh)
      for (int ow = 0; ow < OW; ++ow)
        for (int o = 0; o < Co; ++o) {
          double acc = bias[o];
          for (int ky = 0; ky < K; ++ky)
            for (int kx = 0; kx < K; ++kx) {
              const int iy = oh * stride + ky - pad, ix = ow * stride + kx - pad;
              if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
              const float* x = in + ((size_t(n) * H + iy) * W + ix) * Ci;
              const float* wk = w + ((size_t(o) * K + ky) * K + kx) * Ci;
              for (int c = 0; c < Ci; ++c) acc += double(x[c]) * wk[c];
            }
          float v = float(acc);
          out[((size_t(n) * OH + oh) * OW + ow) * Co + o] = relu && v < 0.f ? 0.f : v;
        }
}

// ---------------------------------------------------------------------------------------- elementwise ops
void pad_nhwc(const float* in, int N, int H, int W, int C, int p, float* out, ThreadPool& pool) {
  const int Hp = H + 2 * p, Wp = W + 2 * p;
  const size_t row_in = size_t(W) * C, row_out = size_t(Wp) * C, border = size_t(p) * C;
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int n = int(r / Hp), y = int(r % Hp) - p;
      float* o = out + size_t(r) * row_out;
      if (y < 0 || y >= H) {
        std::memset(o, 0, row_out * sizeof(float));
        continue;
      }
      std::memset(o, 0, border * sizeof(float));
      std::memcpy(o + border, in + (size_t(n) * H + y) * row_in, row_in * sizeof(float));
      std::memset(o + border + row_in, 0, border * sizeof(float));
    }
  };
  // std::cref: std::function keeps a reference_wrapper inline, so dispatch allocates nothing.
  pool.parallel_for(int64_t(N) * Hp, std::cref(body), 8);
}

void nchw_to_nhwc(const float* in, int N, int C, int H, int W, float* out, ThreadPool& pool) {
  const size_t hw = size_t(H) * W;
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t n = r / H, y = r % H;
      const float* src = in + size_t(n) * C * hw + size_t(y) * W;
      float* dst = out + (size_t(n) * hw + size_t(y) * W) * C;
      for (int x = 0; x < W; ++x)
        for (int c = 0; c < C; ++c) dst[size_t(x) * C + c] = src[size_t(c) * hw + x];
    }
  };
  // std::cref: std::function keeps a reference_wrapper inline, so dispatch allocates nothing.
  pool.parallel_for(int64_t(N) * H, std::cref(body), 4);
}

void maxpool_nhwc(const float* in, int N, int H, int W, int C, int K, int stride, int pad, float* out,
                  ThreadPool& pool, FloatIsa isa) {
  const int OH = (H + 2 * pad - K) / stride + 1, OW = (W + 2 * pad - K) / stride + 1;
  auto body = [&](int64_t b, int64_t e) {
    switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
      case FloatIsa::kAVX512: maxpool_rows_avx512(in, H, W, C, K, stride, pad, OH, OW, b, e, out); break;
      case FloatIsa::kAVX2: maxpool_rows_avx2(in, H, W, C, K, stride, pad, OH, OW, b, e, out); break;
#endif
      default: baseline::maxpool_rows(in, H, W, C, K, stride, pad, OH, OW, b, e, out); break;
    }
  };
  // std::cref: std::function keeps a reference_wrapper inline, so dispatch allocates nothing.
  pool.parallel_for(int64_t(N) * OH, std::cref(body), 2);
}

void batchnorm_nhwc(const float* in, int64_t npix, int C, const float* scale, const float* shift, bool relu,
                    float* out, ThreadPool& pool) {
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t p = b; p < e; ++p) {
      const float* x = in + p * C;
      float* y = out + p * C;
      if (relu) {
        for (int c = 0; c < C; ++c) y[c] = std::max(x[c] * scale[c] + shift[c], 0.f);
      } else {
        for (int c = 0; c < C; ++c) y[c] = x[c] * scale[c] + shift[c];
      }
    }
  };
  // std::cref: std::function keeps a reference_wrapper inline, so dispatch allocates nothing.
  pool.parallel_for(npix, std::cref(body), 64);
}

void global_avgpool_nhwc(const float* in, int N, int HW, int C, float* out) {
  for (int n = 0; n < N; ++n) {
    float* acc = out + size_t(n) * C;
    std::fill(acc, acc + C, 0.f);
    const float* x = in + size_t(n) * HW * C;
    for (int p = 0; p < HW; ++p)
      for (int c = 0; c < C; ++c) acc[c] += x[size_t(p) * C + c];
    const float inv = 1.f / float(HW);
    for (int c = 0; c < C; ++c) acc[c] *= inv;
  }
}

void linear_io(const float* x, int N, int I, int O, const float* w_io, const float* bias, float* out,
               ThreadPool& pool, FloatIsa isa) {
  // Split over blocks of 64 outputs: at batch 1 this layer is bound by reading the weights, so both cores
  // stream half of them each.
  const int blocks = (O + 63) / 64;
  auto body = [&](int64_t b, int64_t e) {
    const int o0 = int(b) * 64, o1 = std::min(O, int(e) * 64);
    switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
      case FloatIsa::kAVX512: linear_cols_avx512(x, N, I, O, w_io, bias, o0, o1, out); break;
      case FloatIsa::kAVX2: linear_cols_avx2(x, N, I, O, w_io, bias, o0, o1, out); break;
#endif
      default: baseline::linear_cols(x, N, I, O, w_io, bias, o0, o1, out); break;
    }
  };
  // std::cref: std::function keeps a reference_wrapper inline, so dispatch allocates nothing.
  pool.parallel_for(blocks, std::cref(body), 2);
}

}  // namespace bonn
