// Binary conv kernels: the reference against an unpacked +-1 float conv, and every popcount path's fast kernel
// against the reference, bit-exactly (float outputs compared with ==, packed next-layer bits word by word).
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "bconv.h"
#include "test_bconv_util.h"
#include "test_harness.h"

using namespace bonn;
using namespace bonn_test;

namespace {

// Plain float conv on unpacked +-1 values with one-padding: the definition the packed reference must match.
std::vector<double> float_sign_conv(const std::vector<uint64_t>& in, const std::vector<uint64_t>& w,
                                    const ConvShape& s) {
  const int Cw = (s.Ci + 63) / 64, OH = s.OH(), OW = s.OW();
  auto sgn = [](uint64_t word, int bit) { return ((word >> bit) & 1) ? -1.0 : 1.0; };
  std::vector<double> out(static_cast<size_t>(s.N) * OH * OW * s.Co);
  for (int n = 0; n < s.N; ++n)
    for (int oy = 0; oy < OH; ++oy)
      for (int ox = 0; ox < OW; ++ox)
        for (int o = 0; o < s.Co; ++o) {
          double acc = 0;
          for (int ky = 0; ky < s.K; ++ky)
            for (int kx = 0; kx < s.K; ++kx) {
              const int iy = oy * s.stride - s.pad + ky, ix = ox * s.stride - s.pad + kx;
              const bool inside = iy >= 0 && iy < s.H && ix >= 0 && ix < s.W;
              for (int c = 0; c < s.Ci; ++c) {
                const double xv = inside ? sgn(in[((size_t(n) * s.H + iy) * s.W + ix) * Cw + c / 64], c % 64) : 1.0;
                const double wv = sgn(w[((size_t(o) * s.K + ky) * s.K + kx) * Cw + c / 64], c % 64);
                acc += xv * wv;
              }
            }
          out[((size_t(n) * OH + oy) * OW + ox) * s.Co + o] = acc;
        }
  return out;
}

struct Case {
  int N, H, W, Ci, Co, K, stride, threads;
  bool prelu, residual, next, float_out;
};

std::string describe(const Case& c, PopcountPath p) {
  return std::string(path_name(p)) + " N=" + std::to_string(c.N) + " H=" + std::to_string(c.H) + " W=" +
         std::to_string(c.W) + " Ci=" + std::to_string(c.Ci) + " Co=" + std::to_string(c.Co) + " K=" +
         std::to_string(c.K) + " s=" + std::to_string(c.stride) + " t=" + std::to_string(c.threads) +
         (c.prelu ? " prelu" : "") + (c.residual ? " residual" : "") + (c.next ? " next" : "") +
         (c.float_out ? "" : " no-float-out");
}

// Runs one case on one path and compares with the reference; returns false (and reports) on mismatch.
bool run_case(const Case& c, PopcountPath path, uint64_t seed) {
  std::mt19937_64 rng(seed);
  ConvShape s;
  s.N = c.N; s.H = c.H; s.W = c.W; s.Ci = c.Ci; s.Co = c.Co; s.K = c.K; s.stride = c.stride; s.pad = c.K / 2;
  const int OH = s.OH(), OW = s.OW(), Ow = (c.Co + 63) / 64;
  const size_t nout = size_t(c.N) * OH * OW * c.Co, nbits = size_t(c.N) * OH * OW * Ow;
  auto in = random_packed(int64_t(c.N) * c.H * c.W, c.Ci, rng);
  auto w = random_packed(int64_t(c.Co) * c.K * c.K, c.Ci, rng);
  auto prelu = random_floats(c.Co, rng, -0.5f, 0.5f);
  auto residual = random_floats(nout, rng);
  auto nscale = random_floats(c.Co, rng);  // mixed signs, as BN scales can be
  auto nshift = random_floats(c.Co, rng, -20.f, 20.f);
  std::uniform_real_distribution<float> ad(0.01f, 2.f);
  OutputTransform ref_ot, ot;
  ref_ot.alpha = ot.alpha = ad(rng);
  std::vector<float> ref_out(nout), out(nout, -12345.f);
  std::vector<uint64_t> ref_bits(nbits), bits(nbits, ~uint64_t{0});
  ref_ot.out = ref_out.data();
  ot.out = c.float_out ? out.data() : nullptr;
  if (c.prelu) ref_ot.prelu = ot.prelu = prelu.data();
  if (c.residual) ref_ot.residual = ot.residual = residual.data();
  if (c.next || !c.float_out) {
    ref_ot.next_scale = ot.next_scale = nscale.data();
    ref_ot.next_shift = ot.next_shift = nshift.data();
    ref_ot.next_packed = ref_bits.data();
    ot.next_packed = bits.data();
  }
  binary_conv2d_reference(in.data(), w.data(), s, ref_ot);
  ThreadPool pool(c.threads);
  BinaryConv2d conv(w.data(), c.Co, c.K, c.Ci, c.stride, s.pad, path);
  conv.run(in.data(), c.N, c.H, c.W, ot, pool);
  bool ok = true;
  if (c.float_out) ok = std::memcmp(out.data(), ref_out.data(), nout * sizeof(float)) == 0;
  if (ot.next_packed) ok = ok && bits == ref_bits && tail_bits_zero(bits, c.Co);
  if (!ok) {
    size_t first = 0;
    while (first < nout && c.float_out && out[first] == ref_out[first]) ++first;
    fail(__FILE__, __LINE__,
         "mismatch: " + describe(c, path) +
             (first < nout ? " first float diff at " + std::to_string(first) + ": " + std::to_string(out[first]) +
                                 " vs " + std::to_string(ref_out[first])
                           : std::string(" (packed bits)")));
  }
  return ok;
}

}  // namespace

