// Loop bodies of the cheap float ops, written so the compiler vectorizes them over channels / outputs.
// Included by fops.cc (baseline ISA), fops_avx2.cc and fops_avx512.cc, each compiled with its own flags;
// the instantiations live in separate namespaces so the ISA variants never mix.
#pragma once
#include <cstdint>
#include <cstring>

namespace bonn {
namespace FOPS_ISA_NS {

// No std:: templates here: an instantiation compiled with AVX-512 flags could be the one the linker keeps
// for the baseline code too.
inline int imin(int a, int b) { return a < b ? a : b; }
inline int imax(int a, int b) { return a > b ? a : b; }

// Output rows [r0, r1) (row = n * OH + oh) of a max pool over NHWC; padded taps never win.
inline void maxpool_rows(const float* in, int H, int W, int C, int K, int stride, int pad, int OH, int OW,
                         int64_t r0, int64_t r1, float* out) {
  constexpr int B = 64;
  float acc[B];
  for (int64_t r = r0; r < r1; ++r) {
    const int n = int(r / OH), oh = int(r % OH);
    const int y0 = imax(0, oh * stride - pad), y1 = imin(H, oh * stride - pad + K);
    for (int ow = 0; ow < OW; ++ow) {
      const int x0 = imax(0, ow * stride - pad), x1 = imin(W, ow * stride - pad + K);
      float* o = out + ((int64_t(n) * OH + oh) * OW + ow) * C;
      for (int c0 = 0; c0 < C; c0 += B) {
        const int nb = imin(B, C - c0);
        if (nb == B) {
          for (int j = 0; j < B; ++j) acc[j] = -__builtin_inff();
          for (int y = y0; y < y1; ++y)
            for (int x = x0; x < x1; ++x) {
              const float* v = in + ((int64_t(n) * H + y) * W + x) * C + c0;
              for (int j = 0; j < B; ++j) acc[j] = v[j] > acc[j] ? v[j] : acc[j];
            }
          std::memcpy(o + c0, acc, sizeof(acc));
        } else {
          for (int j = 0; j < nb; ++j) acc[j] = -__builtin_inff();
          for (int y = y0; y < y1; ++y)
            for (int x = x0; x < x1; ++x) {
              const float* v = in + ((int64_t(n) * H + y) * W + x) * C + c0;
              for (int j = 0; j < nb; ++j) acc[j] = v[j] > acc[j] ? v[j] : acc[j];
            }
          std::memcpy(o + c0, acc, sizeof(float) * nb);
        }
      }
    }
  }
}

// Outputs [o0, o1) of y[N, O] = x[N, I] @ w_io[I, O] + bias, for every batch row: each weight block is read
// from cache once per row of the batch, and the accumulators stay in registers.
inline void linear_cols(const float* x, int N, int I, int O, const float* w_io, const float* bias, int o0, int o1,
                        float* out) {
  constexpr int B = 64;
  float acc[B];
  for (int ob = o0; ob < o1; ob += B) {
    const int nb = imin(B, o1 - ob);
    for (int n = 0; n < N; ++n) {
      const float* xr = x + int64_t(n) * I;
      if (nb == B) {
        for (int j = 0; j < B; ++j) acc[j] = bias[ob + j];
        for (int i = 0; i < I; ++i) {
          const float xi = xr[i];
          const float* w = w_io + int64_t(i) * O + ob;
          for (int j = 0; j < B; ++j) acc[j] += xi * w[j];
        }
      } else {
        for (int j = 0; j < nb; ++j) acc[j] = bias[ob + j];
        for (int i = 0; i < I; ++i) {
          const float xi = xr[i];
          const float* w = w_io + int64_t(i) * O + ob;
          for (int j = 0; j < nb; ++j) acc[j] += xi * w[j];
        }
      }
      std::memcpy(out + int64_t(n) * O + ob, acc, sizeof(float) * nb);
    }
  }
}

}  // namespace FOPS_ISA_NS
}  // namespace bonn
