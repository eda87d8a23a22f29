// fops_impl.h compiled for AVX-512 (this file gets -mavx512f etc. from CMakeLists.txt).
#define FOPS_ISA_NS avx512
#include "fops_impl.h"
#include "fops.h"

namespace bonn {
void maxpool_rows_avx512(const float* in, int H, int W, int C, int K, int stride, int pad, int OH, int OW,
                         int64_t r0, int64_t r1, float* out) {
  avx512::maxpool_rows(in, H, W, C, K, stride, pad, OH, OW, r0, r1, out);
}
void linear_cols_avx512(const float* x, int N, int I, int O, const float* w_io, const float* bias, int o0, int o1,
                        float* out) {
  avx512::linear_cols(x, N, I, O, w_io, bias, o0, o1, out);
}
}  // namespace bonn
