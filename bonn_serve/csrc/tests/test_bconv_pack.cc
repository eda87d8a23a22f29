// pack_bn_sign (public, dispatched) and each path's row packer against a plain loop.
#include <cstring>

#include "bconv.h"
#include "bitpack.h"
#include "test_bconv_util.h"
#include "test_harness.h"

using namespace bonn;
using namespace bonn_test;

namespace {

std::vector<uint64_t> plain_pack(const std::vector<float>& x, int64_t npix, int C, const std::vector<float>& sc,
                                 const std::vector<float>& sh) {
  const int Cw = (C + 63) / 64;
  std::vector<uint64_t> out(size_t(npix) * Cw, 0);
  for (int64_t p = 0; p < npix; ++p)
    for (int c = 0; c < C; ++c) {
      const float t = x[p * C + c] * sc[c] + sh[c];
      if (t < 0.f) out[p * Cw + c / 64] |= uint64_t{1} << (c % 64);
    }
  return out;
}

std::vector<PackRowsFn> row_packers() {
  std::vector<PackRowsFn> fns = {pack_bn_sign_rows_portable};
#if defined(__x86_64__)
  for (PopcountPath p : supported_paths()) {
    if (p == PopcountPath::kAVX2) fns.push_back(pack_bn_sign_rows_avx2);
    if (p == PopcountPath::kAVX512) fns.push_back(pack_bn_sign_rows_avx512);
  }
#endif
  return fns;
}

}  // namespace

TEST_CASE(pack_bn_sign_matches_plain_loop) {
  std::mt19937_64 rng(11);
  ThreadPool pool(2);
  for (int C : {1, 3, 16, 17, 63, 64, 65, 100, 130, 256, 513}) {
    for (int64_t npix : {int64_t(1), int64_t(7), int64_t(300)}) {
      auto x = random_floats(size_t(npix) * C, rng);
      auto sc = random_floats(C, rng);  // about half negative
      auto sh = random_floats(C, rng, -1.f, 1.f);
      // Exact zeros of t must give bit 0 (sign(0) = +1): x = 0 with shift 0 on some channels.
      for (int c = 0; c < C; c += 5) {
        sh[c] = 0.f;
        x[c] = 0.f;
      }
      sc[0] = -0.f;
      const auto expect = plain_pack(x, npix, C, sc, sh);
      const int Cw = (C + 63) / 64;
      for (PackRowsFn fn : row_packers()) {
        std::vector<uint64_t> got(size_t(npix) * Cw, ~uint64_t{0});
        fn(x.data(), 0, npix, C, sc.data(), sh.data(), got.data());
        CHECK(got == expect);
        CHECK(tail_bits_zero(got, C));
      }
      std::vector<uint64_t> got(size_t(npix) * Cw, ~uint64_t{0});
      pack_bn_sign(x.data(), npix, C, sc.data(), sh.data(), got.data(), pool);
      CHECK(got == expect);
      CHECK(tail_bits_zero(got, C));
      for (PopcountPath p : supported_paths()) {  // a model's own path, as the graph passes it
        std::vector<uint64_t> mine(size_t(npix) * Cw, ~uint64_t{0});
        pack_bn_sign(x.data(), npix, C, sc.data(), sh.data(), mine.data(), pool, p);
        CHECK(mine == expect);
      }
    }
  }
}

TEST_CASE(pack_bn_sign_rejects_bad_arguments) {
  ThreadPool pool(1);
  float x[4] = {}, s[4] = {}, h[4] = {};
  uint64_t out[1];
  CHECK_THROWS(pack_bn_sign(x, 1, 0, s, h, out, pool));
  CHECK_THROWS(pack_bn_sign(x, -1, 4, s, h, out, pool));
  CHECK_THROWS(pack_bn_sign(nullptr, 1, 4, s, h, out, pool));
  CHECK_THROWS(pack_bn_sign(x, 1, 4, s, h, nullptr, pool));
  pack_bn_sign(x, 0, 4, s, h, out, pool);  // empty is fine
#if defined(__x86_64__)
  CHECK_THROWS(pack_bn_sign(x, 1, 4, s, h, out, pool, PopcountPath::kNEON));  // not this CPU's
#else
  CHECK_THROWS(pack_bn_sign(x, 1, 4, s, h, out, pool, PopcountPath::kAVX512));
#endif
}
