#include "bconv_bench.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <stdexcept>
#include <vector>

#include "bitpack.h"

namespace bonn {

namespace {

using Clock = std::chrono::steady_clock;

double (*peak_loop_for(PopcountPath p))(long) {
  switch (p) {
#if defined(__x86_64__)
    case PopcountPath::kAVX2: return detail::peak_loop_avx2;
    case PopcountPath::kAVX512: return detail::peak_loop_avx512;
#endif
#if defined(__aarch64__)
    case PopcountPath::kNEON: return detail::peak_loop_neon;
#endif
    default: return detail::peak_loop_portable;
  }
}

bool supported(PopcountPath p) {
  for (auto q : supported_paths())
    if (q == p) return true;
  return false;
}

}  // namespace

namespace detail {

// 4 input words x 4 weight words per step, 16 independent accumulators: the scalar analogue of the SIMD loops.
double peak_loop_portable(long iters) {
  alignas(64) static uint64_t buf[512];
  for (int i = 0; i < 512; ++i) buf[i] = 0x9E3779B97F4A7C15ULL * (i + 1);
  uint64_t acc[16] = {};
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < 512; i += 8) {
      const uint64_t* x = buf + i;
      const uint64_t* w = buf + ((i + 256) & 511);
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) acc[a * 4 + b] += popcount64(x[a] ^ w[b]);
    }
  uint64_t s = 0;
  for (auto a : acc) s += a;
  volatile uint64_t sink = s;
  (void)sink;
  return double(iters) * (512 / 8) * 16 * 64;
}

}  // namespace detail

double popcount_peak_gbmacs(PopcountPath path, double seconds) {
  if (!supported(path)) throw std::runtime_error(std::string("popcount path not supported: ") + path_name(path));
  auto loop = peak_loop_for(path);
  // Calibrate to ~10 ms per sample, then keep the best sample (the least disturbed by other load).
  long iters = 16;
  for (;;) {
    auto t0 = Clock::now();
    loop(iters);
    double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    if (dt > 0.005) {
      iters = std::max<long>(1, long(iters * 0.01 / dt));
      break;
    }
    iters *= 2;
  }
  double best = 0;
  auto start = Clock::now();
  do {
    auto t0 = Clock::now();
    double ops = loop(iters);
    double dt = std::chrono::duration<double>(Clock::now() - t0).count();
    best = std::max(best, ops / dt);
  } while (std::chrono::duration<double>(Clock::now() - start).count() < seconds);
  return best * 1e-9;
}

double bconv_bmacs(int Ci, int Co, int H, int W, int K, int stride, int batch) {
  ConvShape s;
  s.N = batch; s.H = H; s.W = W; s.Ci = Ci; s.Co = Co; s.K = K; s.stride = stride; s.pad = K / 2;
  return double(batch) * s.OH() * s.OW() * Co * K * K * Ci;
}

double bench_bconv(int Ci, int Co, int H, int W, int K, int stride, int batch, int threads, PopcountPath path,
                   int repeats) {
  if (repeats <= 0) throw std::invalid_argument("bench_bconv: repeats must be > 0");
  if (Ci <= 0 || Co <= 0 || H <= 0 || W <= 0 || K <= 0 || stride <= 0 || batch <= 0)
    throw std::invalid_argument("bench_bconv: sizes must be positive");
  std::mt19937_64 rng(42);
  const int Cw = words_for(Ci), Ow = words_for(Co);
  std::vector<uint64_t> w(size_t(Co) * K * K * Cw), in(size_t(batch) * H * W * Cw);
  const uint64_t tail = Ci % 64 ? (uint64_t{1} << (Ci % 64)) - 1 : ~uint64_t{0};
  for (size_t i = 0; i < w.size(); ++i) w[i] = rng() & ((i % Cw == size_t(Cw - 1)) ? tail : ~uint64_t{0});
  for (size_t i = 0; i < in.size(); ++i) in[i] = rng() & ((i % Cw == size_t(Cw - 1)) ? tail : ~uint64_t{0});
  BinaryConv2d conv(w.data(), Co, K, Ci, stride, K / 2, path);
  ConvShape s = conv.shape(batch, H, W);
  const size_t nout = size_t(batch) * s.OH() * s.OW() * Co;
  std::vector<float> out(nout), res(nout, 0.25f), prelu(Co, 0.1f), scale(Co, 1.f), shift(Co, 0.f);
  std::vector<uint64_t> next(size_t(batch) * s.OH() * s.OW() * Ow);
  OutputTransform ot;
  ot.alpha = 0.01f; ot.prelu = prelu.data(); ot.residual = res.data(); ot.out = out.data();
  ot.next_scale = scale.data(); ot.next_shift = shift.data(); ot.next_packed = next.data();
  ThreadPool pool(threads);
  conv.run(in.data(), batch, H, W, ot, pool);  // warm-up: caches, page faults, worker start
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    auto t0 = Clock::now();
    conv.run(in.data(), batch, H, W, ot, pool);
    times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

}  // namespace bonn
