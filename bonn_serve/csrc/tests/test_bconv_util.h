// Shared helpers for the binary-kernel tests: random packed tensors and the paths to exercise.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

#include "bconv.h"

namespace bonn_test {

// Random packed tensor [rows, ceil(C/64)] with tail bits zero, as the layout requires.
inline std::vector<uint64_t> random_packed(int64_t rows, int C, std::mt19937_64& rng) {
  const int Cw = (C + 63) / 64;
  std::vector<uint64_t> v(static_cast<size_t>(rows) * Cw);
  for (int64_t r = 0; r < rows; ++r)
    for (int w = 0; w < Cw; ++w) {
      uint64_t x = rng();
      const int bits = C - 64 * w;
      if (bits < 64) x &= (uint64_t{1} << bits) - 1;
      v[r * Cw + w] = x;
    }
  return v;
}

inline std::vector<float> random_floats(size_t n, std::mt19937_64& rng, float lo = -2.f, float hi = 2.f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// With BONN_POPCOUNT set (scripts/build_cpp_tests.sh runs once per path) test only that path; else all.
inline std::vector<bonn::PopcountPath> paths_under_test() {
  const char* env = std::getenv("BONN_POPCOUNT");
  if (env && *env) return {bonn::select_path()};
  return bonn::supported_paths();
}

inline bool tail_bits_zero(const std::vector<uint64_t>& v, int C) {
  const int Cw = (C + 63) / 64;
  if (C % 64 == 0) return true;
  const uint64_t mask = ~((uint64_t{1} << (C % 64)) - 1);
  for (size_t r = 0; r < v.size() / Cw; ++r)
    if (v[r * Cw + Cw - 1] & mask) return false;
  return true;
}

}  // namespace bonn_test
