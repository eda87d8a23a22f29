// fops_impl.h compiled for AVX2 (this file gets -mavx2 -mfma from CMakeLists.txt).
#define FOPS_ISA_NS avx2
#include "fops_impl.h"
#include "fops.h"

namespace bonn {
void maxpool_rows_avx2(const float* in, int H, int W, int C, int K, int stride, int pad, int OH, int OW,
                         int64_t r0, int64_t r1, float* out) {
  avx2::maxpool_rows(in, H, W, C, K, stride, pad, OH, OW, r0, r1, out);
}
void linear_cols_avx2(const float* x, int N, int I, int O, const float* w_io, const float* bias, int o0, int o1,
                        float* out) {
  avx2::linear_cols(x, N, I, O, w_io, bias, o0, o1, out);
}
}  // namespace bonn