TEST_CASE(bconv_reference_matches_unpacked_float_conv) {
  std::mt19937_64 rng(7);
  const int cis[] = {1, 3, 17, 64, 65, 130};
  const int sizes[][2] = {{7, 9}, {1, 1}, {5, 3}, {4, 4}};
  int i = 0;
  for (int ci : cis)
    for (auto hw : sizes)
      for (int k : {1, 3})
        for (int stride : {1, 2}) {
          ConvShape s;
          s.N = 1 + (i++ % 2); s.H = hw[0]; s.W = hw[1]; s.Ci = ci; s.Co = 1 + (i * 7) % 9; s.K = k;
          s.stride = stride; s.pad = k / 2;
          auto in = random_packed(int64_t(s.N) * s.H * s.W, ci, rng);
          auto w = random_packed(int64_t(s.Co) * k * k, ci, rng);
          std::vector<float> out(size_t(s.N) * s.OH() * s.OW() * s.Co);
          OutputTransform ot;  // alpha 1, nothing else: out is exactly the integer dot
          ot.out = out.data();
          binary_conv2d_reference(in.data(), w.data(), s, ot);
          auto expect = float_sign_conv(in, w, s);
          for (size_t j = 0; j < out.size(); ++j) CHECK_EQ(double(out[j]), expect[j]);
        }
}

TEST_CASE(bconv_reference_one_padding_counts_padded_taps_as_plus_one) {
  // All-negative input and all-positive weights on a 1x1 image with a 3x3 kernel: the centre tap gives -Ci and
  // the 8 padded taps give +Ci each, so dot = 7 * Ci (zero-padding would give -Ci).
  const int Ci = 70, Cw = 2;
  std::vector<uint64_t> in = {~uint64_t{0}, (uint64_t{1} << 6) - 1};
  std::vector<uint64_t> w(9 * Cw, 0);
  ConvShape s;
  s.H = s.W = 1; s.Ci = Ci; s.Co = 1; s.K = 3;
  float out = 0;
  OutputTransform ot;
  ot.out = &out;
  binary_conv2d_reference(in.data(), w.data(), s, ot);
  CHECK_EQ(out, 7.f * Ci);
}

TEST_CASE(bconv_fast_paths_match_reference_on_all_shapes) {
  const int cis[] = {3, 17, 63, 64, 65, 130, 256};
  const int cos[] = {5, 16, 64, 33, 130, 8, 96, 1, 256, 70};
  const int sizes[][2] = {{7, 9}, {1, 1}, {5, 3}};
  for (PopcountPath path : paths_under_test()) {
    int i = 0, bad = 0;
    for (int ci : cis)
      for (int k : {1, 3})
        for (int stride : {1, 2})
          for (auto hw : sizes) {
            // Cycle the remaining options so every value of each shows up with every Ci.
            Case c{1 + 2 * (i % 2), hw[0], hw[1], ci, cos[i % 10], k, stride, 1 + (i / 2) % 2,
                   (i % 3) == 1, (i % 5) >= 2, (i % 4) >= 2, (i % 7) != 6};
            if (!run_case(c, path, 1000 + i) && ++bad > 5) return;
            ++i;
          }
  }
}

TEST_CASE(bconv_fast_paths_all_transform_combinations) {
  for (PopcountPath path : paths_under_test())
    for (int threads : {1, 2})
      for (int N : {1, 3})
        for (int mask = 0; mask < 8; ++mask) {
          Case c{N, 6, 5, 130, 70, 3, 1, threads, bool(mask & 1), bool(mask & 2), bool(mask & 4), true};
          run_case(c, path, 77 + mask);
          Case d{N, 9, 7, 64, 128, 3, 2, threads, bool(mask & 1), bool(mask & 2), bool(mask & 4), mask != 3};
          run_case(d, path, 99 + mask);
        }
}

TEST_CASE(bconv_fast_paths_resnet_like_shapes) {
  // Larger layers (more tiles than threads, multi-word channels) as the real models use them.
  for (PopcountPath path : paths_under_test()) {
    run_case(Case{1, 14, 14, 128, 128, 3, 1, 2, true, true, true, true}, path, 5);
    run_case(Case{2, 8, 8, 64, 128, 3, 2, 2, true, true, false, true}, path, 6);
    run_case(Case{1, 7, 7, 512, 512, 3, 1, 2, true, false, true, true}, path, 7);
    run_case(Case{1, 16, 16, 16, 16, 3, 1, 1, true, true, true, true}, path, 8);
    run_case(Case{1, 8, 8, 32, 64, 3, 2, 2, true, true, true, true}, path, 9);
  }
}

TEST_CASE(bconv_residual_may_alias_output) {
  std::mt19937_64 rng(3);
  const int N = 1, H = 5, W = 6, C = 96;
  auto in = random_packed(N * H * W, C, rng);
  auto w = random_packed(C * 9, C, rng);
  auto prelu = random_floats(C, rng, 0.f, 0.3f);
  auto res = random_floats(size_t(N) * H * W * C, rng);
  ConvShape s;
  s.N = N; s.H = H; s.W = W; s.Ci = C; s.Co = C;
  std::vector<float> ref(res.size());
  OutputTransform rot;
  rot.alpha = 0.3f; rot.prelu = prelu.data(); rot.residual = res.data(); rot.out = ref.data();
  binary_conv2d_reference(in.data(), w.data(), s, rot);
  ThreadPool pool(2);
  for (PopcountPath path : paths_under_test()) {
    std::vector<float> io = res;
    OutputTransform ot = rot;
    ot.residual = io.data();
    ot.out = io.data();
    BinaryConv2d(w.data(), C, 3, C, 1, 1, path).run(in.data(), N, H, W, ot, pool);
    CHECK(io == ref);
  }
}

TEST_CASE(bconv_rejects_bad_arguments) {
  std::vector<uint64_t> w(9, 0), in(16, 0);
  std::vector<float> out(64);
  ThreadPool pool(1);
  CHECK_THROWS(BinaryConv2d(nullptr, 1, 3, 64, 1, 1, PopcountPath::kPortable));
  CHECK_THROWS(BinaryConv2d(w.data(), 0, 3, 64, 1, 1, PopcountPath::kPortable));
  CHECK_THROWS(BinaryConv2d(w.data(), 1, 3, 64, 0, 1, PopcountPath::kPortable));
  CHECK_THROWS(BinaryConv2d(w.data(), 1, 3, 64, 1, -1, PopcountPath::kPortable));
  {
    std::vector<uint64_t> dirty(9, 0);
    dirty[4] = uint64_t{1} << 20;  // channel 20 of a 17-channel layer: a tail bit
    CHECK_THROWS(BinaryConv2d(dirty.data(), 1, 3, 17, 1, 1, PopcountPath::kPortable));
    BinaryConv2d fine(dirty.data(), 1, 3, 21, 1, 1, PopcountPath::kPortable);  // same bits, 21 channels: valid
    CHECK_EQ(fine.shape(1, 3, 3).Ci, 21);
  }
  BinaryConv2d conv(w.data(), 1, 3, 64, 1, 1, PopcountPath::kPortable);
  OutputTransform ot;
  CHECK_THROWS(conv.run(in.data(), 1, 4, 4, ot, pool));  // no output
  ot.out = out.data();
  CHECK_THROWS(conv.run(nullptr, 1, 4, 4, ot, pool));
  CHECK_THROWS(conv.run(in.data(), 0, 4, 4, ot, pool));
  ot.next_packed = w.data();
  CHECK_THROWS(conv.run(in.data(), 1, 4, 4, ot, pool));  // next_packed without scale/shift
  BinaryConv2d valid_pad0(w.data(), 1, 3, 64, 1, 0, PopcountPath::kPortable);
  OutputTransform ok;
  ok.out = out.data();
  CHECK_THROWS(valid_pad0.run(in.data(), 1, 2, 2, ok, pool));  // 2x2 input, 3x3 kernel, no padding
  CHECK_EQ(conv.shape(2, 5, 7).OH(), 5);
  CHECK_EQ(conv.shape(2, 5, 7).OW(), 7);
}

TEST_CASE(bconv_path_selection_and_env_override) {
  const auto paths = supported_paths();
  REQUIRE(!paths.empty());
  CHECK(paths.front() == PopcountPath::kPortable);
  const char* old = std::getenv("BONN_POPCOUNT");
  std::string saved = old ? old : "";
  for (PopcountPath p : {PopcountPath::kPortable, PopcountPath::kAVX2, PopcountPath::kAVX512, PopcountPath::kNEON}) {
    setenv("BONN_POPCOUNT", path_name(p), 1);
    bool supported = false;
    for (auto q : paths) supported = supported || q == p;
    if (supported) CHECK(select_path() == p);
    else {
      CHECK_THROWS(select_path());
      std::vector<uint64_t> w(9, 0);
      CHECK_THROWS(BinaryConv2d(w.data(), 1, 3, 64, 1, 1, p));
    }
  }
  setenv("BONN_POPCOUNT", "sse9", 1);
  CHECK_THROWS(select_path());
  if (old) setenv("BONN_POPCOUNT", saved.c_str(), 1);
  else unsetenv("BONN_POPCOUNT");
}
